/* serve.c - on-demand access: images read block by block for an NBD
 * server, fetched only when first read.
 *
 * A read is answered block by block: zero blocks as zeros; a block whose
 * content any image in the node cache holds is read from there and
 * verified (the access is redirected to the copy the node already has, so
 * related images share one copy on disk and in the page cache); anything
 * else is fetched with its missing neighbours (bounded readahead), verified,
 * written into the image's partial file in the cache, made known to the
 * cache, and answered.  A block nobody can supply verified fails the read.
 *
 * Threads: the NBD server calls reads from many threads.  The cache is
 * read-shared (cache.c); fetches of one export go through a pool of remote
 * readers (source_remote.c); a block being fetched by one thread is waited
 * for, not fetched again, by the others (the in-flight list, under
 * fl_lock).  Background threads: a flusher (every 100 ms: fetched data
 * made durable, then journaled), and per export --prefetch and --fill
 * workers, which step aside while the guest reads. */
#include "node/serve_internal.h"
#include "base/file.h"
#include "base/u64set.h"
#include "node/cache.h"
#include "node/metrics.h"
#include "node/negcache.h"
#include "node/partial.h"
#include "node/profile.h"
#include "node/readahead.h"
#include "node/remote_index.h"
#include "node/source_cache.h"
#include "node/source_pack.h"
#include "node/source_peer.h"
#include "node/source_remote.h"
#include "index/indexfile.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>


void serve_progress(idd_server *s, const char *fmt, ...)
{
	if (!s->o.progress)
		return;
	va_list ap;
	va_start(ap, fmt);
	idd_vwarnf(s->o.progress, s->o.ctx, fmt, ap);
	va_end(ap);
}

/* ---- the partial image of an export ---- */

int serve_partial_open_locked(idd_export *e, idd_error *err)
{
	if (e->part)
		return IDD_OK;
	idd_server *s = e->srv;
	int rc = idd_partial_open(e->base, e->id, e->m, &e->part, err);
	if (!rc && (rc = idd_cache_partial_entry(s->cache, e->part->data_path, e->part->journal_path,
	                                         e->size, &e->part_entry, err))) {
		idd_partial_close(e->part);
		e->part = NULL;
	}
	return rc;
}

/* Caching is best effort: a block that was fetched and verified is served
 * whether or not the cache can keep it (a full disk, a cache directory
 * removed or tampered with).  Each failure is counted; the first one per
 * export is a warning, the rest would only repeat it. */
void serve_cache_write_failed(idd_export *e, const idd_error *why)
{
	idd_server *s = e->srv;
	atomic_fetch_add(&e->c.cache_write_errors, 1);
	atomic_store(&e->cache_failing, true);
	if (!atomic_exchange(&e->warned_cache_write, true))
		idd_warnf(s->o.warn, s->o.ctx,
		          "warning: %s: the cache cannot keep fetched blocks: %s; they are served "
		          "without being cached (counted as cache_write_errors)", e->id, why->msg);
}

/* The complete image should have held it (damaged, or written for an older
 * map): the verified block goes back into it, and the whole file gets
 * checked.  Trouble writing there does not fail the read. */
static bool repair_write_locked(idd_export *e, uint64_t block, const unsigned char *buf)
{
	idd_error e2 = {{0}, 0};
	if (e->repair_fd < 0) {
		e->repair_fd = idd_open_regular(e->final_path, O_RDWR, IDD_FILE_NOFOLLOW, &e2);
		/* in use: gc leaves it; removed meanwhile: nothing to repair */
		if (e->repair_fd >= 0 && idd_flock_shared(e->repair_fd, e->final_path) == 1) {
			close(e->repair_fd);
			e->repair_fd = -1;
			idd_fail_code(&e2, IDD_ENOENT, "%s: removed", e->final_path);
		}
	}
	uint64_t len = IDD_MIN((uint64_t)e->bs, e->size - block * e->bs);
	bool ok = e->repair_fd >= 0;
	if (ok && idd_pwrite_all(e->repair_fd, buf, (size_t)len, block * e->bs)) {
		idd_fail_errno(&e2, e->final_path, "write");
		ok = false;
	}
	if (ok)
		atomic_store(&e->repair_wanted, true);
	else if (!e->repair_warned) {
		e->repair_warned = true;
		idd_warnf(e->srv->o.warn, e->srv->o.ctx, "warning: %s: cannot repair the cached image: %s",
		          e->id, e2.msg);
	}
	return ok;
}

/* A verified block into the partial file, known to the cache from now on,
 * journaled at the next flush.  A failure is counted and returned; readers
 * serve the block anyway. */
int serve_store_block(idd_export *e, uint64_t block, const idd_digest *d, const unsigned char *buf,
                       idd_error *err)
{
	pthread_mutex_lock(&e->part_lock);
	if (e->complete) {
		/* own: here the blocks repaired (counted once, however often written) */
		bool added = false;
		if (repair_write_locked(e, block, buf) && idd_u64set_add(&e->own, block, &added))
			added = false;
		pthread_mutex_unlock(&e->part_lock);
		if (added)
			atomic_fetch_add(&e->c.blocks_filled, 1);
		return IDD_OK;
	}
	int rc = serve_partial_open_locked(e, err);
	bool added = false;
	if (!rc) {
		/* a block this file already holds is fetched only when its copy
		 * failed verification: writing it again repairs the file */
		uint64_t len = IDD_MIN((uint64_t)e->bs, e->size - block * e->bs);
		bool have = idd_u64set_has(&e->own, block);
		rc = idd_partial_write(e->part, block, buf, (size_t)len, err);
		if (!rc && !have)
			rc = idd_partial_note(e->part, block, d, err);
		if (!rc && !have)
			rc = idd_u64set_add(&e->own, block, &added);
	}
	size_t entry = e->part_entry;
	pthread_mutex_unlock(&e->part_lock);
	if (!rc)
		rc = idd_cache_add_block(e->srv->cache, entry, d, block, err);
	if (!rc && added)
		atomic_fetch_add(&e->c.blocks_filled, 1);
	if (rc)
		serve_cache_write_failed(e, err);
	else
		atomic_store(&e->cache_failing, false);
	return rc;
}

static int own_record(void *ctx, const idd_partial_record *r)
{
	idd_export *e = ctx;
	bool added;
	return idd_u64set_add(&e->own, r->block, &added);
}

/* ---- fetching ---- */

static int ensure_remote(idd_export *e, idd_error *err)
{
	pthread_mutex_lock(&e->remote_lock);
	int rc = IDD_OK;
	if (!e->remote) {
		idd_server *s = e->srv;
		char *tmp = idd_path_join(s->cache->dir, IDD_CACHE_IMAGES, err);
		idd_fetch_opts fo = {.connections = s->o.connections, .timeout_s = s->o.timeout_s,
		                     .warn = s->o.warn, .ctx = s->o.ctx, .cancel = &s->stop};
		rc = tmp ? idd_remote_source_open(idd_source_root(s->ri->src), e->info, e->size, e->bs, tmp,
		                                  REMOTE_READERS, &fo, s->o.warn, s->o.ctx, &e->remote, err)
		         : IDD_ENOMEM;
		free(tmp);
		if (!rc && !s->o.no_pack) {
			/* fewer bytes when SOURCE has a pack; trouble with it is a
			 * warning and the image is read instead */
			idd_error e2;
			int prc = idd_pack_source_open(s->ri->isrc, s->ri->prefix, e->m, s->o.warn, s->o.ctx,
			                               &e->pack, &e2);
			if (prc && prc != IDD_ENOENT)
				idd_warnf(s->o.warn, s->o.ctx, "warning: %s: pack not used: %s", e->id, e2.msg);
		}
	}
	pthread_mutex_unlock(&e->remote_lock);
	return rc;
}

/* Is d being fetched?  *firm: by a fetch that others must wait for (not
 * only by a readahead). */
static bool inflight_find(idd_export *e, const idd_digest *d, bool *firm)
{
	bool any = false;
	*firm = false;
	for (size_t i = 0; i < e->ninflight; i++)
		if (!memcmp(e->inflight[i].d.b, d->b, IDD_DIGEST_SIZE)) {
			any = true;
			*firm = *firm || !e->inflight[i].speculative;
		}
	return any;
}

static void inflight_drop_mine(idd_export *e)
{
	pthread_mutex_lock(&e->fl_lock);
	pthread_t me = pthread_self();
	size_t w = 0;
	for (size_t i = 0; i < e->ninflight; i++)
		if (!pthread_equal(e->inflight[i].owner, me))
			e->inflight[w++] = e->inflight[i];
	e->ninflight = w;
	pthread_cond_broadcast(&e->fl_done);
	pthread_mutex_unlock(&e->fl_lock);
}

/* Where a block is asked for: peers, then SOURCE's pack, then its image. */
static void fetch_chain(idd_export *e, idd_block_chain *chain)
{
	IDD_BLOCK_CHAIN_OF(chain, e->srv->peer_src, e->pack, e->remote);
}

/* What became of a fetch, remembered for the next reads of that content:
 * a failure bars it for a while (negcache.h), a success forgets that.
 * Running out of time or stopping says nothing about the block. */
static void note_outcome(idd_export *e, const idd_block_req *q)
{
	if (q->status == IDD_OK) {
		idd_negcache_clear(&e->failed, &q->digest);
		return;
	}
	if (q->status != IDD_ECANCELED)
		atomic_fetch_add(&e->c.fetch_errors, 1);
	if (q->status == IDD_ETIMEDOUT || q->status == IDD_ECANCELED)
		return;
	idd_error e2;
	if (idd_negcache_fail(&e->failed, &q->digest, q->status, idd_mono_ns(), &e2))
		idd_warnf(e->srv->o.warn, e->srv->o.ctx, "warning: %s: %s", e->id, e2.msg);
}

/* How fast the source delivered a batch: the readahead is sized to what it
 * brings in about READAHEAD_TARGET_NS (a trickling source gets little or
 * none, so that the reads after it do not queue behind it). */
static void note_rate(idd_export *e, uint64_t bytes, int64_t ns)
{
	if (!bytes || ns <= 0)
		return;
	uint64_t sample = (uint64_t)((double)bytes * 1e9 / (double)ns);
	uint64_t old = atomic_load(&e->rate);
	atomic_store(&e->rate, old ? (old + sample) / 2 : IDD_MAX(sample, 1));
}

enum fetch_role { PENDING, BY_ME, WAITING, DECIDED };

/* Wait until none of the WAITING requests is being fetched by another
 * thread, the read's deadline or a stop.  A readahead that is fetching a
 * block is waited for SPECULATIVE_WAIT_NS at most: then the block is
 * fetched here. */
static void wait_for_others(idd_export *e, const idd_block_req *reqs, const unsigned char *role,
                            size_t n)
{
	int64_t deadline = idd_fetch_deadline();
	int64_t spec_until = idd_mono_ns() + SPECULATIVE_WAIT_NS;
	pthread_mutex_lock(&e->fl_lock);
	for (;;) {
		bool busy = false, firm = false;
		for (size_t i = 0; i < n; i++) {
			bool f;
			if (role[i] == WAITING && inflight_find(e, &reqs[i].digest, &f)) {
				busy = true;
				firm = firm || f;
			}
		}
		int64_t now = idd_mono_ns();
		if (!busy || atomic_load(&e->srv->stop) || (deadline && now >= deadline) ||
		    (!firm && now >= spec_until))
			break;
		/* woken when a fetch ends; the clock and the stop flag are looked
		 * at every 100 ms */
		int64_t until = now + 100000000;
		if (deadline && deadline < until)
			until = deadline;
		if (!firm && spec_until < until)
			until = spec_until;
		struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
		pthread_cond_clockwait(&e->fl_done, &e->fl_lock, CLOCK_MONOTONIC, &ts);
	}
	pthread_mutex_unlock(&e->fl_lock);
}

/* Fetch the requests (not cached anywhere a moment ago): each distinct
 * digest once, by this thread unless another is already fetching it.  A
 * digest that failed recently is not fetched at all (its status says why,
 * e->failed how long it stays barred).  speculative (readahead): nothing
 * is waited for, a block someone else fetches is skipped (left
 * IDD_ENOENT), and readers do not queue behind this fetch for long.  why
 * (may be NULL) receives the message of a source that failed as a whole. */
int serve_fetch_blocks(idd_export *e, idd_block_req *reqs, size_t n, bool speculative,
                        idd_error *why, idd_error *err)
{
	if (!n)
		return IDD_OK;
	int rc = ensure_remote(e, err);
	if (rc)
		return rc;
	idd_block_req *mine = idd_calloc(n, sizeof *mine, err);
	size_t *mine_of = idd_calloc(n, sizeof *mine_of, err);   /* req -> index in mine */
	unsigned char *role = idd_calloc(n, 1, err);
	if (!mine || !mine_of || !role) {
		free(mine);
		free(mine_of);
		free(role);
		return IDD_ENOMEM;
	}
	idd_block_source *cs = e->srv->cache_src;
	/* Round 0 waits for other threads' fetches; what they could not
	 * deliver (a readahead too slow, a copy the cache could not keep) is
	 * fetched here in the next rounds. */
	for (int round = 0; !rc && round < 3; round++) {
		size_t nmine = 0;
		bool waits = false;
		int64_t now = idd_mono_ns();
		pthread_mutex_lock(&e->fl_lock);
		for (size_t i = 0; i < n; i++) {
			if (role[i] != PENDING)
				continue;
			mine_of[i] = SIZE_MAX;
			/* the same content twice in this batch: fetched once */
			for (size_t k = 0; k < nmine; k++)
				if (!memcmp(mine[k].digest.b, reqs[i].digest.b, IDD_DIGEST_SIZE)) {
					mine_of[i] = k;
					break;
				}
			if (mine_of[i] != SIZE_MAX) {
				role[i] = BY_ME;
				continue;
			}
			idd_negcache_info barred;
			if (idd_negcache_barred(&e->failed, &reqs[i].digest, now, &barred)) {
				reqs[i].status = barred.code;
				role[i] = DECIDED;
				continue;
			}
			/* fetched by another thread since this one missed in the cache
			 * (serve_store_block adds to the cache before the fetch leaves the
			 * in-flight list), or being fetched now: read from the cache
			 * once it is there */
			bool firm, busy = inflight_find(e, &reqs[i].digest, &firm);
			if (busy || (round == 0 && cs->ops->has(cs, &reqs[i].digest))) {
				if (speculative) {
					reqs[i].status = IDD_ENOENT;
					role[i] = DECIDED;
					continue;
				}
				if (!busy || firm || round == 0) {
					role[i] = WAITING;
					waits = true;
					continue;
				}
				/* only a readahead has it, and it took too long */
			}
			/* later rounds: what the cache claimed to hold failed to read */
			if (e->ninflight == e->cap_inflight) {
				size_t nc = e->cap_inflight ? e->cap_inflight * 2 : 256;
				struct inflight *nv = realloc(e->inflight, nc * sizeof *nv);
				if (!nv) {
					rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
					break;
				}
				e->inflight = nv;
				e->cap_inflight = nc;
			}
			e->inflight[e->ninflight++] =
			    (struct inflight){reqs[i].digest, pthread_self(), speculative};
			mine_of[i] = nmine;
			role[i] = BY_ME;
			mine[nmine++] = reqs[i];
		}
		pthread_mutex_unlock(&e->fl_lock);
		if (!rc && nmine) {
			idd_block_chain chain;
			fetch_chain(e, &chain);
			int64_t t0 = idd_mono_ns();
			rc = idd_block_chain_read(&chain, mine, nmine, err);
			uint64_t got = 0;
			for (size_t k = 0; !rc && k < nmine; k++) {
				idd_error e2;
				note_outcome(e, &mine[k]);
				if (mine[k].status != IDD_OK)
					continue;
				got += mine[k].len;
				(void)serve_store_block(e, mine[k].block, &mine[k].digest, mine[k].buf, &e2);
			}
			int64_t took = idd_mono_ns() - t0;
			note_rate(e, got, took);
			idd_latency_observe(&e->fetch_ns, took);
			if (why && chain.failure.code)
				*why = chain.failure;
		}
		inflight_drop_mine(e);
		for (size_t i = 0; !rc && i < n; i++) {
			size_t k = mine_of[i];
			if (role[i] != BY_ME || k == SIZE_MAX)
				continue;
			if (mine[k].buf != reqs[i].buf && mine[k].status == IDD_OK)
				memcpy(reqs[i].buf, mine[k].buf, e->bs);
			reqs[i].status = mine[k].status;
			role[i] = DECIDED;
		}
		if (rc || !waits)
			break;
		wait_for_others(e, reqs, role, n);
		int64_t deadline = idd_fetch_deadline();
		for (size_t i = 0; !rc && i < n; i++) {
			if (role[i] != WAITING)
				continue;
			rc = cs->ops->read(cs, &reqs[i], 1, err);
			idd_negcache_info barred;
			if (rc || reqs[i].status == IDD_OK) {
				role[i] = DECIDED;
			} else if (idd_negcache_barred(&e->failed, &reqs[i].digest, idd_mono_ns(), &barred)) {
				reqs[i].status = barred.code; /* the other fetch failed */
				role[i] = DECIDED;
			} else if (atomic_load(&e->srv->stop)) {
				reqs[i].status = IDD_ECANCELED;
				role[i] = DECIDED;
			} else if (deadline && idd_mono_ns() >= deadline) {
				reqs[i].status = IDD_ETIMEDOUT;
				role[i] = DECIDED;
			} else {
				reqs[i].status = IDD_ENOENT;
				role[i] = PENDING;
			}
		}
	}
	for (size_t i = 0; i < n; i++)
		if (role[i] == PENDING || role[i] == WAITING)
			reqs[i].status = IDD_ENET;
	free(mine);
	free(mine_of);
	free(role);
	return rc;
}

static void maybe_refresh(idd_server *s)
{
	int64_t now = idd_now_ns(), last = atomic_load(&s->last_refresh_ns);
	if (now - last < REFRESH_NS ||
	    !atomic_compare_exchange_strong(&s->last_refresh_ns, &last, now))
		return;
	idd_error e2;
	if (idd_cache_refresh(s->cache, &e2))
		idd_warnf(s->o.warn, s->o.ctx, "warning: cache: %s", e2.msg);
}

/* ---- reading a range ---- */

/* Why a block could not be had, for the client's error message. */
static const char *failure_reason(int code)
{
	switch (code) {
	case IDD_ECORRUPT:
		return "what the source holds does not match its digest: the source is damaged or "
		       "changed since it was indexed, or the index is another repository's";
	case IDD_ENOENT:
		return "no source holds it";
	case IDD_ETIMEDOUT:
		return "no answer within the read's time limit";
	case IDD_ECANCELED:
		return "the server is stopping";
	default:
		return "the source could not be read";
	}
}

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
		idd_warnf(e->srv->o.warn, e->srv->o.ctx, "warning: %s: readahead: %s", e->id, err.msg);
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

/* Make blocks covering [off, off+len) available and, when out is not NULL,
 * copy those bytes there.  readahead: when the range missed, also fetch up
 * to that many bytes of missing blocks after it.  required: a block that
 * cannot be had is an error (else it is skipped).
 *
 * What one call may fetch is bounded: its own missing blocks, each once,
 * then the readahead, and only when every one of its own blocks arrived; a
 * block that failed recently is not fetched at all. */
int serve_access_range(idd_export *e, uint64_t off, uint64_t len, unsigned char *out,
                        bool readahead, bool required, bool stats, idd_error *err)
{
	idd_server *s = e->srv;
	uint32_t bs = e->bs;
	if (!len)
		return IDD_OK;
	uint64_t b0 = off / bs, b1 = (off + len + bs - 1) / bs;
	size_t nmax = (size_t)(b1 - b0);
	/* Whole blocks inside the range are assembled in place, in the
	 * caller's buffer (nothing reaches the client unless every block was
	 * verified: a failed read returns no data); the partial first and last
	 * blocks, or everything when there is no out, in a buffer of our own. */
	unsigned char *buf = idd_malloc((out ? 2 : nmax) * (size_t)bs, err);
	idd_block_req *reqs = idd_calloc(nmax, sizeof *reqs, err);
	if (!buf || !reqs) {
		free(buf);
		free(reqs);
		return IDD_ENOMEM;
	}
	size_t n = 0;
	uint64_t zero = 0;
	size_t si = idd_map_span_index(e->m, b0);
	for (uint64_t b = b0; b < b1; b++) {
		while (e->m->runs[si].block + e->m->runs[si].count <= b)
			si++;
		const idd_map_span *sp = &e->m->runs[si];
		unsigned char *dst = !out ? buf + (b - b0) * bs
		                   : b * bs >= off && (b + 1) * bs <= off + len ? out + (b * bs - off)
		                   : buf + (b == b0 ? 0 : bs);
		uint32_t ref = idd_map_span_ref(sp, b);
		if (!ref) {
			memset(dst, 0, bs);
			zero += IDD_MIN((uint64_t)bs, e->size - b * bs);
			continue;
		}
		reqs[n++] = (idd_block_req){.digest = e->m->digests[ref - 1], .block = b,
		                            .len = (uint32_t)IDD_MIN((uint64_t)bs, e->size - b * bs),
		                            .buf = dst, .status = IDD_ENOENT, .origin_fd = -1};
	}
	idd_block_source *cs = s->cache_src;
	int rc = n ? cs->ops->read(cs, reqs, n, err) : IDD_OK;
	size_t nmiss = 0;
	for (size_t i = 0; i < n; i++)
		nmiss += reqs[i].status != IDD_OK;
	if (!rc && nmiss) {
		/* another process may hold them by now */
		maybe_refresh(s);
		for (size_t i = 0; !rc && i < n; i++)
			if (reqs[i].status != IDD_OK)
				rc = cs->ops->read(cs, &reqs[i], 1, err);
	}
	uint64_t from_cache = 0;
	for (size_t i = 0; i < n; i++)
		if (reqs[i].status == IDD_OK)
			from_cache += reqs[i].len;
	/* the misses to the front, then fetched */
	size_t nf = 0;
	for (size_t i = 0; i < n; i++)
		if (reqs[i].status != IDD_OK) {
			idd_block_req t = reqs[i];
			t.status = IDD_ENOENT;
			reqs[i] = reqs[nf];
			reqs[nf++] = t;
		}
	idd_error why = {{0}, IDD_OK};
	if (!rc && nf)
		rc = serve_fetch_blocks(e, reqs, nf, false, &why, err);
	bool all_in = true;
	for (size_t i = 0; !rc && i < nf; i++) {
		if (reqs[i].status == IDD_OK)
			continue;
		all_in = false;
		if (!required)
			continue;
		int code = reqs[i].status;
		unsigned long long at = (unsigned long long)(reqs[i].block * bs);
		idd_negcache_info barred = {0, code, 0};
		if (code == IDD_ETIMEDOUT) { /* idd_export_read says which limit */
			rc = idd_fail_code(err, code, "%s", why.code ? why.msg : "no answer from the source");
			break;
		}
		if (code == IDD_ECANCELED) {
			rc = idd_fail_code(err, code, "%s: the server is stopping", e->id);
			break;
		}
		char again[96] = "";
		if (idd_negcache_barred(&e->failed, &reqs[i].digest, idd_mono_ns(), &barred))
			snprintf(again, sizeof again, "; failed %u time%s in a row, next attempt in %.1f s",
			         barred.fails, barred.fails == 1 ? "" : "s", (double)barred.wait_ns / 1e9);
		rc = idd_fail_code(err, code == IDD_ENOENT ? IDD_ENET : code,
		                   "%s: block at offset %llu: no source could supply it verified (%s)%s",
		                   e->id, at, failure_reason(barred.code), again);
	}
	if (!rc && out) {
		/* the partial edge blocks */
		if (off > b0 * bs || off + len < (b0 + 1) * bs) {
			uint64_t k = IDD_MIN(len, (b0 + 1) * bs - off);
			memcpy(out, buf + (off - b0 * bs), (size_t)k);
		}
		uint64_t last = b1 - 1;
		if (last > b0 && off + len < b1 * bs)
			memcpy(out + (last * bs - off), buf + bs, (size_t)(off + len - last * bs));
	}
	if (stats) {
		atomic_fetch_add(&e->c.bytes_zero, zero);
		atomic_fetch_add(&e->c.bytes_from_cache, from_cache);
	}
	free(buf);
	free(reqs);
	/* how much to read ahead follows the reads (readahead.h); blocks read
	 * ahead that the cache cannot keep would be fetched again by the read
	 * that wants them */
	uint64_t ra_blocks = 0;
	if (readahead && !atomic_load(&e->cache_failing))
		ra_blocks = idd_readahead_window(&e->ra_policy, off, len, nf > 0) / bs;
	if (!rc && all_in && ra_blocks)
		serve_schedule_readahead(e, b1, ra_blocks);
	return rc;
}

static int record_reads(idd_export *e, uint64_t off, uint64_t len)
{
	if (!e->srv->o.record || !len)
		return IDD_OK;
	uint64_t b0 = off / e->bs, b1 = (off + len + e->bs - 1) / e->bs;
	int rc = IDD_OK;
	pthread_mutex_lock(&e->rec_lock);
	for (uint64_t b = b0; !rc && b < b1; b++) {
		bool added;
		if (idd_map_ref(e->m, b) == 0 || (rc = idd_u64set_add(&e->seen, b, &added)) || !added)
			continue;
		if (e->norder == e->cap_order) {
			size_t nc = e->cap_order ? e->cap_order * 2 : 1024;
			uint64_t *nv = realloc(e->order, nc * sizeof *nv);
			if (!nv) {
				rc = IDD_ENOMEM;
				break;
			}
			e->order = nv;
			e->cap_order = nc;
		}
		e->order[e->norder++] = b;
	}
	pthread_mutex_unlock(&e->rec_lock);
	return rc;
}

/* The NBD server allocates each request's buffer before the read, and the
 * buffer costs memory once it is written: with many clients making large
 * reads that grows with clients x request size.  A read takes its length
 * from a server-wide budget before it touches its buffer and gives it
 * back when done; a read that does not fit waits (until its deadline). */
static int take_read_memory(idd_server *s, uint64_t n, int64_t deadline, idd_error *err)
{
	pthread_mutex_lock(&s->mem_lock);
	int rc = IDD_OK;
	while (s->mem_used && s->mem_used + n > s->mem_budget) {
		int64_t now = idd_mono_ns();
		if (atomic_load(&s->stop)) {
			rc = idd_fail_code(err, IDD_ECANCELED, "the server is stopping");
			break;
		}
		if (now >= deadline) {
			rc = idd_fail_code(err, IDD_ETIMEDOUT, "waiting for memory for the read's buffer (%llu "
			                   "bytes of reads in serve_progress)", (unsigned long long)s->mem_used);
			break;
		}
		int64_t until = IDD_MIN(deadline, now + 100000000);
		struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
		pthread_cond_clockwait(&s->mem_freed, &s->mem_lock, CLOCK_MONOTONIC, &ts);
	}
	if (!rc)
		s->mem_used += n;
	pthread_mutex_unlock(&s->mem_lock);
	return rc;
}

static void give_read_memory(idd_server *s, uint64_t n)
{
	pthread_mutex_lock(&s->mem_lock);
	s->mem_used -= n;
	pthread_cond_broadcast(&s->mem_freed);
	pthread_mutex_unlock(&s->mem_lock);
}

int idd_export_read(idd_export *e, void *buf, uint64_t len, uint64_t off, idd_error *err)
{
	idd_server *s = e->srv;
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > e->size)
		return idd_fail_code(err, IDD_EPERM, "%s: read of %llu bytes at %llu is past the end", e->id,
		                     (unsigned long long)len, (unsigned long long)off);
	if (atomic_load(&s->stop))
		return idd_fail_code(err, IDD_ECANCELED, "%s: the server is stopping", e->id);
	atomic_fetch_add(&e->active_reads, 1);
	int64_t t_start = idd_mono_ns();
	/* every wait and every request of this read ends by its deadline */
	int64_t deadline = idd_mono_ns() + (int64_t)s->o.read_timeout_s * 1000000000;
	int64_t old_deadline = idd_fetch_set_deadline(deadline);
	uint64_t mem = IDD_MIN(len, s->mem_budget);
	int rc = take_read_memory(s, mem, deadline, err);
	if (rc)
		mem = 0;
	/* large reads in pieces: bounded memory per call */
	for (uint64_t done = 0; !rc && done < len;) {
		uint64_t piece = IDD_MIN(len - done, (uint64_t)8 << 20);
		bool last = done + piece == len;
		rc = serve_access_range(e, off + done, piece, (unsigned char *)buf + done, last, true, true,
		                  err);
		done += piece;
		if (!rc && done < len && idd_mono_ns() >= deadline)
			rc = idd_fail_code(err, IDD_ETIMEDOUT, "at offset %llu", (unsigned long long)(off + done));
	}
	idd_fetch_set_deadline(old_deadline);
	if (mem)
		give_read_memory(s, mem);
	if (rc == IDD_ETIMEDOUT)
		idd_error_prefix(err, "%s: read of %llu bytes at %llu not answered within the read time "
		                 "limit (%ld s)", e->id, (unsigned long long)len, (unsigned long long)off,
		                 s->o.read_timeout_s);
	atomic_fetch_add(&e->c.reads, 1);
	if (rc)
		atomic_fetch_add(&e->c.read_errors, 1);
	if (!rc) {
		atomic_fetch_add(&e->c.bytes_read, len);
		if (record_reads(e, off, len))
			idd_warnf(s->o.warn, s->o.ctx, "warning: %s: out of memory recording the read order", e->id);
	}
	atomic_store(&e->last_read_ns, idd_now_ns());
	atomic_fetch_sub(&e->active_reads, 1);
	idd_latency_observe(&e->read_ns, idd_mono_ns() - t_start);
	return rc;
}

int idd_export_prefetch(idd_export *e, uint64_t off, uint64_t len, idd_error *err)
{
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > e->size)
		return idd_fail_code(err, IDD_EPERM, "%s: range past the end", e->id);
	/* a client's request: bounded like a read */
	int64_t old_deadline =
	    idd_fetch_set_deadline(idd_mono_ns() + (int64_t)e->srv->o.read_timeout_s * 1000000000);
	int rc = IDD_OK;
	for (uint64_t done = 0; !rc && done < len;) {
		uint64_t piece = IDD_MIN(len - done, (uint64_t)8 << 20);
		rc = serve_access_range(e, off + done, piece, NULL, false, false, false, err);
		done += piece;
	}
	idd_fetch_set_deadline(old_deadline);
	return rc;
}

int idd_export_extents(idd_export *e, uint64_t off, uint64_t len, idd_extent_fn fn, void *ctx,
                       idd_error *err)
{
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > e->size)
		return idd_fail_code(err, IDD_EPERM, "%s: range past the end", e->id);
	if (!len)
		return IDD_OK;
	uint32_t bs = e->bs;
	size_t si = idd_map_span_index(e->m, off / bs);
	uint64_t pos = off;
	while (pos < end && si < e->m->nruns) {
		const idd_map_span *sp = &e->m->runs[si];
		bool zero = sp->kind == IDD_RUN_ZERO;
		/* merge neighbouring spans of the same kind */
		size_t sj = si + 1;
		while (sj < e->m->nruns && (e->m->runs[sj].kind == IDD_RUN_ZERO) == zero)
			sj++;
		uint64_t span_end = IDD_MIN((e->m->runs[sj - 1].block + e->m->runs[sj - 1].count) * bs, e->size);
		uint64_t stop = IDD_MIN(span_end, end);
		if (stop > pos && fn(ctx, pos, stop - pos, zero))
			return idd_fail(err, "%s: extent callback failed", e->id);
		pos = stop;
		si = sj;
	}
	return IDD_OK;
}

uint64_t idd_export_size(const idd_export *e) { return e->size; }
uint32_t idd_export_block_size(const idd_export *e) { return e->bs; }

/* ---- background work ---- */

/* Guest reads first: background work waits while they run. */
static void yield_to_guest(idd_export *e)
{
	while (!atomic_load(&e->srv->stop) &&
	       (atomic_load(&e->active_reads) > 0 ||
	        idd_now_ns() - atomic_load(&e->last_read_ns) < 5 * 1000000)) {
		struct timespec ts = {0, 2 * 1000000};
		nanosleep(&ts, NULL);
	}
}

static void *prefetch_main(void *arg)
{
	idd_export *e = arg;
	idd_error err;
	for (size_t i = 0; i < e->nprefetch && !atomic_load(&e->srv->stop);) {
		/* runs of consecutive blocks in profile order, up to 64 */
		size_t j = i + 1;
		while (j < e->nprefetch && j - i < 64 && e->prefetch[j] == e->prefetch[j - 1] + 1)
			j++;
		if (serve_access_range(e, e->prefetch[i] * e->bs,
		                 IDD_MIN((uint64_t)(j - i) * e->bs, e->size - e->prefetch[i] * e->bs), NULL,
		                 false, false, false, &err))
			idd_warnf(e->srv->o.warn, e->srv->o.ctx, "warning: %s: prefetch: %s", e->id, err.msg);
		i = j;
	}
	return NULL;
}

/* Every non-zero block into the partial file; then it is the complete
 * image, as deploy would have left it. */
static int fill_window(idd_export *e, const uint64_t *blocks, size_t n, unsigned char *buf,
                       idd_block_req *reqs, idd_error *err)
{
	for (size_t i = 0; i < n; i++) {
		uint64_t b = blocks[i];
		uint32_t ref = idd_map_ref(e->m, b);
		reqs[i] = (idd_block_req){.digest = e->m->digests[ref - 1], .block = b,
		                          .len = (uint32_t)IDD_MIN((uint64_t)e->bs, e->size - b * e->bs),
		                          .buf = buf + i * e->bs, .status = IDD_ENOENT, .origin_fd = -1};
	}
	idd_block_source *cs = e->srv->cache_src;
	int rc = cs->ops->read(cs, reqs, n, err);
	size_t nf = 0;
	for (size_t i = 0; !rc && i < n; i++) {
		if (reqs[i].status == IDD_OK) {
			rc = serve_store_block(e, reqs[i].block, &reqs[i].digest, reqs[i].buf, err);
			continue;
		}
		idd_block_req t = reqs[i];
		reqs[i] = reqs[nf];
		reqs[nf++] = t;
	}
	if (!rc && nf)
		rc = serve_fetch_blocks(e, reqs, nf, false, NULL, err);
	for (size_t i = 0; !rc && i < nf; i++) {
		if (reqs[i].status != IDD_OK)
			return idd_fail_code(err, IDD_ENET, "%s: block at offset %llu could not be had",
			                     e->id, (unsigned long long)(reqs[i].block * e->bs));
		/* every block of the window is written, also one serve_fetch_blocks
		 * stored already: a repeat of the same content, or a block being
		 * repaired, is written only here */
		rc = serve_store_block(e, reqs[i].block, &reqs[i].digest, reqs[i].buf, err);
	}
	return rc;
}

struct block_list {
	uint64_t *v;
	size_t n, cap;
};

static int list_block(void *ctx, uint64_t block)
{
	struct block_list *l = ctx;
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 256;
		uint64_t *nv = realloc(l->v, nc * sizeof *nv);
		if (!nv)
			return IDD_ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n++] = block;
	return IDD_OK;
}

/* Nothing is the complete image before every block of it was checked
 * against the map: blocks that do not match (the journal is only a hint)
 * are had again, verified, and written, and the file is checked again. */
static int check_and_repair(idd_export *e, int fd, const char *path, unsigned char *buf,
                            idd_block_req *reqs, idd_error *err)
{
	for (int round = 0; round < 3 && !atomic_load(&e->srv->stop); round++) {
		yield_to_guest(e);
		struct block_list bad = {0};
		int rc = idd_image_check(fd, path, e->m, list_block, &bad, err);
		if (rc == IDD_ENOMEM)
			idd_fail_code(err, rc, "out of memory");
		if (!rc && bad.n)
			idd_warnf(e->srv->o.warn, e->srv->o.ctx, "warning: %s: %zu blocks of %s do not match the "
			          "block map; fetching them again", e->id, bad.n, path);
		for (size_t i = 0; !rc && i < bad.n && !atomic_load(&e->srv->stop); i += FILL_WINDOW) {
			yield_to_guest(e);
			rc = fill_window(e, bad.v + i, IDD_MIN((size_t)FILL_WINDOW, bad.n - i), buf, reqs, err);
		}
		size_t nbad = bad.n;
		free(bad.v);
		if (rc || !nbad)
			return rc;
	}
	return atomic_load(&e->srv->stop) ? IDD_OK
	       : idd_fail_code(err, IDD_EIO, "%s: does not match the block map even after repair", path);
}

static int finish_fill(idd_export *e, unsigned char *buf, idd_block_req *reqs, idd_error *err)
{
	idd_server *s = e->srv;
	pthread_mutex_lock(&e->part_lock);
	int rc = serve_partial_open_locked(e, err);
	int fd = rc ? -1 : e->part->data_fd;
	const char *path = rc ? NULL : e->part->data_path;
	pthread_mutex_unlock(&e->part_lock);
	if (!rc)
		rc = check_and_repair(e, fd, path, buf, reqs, err);
	if (rc || atomic_load(&s->stop))
		return rc;
	pthread_mutex_lock(&e->part_lock);
	size_t flushed;
	rc = idd_partial_flush(e->part, &flushed, err);
	if (!rc)
		rc = idd_partial_sync(e->part, err);
	struct stat st;
	if (!rc && lstat(e->final_path, &st) == 0)
		rc = idd_fail_code(err, IDD_EPERM, "%s: exists: the filled image stays partial",
		                   e->final_path);
	if (!rc && rename(e->part->data_path, e->final_path))
		rc = idd_fail_errno(err, e->final_path, "cannot rename the filled image into place");
	if (!rc) {
		char *dir = idd_path_join(s->cache->dir, IDD_CACHE_IMAGES, err);
		rc = dir ? idd_fsync_dir(dir, err) : IDD_ENOMEM;
		free(dir);
	}
	if (!rc)
		rc = idd_cache_register(s->cache, e->final_path, e->m, err);
	if (!rc) {
		unlink(e->part->journal_path);
		e->complete = true;
		atomic_fetch_add(&s->exports_complete, 1);
	}
	pthread_mutex_unlock(&e->part_lock);
	return rc;
}

static void *fill_main(void *arg)
{
	idd_export *e = arg;
	idd_error err;
	unsigned char *buf = malloc((size_t)FILL_WINDOW * e->bs);
	idd_block_req *reqs = calloc(FILL_WINDOW, sizeof *reqs);
	uint64_t *blocks = calloc(FILL_WINDOW, sizeof *blocks);
	int rc = (!buf || !reqs || !blocks) ? IDD_ENOMEM : IDD_OK;
	if (rc)
		snprintf(err.msg, sizeof err.msg, "out of memory");
	for (size_t si = 0; !rc && si < e->m->nruns && !atomic_load(&e->srv->stop); si++) {
		const idd_map_span *sp = &e->m->runs[si];
		if (sp->kind == IDD_RUN_ZERO)
			continue;
		size_t n = 0;
		for (uint64_t b = sp->block; !rc && b < sp->block + sp->count; b++) {
			pthread_mutex_lock(&e->part_lock);
			bool have = idd_u64set_has(&e->own, b);
			pthread_mutex_unlock(&e->part_lock);
			if (!have)
				blocks[n++] = b;
			if (n == FILL_WINDOW || (n && b + 1 == sp->block + sp->count)) {
				yield_to_guest(e);
				if (atomic_load(&e->srv->stop))
					break;
				rc = fill_window(e, blocks, n, buf, reqs, &err);
				n = 0;
			}
		}
	}
	if (!rc && !atomic_load(&e->srv->stop))
		rc = finish_fill(e, buf, reqs, &err);
	if (rc)
		idd_warnf(e->srv->o.warn, e->srv->o.ctx, "warning: %s: --fill stopped: %s", e->id, err.msg);
	free(buf);
	free(reqs);
	free(blocks);
	return NULL;
}

/* The complete image lacked blocks (damaged behind serve's back, or written
 * for an older map of the image): all of it is checked against the map,
 * what does not match is had again and written in place, and it is
 * registered anew, so that the next run finds it whole. */
static void *repair_main(void *arg)
{
	idd_export *e = arg;
	idd_server *s = e->srv;
	idd_error err = {{0}, 0};
	unsigned char *buf = malloc((size_t)FILL_WINDOW * e->bs);
	idd_block_req *reqs = calloc(FILL_WINDOW, sizeof *reqs);
	int rc = (!buf || !reqs) ? idd_fail_code(&err, IDD_ENOMEM, "out of memory") : IDD_OK;
	pthread_mutex_lock(&e->part_lock);
	int fd = e->repair_fd;
	pthread_mutex_unlock(&e->part_lock);
	atomic_store(&e->repair_wanted, false);
	yield_to_guest(e);
	if (!rc)
		rc = check_and_repair(e, fd, e->final_path, buf, reqs, &err);
	if (!rc && !atomic_load(&s->stop)) {
		if (fdatasync(fd))
			rc = idd_fail_errno(&err, e->final_path, "fsync");
		if (!rc)
			rc = idd_cache_register(s->cache, e->final_path, e->m, &err);
		if (!rc)
			rc = idd_cache_adopt(s->cache, e->final_path, e->m, &err);
	}
	if (rc)
		idd_warnf(s->o.warn, s->o.ctx, "warning: %s: repairing the cached image stopped: %s", e->id,
		          err.msg);
	free(buf);
	free(reqs);
	return NULL;
}

void serve_start_export_threads(idd_export *e)
{
	idd_server *s = e->srv;
	if (e->nprefetch && !e->prefetch_started)
		e->prefetch_started = !pthread_create(&e->prefetch_thread, NULL, prefetch_main, e);
	if (s->o.fill && !e->fill_started && !e->complete)
		e->fill_started = !pthread_create(&e->fill_thread, NULL, fill_main, e);
}

void serve_flush_all(idd_server *s)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		pthread_mutex_lock(&e->part_lock);
		size_t n;
		idd_error err;
		bool failed = e->part && !e->complete && idd_partial_flush(e->part, &n, &err);
		if (atomic_load(&e->repair_wanted) && !e->fill_started && !atomic_load(&s->stop))
			e->fill_started = !pthread_create(&e->fill_thread, NULL, repair_main, e);
		pthread_mutex_unlock(&e->part_lock);
		if (failed) /* those blocks are served, and fetched again by the next run */
			serve_cache_write_failed(e, &err);
	}
	pthread_mutex_unlock(&s->lock);
}

void *serve_flusher_main(void *arg)
{
	idd_server *s = arg;
	pthread_mutex_lock(&s->flush_lock);
	while (!atomic_load(&s->stop)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += FLUSH_MS * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&s->flush_wake, &s->flush_lock, &ts);
		pthread_mutex_unlock(&s->flush_lock);
		serve_flush_all(s);
		pthread_mutex_lock(&s->flush_lock);
	}
	pthread_mutex_unlock(&s->flush_lock);
	return NULL;
}

/* ---- --cache-max ---- */

/* How often the cache's size is checked against --cache-max. */
#define BUDGET_CHECK_MS 1000

struct kept_paths {
	char **v;
	size_t n;
};

static bool is_kept(void *ctx, const char *path)
{
	const struct kept_paths *k = ctx;
	for (size_t i = 0; i < k->n; i++)
		if (k->v[i] && !strcmp(k->v[i], path))
			return true;
	return false;
}

/* gc's warnings about files in use are expected here (serve's own exports
 * are in use): said once, below, rather than every second */
static void budget_warn(void *ctx, const char *msg)
{
	idd_server *s = ctx;
	if (!strstr(msg, "is in use; kept"))
		idd_warnf(s->o.warn, s->o.ctx, "%s", msg);
}

/* Over --cache-max: cache gc (value policy) with the budget, lent the files
 * this process holds except its exports' own (their partial and complete
 * images).  gc skips what anyone else holds, a deploy's files included; the
 * files it removes are closed here once no read uses them. */
static void keep_under_budget(idd_server *s)
{
	idd_error err;
	/* gc reads the whole cache index: only when it may be due */
	if (idd_cache_disk_upper(s->cache) <= s->o.cache_max)
		return;
	struct kept_paths kept = {0};
	pthread_mutex_lock(&s->lock);
	kept.v = calloc(s->nexports * 2 + 1, sizeof *kept.v);
	for (size_t i = 0; kept.v && i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		pthread_mutex_lock(&e->part_lock);
		kept.v[kept.n++] = strdup(e->final_path);
		kept.v[kept.n++] = e->part ? strdup(e->part->data_path) : NULL;
		pthread_mutex_unlock(&e->part_lock);
	}
	pthread_mutex_unlock(&s->lock);
	if (!kept.v) {
		idd_warnf(s->o.warn, s->o.ctx, "warning: --cache-max: out of memory");
		return;
	}
	for (size_t i = 0; i < kept.n; i += 2)
		if (!kept.v[i]) { /* an export whose files cannot be named: lend nothing */
			kept.n = 0;
			goto out;
		}
	idd_cache_lend_to_gc(s->cache, is_kept, &kept);
	idd_cache_gc_stats st;
	int rc = idd_cache_gc_policy(s->cache->dir, s->o.cache_max, IDD_GC_VALUE, &st, budget_warn, s,
	                             &err);
	size_t closed;
	idd_error e2;
	if (idd_cache_take_back(s->cache, &closed, &e2))
		idd_warnf(s->o.warn, s->o.ctx, "warning: --cache-max: %s", e2.msg);
	if (rc) {
		idd_warnf(s->o.warn, s->o.ctx, "warning: --cache-max: %s", err.msg);
		goto out;
	}
	atomic_fetch_add(&s->cache_evicted, st.images_removed);
	if (st.bytes_after > s->o.cache_max && !s->budget_warned) {
		s->budget_warned = true;
		idd_warnf(s->o.warn, s->o.ctx,
		          "warning: --cache-max: the cache takes %llu bytes, above %llu: the rest is in "
		          "use by the exports or a deploy", (unsigned long long)st.bytes_after,
		          (unsigned long long)s->o.cache_max);
	}
out:
	for (size_t i = 0; i < kept.n; i++)
		free(kept.v[i]);
	free(kept.v);
}

void *serve_budget_main(void *arg)
{
	idd_server *s = arg;
	pthread_mutex_lock(&s->flush_lock);
	while (!atomic_load(&s->stop)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += BUDGET_CHECK_MS / 1000;
		pthread_cond_timedwait(&s->flush_wake, &s->flush_lock, &ts);
		if (atomic_load(&s->stop))
			break;
		pthread_mutex_unlock(&s->flush_lock);
		keep_under_budget(s);
		pthread_mutex_lock(&s->flush_lock);
	}
	pthread_mutex_unlock(&s->flush_lock);
	return NULL;
}

/* ---- exports ---- */

static void counters_add(struct read_counters *to, struct read_counters *from)
{
	atomic_uint_least64_t *t[] = {&to->reads, &to->bytes_read, &to->bytes_zero,
	                              &to->bytes_from_cache, &to->blocks_filled, &to->read_errors,
	                              &to->cache_write_errors, &to->fetch_errors};
	atomic_uint_least64_t *f[] = {&from->reads, &from->bytes_read, &from->bytes_zero,
	                              &from->bytes_from_cache, &from->blocks_filled, &from->read_errors,
	                              &from->cache_write_errors, &from->fetch_errors};
	for (size_t i = 0; i < IDD_ARRAY_LEN(t); i++)
		atomic_fetch_add(t[i], atomic_load(f[i]));
}

void serve_export_free(idd_export *e)
{
	if (!e)
		return;
	if (e->part) {
		size_t n;
		idd_error err;
		if (!e->complete && idd_partial_flush(e->part, &n, &err))
			serve_cache_write_failed(e, &err);
		idd_partial_close(e->part);
	}
	if (e->repair_fd >= 0) {
		if (fdatasync(e->repair_fd))
			idd_warnf(e->srv->o.warn, e->srv->o.ctx, "warning: %s: fsync: %s", e->final_path,
			          strerror(errno));
		close(e->repair_fd);
	}
	idd_block_source *fetchers[] = {e->remote, e->pack};
	for (size_t i = 0; i < IDD_ARRAY_LEN(fetchers); i++) {
		idd_block_source_counters c = {0};
		idd_block_source_counters_get(fetchers[i], &c);
		atomic_fetch_add(&e->srv->closed_fetched, c.bytes);
		atomic_fetch_add(&e->srv->closed_requests, c.requests);
	}
	counters_add(&e->srv->closed, &e->c);
	idd_block_source_close(e->pack);
	idd_block_source_close(e->remote);
	idd_map_free(e->m);
	free(e->id);
	free(e->base);
	free(e->final_path);
	free(e->own.v);
	free(e->seen.v);
	free(e->order);
	free(e->inflight);
	idd_negcache_free(&e->failed);
	free(e->prefetch);
	pthread_mutex_destroy(&e->part_lock);
	pthread_mutex_destroy(&e->remote_lock);
	pthread_mutex_destroy(&e->fl_lock);
	pthread_cond_destroy(&e->fl_done);
	pthread_mutex_destroy(&e->ra_lock);
	idd_readahead_destroy(&e->ra_policy);
	pthread_cond_destroy(&e->ra_wake);
	pthread_mutex_destroy(&e->rec_lock);
	free(e);
}

/* The node cache and the peers, for the repository's block size: at the
 * first export (the index says the block size image by image).  Called
 * under s->lock. */
static int prepare_locked(idd_server *s, uint32_t bs, idd_error *err)
{
	if (s->cache_src)
		return IDD_OK;
	int rc = idd_cache_prepare(s->cache, bs, err);
	if (!rc)
		rc = idd_cache_source_open(s->cache, bs, s->o.warn, s->o.ctx, &s->cache_src, err);
	if (!rc && s->npeers) {
		/* peers are a shortcut: failing to open them is a warning */
		idd_fetch_opts pfo = {.warn = s->o.warn, .ctx = s->o.ctx, .cancel = &s->stop};
		idd_error e2;
		serve_progress(s, "reading the peers' cache indexes");
		if (idd_peer_source_open(s->peers, s->npeers, bs, &pfo, s->o.warn, s->o.ctx, &s->peer_src,
		                         &e2))
			idd_warnf(s->o.warn, s->o.ctx, "warning: peers not used: %s", e2.msg);
	}
	return rc;
}

/* Without a profile given, the one the repository publishes for the
 * image, or borrowed from the image most like it: prefetched like one.
 * A profile that cannot be had costs the guest nothing but the prefetch. */
static int published_profile(idd_server *s, idd_export *e)
{
	serve_progress(s, "reading the boot profiles for %s", e->id);
	char *from = NULL;
	idd_error e2;
	int rc = idd_profile_choose(s->ri, e->id, e->m, IDD_PROFILE_CANDIDATES, &e->prefetch,
	                            &e->nprefetch, &from, &e2);
	if (rc == IDD_ENOMEM)
		return rc;
	if (rc)
		idd_warnf(s->o.warn, s->o.ctx, "warning: %s: boot profiles: %s", e->id, e2.msg);
	else if (from) /* said once: which boot this image's guest is expected to repeat */
		idd_warnf(s->o.warn, s->o.ctx, "%s: prefetching %zu blocks of the boot profile of %s",
		          e->id, e->nprefetch, from);
	free(from);
	return IDD_OK;
}

static int export_new(idd_server *s, const char *id, idd_export **out, idd_error *err)
{
	idd_export *e = idd_calloc(1, sizeof *e, err);
	if (!e)
		return IDD_ENOMEM;
	e->srv = s;
	e->repair_fd = -1;
	atomic_init(&e->repair_wanted, false);
	pthread_mutex_init(&e->part_lock, NULL);
	pthread_mutex_init(&e->remote_lock, NULL);
	pthread_mutex_init(&e->fl_lock, NULL);
	pthread_cond_init(&e->fl_done, NULL);
	pthread_mutex_init(&e->ra_lock, NULL);
	idd_readahead_init(&e->ra_policy, READAHEAD_MIN,
	                   s->o.readahead_off ? 0
	                   : s->o.readahead   ? IDD_MIN(s->o.readahead, MAX_READAHEAD)
	                                      : DEFAULT_READAHEAD);
	pthread_cond_init(&e->ra_wake, NULL);
	atomic_init(&e->rate, 0);
	pthread_mutex_init(&e->rec_lock, NULL);
	atomic_init(&e->active_reads, 0);
	atomic_init(&e->last_read_ns, 0);
	atomic_init(&e->warned_cache_write, false);
	atomic_init(&e->warned_changed, false);
	atomic_init(&e->cache_failing, false);
	int rc = (e->id = idd_strdup(id, err)) ? IDD_OK : IDD_ENOMEM;
	if (!rc)
		rc = idd_negcache_init(&e->failed, FAIL_BACKOFF_NS, FAIL_BACKOFF_MAX_NS, err);
	if (!rc) {
		serve_progress(s, "reading the index entry of %s", id);
		rc = idd_remote_index_image(s->ri, id, &e->info, err);
	}
	if (!rc) {
		serve_progress(s, "reading the block map of %s", id);
		rc = idd_remote_index_map(s->ri, e->info, &e->m, err);
	}
	if (!rc)
		rc = prepare_locked(s, e->m->block_size, err);
	if (!rc) {
		e->bs = e->m->block_size;
		e->size = e->m->image_size;
		e->final_path = idd_cache_default_out(s->cache->dir, id, err);
		e->base = e->final_path ? idd_strdup(e->final_path, err) : NULL;
		if (!e->base)
			rc = IDD_ENOMEM;
	}
	if (!rc) {
		char *dir = idd_path_join(s->cache->dir, IDD_CACHE_IMAGES, err);
		rc = dir ? idd_mkdir_p(dir, err) : IDD_ENOMEM;
		free(dir);
	}
	idd_error e2;
	if (!rc && idd_cache_migrate_name(s->cache->dir, s->ri, id, e->m, s->o.warn, s->o.ctx, &e2))
		idd_warnf(s->o.warn, s->o.ctx, "warning: cache: %s", e2.msg);
	struct stat st;
	if (!rc && lstat(e->final_path, &st) == 0) {
		e->complete = true; /* deployed before: every block reads from the cache */
		/* a block of it failing verification is fetched and written back */
		idd_cache_set_rewritable(s->cache, e->final_path);
		idd_partial_remove_unused(e->base);
	}
	if (!rc && !e->complete) {
		/* what an earlier serve of this image, with this very map, fetched */
		int lrc = idd_partial_load(e->base, e->id, e->m, own_record, e, err);
		if (lrc == IDD_ENOMEM)
			rc = lrc;
	}
	for (size_t i = 0; !rc && i < s->pf.n; i++) {
		if (strcmp(s->pf.ids[i], id) || s->pf.blocks[i] >= e->m->nblocks)
			continue;
		uint64_t *nv = realloc(e->prefetch, (e->nprefetch + 1) * sizeof *nv);
		if (!nv) {
			rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
			break;
		}
		e->prefetch = nv;
		e->prefetch[e->nprefetch++] = s->pf.blocks[i];
	}
	if (!rc && !e->complete && !e->nprefetch && !s->o.no_profile)
		rc = published_profile(s, e);
	if (rc) {
		serve_export_free(e);
		return rc;
	}
	*out = e;
	return IDD_OK;
}

/* --all: an image replaced under the same id is still served as it was
 * opened (its block map is read once); said once per export. */
static void warn_if_changed(idd_export *e)
{
	idd_digest now;
	if (!e->srv->o.all || !idd_remote_index_catalog_key(e->srv->ri, e->id, &now) ||
	    !memcmp(now.b, e->info->list_key.b, IDD_DIGEST_SIZE) ||
	    atomic_exchange(&e->warned_changed, true))
		return;
	idd_warnf(e->srv->o.warn, e->srv->o.ctx,
	          "warning: %s changed in the repository since it was first opened: it is served as it "
	          "was until the service restarts (blocks no longer in SOURCE fail)", e->id);
}

int idd_export_open(idd_server *s, const char *id, idd_export **out, idd_error *err)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nexports; i++)
		if (!strcmp(s->exports[i]->id, id)) {
			*out = s->exports[i];
			pthread_mutex_unlock(&s->lock);
			warn_if_changed(*out);
			return IDD_OK;
		}
	idd_export *e;
	int rc = export_new(s, id, &e, err);
	if (!rc) {
		idd_export **nv = realloc(s->exports, (s->nexports + 1) * sizeof *nv);
		if (!nv) {
			serve_export_free(e);
			rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
		} else {
			s->exports = nv;
			s->exports[s->nexports++] = e;
			if (s->started)
				serve_start_export_threads(e);
			*out = e;
		}
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* Exports stay open until the server closes: a guest reconnecting finds
 * its in-flight state, and --fill carries on between connections. */
void idd_export_close(idd_export *e)
{
	(void)e;
}

/* ---- --all: the catalog's images ---- */

#define DEFAULT_REFRESH_S 30

/* Re-read the catalog if it is due: checked at most every refresh_s, by
 * one thread at a time; the others meanwhile answer from the catalog read
 * before (a source that is slow or down holds up no connection but the
 * one that checks). */
static void catalog_current(idd_server *s)
{
	int64_t every = s->o.refresh_s == IDD_REFRESH_ALWAYS ? 0
	                : (s->o.refresh_s > 0 ? s->o.refresh_s : DEFAULT_REFRESH_S) * (int64_t)1000000000;
	pthread_mutex_lock(&s->cat_lock);
	bool due = !s->cat_checking && idd_now_ns() - s->cat_checked_ns >= every;
	if (due)
		s->cat_checking = true;
	pthread_mutex_unlock(&s->cat_lock);
	if (!due)
		return;
	idd_error e2;
	if (idd_remote_index_catalog_refresh(s->ri, NULL, &e2))
		idd_warnf(s->o.warn, s->o.ctx, "warning: the catalog was not re-read: %s", e2.msg);
	pthread_mutex_lock(&s->cat_lock);
	/* a failure waits for the next check too: a source that is down is
	 * not asked at every connection */
	s->cat_checked_ns = idd_now_ns();
	s->cat_checking = false;
	pthread_mutex_unlock(&s->cat_lock);
}

int idd_server_list_images(idd_server *s, idd_id_fn fn, void *ctx, idd_error *err)
{
	if (!s->o.all)
		return idd_fail(err, "serve: the catalog's images are listed only with --all");
	catalog_current(s);
	return idd_remote_index_catalog_ids(s->ri, fn, ctx);
}

int idd_server_find_image(idd_server *s, const char *id, idd_error *err)
{
	if (s->o.all) {
		catalog_current(s);
		if (idd_remote_index_catalog_has(s->ri, id))
			return IDD_OK;
	}
	/* the name is the client's: quoted with a bound, never used as a path */
	return idd_fail_code(err, IDD_ENOENT, "%s: no image '%.200s%s' in the catalog",
	                     idd_source_root(s->ri->src), id, strlen(id) > 200 ? "..." : "");
}

/* ---- the server ---- */

static int keep_string(idd_server *s, const char **field, idd_error *err)
{
	if (!*field)
		return IDD_OK;
	char **nv = realloc(s->strings, (s->nstrings + 1) * sizeof *nv);
	if (!nv)
		return idd_fail_code(err, IDD_ENOMEM, "out of memory");
	s->strings = nv;
	char *c = idd_strdup(*field, err);
	if (!c)
		return IDD_ENOMEM;
	s->strings[s->nstrings++] = c;
	*field = c;
	return IDD_OK;
}

static int write_profile(idd_server *s, idd_error *err)
{
	idd_profile_writer w;
	int rc = idd_profile_writer_begin(&w, err);
	for (size_t i = 0; !rc && i < s->nexports; i++) {
		/* reads may still be recording (idd_server_checkpoint) */
		pthread_mutex_lock(&s->exports[i]->rec_lock);
		rc = idd_profile_writer_add(&w, s->exports[i]->id, s->exports[i]->m,
		                            s->exports[i]->order, s->exports[i]->norder, err);
		pthread_mutex_unlock(&s->exports[i]->rec_lock);
	}
	if (!rc)
		rc = idd_profile_writer_commit(&w, s->o.record, err);
	idd_profile_writer_free(&w);
	return rc;
}

int idd_server_open(const idd_serve_opts *o, idd_server **out, idd_error *err)
{
	if (!o->source || !o->cache_dir)
		return idd_fail(err, "serve: SOURCE and the cache directory are required");
	idd_server *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return IDD_ENOMEM;
	s->o = *o;
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->cat_lock, NULL);
	pthread_mutex_init(&s->flush_lock, NULL);
	pthread_cond_init(&s->flush_wake, NULL);
	pthread_mutex_init(&s->mem_lock, NULL);
	pthread_cond_init(&s->mem_freed, NULL);
	s->mem_budget = o->read_memory_budget ? o->read_memory_budget : READ_MEMORY_BUDGET;
	atomic_init(&s->stop, false);
	atomic_init(&s->last_refresh_ns, 0);
	int rc = IDD_OK;
	const char **fields[] = {&s->o.source, &s->o.index, &s->o.cache_dir, &s->o.record,
	                         &s->o.prefetch};
	for (size_t i = 0; !rc && i < IDD_ARRAY_LEN(fields); i++)
		rc = keep_string(s, fields[i], err);
	s->o.peers = NULL; /* kept in s->peers */
	s->o.n_peers = 0;
	idd_fetch_opts fo = {.connections = o->connections, .timeout_s = o->timeout_s, .warn = o->warn,
	                     .ctx = o->ctx, .cancel = &s->stop};
	if (s->o.read_timeout_s <= 0)
		s->o.read_timeout_s = READ_TIMEOUT_S;
	if (!rc) {
		serve_progress(s, "opening the index of %s", s->o.index ? s->o.index : s->o.source);
		rc = idd_remote_index_open(s->o.source, s->o.index, &fo, &s->ri, err);
	}
	if (!rc) {
		serve_progress(s, "opening the cache %s", s->o.cache_dir);
		rc = idd_cache_open(s->o.cache_dir, o->warn, o->ctx, &s->cache, err);
	}
	if (!rc && s->o.all) {
		serve_progress(s, "reading the catalog of %s", s->o.index ? s->o.index : s->o.source);
		rc = idd_remote_index_catalog_refresh(s->ri, NULL, err);
		s->cat_checked_ns = idd_now_ns();
	}
	if (!rc && s->o.prefetch)
		rc = idd_profile_load(s->o.prefetch, &s->pf, err);
	/* the peers' addresses, for when the block size is known */
	for (size_t i = 0; !rc && i < o->n_peers; i++) {
		const char *p = o->peers[i];
		if (!(rc = keep_string(s, &p, err))) {
			const char **nv = realloc(s->peers, (i + 1) * sizeof *nv);
			if (!nv)
				rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
			else {
				s->peers = nv;
				s->peers[i] = p;
				s->npeers = i + 1;
			}
		}
	}
	if (rc) {
		idd_server_close(s);
		return rc;
	}
	*out = s;
	return IDD_OK;
}

int idd_server_start(idd_server *s, idd_error *err)
{
	pthread_mutex_lock(&s->lock);
	int rc = IDD_OK;
	if (!s->started) {
		if (pthread_create(&s->flusher, NULL, serve_flusher_main, s))
			rc = idd_fail_code(err, IDD_ENOMEM, "cannot start the flusher thread");
		else {
			s->started = true;
			for (size_t i = 0; i < s->nexports; i++)
				serve_start_export_threads(s->exports[i]);
			if (s->o.cache_max)
				s->budget_started = !pthread_create(&s->budget, NULL, serve_budget_main, s);
			if (s->o.cache_max && !s->budget_started)
				idd_warnf(s->o.warn, s->o.ctx,
				          "warning: --cache-max: cannot start its thread: the cache is not kept "
				          "under it");
		}
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

/* How long idd_server_checkpoint lets a readahead in serve_progress finish: one
 * is sized to about a second of the source's recent speed. */
#define CHECKPOINT_RA_WAIT_NS (3 * 1000000000LL)

int idd_server_checkpoint(idd_server *s, idd_error *err)
{
	/* what the readahead is fetching, or was asked for, would otherwise be
	 * lost, and fetched again by the next run */
	atomic_store(&s->quiesce, true);
	int64_t until = idd_mono_ns() + CHECKPOINT_RA_WAIT_NS;
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		pthread_mutex_lock(&e->ra_lock);
		while ((e->ra_busy || (e->ra_queued && e->ra_started)) && idd_mono_ns() < until) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += 50 * 1000000L;
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&e->ra_wake, &e->ra_lock, &ts);
		}
		pthread_mutex_unlock(&e->ra_lock);
		/* a request that answered a read goes on receiving the blocks
		 * read ahead behind it, and stores them */
		for (;;) {
			pthread_mutex_lock(&e->fl_lock);
			size_t n = e->ninflight;
			pthread_mutex_unlock(&e->fl_lock);
			if (!n || idd_mono_ns() >= until)
				break;
			struct timespec ts = {0, 20 * 1000000L};
			nanosleep(&ts, NULL);
		}
	}
	pthread_mutex_unlock(&s->lock);
	if (s->started)
		serve_flush_all(s);
	for (size_t i = 0; i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		pthread_mutex_lock(&e->part_lock);
		if (e->repair_fd >= 0 && fdatasync(e->repair_fd))
			idd_warnf(s->o.warn, s->o.ctx, "warning: %s: fsync: %s", e->final_path, strerror(errno));
		pthread_mutex_unlock(&e->part_lock);
	}
	return s->o.record ? write_profile(s, err) : IDD_OK;
}

/* An export's counters into em, added to the totals in m (st: the
 * idd_serve_stats part).  Called under s->lock. */
static void export_snapshot(idd_export *e, idd_export_metrics *em, idd_serve_metrics *m)
{
	idd_serve_stats *st = &m->total;
	em->reads = atomic_load(&e->c.reads);
	em->bytes_read = atomic_load(&e->c.bytes_read);
	em->bytes_zero = atomic_load(&e->c.bytes_zero);
	em->bytes_from_cache = atomic_load(&e->c.bytes_from_cache);
	em->blocks_filled = atomic_load(&e->c.blocks_filled);
	em->read_errors = atomic_load(&e->c.read_errors);
	em->cache_write_errors = atomic_load(&e->c.cache_write_errors);
	em->fetch_errors = atomic_load(&e->c.fetch_errors);
	pthread_mutex_lock(&e->remote_lock);
	idd_block_source_counters pc = {0}, rc = {0};
	idd_block_source_counters_get(e->pack, &pc);
	idd_block_source_counters_get(e->remote, &rc);
	pthread_mutex_unlock(&e->remote_lock);
	em->bytes_from_pack = pc.bytes;
	em->bytes_from_repository = rc.bytes;
	em->requests = pc.requests + rc.requests;
	em->verify_failures_pack = pc.damaged;
	em->verify_failures_repository = rc.damaged;
	pthread_mutex_lock(&e->fl_lock);
	em->fetches_in_flight = e->ninflight;
	pthread_mutex_unlock(&e->fl_lock);
	pthread_mutex_lock(&e->part_lock);
	em->complete = e->complete;
	pthread_mutex_unlock(&e->part_lock);
	idd_latency_get(&e->read_ns, &em->read_latency);
	idd_latency_get(&e->fetch_ns, &em->fetch_latency);

	st->reads += em->reads;
	st->bytes_read += em->bytes_read;
	st->bytes_zero += em->bytes_zero;
	st->bytes_from_cache += em->bytes_from_cache;
	st->blocks_filled += em->blocks_filled;
	st->read_errors += em->read_errors;
	st->cache_write_errors += em->cache_write_errors;
	st->bytes_fetched += em->bytes_from_pack + em->bytes_from_repository;
	st->requests += em->requests;
	m->bytes_from_pack += em->bytes_from_pack;
	m->bytes_from_repository += em->bytes_from_repository;
	m->fetch_errors += em->fetch_errors;
	m->fetches_in_flight += em->fetches_in_flight;
	m->verify_failures_pack += em->verify_failures_pack;
	m->verify_failures_repository += em->verify_failures_repository;
	idd_latency_add(&m->read_latency, &em->read_latency);
	idd_latency_add(&m->fetch_latency, &em->fetch_latency);
}

/* Every counter at one moment: idd_server_stats and idd_server_metrics
 * read the same ones.  with_exports: m->exports filled (else left NULL). */
static int snapshot(idd_server *s, idd_serve_metrics *m, bool with_exports, idd_error *err)
{
	memset(m, 0, sizeof *m);
	idd_serve_stats *st = &m->total;
	int rc = IDD_OK;
	st->exports_complete = atomic_load(&s->exports_complete);
	st->cache_evicted = atomic_load(&s->cache_evicted);
	/* exports closed already (their fetch counters are in closed_fetched) */
	idd_export_metrics closed = {0};
	struct read_counters *c = &s->closed;
	st->reads = atomic_load(&c->reads);
	st->bytes_read = atomic_load(&c->bytes_read);
	st->bytes_zero = atomic_load(&c->bytes_zero);
	st->bytes_from_cache = atomic_load(&c->bytes_from_cache);
	st->blocks_filled = atomic_load(&c->blocks_filled);
	st->read_errors = atomic_load(&c->read_errors);
	st->cache_write_errors = atomic_load(&c->cache_write_errors);
	m->fetch_errors = atomic_load(&c->fetch_errors);
	st->bytes_fetched = atomic_load(&s->closed_fetched);
	st->requests = atomic_load(&s->closed_requests);
	/* what closed exports fetched is not split by origin any more */
	m->bytes_from_repository = st->bytes_fetched;
	if (s->ri) {
		idd_fetch_stats fs;
		idd_remote_index_fetch_stats(s->ri, &fs);
		st->requests += fs.requests;
	}
	if (s->cache) {
		st->cache_damaged = idd_cache_damaged_count(s->cache);
		if (with_exports)
			idd_cache_usage(s->cache, &m->cache_bytes, &m->partial_images);
	}
	pthread_mutex_lock(&s->lock);
	if (s->cache_src)
		m->verify_failures_cache = atomic_load(&s->cache_src->damaged);
	if (s->peer_src) {
		idd_block_source_counters pc;
		idd_block_source_counters_get(s->peer_src, &pc);
		st->bytes_from_peers = pc.bytes;
		st->requests += pc.requests;
		m->verify_failures_peer = pc.damaged;
	}
	if (with_exports && s->nexports) {
		m->exports = idd_calloc(s->nexports, sizeof *m->exports, err);
		if (!m->exports)
			rc = IDD_ENOMEM;
	}
	for (size_t i = 0; !rc && i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		idd_export_metrics *em = m->exports ? &m->exports[i] : &closed;
		if (m->exports) {
			if (!(em->id = idd_strdup(e->id, err))) {
				rc = IDD_ENOMEM;
				break;
			}
			m->n_exports = i + 1;
		}
		export_snapshot(e, em, m);
	}
	pthread_mutex_unlock(&s->lock);
	if (rc)
		idd_serve_metrics_free(m);
	return rc;
}

void idd_server_stats(idd_server *s, idd_serve_stats *st)
{
	idd_serve_metrics m;
	(void)snapshot(s, &m, false, NULL); /* without the exports' list nothing can fail */
	*st = m.total;
}

int idd_server_metrics(idd_server *s, idd_serve_metrics *m, idd_error *err)
{
	return snapshot(s, m, true, err);
}

void idd_serve_metrics_free(idd_serve_metrics *m)
{
	for (size_t i = 0; i < m->n_exports; i++)
		free(m->exports[i].id);
	free(m->exports);
	m->exports = NULL;
	m->n_exports = 0;
}

void idd_server_stop(idd_server *s)
{
	if (!s)
		return;
	atomic_store(&s->stop, true);
	/* wake whatever waits: fetches end by themselves (the sources' cancel
	 * flag is s->stop) */
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		pthread_mutex_lock(&e->fl_lock);
		pthread_cond_broadcast(&e->fl_done);
		pthread_mutex_unlock(&e->fl_lock);
		pthread_mutex_lock(&e->ra_lock);
		pthread_cond_broadcast(&e->ra_wake);
		pthread_mutex_unlock(&e->ra_lock);
	}
	pthread_mutex_unlock(&s->lock);
	pthread_mutex_lock(&s->flush_lock);
	pthread_cond_broadcast(&s->flush_wake);
	pthread_mutex_unlock(&s->flush_lock);
}

void idd_server_close(idd_server *s)
{
	if (!s)
		return;
	idd_server_stop(s);
	if (s->started) {
		pthread_mutex_lock(&s->flush_lock);
		pthread_cond_broadcast(&s->flush_wake);
		pthread_mutex_unlock(&s->flush_lock);
		pthread_join(s->flusher, NULL);
		if (s->budget_started)
			pthread_join(s->budget, NULL);
	}
	for (size_t i = 0; i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		if (e->prefetch_started)
			pthread_join(e->prefetch_thread, NULL);
		if (e->fill_started)
			pthread_join(e->fill_thread, NULL);
		if (e->ra_started)
			pthread_join(e->ra_thread, NULL);
	}
	if (s->o.record) {
		idd_error err;
		if (write_profile(s, &err))
			idd_warnf(s->o.warn, s->o.ctx, "warning: --record: %s", err.msg);
	}
	for (size_t i = 0; i < s->nexports; i++)
		serve_export_free(s->exports[i]);
	free(s->exports);
	idd_block_source_close(s->cache_src);
	idd_block_source_close(s->peer_src);
	idd_cache_close(s->cache);
	idd_remote_index_close(s->ri);
	idd_profile_free(&s->pf);
	for (size_t i = 0; i < s->nstrings; i++)
		free(s->strings[i]);
	free(s->strings);
	free(s->peers);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->cat_lock);
	pthread_mutex_destroy(&s->flush_lock);
	pthread_cond_destroy(&s->flush_wake);
	pthread_mutex_destroy(&s->mem_lock);
	pthread_cond_destroy(&s->mem_freed);
	free(s);
}

int idd_server_estimate(idd_server *s, const char *const *images, size_t n, uint64_t bandwidth,
                        idd_image_estimate **out, idd_error *err)
{
	idd_estimate_opts o = {.source = s->o.source, .index = s->o.index, .cache_dir = s->o.cache_dir,
	                       .images = images, .n_images = n, .bandwidth = bandwidth,
	                       .no_pack = s->o.no_pack, .connections = s->o.connections,
	                       .timeout_s = s->o.timeout_s, .warn = s->o.warn, .ctx = s->o.ctx};
	return idd_cache_estimate(&o, out, err);
}
