/* serve_export.c - an export: opened at a client's first connection (its
 * block map, its partial file, its profile) and freed with the server;
 * --all's catalog, re-read when due. */
#include "node/serve_internal.h"
#include "base/file.h"
#include "index/indexfile.h"
#include "node/source_cache.h"
#include "node/source_peer.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int own_record(void *ctx, const idd_partial_record *r)
{
	idd_export *e = ctx;
	bool added;
	return idd_u64set_add(&e->own, r->block, &added);
}


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
	idd_workq_free(e->bg); /* its items use the export */
	if (e->part) {
		size_t n;
		idd_error err;
		if (!e->complete && idd_partial_flush(e->part, &n, &err))
			serve_cache_write_failed(e, &err);
		idd_partial_close(e->part);
	}
	if (e->repair_fd >= 0) {
		if (fdatasync(e->repair_fd))
			idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx, "warning: %s: fsync: %s", e->final_path,
			          strerror(errno));
		close(e->repair_fd);
	}
	idd_block_source *fetchers[] = {e->fetch.remote, e->fetch.pack};
	for (size_t i = 0; i < IDD_ARRAY_LEN(fetchers); i++) {
		idd_block_source_counters c = {0};
		idd_block_source_counters_get(fetchers[i], &c);
		atomic_fetch_add(&e->srv->closed_fetched, c.bytes);
		atomic_fetch_add(&e->srv->closed_requests, c.requests);
	}
	counters_add(&e->srv->closed, &e->c);
	idd_fetch_sources_close(&e->fetch);
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
		rc = idd_cache_source_open(s->cache, bs, s->o.node.warn, s->o.node.ctx, &s->cache_src, err);
	if (!rc && s->npeers) {
		/* peers are a shortcut: failing to open them is a warning */
		idd_fetch_opts pfo = {.warn = s->o.node.warn, .ctx = s->o.node.ctx, .cancel = &s->stop};
		idd_error e2;
		serve_progress(s, "reading the peers' cache indexes");
		if (idd_peer_source_open(s->peers, s->npeers, bs, &pfo, s->o.node.warn, s->o.node.ctx, &s->peer_src,
		                         &e2))
			idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: peers not used: %s", e2.msg);
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
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: %s: boot profiles: %s", e->id, e2.msg);
	else if (from) /* said once: which boot this image's guest is expected to repeat */
		idd_warnf(s->o.node.warn, s->o.node.ctx, "%s: prefetching %zu blocks of the boot profile of %s",
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
	atomic_init(&e->warned_cache_write, false);
	atomic_init(&e->warned_changed, false);
	atomic_init(&e->cache_failing, false);
	int rc = (e->id = idd_strdup(id, err)) ? IDD_OK : IDD_ENOMEM;
	if (!rc)
		rc = idd_workq_open(BACKGROUND_WORKERS, GUEST_QUIET_NS, &e->bg, err);
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
	if (!rc && idd_cache_migrate_name(s->cache->dir, s->ri, id, e->m, s->o.node.warn, s->o.node.ctx, &e2))
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: cache: %s", e2.msg);
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
	idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx,
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
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: the catalog was not re-read: %s", e2.msg);
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
