/* serve_read.c - a client's read: block by block from the cache, the
 * misses fetched, verified and kept; the server-wide budget of read
 * buffers; --record's order of first reads; extents. */
#include "node/serve_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void maybe_refresh(idd_server *s)
{
	int64_t now = idd_now_ns(), last = atomic_load(&s->last_refresh_ns);
	if (now - last < REFRESH_NS ||
	    !atomic_compare_exchange_strong(&s->last_refresh_ns, &last, now))
		return;
	idd_error e2;
	if (idd_cache_refresh(s->cache, &e2))
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: cache: %s", e2.msg);
}


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
	idd_workq_guest_begin(e->bg);
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
			idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: %s: out of memory recording the read order", e->id);
	}
	idd_workq_guest_end(e->bg);
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
