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
 * workers, which step aside while the guest reads.
 *
 * This file holds the server itself; serve_internal.h lists the other
 * parts, the locks and their order. */
#include "node/serve_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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
	if (!o->node.source || !o->node.cache_dir)
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
	const char **fields[] = {&s->o.node.source, &s->o.node.index, &s->o.node.cache_dir, &s->o.record,
	                         &s->o.prefetch};
	for (size_t i = 0; !rc && i < IDD_ARRAY_LEN(fields); i++)
		rc = keep_string(s, fields[i], err);
	s->o.node.peers = NULL; /* kept in s->peers */
	s->o.node.n_peers = 0;
	idd_fetch_opts fo = {.connections = o->node.connections, .timeout_s = o->node.timeout_s, .warn = o->node.warn,
	                     .ctx = o->node.ctx, .cancel = &s->stop};
	if (s->o.read_timeout_s <= 0)
		s->o.read_timeout_s = READ_TIMEOUT_S;
	if (!rc) {
		serve_progress(s, "opening the index of %s", s->o.node.index ? s->o.node.index : s->o.node.source);
		rc = idd_remote_index_open(s->o.node.source, s->o.node.index, &fo, &s->ri, err);
	}
	if (!rc) {
		serve_progress(s, "opening the cache %s", s->o.node.cache_dir);
		rc = idd_cache_open(s->o.node.cache_dir, o->node.warn, o->node.ctx, &s->cache, err);
	}
	if (!rc && s->o.all) {
		serve_progress(s, "reading the catalog of %s", s->o.node.index ? s->o.node.index : s->o.node.source);
		rc = idd_remote_index_catalog_refresh(s->ri, NULL, err);
		s->cat_checked_ns = idd_now_ns();
	}
	if (!rc && s->o.prefetch)
		rc = idd_profile_load(s->o.prefetch, &s->pf, err);
	/* the peers' addresses, for when the block size is known */
	for (size_t i = 0; !rc && i < o->node.n_peers; i++) {
		const char *p = o->node.peers[i];
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
				idd_warnf(s->o.node.warn, s->o.node.ctx,
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
		/* woken when the readahead ends (ra_wake) and when a fetch ends
		 * (fl_done), bounded by until */
		struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
		pthread_mutex_lock(&e->ra_lock);
		while ((e->ra_busy || (e->ra_queued && e->ra_started)) && idd_mono_ns() < until)
			pthread_cond_clockwait(&e->ra_wake, &e->ra_lock, CLOCK_MONOTONIC, &ts);
		pthread_mutex_unlock(&e->ra_lock);
		/* a request that answered a read goes on receiving the blocks
		 * read ahead behind it, and stores them */
		pthread_mutex_lock(&e->fl_lock);
		while (e->ninflight && idd_mono_ns() < until)
			pthread_cond_clockwait(&e->fl_done, &e->fl_lock, CLOCK_MONOTONIC, &ts);
		pthread_mutex_unlock(&e->fl_lock);
	}
	pthread_mutex_unlock(&s->lock);
	if (s->started)
		serve_flush_all(s);
	for (size_t i = 0; i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		pthread_mutex_lock(&e->part_lock);
		if (e->repair_fd >= 0 && fdatasync(e->repair_fd))
			idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: %s: fsync: %s", e->final_path, strerror(errno));
		pthread_mutex_unlock(&e->part_lock);
	}
	return s->o.record ? write_profile(s, err) : IDD_OK;
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
		idd_workq_stop(e->bg);
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
		idd_workq_free(e->bg); /* waits for its items to return */
		e->bg = NULL;
		if (e->ra_started)
			pthread_join(e->ra_thread, NULL);
	}
	if (s->o.record) {
		idd_error err;
		if (write_profile(s, &err))
			idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: --record: %s", err.msg);
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
	idd_estimate_opts o = {.node = s->o.node, .images = images, .n_images = n,
	                       .bandwidth = bandwidth};
	return idd_cache_estimate(&o, out, err);
}
