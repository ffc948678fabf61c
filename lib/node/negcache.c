/* negcache.c - blocks that failed recently (see negcache.h). */
#include "node/negcache.h"

#include <stdlib.h>
#include <string.h>

int idd_negcache_init(idd_negcache *nc, int64_t first_ns, int64_t max_ns, idd_error *err)
{
	memset(nc, 0, sizeof *nc);
	nc->first_ns = first_ns > 0 ? first_ns : 1;
	nc->max_ns = max_ns > nc->first_ns ? max_ns : nc->first_ns;
	if (idd_digest_set_init(&nc->set, 64, true, err))
		return IDD_ENOMEM;
	pthread_mutex_init(&nc->lock, NULL);
	return IDD_OK;
}

void idd_negcache_free(idd_negcache *nc)
{
	if (!nc->set.slots)
		return;
	idd_digest_set_free(&nc->set);
	free(nc->v);
	pthread_mutex_destroy(&nc->lock);
	memset(nc, 0, sizeof *nc);
}

int idd_negcache_fail(idd_negcache *nc, const idd_digest *d, int code, int64_t now,
                      idd_error *err)
{
	pthread_mutex_lock(&nc->lock);
	int rc = IDD_OK;
	bool added;
	size_t slot = idd_digest_set_add(&nc->set, d, &added, err);
	if (slot == (size_t)-1) {
		rc = IDD_ENOMEM;
		goto out;
	}
	if (added) {
		if (nc->n == nc->cap) {
			size_t nc2 = nc->cap ? nc->cap * 2 : 64;
			struct idd_negcache_entry *nv = idd_realloc_array(nc->v, nc2, sizeof *nv, err);
			if (!nv) {
				/* the digest stays in the set with an index no entry has:
				 * barred never (see idd_negcache_barred) */
				nc->set.aux[slot] = UINT64_MAX;
				rc = IDD_ENOMEM;
				goto out;
			}
			nc->v = nv;
			nc->cap = nc2;
		}
		nc->set.aux[slot] = nc->n;
		nc->v[nc->n++] = (struct idd_negcache_entry){0, 0, IDD_OK};
	}
	if (nc->set.aux[slot] >= nc->n)
		goto out;
	struct idd_negcache_entry *e = &nc->v[nc->set.aux[slot]];
	int64_t wait = nc->first_ns;
	for (uint32_t i = 0; i < e->fails && wait < nc->max_ns; i++)
		wait *= 2;
	e->fails++;
	e->code = code;
	e->until_ns = now + IDD_MIN(wait, nc->max_ns);
out:
	pthread_mutex_unlock(&nc->lock);
	return rc;
}

bool idd_negcache_barred(idd_negcache *nc, const idd_digest *d, int64_t now,
                         idd_negcache_info *info)
{
	pthread_mutex_lock(&nc->lock);
	bool barred = false;
	size_t slot = nc->set.count ? idd_digest_set_find(&nc->set, d) : (size_t)-1;
	if (slot != (size_t)-1 && nc->set.aux[slot] < nc->n) {
		const struct idd_negcache_entry *e = &nc->v[nc->set.aux[slot]];
		barred = e->fails && now < e->until_ns;
		if (barred && info)
			*info = (idd_negcache_info){e->fails, e->code, e->until_ns - now};
	}
	pthread_mutex_unlock(&nc->lock);
	return barred;
}

void idd_negcache_clear(idd_negcache *nc, const idd_digest *d)
{
	pthread_mutex_lock(&nc->lock);
	size_t slot = nc->set.count ? idd_digest_set_find(&nc->set, d) : (size_t)-1;
	if (slot != (size_t)-1 && nc->set.aux[slot] < nc->n)
		nc->v[nc->set.aux[slot]] = (struct idd_negcache_entry){0, 0, IDD_OK};
	pthread_mutex_unlock(&nc->lock);
}
