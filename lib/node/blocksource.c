/* blocksource.c - what every block source shares: naming, counters, the
 * digest check, and the chain that asks sources in turn. */
#include "node/blocksource.h"

#include <stdlib.h>
#include <string.h>

int idd_block_source_init(idd_block_source *s, const struct idd_block_source_ops *ops,
                          const char *name, uint32_t block_size, idd_warn_fn warn, void *ctx,
                          idd_error *err)
{
	s->ops = ops;
	s->block_size = block_size;
	s->warn = warn;
	s->warn_ctx = ctx;
	atomic_init(&s->blocks, 0);
	atomic_init(&s->bytes, 0);
	atomic_init(&s->requests, 0);
	atomic_init(&s->damaged, 0);
	atomic_init(&s->retries, 0);
	s->name = idd_strdup(name ? name : ops->kind, err);
	return s->name ? IDD_OK : IDD_ERR;
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
	memset(out, 0, sizeof *out);
	if (!s)
		return;
	out->blocks = atomic_load(&s->blocks);
	out->bytes = atomic_load(&s->bytes);
	out->requests = atomic_load(&s->requests);
	out->damaged = atomic_load(&s->damaged);
	out->retries = atomic_load(&s->retries);
}

bool idd_block_verify(idd_hasher *h, const void *buf, uint32_t block_size, const idd_digest *d)
{
	idd_digest got;
	return h && !idd_hasher_digest(h, buf, block_size, &got, NULL) &&
	       !memcmp(got.b, d->b, IDD_DIGEST_SIZE);
}

void idd_block_chain_of(idd_block_chain *c, idd_block_source *const *src, size_t n)
{
	memset(c, 0, sizeof *c);
	for (size_t i = 0; i < n && c->n < IDD_ARRAY_LEN(c->src); i++)
		if (src[i])
			c->src[c->n++] = src[i];
}

int idd_block_chain_read(idd_block_chain *c, idd_block_req *reqs, size_t n, idd_error *err)
{
	idd_block_req **pending = idd_calloc(n ? n : 1, sizeof *pending, err);
	idd_block_req *batch = idd_calloc(n ? n : 1, sizeof *batch, err);
	if (!pending || !batch) {
		free(pending);
		free(batch);
		return IDD_ENOMEM;
	}
	for (size_t i = 0; i < n; i++)
		reqs[i].status = IDD_ENOENT;
	c->failure.code = IDD_OK;
	c->failure.msg[0] = 0;
	int rc = IDD_OK;
	for (size_t si = 0; si < c->n; si++) {
		idd_block_source *s = c->src[si];
		size_t np = 0;
		for (size_t i = 0; i < n; i++) {
			if (reqs[i].status == IDD_OK)
				continue;
			if (s->ops->has && !s->ops->has(s, &reqs[i].digest))
				continue;
			pending[np] = &reqs[i];
			batch[np] = reqs[i];
			batch[np].status = IDD_ENOENT;
			batch[np].origin_fd = -1;
			np++;
		}
		if (!np)
			continue;
		idd_error e2 = {{0}, 0};
		int src_rc = s->ops->read(s, batch, np, &e2);
		if (src_rc == IDD_ENOMEM) {
			*err = e2;
			rc = IDD_ENOMEM;
			break;
		}
		if (src_rc == IDD_ETIMEDOUT || src_rc == IDD_ECANCELED) {
			/* out of time, or stopping: no other source is asked */
			c->failure = e2;
			c->failure.code = src_rc;
			for (size_t i = 0; i < n; i++)
				if (reqs[i].status != IDD_OK)
					reqs[i].status = src_rc;
			break;
		}
		if (src_rc) {
			/* the source failed as a whole: its requests go to the next one */
			c->failure = e2;
			c->failure.code = src_rc;
			if (si + 1 < c->n)
				idd_warnf(s->warn, s->warn_ctx, "warning: %s: %s; trying the next source", s->name,
				          e2.msg);
			for (size_t i = 0; i < np; i++)
				if (pending[i]->status == IDD_ENOENT)
					pending[i]->status = src_rc;
			continue;
		}
		for (size_t i = 0; i < np; i++) {
			int keep = pending[i]->status;
			*pending[i] = batch[i];
			/* a later "not here" must not hide an earlier reason */
			if (batch[i].status == IDD_ENOENT && keep != IDD_ENOENT)
				pending[i]->status = keep;
		}
	}
	free(pending);
	free(batch);
	return rc;
}
