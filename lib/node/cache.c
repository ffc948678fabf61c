/* cache.c - the node cache: the images deployed on this node, and an index
 * file from each distinct block digest to one place it can be read from.
 * Everything read from the cache is verified; damage costs a refetch. */
#include "node/cache.h"
#include "index/indexfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char CACHE_MAGIC[8] = {'I', 'D', 'D', '-', 'C', 'I', 'X', 0};
#define CACHE_VERSION 1
#define MAX_PATH_LEN 4096
#define MAX_ENTRIES (1u << 20)

static void warnf(idd_cache *c, const char *fmt, ...) IDD_PRINTF(2, 3);
static void warnf(idd_cache *c, const char *fmt, ...)
{
	if (!c->warn)
		return;
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	c->warn(c->ctx, msg);
}

static void entry_free(idd_cache_entry *e)
{
	free(e->path);
	free(e->abs);
	free(e->digests);
	free(e->blocks);
	if (e->fd >= 0)
		close(e->fd);
	memset(e, 0, sizeof *e);
	e->fd = -1;
}

/* Open a cache file for reading, share-locked so that gc (which takes the
 * lock exclusively before deleting) leaves it alone while it is in use. */
static int open_shared(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return -1;
	struct stat st;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		errno = EINVAL;
		return -1;
	}
	(void)flock(fd, LOCK_SH | LOCK_NB);
	return fd;
}

static void entries_clear(idd_cache *c)
{
	for (size_t i = 0; i < c->count; i++)
		entry_free(&c->e[i]);
	free(c->e);
	c->e = NULL;
	c->count = 0;
}

void idd_cache_close(idd_cache *c)
{
	if (!c)
		return;
	entries_clear(c);
	idd_digest_set_free(&c->lookup);
	pthread_rwlock_destroy(&c->lock);
	free(c->dir);
	free(c);
}

static char *entry_abs(const char *dir, const char *path, bool owned, idd_error *err)
{
	return owned ? idd_path_join(dir, path, err) : idd_strdup(path, err);
}

int idd_cache_index_parse(const char *name, const void *payload, size_t len, idd_cache *c,
                          idd_error *err)
{
	idd_reader r;
	idd_reader_init(&r, payload, len);
	uint32_t count;
	if (!idd_get_u32(&r, &count) || count > MAX_ENTRIES || count > idd_reader_left(&r) / 30)
		return idd_fail(err, "%s: corrupt cache index (entry count)", name);
	c->e = idd_calloc(count ? count : 1, sizeof *c->e, err);
	if (!c->e)
		return IDD_ERR;
	for (uint32_t i = 0; i < count; i++) {
		idd_cache_entry *e = &c->e[i];
		e->fd = -1;
		c->count = i + 1;
		uint8_t owned;
		uint64_t used, n;
		if (!idd_get_str(&r, &e->path, MAX_PATH_LEN) || !idd_get_u8(&r, &owned) ||
		    !idd_get_u32(&r, &e->block_size) || !idd_get_u64(&r, &e->size) ||
		    !idd_get_u64(&r, &used) || !idd_get_u64(&r, &n))
			goto corrupt;
		e->owned = owned != 0;
		e->last_used = (int64_t)used;
		if (!e->path[0] || owned > 1 || (e->owned && e->path[0] == '/') ||
		    (!e->owned && e->path[0] != '/') || !idd_is_power_of_two(e->block_size) ||
		    e->block_size < IDD_MIN_BLOCK_SIZE || e->block_size > IDD_MAX_BLOCK_SIZE)
			goto corrupt;
		/* an owned path must stay inside the cache dir */
		if (e->owned && (strstr(e->path, "..") || strncmp(e->path, IDD_CACHE_IMAGES "/", 7)))
			goto corrupt;
		uint64_t nblocks = e->size / e->block_size + (e->size % e->block_size != 0);
		if (n > nblocks || n > idd_reader_left(&r) / (IDD_DIGEST_SIZE + 1))
			goto corrupt;
		e->n = n;
		e->digests = idd_calloc(n ? n : 1, sizeof *e->digests, err);
		e->blocks = idd_calloc(n ? n : 1, sizeof *e->blocks, err);
		e->abs = entry_abs(c->dir ? c->dir : "", e->path, e->owned, err);
		if (!e->digests || !e->blocks || !e->abs)
			return IDD_ERR;
		uint64_t blk = 0;
		for (uint64_t k = 0; k < n; k++) {
			uint64_t delta;
			if (!idd_get_varint(&r, &delta) || !idd_add_ok(blk, delta, &blk) ||
			    blk >= nblocks || (k && delta == 0) ||
			    !idd_get_bytes(&r, e->digests[k].b, IDD_DIGEST_SIZE) ||
			    idd_digest_is_zero(&e->digests[k]))
				goto corrupt;
			e->blocks[k] = blk;
		}
	}
	if (idd_reader_left(&r))
		goto corrupt;
	return IDD_OK;
corrupt:
	return idd_fail(err, "%s: corrupt cache index (inconsistent contents)", name);
}

static int index_encode(const idd_cache *c, idd_buf *b)
{
	idd_buf_put_u32(b, (uint32_t)c->count);
	for (size_t i = 0; i < c->count; i++) {
		const idd_cache_entry *e = &c->e[i];
		idd_buf_put_str(b, e->path);
		idd_buf_put_u8(b, e->owned);
		idd_buf_put_u32(b, e->block_size);
		idd_buf_put_u64(b, e->size);
		idd_buf_put_u64(b, (uint64_t)e->last_used);
		idd_buf_put_u64(b, e->n);
		uint64_t prev = 0;
		for (uint64_t k = 0; k < e->n; k++) {
			idd_buf_put_varint(b, e->blocks[k] - prev);
			prev = e->blocks[k];
			idd_buf_put(b, e->digests[k].b, IDD_DIGEST_SIZE);
		}
	}
	return b->failed ? IDD_ERR : IDD_OK;
}

/* Load the index into c (entries replaced).  Damage: warn, start empty. */
static int load_index(idd_cache *c, idd_error *err)
{
	entries_clear(c);
	char *path = idd_path_join(c->dir, IDD_CACHE_INDEX, err);
	if (!path)
		return IDD_ERR;
	void *payload = NULL;
	size_t len = 0;
	idd_error e2;
	int rc = idd_indexfile_read(path, CACHE_MAGIC, CACHE_VERSION, &payload, &len, NULL, &e2);
	if (rc == IDD_OK)
		rc = idd_cache_index_parse(path, payload, len, c, &e2);
	free(payload);
	free(path);
	if (rc == IDD_ENOENT) {
		entries_clear(c);
		return IDD_OK;
	}
	if (rc) {
		entries_clear(c);
		warnf(c, "warning: %s; the cache starts over (blocks it knew will be fetched)", e2.msg);
	}
	return IDD_OK;
}

static int save_index(idd_cache *c, idd_error *err)
{
	idd_buf b = {0};
	if (index_encode(c, &b)) {
		idd_buf_free(&b);
		return idd_fail(err, "out of memory");
	}
	char *path = idd_path_join(c->dir, IDD_CACHE_INDEX, err);
	int rc = path ? idd_indexfile_write(path, CACHE_MAGIC, CACHE_VERSION, b.data, b.len, true, err)
	              : IDD_ERR;
	free(path);
	idd_buf_free(&b);
	return rc;
}

static int open_locked(const char *dir, idd_warn_fn warn, void *ctx, idd_cache **out, int *lockfd,
                       idd_error *err)
{
	if (idd_mkdir_p(dir, err))
		return IDD_ERR;
	idd_cache *c = idd_calloc(1, sizeof *c, err);
	if (!c)
		return IDD_ERR;
	pthread_rwlock_init(&c->lock, NULL);
	c->dir = realpath(dir, NULL);
	c->warn = warn;
	c->ctx = ctx;
	if (!c->dir) {
		idd_cache_close(c);
		return idd_fail_errno(err, dir, "cannot open cache directory");
	}
	if (idd_lock(c->dir, false, lockfd, err) || load_index(c, err)) {
		if (*lockfd >= 0)
			idd_unlock(*lockfd);
		*lockfd = -1;
		idd_cache_close(c);
		return IDD_ERR;
	}
	*out = c;
	return IDD_OK;
}

int idd_cache_open(const char *dir, idd_warn_fn warn, void *ctx, idd_cache **out, idd_error *err)
{
	int lockfd = -1;
	if (open_locked(dir, warn, ctx, out, &lockfd, err))
		return IDD_ERR;
	idd_unlock(lockfd);
	return IDD_OK;
}

int idd_cache_prepare(idd_cache *c, uint32_t bs, idd_error *err)
{
	size_t total = 0;
	for (size_t i = 0; i < c->count; i++)
		if (c->e[i].block_size == bs)
			total += (size_t)c->e[i].n;
	idd_digest_set_free(&c->lookup);
	c->have_lookup = false;
	if (idd_digest_set_init(&c->lookup, total + 16, true, err))
		return IDD_ERR;
	c->have_lookup = true;
	c->lookup_bs = bs;
	for (size_t i = 0; i < c->count; i++) {
		idd_cache_entry *e = &c->e[i];
		if (e->block_size != bs)
			continue;
		if (e->fd < 0) {
			e->fd = open_shared(e->abs);
			if (e->fd < 0) {
				warnf(c, "warning: cache: %s: %s; not used", e->abs, strerror(errno));
				continue;
			}
		}
		for (uint64_t k = 0; k < e->n; k++) {
			bool added;
			size_t slot = idd_digest_set_add(&c->lookup, &e->digests[k], &added, err);
			if (slot == (size_t)-1)
				return IDD_ERR;
			if (added)
				c->lookup.aux[slot] = (uint64_t)i << 40 | e->blocks[k];
		}
	}
	return IDD_OK;
}

bool idd_cache_find(idd_cache *c, const idd_digest *d, size_t *entry, uint64_t *block)
{
	if (!c || idd_digest_is_zero(d))
		return false;
	bool found = false;
	pthread_rwlock_rdlock(&c->lock);
	size_t slot = c->have_lookup ? idd_digest_set_find(&c->lookup, d) : (size_t)-1;
	if (slot != (size_t)-1) {
		uint64_t v = c->lookup.aux[slot];
		size_t ei = (size_t)(v >> 40);
		if (ei < c->count && !atomic_load(&c->e[ei].damaged) && c->e[ei].fd >= 0) {
			*entry = ei;
			*block = v & (((uint64_t)1 << 40) - 1);
			found = true;
		}
	}
	pthread_rwlock_unlock(&c->lock);
	return found;
}

uint64_t idd_cache_damaged_count(idd_cache *c)
{
	uint64_t n = 0;
	pthread_rwlock_rdlock(&c->lock);
	for (size_t i = 0; i < c->count; i++)
		n += atomic_load(&c->e[i].damaged);
	pthread_rwlock_unlock(&c->lock);
	return n;
}

struct cached_loc {
	size_t entry;
	uint64_t block;
	int fd;
	uint64_t size;
	bool found;
};

/* A file failed verification: never use it again in this process, and say
 * so once. */
static void mark_damaged(idd_cache *c, size_t ei, uint64_t block)
{
	pthread_rwlock_rdlock(&c->lock);
	idd_cache_entry *e = &c->e[ei];
	bool was = atomic_exchange(&e->damaged, true);
	char *path = was ? NULL : strdup(e->abs);
	pthread_rwlock_unlock(&c->lock);
	if (path)
		warnf(c, "warning: cache: %s: block at offset %llu does not match the cache index (file "
		      "changed or damaged); fetching what it would have provided", path,
		      (unsigned long long)(block * (c->lookup_bs ? c->lookup_bs : 1)));
	free(path);
}

int idd_cache_read_blocks(idd_cache *c, idd_block_req *reqs, size_t n, uint64_t *bytes_read,
                          idd_error *err)
{
	*bytes_read = 0;
	struct cached_loc *loc = idd_calloc(n ? n : 1, sizeof *loc, err);
	idd_hasher *h = loc ? idd_thread_hasher(err) : NULL;
	if (!loc || !h) {
		free(loc);
		return IDD_ENOMEM;
	}
	uint32_t bs = c->lookup_bs;
	pthread_rwlock_rdlock(&c->lock);
	for (size_t i = 0; i < n; i++) {
		reqs[i].status = IDD_ENOENT;
		reqs[i].origin_fd = -1;
		size_t slot = c->have_lookup ? idd_digest_set_find(&c->lookup, &reqs[i].digest) : (size_t)-1;
		if (slot == (size_t)-1)
			continue;
		uint64_t v = c->lookup.aux[slot];
		size_t ei = (size_t)(v >> 40);
		if (ei >= c->count || atomic_load(&c->e[ei].damaged) || c->e[ei].fd < 0)
			continue;
		loc[i] = (struct cached_loc){ei, v & (((uint64_t)1 << 40) - 1), c->e[ei].fd, c->e[ei].size,
		                             true};
	}
	pthread_rwlock_unlock(&c->lock);
	for (size_t i = 0; i < n;) {
		if (!loc[i].found) {
			i++;
			continue;
		}
		/* a run: consecutive blocks of one file into consecutive buffers */
		size_t j = i + 1;
		while (j < n && loc[j].found && loc[j].entry == loc[i].entry &&
		       loc[j].block == loc[i].block + (j - i) && reqs[j].buf == reqs[i].buf + (j - i) * bs &&
		       j - i < 1024)
			j++;
		uint64_t off = loc[i].block * bs;
		uint64_t avail = loc[i].size > off ? loc[i].size - off : 0;
		uint64_t want = IDD_MIN((uint64_t)(j - i) * bs, avail);
		memset(reqs[i].buf + want, 0, (size_t)((j - i) * bs - want));
		bool read_ok = idd_pread_all(loc[i].fd, reqs[i].buf, (size_t)want, off) == 0;
		*bytes_read += want;
		for (size_t k = i; k < j; k++) {
			if (read_ok && idd_block_verify(h, reqs[k].buf, bs, &reqs[k].digest)) {
				reqs[k].status = IDD_OK;
				reqs[k].origin_fd = loc[k].fd;
				reqs[k].origin_off = loc[k].block * bs;
				continue;
			}
			reqs[k].status = IDD_ECORRUPT;
			mark_damaged(c, loc[k].entry, loc[k].block);
			/* the rest of this file is not trusted either */
			for (size_t m = k + 1; m < j; m++)
				reqs[m].status = IDD_ECORRUPT;
			break;
		}
		for (size_t k = i; k < j; k++)
			if (reqs[k].status == IDD_OK) {
				pthread_rwlock_rdlock(&c->lock);
				atomic_store(&c->e[loc[k].entry].used, true);
				pthread_rwlock_unlock(&c->lock);
				break;
			}
		i = j;
	}
	free(loc);
	return IDD_OK;
}

char *idd_cache_default_out(const char *dir, const char *id, idd_error *err)
{
	/* ids are relative paths; flatten them so images/ stays one level */
	idd_buf b = {0};
	const char *pfx = IDD_CACHE_IMAGES "/";
	idd_buf_put(&b, pfx, strlen(pfx));
	for (const char *p = id; *p; p++) {
		if (*p == '/')
			idd_buf_put(&b, "__", 2);
		else
			idd_buf_put_u8(&b, (uint8_t)*p);
	}
	size_t n = strlen(id);
	bool rawname = (n > 4 && (!strcmp(id + n - 4, ".raw") || !strcmp(id + n - 4, ".img")));
	if (!rawname)
		idd_buf_put(&b, ".raw", 4);
	idd_buf_put_u8(&b, 0);
	if (b.failed) {
		idd_buf_free(&b);
		idd_fail(err, "out of memory");
		return NULL;
	}
	char *full = idd_path_join(dir, (char *)b.data, err);
	idd_buf_free(&b);
	return full;
}

int idd_cache_register(idd_cache *c, const char *path, const idd_map *m, idd_error *err)
{
	/* Remember which entries were used before reloading the index. */
	size_t nused = 0;
	char **used = idd_calloc(c->count ? c->count : 1, sizeof *used, err);
	if (!used)
		return IDD_ERR;
	for (size_t i = 0; i < c->count; i++)
		if (atomic_load(&c->e[i].used) && !atomic_load(&c->e[i].damaged))
			used[nused++] = c->e[i].abs; /* kept alive below: entries moved aside */
	idd_cache_entry *old_e = c->e;
	size_t old_count = c->count;
	c->e = NULL;
	c->count = 0;
	int lockfd = -1;
	int rc = idd_lock(c->dir, false, &lockfd, err);
	if (!rc)
		rc = load_index(c, err);
	int64_t now = idd_now_ns();
	if (!rc) {
		for (size_t i = 0; i < c->count; i++)
			for (size_t k = 0; k < nused; k++)
				if (!strcmp(c->e[i].abs, used[k]))
					c->e[i].last_used = now;
		/* drop the entries this path replaces */
		size_t w = 0;
		for (size_t i = 0; i < c->count; i++) {
			if (!strcmp(c->e[i].abs, path))
				entry_free(&c->e[i]);
			else
				c->e[w++] = c->e[i];
		}
		c->count = w;
		idd_cache_entry *ne = idd_realloc_array(c->e, c->count + 1, sizeof *c->e, err);
		if (!ne)
			rc = IDD_ERR;
		else
			c->e = ne;
	}
	if (!rc) {
		idd_cache_entry *e = &c->e[c->count];
		memset(e, 0, sizeof *e);
		e->fd = -1;
		size_t dl = strlen(c->dir);
		e->owned = !strncmp(path, c->dir, dl) && path[dl] == '/' &&
		           !strncmp(path + dl + 1, IDD_CACHE_IMAGES "/", 7);
		e->path = idd_strdup(e->owned ? path + dl + 1 : path, err);
		e->abs = idd_strdup(path, err);
		e->block_size = m->block_size;
		e->size = m->image_size;
		e->last_used = now;
		e->n = m->ndistinct;
		e->digests = idd_calloc(m->ndistinct ? m->ndistinct : 1, sizeof *e->digests, err);
		e->blocks = idd_calloc(m->ndistinct ? m->ndistinct : 1, sizeof *e->blocks, err);
		c->count++;
		if (!e->path || !e->abs || !e->digests || !e->blocks) {
			rc = IDD_ERR;
		} else {
			/* digests are numbered in order of first occurrence */
			uint64_t seen = 0;
			for (size_t ri = 0; ri < m->nruns && seen < m->ndistinct; ri++) {
				const idd_map_span *run = &m->runs[ri];
				/* only SEQ runs introduce digests, in order */
				if (run->kind != IDD_RUN_SEQ)
					continue;
				for (uint64_t b = run->block; b < run->block + run->count; b++) {
					uint32_t ref = idd_map_span_ref(run, b);
					if (ref == seen + 1) {
						e->digests[seen] = m->digests[ref - 1];
						e->blocks[seen] = b;
						seen++;
					}
				}
			}
			if (seen != m->ndistinct)
				rc = idd_fail(err, "%s: map digests are not in order of first occurrence", path);
		}
	}
	if (!rc)
		rc = save_index(c, err);
	idd_unlock(lockfd);
	/* keep this run's open descriptors: swap back the entries we read from */
	for (size_t i = 0; i < c->count; i++)
		entry_free(&c->e[i]);
	free(c->e);
	c->e = old_e;
	c->count = old_count;
	free(used);
	return rc;
}

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

int idd_cache_list(const char *dir, idd_cache_image **out, size_t *n, idd_warn_fn warn, void *ctx,
                   idd_error *err)
{
	struct stat st;
	if (stat(dir, &st) || !S_ISDIR(st.st_mode))
		return idd_fail_errno(err, dir, "not a cache directory");
	idd_cache *c;
	if (idd_cache_open(dir, warn, ctx, &c, err))
		return IDD_ERR;
	idd_cache_image *v = idd_calloc(c->count ? c->count : 1, sizeof *v, err);
	if (!v) {
		idd_cache_close(c);
		return IDD_ERR;
	}
	for (size_t i = 0; i < c->count; i++) {
		idd_cache_entry *e = &c->e[i];
		v[i].path = e->abs;
		e->abs = NULL;
		v[i].owned = e->owned;
		v[i].block_size = e->block_size;
		v[i].size = e->size;
		v[i].blocks = e->n;
		v[i].last_used = e->last_used;
		v[i].disk_bytes = disk_bytes(v[i].path, &v[i].present);
	}
	*n = c->count;
	qsort(v, *n, sizeof *v, cmp_lru);
	*out = v;
	idd_cache_close(c);
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

int idd_cache_gc(const char *dir, uint64_t max_size, idd_cache_gc_stats *st, idd_warn_fn warn,
                 void *ctx, idd_error *err)
{
	memset(st, 0, sizeof *st);
	struct stat sb;
	if (stat(dir, &sb) || !S_ISDIR(sb.st_mode))
		return idd_fail_errno(err, dir, "not a cache directory");
	idd_cache *c;
	int lockfd = -1;
	if (open_locked(dir, warn, ctx, &c, &lockfd, err))
		return IDD_ERR;
	st->images_before = c->count;
	/* LRU order; vanished files go first */
	uint64_t total = 0;
	uint64_t *sizes = idd_calloc(c->count ? c->count : 1, sizeof *sizes, err);
	bool *present = idd_calloc(c->count ? c->count : 1, sizeof *present, err);
	size_t *order = idd_calloc(c->count ? c->count : 1, sizeof *order, err);
	int rc = (!sizes || !present || !order) ? IDD_ERR : IDD_OK;
	for (size_t i = 0; !rc && i < c->count; i++) {
		sizes[i] = disk_bytes(c->e[i].abs, &present[i]);
		total += sizes[i];
		order[i] = i;
	}
	st->bytes_before = total;
	/* insertion sort by last_used: cache indexes hold few images */
	for (size_t i = 1; !rc && i < c->count; i++) {
		size_t k = order[i], j = i;
		while (j > 0 && c->e[order[j - 1]].last_used > c->e[k].last_used) {
			order[j] = order[j - 1];
			j--;
		}
		order[j] = k;
	}
	bool *drop = rc ? NULL : idd_calloc(c->count ? c->count : 1, sizeof *drop, err);
	if (!drop)
		rc = IDD_ERR;
	for (size_t i = 0; !rc && i < c->count; i++)
		if (!present[i])
			drop[i] = true;
	for (size_t j = 0; !rc && j < c->count && total > max_size; j++) {
		size_t i = order[j];
		if (drop[i])
			continue;
		drop[i] = true;
		total -= sizes[i];
	}
	/* Write the index first: a crash then leaves unreferenced files (space),
	 * never an index naming deleted files. */
	char **victims = rc ? NULL : idd_calloc(c->count ? c->count : 1, sizeof *victims, err);
	size_t nv = 0;
	if (!rc && !victims)
		rc = IDD_ERR;
	if (!rc) {
		size_t w = 0;
		for (size_t i = 0; i < c->count; i++) {
			if (drop[i]) {
				if (c->e[i].owned && present[i]) {
					victims[nv++] = c->e[i].abs;
					c->e[i].abs = NULL;
				}
				entry_free(&c->e[i]);
				st->images_removed++;
			} else {
				c->e[w++] = c->e[i];
			}
		}
		c->count = w;
		rc = save_index(c, err);
	}
	for (size_t k = 0; k < nv; k++) {
		if (!rc && unlink(victims[k]) && errno != ENOENT)
			warnf(c, "warning: cache: cannot remove %s: %s", victims[k], strerror(errno));
		free(victims[k]);
	}
	st->bytes_after = total;
	free(victims);
	free(drop);
	free(sizes);
	free(present);
	free(order);
	idd_unlock(lockfd);
	idd_cache_close(c);
	return rc;
}
