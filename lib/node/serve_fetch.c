/* serve_fetch.c - fetching the blocks the cache does not hold: from the
 * peers, SOURCE's pack, then SOURCE's image; each digest once across
 * threads (the in-flight list, under fl_lock); a block that failed is
 * barred for a while (negcache.h); the source's recent rate sizes the
 * readahead. */
#include "node/serve_internal.h"
#include "base/file.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static int ensure_remote(idd_export *e, idd_error *err)
{
	pthread_mutex_lock(&e->remote_lock);
	int rc = IDD_OK;
	if (!e->fetch.remote) {
		idd_server *s = e->srv;
		char *tmp = idd_path_join(s->cache->dir, IDD_CACHE_IMAGES, err);
		/* the pack means fewer bytes when SOURCE has one; trouble with it
		 * is a warning and the image is read instead */
		idd_fetch_sources_opts fo = {.shared_peer = s->peer_src, .no_pack = s->o.node.no_pack,
		                             .connections = s->o.node.connections, .timeout_s = s->o.node.timeout_s,
		                             .tmp_dir = tmp, .readers = REMOTE_READERS, .cancel = &s->stop,
		                             .name = e->id, .warn = s->o.node.warn, .ctx = s->o.node.ctx};
		rc = tmp ? idd_fetch_sources_open(&e->fetch, s->ri, e->info, e->m, &fo, err) : IDD_ENOMEM;
		free(tmp);
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
		idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx, "warning: %s: %s", e->id, e2.msg);
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
			idd_fetch_sources_chain(&e->fetch, &chain);
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
