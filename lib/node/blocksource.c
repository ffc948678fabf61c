/* blocksource.c - the parts every block source shares: counters, block
 * verification, and a chain asking sources in turn (blocksource.h). */
#include "node/blocksource.h"

#include <stdlib.h>
#include <string.h>

int idd_block_source_init(idd_block_source *s, const struct idd_block_source_ops *ops,
                          const char *name, uint32_t block_size, idd_warn_fn warn, void *ctx,
                          idd_error *err)
{
	s->ops = ops;
	s->name = idd_strdup(name ? name : ops->kind, err);
	if (!s->name)
		return IDD_ENOMEM;
	s->block_size = block_size;
	atomic_init(&s->blocks, 0);
	atomic_init(&s->bytes, 0);
	atomic_init(&s->requests, 0);
	atomic_init(&s->damaged, 0);
	s->warn = warn;
	s->warn_ctx = ctx;
	return IDD_OK;
}

void idd_block_source_fini(idd_block_source *s)
{
	free(s->name);
	s->name = NULL;
}

void idd_block_source_close(idd_block_source *s)
{
	if (s)
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
	       memcmp(got.b, d->b, sizeof got.b) == 0;
}

int idd_block_chain_read(idd_block_chain *c, idd_block_req *reqs, size_t n, idd_error *err)
{
	bool *corrupt = n ? calloc(n, sizeof *corrupt) : NULL;
	if (n && !corrupt)
		return idd_fail_code(err, IDD_ENOMEM, "out of memory");
	int rc = IDD_OK;
	for (size_t s = 0; s < c->n && !rc; s++) {
		/* a block that failed verification at one source is asked of the next */
		size_t open = 0;
		for (size_t i = 0; i < n; i++) {
			if (reqs[i].status == IDD_ECORRUPT) {
				corrupt[i] = true;
				reqs[i].status = IDD_ENOENT;
			}
			open += reqs[i].status == IDD_ENOENT;
		}
		if (!open)
			break;
		rc = c->src[s]->ops->read(c->src[s], reqs, n, err);
		for (size_t i = 0; i < n; i++)
			if (reqs[i].status == IDD_ENOENT && corrupt[i])
				reqs[i].status = IDD_ECORRUPT;
	}
	free(corrupt);
	return rc;
}
