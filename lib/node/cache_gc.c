/* cache_gc.c - listing the node cache (complete and partial images) and
 * trimming it to a size, never removing a file in use. */
#include "node/cache.h"
#include "base/file.h"
#include "base/u64set.h"
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

static uint64_t disk_bytes(const char *path, bool *present)
{
	struct stat st;
	if (stat(path, &st)) {
		*present = false;
		return 0;
	}
	*present = true;
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
	idd_u64set seen; /* first 8 bytes of each digest recorded */
	uint64_t distinct, covered;
};

static int count_present(void *ctx, const idd_partial_record *r)
{
	struct present *p = ctx;
	uint64_t key = idd_le64(r->digest.b);
	bool added;
	if (key == UINT64_MAX)
		key--;
	if (idd_u64set_add(&p->seen, key, &added))
		return IDD_ENOMEM;
	if (added) { /* a block journaled twice (written again) counts once */
		p->distinct++;
		p->covered += r->copies;
	}
	return IDD_OK;
}

/* Every image of the cache: the index's, then the partial ones. */
static int list_images(idd_cache *c, idd_cache_image **out, size_t *n, idd_error *err)
{
	size_t cap = c->count + 16, cnt = 0;
	idd_cache_image *v = idd_calloc(cap, sizeof *v, err);
	if (!v)
		return IDD_ENOMEM;
	for (size_t i = 0; i < c->count; i++) {
		idd_cache_entry *e = &c->e[i];
		v[cnt].path = e->abs;
		e->abs = NULL;
		v[cnt].owned = e->owned;
		v[cnt].block_size = e->block_size;
		v[cnt].size = e->size;
		v[cnt].blocks = e->n;
		v[cnt].last_used = e->last_used;
		v[cnt].disk_bytes = disk_bytes(v[cnt].path, &v[cnt].present);
		v[cnt].in_use = v[cnt].present && file_in_use(v[cnt].path);
		cnt++;
	}
	char *dir = idd_path_join(c->dir, IDD_CACHE_IMAGES, err);
	DIR *dh = dir ? opendir(dir) : NULL;
	struct dirent *de;
	size_t sl = strlen(IDD_PARTIAL_JOURNAL_SUFFIX);
	int rc = dir ? IDD_OK : IDD_ENOMEM;
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
		if (!data) {
			free(journal);
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
		idd_u64set_free(&present.seen);
		if (jrc || stat(journal, &js)) {
			memset(&h, 0, sizeof h); /* damaged: listed, so that gc can remove it */
			memset(&present, 0, sizeof present);
			js.st_mtim.tv_sec = 0;
			js.st_mtim.tv_nsec = 0;
		}
		if (cnt == cap) {
			cap *= 2;
			idd_cache_image *nv = idd_realloc_array(v, cap, sizeof *nv, err);
			if (!nv) {
				free(journal);
				free(data);
				rc = IDD_ENOMEM;
				break;
			}
			v = nv;
		}
		idd_cache_image *im = &v[cnt++];
		memset(im, 0, sizeof *im);
		im->path = data;
		im->owned = true;
		im->partial = true;
		im->block_size = h.block_size;
		im->size = h.image_size;
		im->present_blocks = IDD_MIN(present.covered, h.data_blocks);
		im->data_blocks = h.data_blocks;
		im->blocks = present.distinct;
		im->last_used = idd_ts_ns(js.st_mtim);
		im->disk_bytes = disk_bytes(data, &im->present);
		im->in_use = im->present && file_in_use(data);
		free(journal);
	}
	if (dh)
		closedir(dh);
	free(dir);
	if (rc) {
		idd_cache_list_free(v, cnt);
		return rc;
	}
	qsort(v, cnt, sizeof *v, cmp_lru);
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
	int rc = list_images(c, out, n, err);
	idd_cache_close(c);
	return rc;
}

void idd_cache_list_free(idd_cache_image *v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i].path);
	free(v);
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

int idd_cache_gc(const char *dir, uint64_t max_size, idd_cache_gc_stats *st, idd_warn_fn warn,
                 void *ctx, idd_error *err)
{
	memset(st, 0, sizeof *st);
	struct stat sb;
	if (stat(dir, &sb) || !S_ISDIR(sb.st_mode))
		return idd_fail_errno(err, dir, "not a cache directory");
	idd_cache *c;
	int lockfd = -1;
	if (idd_cache_open_locked(dir, warn, ctx, &c, &lockfd, err))
		return IDD_ERR;
	/* list_images takes the paths out of the entries: keep a copy of them */
	char **abs = idd_calloc(c->count ? c->count : 1, sizeof *abs, err);
	int rc = abs ? IDD_OK : IDD_ENOMEM;
	size_t nidx = c->count;
	for (size_t i = 0; !rc && i < nidx; i++)
		if (!(abs[i] = idd_strdup(c->e[i].abs, err)))
			rc = IDD_ENOMEM;
	idd_cache_image *v = NULL;
	size_t n = 0;
	if (!rc)
		rc = list_images(c, &v, &n, err);
	for (size_t i = 0; !rc && i < nidx; i++) {
		free(c->e[i].abs);
		c->e[i].abs = abs[i];
		abs[i] = NULL;
	}
	uint64_t total = 0;
	for (size_t i = 0; !rc && i < n; i++)
		total += v[i].disk_bytes;
	st->images_before = n;
	st->bytes_before = total;
	bool *drop = rc ? NULL : idd_calloc(n ? n : 1, sizeof *drop, err);
	if (!rc && !drop)
		rc = IDD_ENOMEM;
	for (size_t i = 0; !rc && i < n; i++) /* vanished images leave the index */
		drop[i] = !v[i].present && !v[i].partial;
	for (size_t i = 0; !rc && i < n && total > max_size; i++) { /* v is in LRU order */
		if (drop[i] || !v[i].present)
			continue;
		if (v[i].in_use) {
			idd_warnf(c->warn, c->ctx, "warning: cache: %s is in use; kept", v[i].path);
			continue;
		}
		drop[i] = true;
		total -= v[i].disk_bytes;
	}
	/* Delete first, then write the index: on a full disk the index can only
	 * be written once space was freed.  A crash in between leaves entries
	 * naming files that are gone, which readers skip and the next gc drops
	 * (vanished images leave the index); never an unreferenced file that no
	 * gc would find again. */
	for (size_t k = 0; !rc && k < n; k++) {
		if (!drop[k])
			continue;
		if (v[k].present && v[k].owned) {
			/* Locked exclusively while it is unlinked: a reader that
			 * opened it since the listing keeps it, and one opening it
			 * now finds it gone (idd_flock_shared). */
			int lk = idd_open_for_removal(v[k].path);
			if (lk < 0 && errno == EWOULDBLOCK) {
				idd_warnf(c->warn, c->ctx, "warning: cache: %s is in use; kept", v[k].path);
				drop[k] = false;
				total += v[k].disk_bytes;
				continue;
			}
			if (v[k].partial) {
				remove_partial(c, v[k].path);
			} else if (unlink(v[k].path) && errno != ENOENT) {
				idd_warnf(c->warn, c->ctx, "warning: cache: cannot remove %s: %s", v[k].path,
				          strerror(errno));
				drop[k] = false; /* still there: it stays in the index */
				total += v[k].disk_bytes;
				if (lk >= 0)
					close(lk);
				continue;
			}
			if (lk >= 0)
				close(lk);
		}
		st->images_removed++;
	}
	if (!rc) {
		size_t w = 0;
		for (size_t i = 0; i < c->count; i++) {
			bool gone = false;
			for (size_t k = 0; k < n && !gone; k++)
				gone = drop[k] && !v[k].partial && !strcmp(v[k].path, c->e[i].abs);
			if (gone)
				idd_cache_entry_free(&c->e[i]);
			else
				c->e[w++] = c->e[i];
		}
		bool changed = w != c->count;
		c->count = w;
		if (changed)
			rc = idd_cache_save_index(c, err);
	}
	st->bytes_after = total;
	free(drop);
	free(abs);
	idd_cache_list_free(v, n);
	idd_unlock(lockfd);
	idd_cache_close(c);
	return rc;
}
