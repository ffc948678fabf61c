/* serve_budget.c - --cache-max: a thread keeps the cache under it with
 * cache gc, sparing the exports' own files. */
#include "node/serve_internal.h"
#include "node/cache.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

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
		idd_warnf(s->o.node.warn, s->o.node.ctx, "%s", msg);
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
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: --cache-max: out of memory");
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
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: --cache-max: %s", e2.msg);
	if (rc) {
		idd_warnf(s->o.node.warn, s->o.node.ctx, "warning: --cache-max: %s", err.msg);
		goto out;
	}
	atomic_fetch_add(&s->cache_evicted, st.images_removed);
	if (st.bytes_after > s->o.cache_max && !s->budget_warned) {
		s->budget_warned = true;
		idd_warnf(s->o.node.warn, s->o.node.ctx,
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
