/* source_cache.c - the node cache as a block source: any image cached on
 * this node (deployed, or partly fetched by serve) that holds the content. */
#include "node/source_cache.h"

#include <stdlib.h>

static bool cache_has(idd_block_source *s, const idd_digest *d)
{
	size_t e;
	uint64_t b;
	return idd_cache_find(s->priv, d, &e, &b);
}

static int cache_read(idd_block_source *s, idd_block_req *reqs, size_t n, idd_error *err)
{
	uint64_t bytes = 0;
	int rc = idd_cache_read_blocks(s->priv, reqs, n, &bytes, err);
	uint64_t ok = 0, bad = 0;
	for (size_t i = 0; i < n; i++) {
		ok += reqs[i].status == IDD_OK;
		bad += reqs[i].status == IDD_ECORRUPT;
	}
	atomic_fetch_add(&s->blocks, ok);
	atomic_fetch_add(&s->damaged, bad);
	atomic_fetch_add(&s->bytes, bytes);
	return rc;
}

static void cache_close(idd_block_source *s)
{
	idd_block_source_fini(s);
	free(s);
}

static const struct idd_block_source_ops cache_ops = {"cache", cache_has, cache_read, cache_close};

int idd_cache_source_open(idd_cache *c, uint32_t block_size, idd_warn_fn warn, void *ctx,
                          idd_block_source **out, idd_error *err)
{
	idd_block_source *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return IDD_ENOMEM;
	int rc = idd_block_source_init(s, &cache_ops, c->dir, block_size, warn, ctx, err);
	if (rc) {
		free(s);
		return rc;
	}
	s->priv = c;
	*out = s;
	return IDD_OK;
}
