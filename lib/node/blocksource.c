/* blocksource.c - the common part of block sources, and chains of them
 * (blocksource.h). */
#include "node/blocksource.h"

#include <stdlib.h>
#include <string.h>

int idd_block_source_init(idd_block_source *s, const struct idd_block_source_ops *ops,
                          const char *name, uint32_t block_size, idd_warn_fn warn, void *ctx,
                          idd_error *err)
{
	memset(s, 0, sizeof *s);
	s->ops = ops;
	s->block_size = block_size;
	s->warn = warn;
	s->warn_ctx = ctx;
	atomic_init(&s->blocks, 0);
	atomic_init(&s->bytes, 0);
	atomic_init(&s->requests, 0);
	atomic_init(&s->damaged, 0);
	s->name = idd_strdup(name, err);
	return s->name ? IDD_OK : IDD_ERR;
}

void idd_block_source_fini(idd_block_source *s)
{
	free(s->name);
	s->name = NULL;
}

void idd_block_source_close(idd_block_source *s)
{
	if (s && s->ops->close)
		s->ops->close(s);
}

void idd_block_source_counters_get(const idd_block_source *s, idd_block_source_counters *out)
{
	out->blocks = atomic_load(&s->blocks);
	out->bytes = atomic_load(&s->bytes);
	out->requests = atomic_load(&s->requests);
	out->damaged = atomic_load(&s->damaged);
}

bool idd_block_verify(idd_hasher *h, const void *buf, uint32_t block_size, const idd_digest *d)
{
	idd_digest got;
	return idd_hasher_digest(h, buf, block_size, &got, NULL) == IDD_OK &&
	       memcmp(got.b, d->b, IDD_DIGEST_SIZE) == 0;
}

int idd_block_chain_read(idd_block_chain *c, idd_block_req *reqs, size_t n, idd_error *err)
{
	for (size_t i = 0; i < c->n; i++) {
		bool pending = false;
		for (size_t k = 0; k < n; k++) {
			if (reqs[k].status == IDD_ECORRUPT)
				reqs[k].status = IDD_ENOENT; /* the next source is asked afresh */
			pending = pending || reqs[k].status == IDD_ENOENT;
		}
		if (!pending)
			break;
		idd_block_source *s = c->src[i];
		if (s->ops->has) {
			bool any = false;
			for (size_t k = 0; k < n && !any; k++)
				any = reqs[k].status == IDD_ENOENT && s->ops->has(s, &reqs[k].digest);
			if (!any)
				continue;
		}
		idd_error e;
		int rc = s->ops->read(s, reqs, n, &e);
		if (rc == IDD_ENOMEM) {
			*err = e;
			return rc;
		}
		if (rc)
			idd_warnf(s->warn, s->warn_ctx, "warning: %s; its blocks come from the next source", e.msg);
	}
	return IDD_OK;
}
