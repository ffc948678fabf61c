/* serve_readahead.c - the readahead thread of an export: the blocks after
 * a read that missed, fetched behind it so that the read is answered as
 * soon as its own blocks are in. */
#include "node/serve_internal.h"

#include <stdlib.h>

/* Readahead: the missing blocks after block b1, up to ra_blocks of them.
 * It stops at a block that failed recently: nothing is read ahead around a
 * failure.  Runs on the export's readahead thread, so that the read that
 * asked for it is answered as soon as its own blocks are in. */
static void read_ahead(idd_export *e, uint64_t b1, uint64_t ra_blocks)
{
	uint32_t bs = e->bs;
	uint64_t nb = e->m->nblocks;
	if (!ra_blocks || b1 >= nb)
		return;
	ra_blocks = IDD_MIN(ra_blocks, nb - b1);
	idd_error err;
	unsigned char *buf = idd_malloc((size_t)ra_blocks * bs, &err);
	idd_block_req *reqs = idd_calloc((size_t)ra_blocks, sizeof *reqs, &err);
	if (!buf || !reqs) {
		free(buf);
		free(reqs);
		return; /* only an optimisation */
	}
	idd_block_source *cs = e->srv->cache_src;
	int64_t now = idd_mono_ns();
	size_t n = 0, si = idd_map_span_index(e->m, b1);
	for (uint64_t b = b1; b < b1 + ra_blocks; b++) {
		while (e->m->runs[si].block + e->m->runs[si].count <= b)
			si++;
		uint32_t ref = idd_map_span_ref(&e->m->runs[si], b);
		if (!ref)
			continue;
		const idd_digest *d = &e->m->digests[ref - 1];
		if (idd_negcache_barred(&e->failed, d, now, NULL))
			break;
		if (cs->ops->has(cs, d))
			continue;
		reqs[n] = (idd_block_req){.digest = *d, .block = b,
		                          .len = (uint32_t)IDD_MIN((uint64_t)bs, e->size - b * bs),
		                          .buf = buf + n * bs, .status = IDD_ENOENT, .origin_fd = -1};
		n++;
	}
	if (n && serve_fetch_blocks(e, reqs, n, true, NULL, &err) == IDD_ENOMEM)
		idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx, "warning: %s: readahead: %s", e->id, err.msg);
	free(buf);
	free(reqs);
}

/* The readahead thread: the latest range asked for replaces one not
 * started yet (a guest that moved on does not need the old one). */
static void *readahead_main(void *arg)
{
	idd_export *e = arg;
	idd_server *s = e->srv;
	pthread_mutex_lock(&e->ra_lock);
	while (!atomic_load(&s->stop)) {
		if (!e->ra_queued) {
			pthread_cond_wait(&e->ra_wake, &e->ra_lock);
			continue;
		}
		uint64_t b1 = e->ra_block, count = e->ra_count;
		e->ra_queued = false;
		e->ra_busy = true;
		pthread_mutex_unlock(&e->ra_lock);
		/* bounded like a read: a stalled source does not hold it forever */
		idd_fetch_set_deadline(idd_mono_ns() + (int64_t)s->o.read_timeout_s * 1000000000);
		read_ahead(e, b1, count);
		idd_fetch_set_deadline(0);
		pthread_mutex_lock(&e->ra_lock);
		e->ra_busy = false;
		pthread_cond_broadcast(&e->ra_wake);
	}
	pthread_mutex_unlock(&e->ra_lock);
	return NULL;
}

/* Ask for [b1, b1 + ra_blocks) to be read ahead, sized to the source's
 * recent speed. */
void serve_schedule_readahead(idd_export *e, uint64_t b1, uint64_t ra_blocks)
{
	uint64_t rate = atomic_load(&e->rate);
	if (rate) {
		double fits = (double)rate * (double)READAHEAD_TARGET_NS / 1e9 / e->bs;
		ra_blocks = IDD_MIN(ra_blocks, (uint64_t)fits);
	}
	if (!ra_blocks || b1 >= e->m->nblocks || atomic_load(&e->srv->quiesce))
		return;
	pthread_mutex_lock(&e->ra_lock);
	if (!e->ra_started && !atomic_load(&e->srv->stop))
		e->ra_started = !pthread_create(&e->ra_thread, NULL, readahead_main, e);
	if (e->ra_started) {
		e->ra_block = b1;
		e->ra_count = ra_blocks;
		e->ra_queued = true;
		pthread_cond_signal(&e->ra_wake);
	}
	pthread_mutex_unlock(&e->ra_lock);
}
