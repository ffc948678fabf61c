/* cache_gc.c - listing the node cache (complete and partial images) and
 * trimming it to a size: what goes first is evict.c's choice; a file in
 * use is never removed. */
#include "node/cache.h"
#include "base/file.h"
#include "base/u64set.h"
#include "node/evict.h"
#include "node/partial.h"
#include "index/indexfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- listing and garbage collection ---- */

/* A cache file as gc sees it: what cache ls shows, and the contents it
 * holds (evict.h's keys) when asked for. */
struct listed {
	idd_cache_image im;
	uint64_t *keys;
	size_t nkeys;
};

static void listed_free(struct listed *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++) {
		free(v[i].im.path);
		free(v[i].keys);
	}
	free(v);
}

/* Allocated bytes and the time the file was last read (its atime: reads
 * through the cache stamp it, see cache.c). */
static uint64_t disk_bytes(const char *path, bool *present, int64_t *read_ns)
{
	struct stat st;
	if (stat(path, &st)) {
		*present = false;
		return 0;
	}
	*present = true;
	*read_ns = IDD_MAX(*read_ns, idd_ts_ns(st.st_atim));
	return (uint64_t)st.st_blocks * 512;
}

static int cmp_lru(const void *a, const void *b)
{
	const idd_cache_image *x = a, *y = b;
	return x->last_used < y->last_used ? -1 : x->last_used > y->last_used;
}

/* Is the file open by serve or deploy (they hold a shared lock)? */
static bool file_in_use(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return false;
	bool busy = flock(fd, LOCK_EX | LOCK_NB) != 0;
	close(fd);
	return busy;
}

/* What a partial image holds: its distinct contents, and the blocks of the
 * image they cover (a block repeated in the image is written once). */
struct present {
	idd_u64set seen; /* evict keys of the digests recorded */
	uint64_t distinct, covered;
};

static int count_present(void *ctx, const idd_partial_record *r)
{
	struct present *p = ctx;
	bool added;
	if (idd_u64set_add(&p->seen, idd_evict_key(r->digest.b), &added))
		return IDD_ENOMEM;
	if (added) { /* a block journaled twice (written again) counts once */
		p->distinct++;
		p->covered += r->copies;
	}
	return IDD_OK;
}

static int grow(struct listed **v, size_t *cap, size_t cnt, idd_error *err)
{
	if (cnt < *cap)
		return IDD_OK;
	size_t nc = *cap * 2;
	struct listed *nv = idd_realloc_array(*v, nc, sizeof *nv, err);
	if (!nv)
		return IDD_ENOMEM;
	memset(nv + *cap, 0, (nc - *cap) * sizeof *nv);
	*v = nv;
	*cap = nc;
	return IDD_OK;
}

/* Every image of the cache: the index's (v[i] is entry i), then the
 * partial ones; with their contents when keys is set. */
static int list_images(idd_cache *c, bool keys, struct listed **out, size_t *n, idd_error *err)
{
	size_t cap = c->count + 16, cnt = 0;
	struct listed *v = idd_calloc(cap, sizeof *v, err);
	if (!v)
		return IDD_ENOMEM;
	int rc = IDD_OK;
	for (size_t i = 0; !rc && i < c->count; i++) {
		idd_cache_entry *e = &c->e[i];
		idd_cache_image *im = &v[cnt].im;
		if (!(im->path = idd_strdup(e->abs, err))) {
			rc = IDD_ENOMEM;
			break;
		}
		im->owned = e->owned;
		im->block_size = e->block_size;
		im->size = e->size;
		im->blocks = e->n;
		im->last_used = e->last_used;
		im->disk_bytes = disk_bytes(im->path, &im->present, &im->last_used);
		im->in_use = im->present && file_in_use(im->path);
		if (keys && e->n) {
			if (!(v[cnt].keys = idd_calloc((size_t)e->n, sizeof *v[cnt].keys, err))) {
				rc = IDD_ENOMEM;
				break;
			}
			for (uint64_t k = 0; k < e->n; k++)
				v[cnt].keys[k] = idd_evict_key(e->digests[k].b);
			v[cnt].nkeys = (size_t)e->n;
		}
		cnt++;
	}
	char *dir = rc ? NULL : idd_path_join(c->dir, IDD_CACHE_IMAGES, err);
	DIR *dh = dir ? opendir(dir) : NULL;
	struct dirent *de;
	size_t sl = strlen(IDD_PARTIAL_JOURNAL_SUFFIX);
	if (!rc && !dir)
		rc = IDD_ENOMEM;
	while (!rc && dh && (de = readdir(dh))) {
		size_t l = strlen(de->d_name);
		if (l <= sl || strcmp(de->d_name + l - sl, IDD_PARTIAL_JOURNAL_SUFFIX))
			continue;
		char *journal = idd_path_join(dir, de->d_name, err);
		char *data = journal ? idd_asprintf(err, "%.*s%s", (int)(strlen(journal) - sl), journal,
		                                    IDD_PARTIAL_DATA_SUFFIX) : NULL;
		idd_partial_header h;
		uint64_t off = 0;
		struct present present;
		memset(&present, 0, sizeof present);
		idd_error e2;
		struct stat js;
		if (!data || (rc = grow(&v, &cap, cnt, err))) {
			free(journal);
			free(data);
			rc = IDD_ENOMEM;
			break;
		}
		int jrc = idd_partial_journal_read(journal, &h, &off, count_present, &present, &e2);
		if (jrc == IDD_ENOMEM) {
			idd_u64set_free(&present.seen);
			free(journal);
			free(data);
			rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
			break;
		}
		if (jrc || stat(journal, &js)) {
			idd_u64set_free(&present.seen);
			memset(&h, 0, sizeof h); /* damaged: listed, so that gc can remove it */
			memset(&present, 0, sizeof present);
			js.st_mtim.tv_sec = 0;
			js.st_mtim.tv_nsec = 0;
		}
		struct listed *li = &v[cnt++];
		idd_cache_image *im = &li->im;
		im->path = data;
		im->owned = true;
		im->partial = true;
		im->block_size = h.block_size;
		im->size = h.image_size;
		im->present_blocks = IDD_MIN(present.covered, h.data_blocks);
		im->data_blocks = h.data_blocks;
		im->blocks = present.distinct;
		im->last_used = idd_ts_ns(js.st_mtim);
		im->disk_bytes = disk_bytes(data, &im->present, &im->last_used);
		im->in_use = im->present && file_in_use(data);
		if (keys && present.seen.count) {
			if (!(li->keys = idd_calloc(present.seen.count, sizeof *li->keys, err)))
				rc = IDD_ENOMEM;
			for (size_t k = 0; li->keys && k < present.seen.cap; k++)
				if (present.seen.v[k] != UINT64_MAX)
					li->keys[li->nkeys++] = present.seen.v[k];
		}
		idd_u64set_free(&present.seen);
		free(journal);
	}
	if (dh)
		closedir(dh);
	free(dir);
	if (rc) {
		listed_free(v, cnt);
		return rc;
	}
	*out = v;
	*n = cnt;
	return IDD_OK;
}

int idd_cache_list(const char *dir, idd_cache_image **out, size_t *n, idd_warn_fn warn, void *ctx,
                   idd_error *err)
{
	struct stat st;
	if (stat(dir, &st) || !S_ISDIR(st.st_mode))
		return idd_fail_errno(err, dir, "not a cache directory");
	idd_cache *c;
	if (idd_cache_open(dir, warn, ctx, &c, err))
		return IDD_ERR;
	struct listed *l;
	size_t cnt;
	int rc = list_images(c, false, &l, &cnt, err);
	idd_cache_close(c);
	if (rc)
		return rc;
	idd_cache_image *v = idd_calloc(cnt ? cnt : 1, sizeof *v, err);
	if (!v) {
		listed_free(l, cnt);
		return IDD_ENOMEM;
	}
	for (size_t i = 0; i < cnt; i++) {
		v[i] = l[i].im;
		l[i].im.path = NULL;
	}
	listed_free(l, cnt);
	qsort(v, cnt, sizeof *v, cmp_lru);
	*out = v;
	*n = cnt;
	return IDD_OK;
}

void idd_cache_list_free(idd_cache_image *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i].path);
	free(v);
}

/* Take the file at path exclusively, unless a process has it open (serve
 * and deploy share-lock what they read): the caller removes it while the
 * lock is held, so no reader starts using it in between.  *fd is -1 when
 * the file cannot be opened (gone, or not readable: removed unlocked);
 * false when it is in use. */
static bool lock_for_removal(const char *path, int *fd)
{
	*fd = idd_open_for_removal(path);
	return *fd >= 0 || errno != EWOULDBLOCK;
}

static void remove_partial(idd_cache *c, const char *data)
{
	size_t dl = strlen(data), sl = strlen(IDD_PARTIAL_DATA_SUFFIX);
	char *journal = dl > sl ? idd_asprintf(NULL, "%.*s%s", (int)(dl - sl), data,
	                                       IDD_PARTIAL_JOURNAL_SUFFIX) : NULL;
	/* the journal first: a crash leaves data without records (space, no lies) */
	if (journal && unlink(journal) && errno != ENOENT)
		idd_warnf(c->warn, c->ctx, "warning: cache: cannot remove %s: %s", journal, strerror(errno));
	if (unlink(data) && errno != ENOENT)
		idd_warnf(c->warn, c->ctx, "warning: cache: cannot remove %s: %s", data, strerror(errno));
	free(journal);
}

/* Remove a file (owned files deleted, the others only forgotten); false
 * when it is kept: in use after all, or it cannot be deleted. */
static bool remove_file(idd_cache *c, const idd_cache_image *im)
{
	if (!im->present || !im->owned)
		return true;
	int fd;
	if (!lock_for_removal(im->path, &fd)) {
		idd_warnf(c->warn, c->ctx, "warning: cache: %s is in use; kept", im->path);
		return false;
	}
	bool gone = true;
	if (im->partial)
		remove_partial(c, im->path);
	else if (unlink(im->path) && errno != ENOENT) {
		idd_warnf(c->warn, c->ctx, "warning: cache: cannot remove %s: %s", im->path, strerror(errno));
		gone = false;
	}
	if (fd >= 0)
		close(fd);
	return gone;
}

int idd_cache_gc(const char *dir, uint64_t max_size, idd_cache_gc_stats *st, idd_warn_fn warn,
                 void *ctx, idd_error *err)
{
	return idd_cache_gc_policy(dir, max_size, IDD_GC_VALUE, st, warn, ctx, err);
}

int idd_cache_gc_policy(const char *dir, uint64_t max_size, idd_gc_policy policy,
                        idd_cache_gc_stats *st, idd_warn_fn warn, void *ctx, idd_error *err)
{
	memset(st, 0, sizeof *st);
	struct stat sb;
	if (stat(dir, &sb) || !S_ISDIR(sb.st_mode))
		return idd_fail_errno(err, dir, "not a cache directory");
	idd_cache *c;
	int lockfd = -1;
	if (idd_cache_open_locked(dir, warn, ctx, &c, &lockfd, err))
		return IDD_ERR;
	struct listed *v = NULL;
	size_t n = 0;
	int rc = list_images(c, true, &v, &n, err);
	uint64_t total = 0;
	for (size_t i = 0; !rc && i < n; i++)
		total += v[i].im.disk_bytes;
	st->images_before = n;
	st->bytes_before = total;
	bool *drop = rc ? NULL : idd_calloc(n ? n : 1, sizeof *drop, err);
	idd_evict_item *items = rc ? NULL : idd_calloc(n ? n : 1, sizeof *items, err);
	size_t *order = rc ? NULL : idd_calloc(n ? n : 1, sizeof *order, err);
	if (!rc && (!drop || !items || !order))
		rc = IDD_ENOMEM;
	size_t norder = 0;
	for (size_t i = 0; !rc && i < n; i++) {
		const idd_cache_image *im = &v[i].im;
		drop[i] = !im->present && !im->partial; /* vanished images leave the index */
		items[i] = (idd_evict_item){.last_read = im->last_used, .disk_bytes = im->disk_bytes,
		                            .block_size = im->block_size, .keys = v[i].keys,
		                            .nkeys = v[i].nkeys, .removable = im->present && !im->in_use};
		if (im->present && im->in_use && total > max_size)
			idd_warnf(c->warn, c->ctx, "warning: cache: %s is in use; kept", im->path);
	}
	if (!rc && total > max_size)
		rc = idd_evict_choose(items, n, max_size,
		                      policy == IDD_GC_LRU ? IDD_EVICT_LRU : IDD_EVICT_VALUE, order, &norder,
		                      err);
	for (size_t i = 0; !rc && i < norder; i++)
		drop[order[i]] = true;
	/* Delete first, then write the index: on a full disk the index can only
	 * be written once space was freed.  A crash in between leaves entries
	 * naming files that are gone, which readers skip and the next gc drops
	 * (vanished images leave the index); never an unreferenced file that no
	 * gc would find again. */
	for (size_t k = 0; !rc && k < n; k++) {
		if (!drop[k])
			continue;
		if (!remove_file(c, &v[k].im)) {
			drop[k] = false; /* still there: it stays in the index */
			continue;
		}
		total -= IDD_MIN(total, v[k].im.disk_bytes);
		st->images_removed++;
	}
	if (!rc) {
		size_t w = 0, nidx = c->count;
		for (size_t i = 0; i < nidx; i++) {
			if (drop[i]) /* v[i] is entry i */
				idd_cache_entry_free(&c->e[i]);
			else
				c->e[w++] = c->e[i];
		}
		c->count = w;
		if (w != nidx)
			rc = idd_cache_save_index(c, err);
	}
	st->bytes_after = total;
	free(drop);
	free(items);
	free(order);
	listed_free(v, n);
	idd_unlock(lockfd);
	idd_cache_close(c);
	return rc;
}
