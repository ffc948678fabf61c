/* fill.c - windows of blocks asked of a source chain and written to OUT.
 *
 * Threads: windows are taken from a shared counter; each thread has its own
 * buffer and requests, and writes only its own blocks (positional writes
 * to disjoint ranges), so the only shared state is the counters below and
 * the failed list, guarded by a mutex. */
#include "node/fill.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pool {
	idd_fill *f;
	const uint64_t *blocks;
	size_t n, nwindows;
	atomic_size_t next;
	atomic_uint_least64_t written, cloned;
	atomic_bool stop;
	pthread_mutex_t lock; /* guards failed */
	uint64_t *failed;
	size_t nfailed, cap_failed;
	int failed_status;
};

struct worker {
	struct pool *p;
	unsigned char *buf;
	idd_block_req *reqs;
	idd_block_chain chain; /* a copy: its failure record is this thread's own */
	pthread_t thread;
	int rc;
	idd_error err;
};

static int note_failed(struct pool *p, const idd_block_req *q, idd_error *err)
{
	pthread_mutex_lock(&p->lock);
	int rc = IDD_OK;
	if (p->nfailed == p->cap_failed) {
		size_t nc = p->cap_failed ? p->cap_failed * 2 : 256;
		uint64_t *nf = idd_realloc_array(p->failed, nc, sizeof *nf, err);
		if (!nf)
			rc = IDD_ENOMEM;
		else {
			p->failed = nf;
			p->cap_failed = nc;
		}
	}
	if (!rc) {
		if (!p->nfailed)
			p->failed_status = q->status;
		p->failed[p->nfailed++] = q->block;
	}
	pthread_mutex_unlock(&p->lock);
	return rc;
}

/* Write the filled requests: stretches consecutive in OUT with one call. */
static int write_window(struct pool *p, struct worker *w, size_t n)
{
	idd_fill *f = p->f;
	uint32_t bs = f->part->bs;
	for (size_t i = 0; i < n;) {
		idd_block_req *q = &w->reqs[i];
		if (q->status != IDD_OK) {
			if (note_failed(p, q, &w->err))
				return IDD_ENOMEM;
			i++;
			continue;
		}
		size_t j = i + 1;
		bool clonable = q->origin_fd >= 0;
		while (j < n && w->reqs[j].status == IDD_OK && w->reqs[j].block == q->block + (j - i)) {
			if (w->reqs[j].origin_fd != q->origin_fd ||
			    w->reqs[j].origin_off != q->origin_off + (uint64_t)(j - i) * bs)
				clonable = false;
			j++;
		}
		uint64_t off = q->block * bs;
		uint64_t len = IDD_MIN((uint64_t)(j - i) * bs, f->part->size - off);
		if (clonable && f->can_clone &&
		    idd_outpart_clone(f->part, f->can_clone, q->origin_fd, q->origin_off, q->buf, len, off))
			atomic_fetch_add(&p->cloned, len);
		else if (idd_outpart_write(f->part, q->buf, (size_t)len, off, &w->err))
			return IDD_EIO;
		atomic_fetch_add(&p->written, len);
		i = j;
	}
	return IDD_OK;
}

static int do_window(struct pool *p, struct worker *w, size_t win)
{
	idd_fill *f = p->f;
	uint32_t bs = f->part->bs;
	size_t first = win * f->window_blocks;
	size_t n = IDD_MIN(f->window_blocks, p->n - first);
	for (size_t i = 0; i < n; i++) {
		uint64_t b = p->blocks[first + i];
		uint32_t ref = idd_map_ref(f->m, b);
		idd_block_req *q = &w->reqs[i];
		q->digest = f->m->digests[ref - 1];
		q->block = b;
		q->len = (uint32_t)IDD_MIN((uint64_t)bs, f->part->size - b * bs);
		q->buf = w->buf + i * bs;
		q->origin_fd = -1;
	}
	int rc = idd_block_chain_read(&w->chain, w->reqs, n, &w->err);
	return rc ? rc : write_window(p, w, n);
}

static void work(struct worker *w, bool caller)
{
	struct pool *p = w->p;
	uint64_t last = 0;
	while (!atomic_load(&p->stop)) {
		size_t i = atomic_fetch_add(&p->next, 1);
		if (i >= p->nwindows)
			break;
		if ((w->rc = do_window(p, w, i))) {
			atomic_store(&p->stop, true);
			break;
		}
		uint64_t done = atomic_load(&p->written);
		if (caller && p->f->progress && done - last >= (16u << 20)) {
			last = done;
			p->f->progress(p->f->ctx, done);
		}
	}
}

static void *worker_main(void *arg)
{
	work(arg, false);
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

int idd_fill_run(idd_fill *f, const uint64_t *blocks, size_t n, idd_error *err)
{
	f->bytes_written = f->bytes_cloned = 0;
	f->nfailed = 0;
	free(f->failed);
	f->failed = NULL;
	if (!n)
		return IDD_OK;
	if (!f->window_blocks)
		f->window_blocks = 256;
	struct pool p = {.f = f, .blocks = blocks, .n = n};
	p.nwindows = (n + f->window_blocks - 1) / f->window_blocks;
	atomic_init(&p.next, 0);
	atomic_init(&p.written, 0);
	atomic_init(&p.cloned, 0);
	atomic_init(&p.stop, false);
	pthread_mutex_init(&p.lock, NULL);
	int nw = idd_threads_for_jobs(f->jobs);
	if ((size_t)nw > p.nwindows)
		nw = (int)p.nwindows;
	struct worker *w = idd_calloc((size_t)nw, sizeof *w, err);
	int rc = w ? IDD_OK : IDD_ENOMEM;
	for (int i = 0; !rc && i < nw; i++) {
		w[i].p = &p;
		w[i].chain = *f->chain;
		w[i].buf = idd_malloc(f->window_blocks * f->part->bs, err);
		w[i].reqs = idd_calloc(f->window_blocks, sizeof *w[i].reqs, err);
		if (!w[i].buf || !w[i].reqs)
			rc = IDD_ENOMEM;
	}
	int started = 0;
	for (int i = 1; !rc && i < nw; i++) {
		if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]))
			break; /* fewer threads: the work still gets done */
		started = i;
	}
	if (!rc)
		work(&w[0], true);
	for (int i = 1; i <= started; i++)
		pthread_join(w[i].thread, NULL);
	for (int i = 0; !rc && i < nw; i++)
		if (w[i].rc) {
			*err = w[i].err;
			rc = w[i].rc;
		}
	for (int i = 0; w && i < nw; i++) {
		if (w[i].chain.failure.code < 0)
			f->chain->failure = w[i].chain.failure;
		free(w[i].buf);
		free(w[i].reqs);
	}
	free(w);
	pthread_mutex_destroy(&p.lock);
	f->bytes_written = atomic_load(&p.written);
	f->bytes_cloned = atomic_load(&p.cloned);
	if (p.nfailed)
		qsort(p.failed, p.nfailed, sizeof *p.failed, cmp_u64);
	f->failed = p.failed;
	f->nfailed = p.nfailed;
	f->failed_status = p.failed_status;
	return rc;
}

void idd_fill_free(idd_fill *f)
{
	free(f->failed);
	f->failed = NULL;
	f->nfailed = 0;
}
