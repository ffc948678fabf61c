/* serve_background.c - an export's background work: --prefetch, --fill
 * (every block, then the complete image put in place), the repair of a
 * complete image that lacked a block, and the flusher that makes fetched
 * data durable and journals it.  Guest reads go first. */
#include "node/serve_internal.h"
#include "base/file.h"
#include "index/indexfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* Guest reads first: background work waits while they run, and for a
 * moment after (workq.h). */
static void yield_to_guest(idd_export *e)
{
	(void)idd_workq_yield(e->bg);
}

static void prefetch_main(void *arg)
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
			idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx, "warning: %s: prefetch: %s", e->id, err.msg);
		i = j;
	}
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
			idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx, "warning: %s: %zu blocks of %s do not match the "
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

static void fill_main(void *arg)
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
		idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx, "warning: %s: --fill stopped: %s", e->id, err.msg);
	free(buf);
	free(reqs);
	free(blocks);
}

/* The complete image lacked blocks (damaged behind serve's back, or written
 * for an older map of the image): all of it is checked against the map,
 * what does not match is had again and written in place, and it is
 * registered anew, so that the next run finds it whole. */
static void repair_main(void *arg)
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
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: %s: repairing the cached image stopped: %s", e->id,
		          err.msg);
	free(buf);
	free(reqs);
}

void serve_start_export_threads(idd_export *e)
{
	idd_server *s = e->srv;
	idd_error err; /* only a stopping queue refuses work */
	if (e->nprefetch && !e->prefetch_started)
		e->prefetch_started = !idd_workq_submit(e->bg, 1, prefetch_main, NULL, e, &err);
	if (s->o.fill && !e->fill_started && !e->complete)
		e->fill_started = !idd_workq_submit(e->bg, 0, fill_main, NULL, e, &err);
}

void serve_flush_all(idd_server *s)
{
	pthread_mutex_lock(&s->lock);
	for (size_t i = 0; i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		pthread_mutex_lock(&e->part_lock);
		size_t n;
		idd_error err, e3;
		bool failed = e->part && !e->complete && idd_partial_flush(e->part, &n, &err);
		if (atomic_load(&e->repair_wanted) && !e->fill_started && !atomic_load(&s->stop))
			e->fill_started = !idd_workq_submit(e->bg, 0, repair_main, NULL, e, &e3);
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
