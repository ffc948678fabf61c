/* cache.c - the node cache: the images deployed on this node, and an index
 * file from each distinct block digest to one place it can be read from.
 * Everything read from the cache is verified; damage costs a refetch. */
#include "node/cache.h"
#include "base/file.h"
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

static const char CACHE_MAGIC[8] = {'I', 'D', 'D', '-', 'C', 'I', 'X', 0};
#define CACHE_VERSION 1
#define MAX_PATH_LEN 4096
#define MAX_ENTRIES (1u << 20)

void idd_cache_entry_free(idd_cache_entry *e)
{
	free(e->path);
	free(e->abs);
	free(e->digests);
	free(e->blocks);
	free(e->journal);
	if (e->fd >= 0)
		close(e->fd);
	memset(e, 0, sizeof *e);
	e->fd = -1;
}

/* Open a cache file for reading, share-locked so that gc (which takes the
 * lock exclusively before deleting) leaves it alone while it is in use. */
static int count_nothing(void *ctx, const idd_partial_record *r)
{
	(void)ctx;
	(void)r;
	return IDD_OK;
}

static int open_shared(const char *path, idd_error *err)
{
	int fd = idd_open_regular(path, O_RDONLY, IDD_FILE_NOFOLLOW, err);
	if (fd < 0)
		return -1;
	if (idd_flock_shared(fd, path) == 1) { /* removed by gc while it was opened */
		close(fd);
		idd_fail_code(err, IDD_ENOENT, "%s: removed", path);
		return -1;
	}
	return fd;
}

static void entries_clear(idd_cache *c)
{
	for (size_t i = 0; i < c->count; i++)
		idd_cache_entry_free(&c->e[i]);
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

/* Load the index into c (entries replaced).  Damage: warn, rebuild. */
static int grow_entries(idd_cache *c, idd_error *err);
/* The index is damaged: adopt every complete image in CACHE/images/ again,
 * hashed at the default block size (entries of another block size come
 * back at their next deploy), so gc and lookups keep working.  Called with
 * the cache lock held. */
#define REBUILD_RUN ((size_t)1 << 20)
int idd_cache_save_index(idd_cache *c, idd_error *err);

static int adopt_image(idd_cache *c, const char *name, idd_hasher *h, unsigned char *buf,
                       idd_digest *dg, idd_error *err)
{
	uint32_t bs = IDD_DEFAULT_BLOCK_SIZE;
	char *rel = idd_asprintf(err, "%s/%s", IDD_CACHE_IMAGES, name);
	char *abs = rel ? idd_path_join(c->dir, rel, err) : NULL;
	if (!abs) {
		free(rel);
		return IDD_ENOMEM;
	}
	int fd = open(abs, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		if (fd >= 0)
			close(fd);
		free(rel);
		free(abs);
		return IDD_OK; /* not an image: left alone */
	}
	idd_digest_set seen;
	idd_cache_entry e = {.path = rel, .abs = abs, .owned = true, .block_size = bs,
	                     .size = (uint64_t)st.st_size, .last_used = idd_ts_ns(st.st_mtim), .fd = -1};
	size_t cap = 0;
	int rc = idd_digest_set_init(&seen, 1024, false, err);
	for (uint64_t off = 0; !rc && off < e.size;) {
		off_t ds = lseek(fd, (off_t)off, SEEK_DATA);
		if (ds < 0)
			break;
		off_t he = lseek(fd, ds, SEEK_HOLE);
		uint64_t end = he < 0 ? e.size : IDD_MIN((uint64_t)he, e.size);
		for (uint64_t b = (uint64_t)ds / bs; !rc && b * bs < end;) {
			uint64_t len = IDD_MIN((uint64_t)REBUILD_RUN, e.size - b * bs);
			uint64_t nb = (len + bs - 1) / bs, hashed;
			memset(buf, 0, nb * bs);
			if (idd_pread_all(fd, buf, (size_t)len, b * bs)) {
				rc = idd_fail_errno(err, abs, "read");
				break;
			}
			if ((rc = idd_hash_blocks(h, buf, (size_t)(nb * bs), bs, dg, &hashed, err)))
				break;
			for (uint64_t i = 0; !rc && i < nb; i++) {
				bool added;
				if (idd_digest_is_zero(&dg[i]) ||
				    idd_digest_set_add(&seen, &dg[i], &added, err) == (size_t)-1 || !added)
					continue;
				if (e.n == cap) {
					cap = cap ? cap * 2 : 1024;
					idd_digest *nd = idd_realloc_array(e.digests, cap, sizeof *nd, err);
					uint64_t *nbk = nd ? idd_realloc_array(e.blocks, cap, sizeof *nbk, err) : NULL;
					if (nd)
						e.digests = nd;
					if (!nbk) {
						rc = IDD_ENOMEM;
						break;
					}
					e.blocks = nbk;
				}
				e.digests[e.n] = dg[i];
				e.blocks[e.n++] = b + i;
			}
			b += nb;
		}
		off = end;
	}
	close(fd);
	idd_digest_set_free(&seen);
	if (!rc && !grow_entries(c, err)) {
		c->e[c->count++] = e;
		return IDD_OK;
	}
	idd_cache_entry_free(&e);
	return rc ? rc : IDD_ENOMEM;
}

static int rebuild_index(idd_cache *c, idd_error *err)
{
	char *dir = idd_path_join(c->dir, IDD_CACHE_IMAGES, err);
	if (!dir)
		return IDD_ENOMEM;
	DIR *dh = opendir(dir);
	free(dir);
	if (!dh)
		return idd_cache_save_index(c, err);
	idd_hasher *h = idd_thread_hasher(err);
	unsigned char *buf = idd_malloc(REBUILD_RUN, err);
	idd_digest *dg = idd_calloc(REBUILD_RUN / IDD_DEFAULT_BLOCK_SIZE, sizeof *dg, err);
	int rc = (!h || !buf || !dg) ? IDD_ENOMEM : IDD_OK;
	struct dirent *de;
	while (!rc && (de = readdir(dh))) {
		const char *n = de->d_name;
		size_t l = strlen(n);
		if (n[0] == '.' || (l > 5 && !strcmp(n + l - 5, ".part")) ||
		    (l > 8 && !strcmp(n + l - 8, IDD_PARTIAL_DATA_SUFFIX)) ||
		    (l > 8 && !strcmp(n + l - 8, IDD_PARTIAL_JOURNAL_SUFFIX)))
			continue;
		rc = adopt_image(c, n, h, buf, dg, err);
	}
	closedir(dh);
	free(buf);
	free(dg);
	if (rc)
		return rc;
	/* the rebuilt index serves this process even when it cannot be saved
	 * (a full disk): the next run rebuilds it again */
	idd_error e2;
	if (idd_cache_save_index(c, &e2))
		idd_warnf(c->warn, c->ctx, "warning: cache: %s: index rebuilt from %zu images, not saved: %s",
		          c->dir, c->count, e2.msg);
	else
		idd_warnf(c->warn, c->ctx, "warning: cache: %s: index rebuilt from %zu images", c->dir, c->count);
	return IDD_OK;
}

static int64_t index_mtime(const idd_cache *c)
{
	char path[4200];
	snprintf(path, sizeof path, "%s/%s", c->dir, IDD_CACHE_INDEX);
	struct stat st;
	return stat(path, &st) ? 0 : idd_ts_ns(st.st_mtim);
}

static int load_index(idd_cache *c, idd_error *err)
{
	entries_clear(c);
	c->index_mtime = index_mtime(c);
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
		idd_warnf(c->warn, c->ctx, "warning: %s; rebuilding it from the images present", e2.msg);
		return rebuild_index(c, err);
	}
	return IDD_OK;
}

int idd_cache_save_index(idd_cache *c, idd_error *err)
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

int idd_cache_open_locked(const char *dir, idd_warn_fn warn, void *ctx, idd_cache **out, int *lockfd,
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
	if (idd_cache_open_locked(dir, warn, ctx, out, &lockfd, err))
		return IDD_ERR;
	idd_unlock(lockfd);
	return IDD_OK;
}

static int scan_partials(idd_cache *c, idd_error *err);

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
			idd_error e2;
			e->fd = open_shared(e->abs, &e2);
			if (e->fd < 0) {
				idd_warnf(c->warn, c->ctx, "warning: cache: %s; not used", e2.msg);
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
	return scan_partials(c, err);
}

/* ---- partial images and changes made by other processes ---- */

static int grow_entries(idd_cache *c, idd_error *err)
{
	idd_cache_entry *ne = idd_realloc_array(c->e, c->count + 1, sizeof *c->e, err);
	if (!ne)
		return IDD_ENOMEM;
	c->e = ne;
	idd_cache_entry *e = &c->e[c->count];
	memset(e, 0, sizeof *e);
	e->fd = -1;
	atomic_init(&e->used, false);
	atomic_init(&e->damaged, false);
	atomic_init(&e->warned, false);
	return IDD_OK;
}

/* Add d -> (entry, block) unless the cache knows the content already.
 * Called with the write lock held (or before any other thread exists). */
static int lookup_add(idd_cache *c, size_t entry, const idd_digest *d, uint64_t block, idd_error *err)
{
	bool added;
	size_t slot = idd_digest_set_add(&c->lookup, d, &added, err);
	if (slot == (size_t)-1)
		return IDD_ENOMEM;
	if (added)
		c->lookup.aux[slot] = (uint64_t)entry << 40 | block;
	return IDD_OK;
}

struct journal_ctx {
	idd_cache *c;
	size_t entry;
	idd_error *err;
};

static int journal_record(void *ctx, const idd_partial_record *r)
{
	struct journal_ctx *j = ctx;
	return lookup_add(j->c, j->entry, &r->digest, r->block, j->err);
}

/* Read what entry's journal gained since last time.  Write lock held. */
static int read_journal(idd_cache *c, size_t i, idd_error *err)
{
	idd_cache_entry *e = &c->e[i];
	idd_partial_header h;
	struct journal_ctx j = {c, i, err};
	int rc = idd_partial_journal_read(e->journal, &h, &e->journal_off, journal_record, &j, err);
	if (rc == IDD_ENOENT) /* completed and renamed, or removed by gc */
		return IDD_OK;
	if (rc == IDD_ENOMEM)
		return rc;
	if (rc) { /* damaged: its blocks are simply not known */
		idd_warnf(c->warn, c->ctx, "warning: cache: %s; not used", err->msg);
		return IDD_OK;
	}
	if (h.block_size != e->block_size)
		atomic_store(&e->damaged, true);
	return IDD_OK;
}

static int add_partial_locked(idd_cache *c, const char *data_path, const char *journal_path,
                              uint64_t size, uint32_t bs, size_t *entry, idd_error *err)
{
	for (size_t i = 0; i < c->count; i++)
		if (c->e[i].partial && !strcmp(c->e[i].abs, data_path)) {
			*entry = i;
			return IDD_OK;
		}
	if (grow_entries(c, err))
		return IDD_ENOMEM;
	idd_cache_entry *e = &c->e[c->count];
	e->partial = true;
	e->rewritable = true;
	e->owned = true;
	e->abs = idd_strdup(data_path, err);
	e->path = idd_strdup(data_path, err);
	e->journal = idd_strdup(journal_path, err);
	e->block_size = bs;
	e->size = size;
	if (!e->abs || !e->path || !e->journal) {
		idd_cache_entry_free(e);
		return IDD_ENOMEM;
	}
	idd_error e2; /* unusable: its blocks are simply not known */
	e->fd = open_shared(data_path, &e2);
	c->count++;
	*entry = c->count - 1;
	return e->fd < 0 ? IDD_OK : read_journal(c, c->count - 1, err);
}

/* Partial images in CACHE/images/ of the prepared block size. */
static int scan_partials(idd_cache *c, idd_error *err)
{
	char *dir = idd_path_join(c->dir, IDD_CACHE_IMAGES, err);
	if (!dir)
		return IDD_ENOMEM;
	DIR *dh = opendir(dir);
	if (!dh) {
		free(dir);
		return IDD_OK;
	}
	int rc = IDD_OK;
	struct dirent *de;
	size_t sl = strlen(IDD_PARTIAL_JOURNAL_SUFFIX);
	while (!rc && (de = readdir(dh))) {
		size_t n = strlen(de->d_name);
		if (n <= sl || strcmp(de->d_name + n - sl, IDD_PARTIAL_JOURNAL_SUFFIX))
			continue;
		char *journal = idd_path_join(dir, de->d_name, err);
		char *data = journal ? idd_asprintf(err, "%.*s%s", (int)(strlen(journal) - sl), journal,
		                                    IDD_PARTIAL_DATA_SUFFIX) : NULL;
		if (!data) {
			free(journal);
			rc = IDD_ENOMEM;
			break;
		}
		bool known = false;
		for (size_t i = 0; i < c->count && !known; i++)
			known = c->e[i].partial && !strcmp(c->e[i].abs, data);
		idd_partial_header h;
		uint64_t off = 0;
		idd_error e2;
		if (!known && idd_partial_journal_read(journal, &h, &off, count_nothing, NULL, &e2) == IDD_OK &&
		    h.block_size == c->lookup_bs) {
			size_t idx;
			rc = add_partial_locked(c, data, journal, h.image_size, h.block_size, &idx, err);
		}
		free(journal);
		free(data);
	}
	closedir(dh);
	free(dir);
	return rc;
}

/* Images a deploy registered since the index was read. */
static int pick_up_index(idd_cache *c, idd_error *err)
{
	int64_t mt = index_mtime(c);
	if (mt == c->index_mtime)
		return IDD_OK;
	idd_cache *fresh = idd_calloc(1, sizeof *fresh, err);
	if (!fresh)
		return IDD_ENOMEM;
	fresh->dir = c->dir; /* borrowed */
	fresh->warn = c->warn;
	fresh->ctx = c->ctx;
	int rc = load_index(fresh, err);
	c->index_mtime = fresh->index_mtime;
	for (size_t i = 0; !rc && i < fresh->count; i++) {
		idd_cache_entry *ne = &fresh->e[i];
		bool known = ne->block_size != c->lookup_bs;
		for (size_t k = 0; k < c->count && !known; k++)
			known = !c->e[k].partial && !strcmp(c->e[k].abs, ne->abs);
		if (known)
			continue;
		if ((rc = grow_entries(c, err)))
			break;
		size_t idx = c->count++;
		c->e[idx] = *ne;
		memset(ne, 0, sizeof *ne);
		ne->fd = -1;
		idd_cache_entry *e = &c->e[idx];
		idd_error e2; /* vanished since: not used */
		e->fd = open_shared(e->abs, &e2);
		for (uint64_t k = 0; e->fd >= 0 && !rc && k < e->n; k++)
			rc = lookup_add(c, idx, &e->digests[k], e->blocks[k], err);
	}
	fresh->dir = NULL;
	entries_clear(fresh);
	free(fresh);
	return rc;
}

int idd_cache_refresh(idd_cache *c, idd_error *err)
{
	if (!c->have_lookup)
		return IDD_OK;
	pthread_rwlock_wrlock(&c->lock);
	int rc = IDD_OK;
	for (size_t i = 0; !rc && i < c->count; i++)
		if (c->e[i].partial && c->e[i].fd >= 0)
			rc = read_journal(c, i, err);
	if (!rc)
		rc = scan_partials(c, err);
	if (!rc)
		rc = pick_up_index(c, err);
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

int idd_cache_add_block(idd_cache *c, size_t entry, const idd_digest *d, uint64_t block,
                        idd_error *err)
{
	pthread_rwlock_wrlock(&c->lock);
	int rc = IDD_OK;
	if (c->have_lookup) {
		bool added;
		size_t slot = idd_digest_set_add(&c->lookup, d, &added, err);
		if (slot == (size_t)-1)
			rc = IDD_ENOMEM;
		else /* the copy just written and verified: read it there from now on */
			c->lookup.aux[slot] = (uint64_t)entry << 40 | block;
	}
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

int idd_cache_partial_entry(idd_cache *c, const char *data_path, const char *journal_path,
                            uint64_t size, size_t *entry, idd_error *err)
{
	pthread_rwlock_wrlock(&c->lock);
	int rc = add_partial_locked(c, data_path, journal_path, size, c->lookup_bs, entry, err);
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

void idd_cache_set_rewritable(idd_cache *c, const char *path)
{
	pthread_rwlock_wrlock(&c->lock);
	for (size_t i = 0; i < c->count; i++)
		if (!c->e[i].partial && !strcmp(c->e[i].abs, path))
			c->e[i].rewritable = true;
	pthread_rwlock_unlock(&c->lock);
}

/* Digest k of m (numbered in order of first occurrence) first occurs at
 * block first[k]; false when the map's digests are not in that order. */
static bool first_blocks(const idd_map *m, uint64_t *first)
{
	uint64_t seen = 0;
	for (size_t ri = 0; ri < m->nruns && seen < m->ndistinct; ri++) {
		const idd_map_span *run = &m->runs[ri];
		if (run->kind == IDD_RUN_ZERO)
			continue;
		/* a new digest repeated at once is one run of that digest repeated */
		if (run->kind == IDD_RUN_SAME) {
			if (run->ref == seen + 1)
				first[seen++] = run->block;
			continue;
		}
		for (uint64_t b = run->block; b < run->block + run->count; b++)
			if (idd_map_span_ref(run, b) == seen + 1)
				first[seen++] = b;
	}
	return seen == m->ndistinct;
}

bool idd_cache_entry_holds(const idd_cache_entry *e, const idd_map *m)
{
	if (e->block_size != m->block_size || e->size != m->image_size || e->n != m->ndistinct)
		return false;
	uint64_t *first = malloc((m->ndistinct ? m->ndistinct : 1) * sizeof *first);
	bool same = first && first_blocks(m, first) &&
	            !memcmp(e->digests, m->digests, (size_t)m->ndistinct * sizeof *e->digests) &&
	            !memcmp(e->blocks, first, (size_t)m->ndistinct * sizeof *first);
	free(first);
	return same;
}

int idd_cache_adopt(idd_cache *c, const char *path, const idd_map *m, idd_error *err)
{
	uint64_t *first = idd_calloc(m->ndistinct ? m->ndistinct : 1, sizeof *first, err);
	if (!first)
		return IDD_ENOMEM;
	if (!first_blocks(m, first)) {
		free(first);
		return idd_fail(err, "%s: map digests are not in order of first occurrence", path);
	}
	pthread_rwlock_wrlock(&c->lock);
	int rc = IDD_OK;
	if (c->have_lookup && m->block_size == c->lookup_bs && !(rc = grow_entries(c, err))) {
		idd_cache_entry *e = &c->e[c->count];
		size_t dl = strlen(c->dir);
		e->owned = !strncmp(path, c->dir, dl) && path[dl] == '/';
		e->rewritable = true;
		e->abs = idd_strdup(path, err);
		e->path = idd_strdup(e->owned ? path + dl + 1 : path, err);
		e->block_size = m->block_size;
		e->size = m->image_size;
		idd_error e2; /* gone since: nothing to read there */
		if (!e->abs || !e->path) {
			idd_cache_entry_free(e);
			rc = IDD_ENOMEM;
		} else if ((e->fd = open_shared(path, &e2)) < 0) {
			idd_cache_entry_free(e);
		} else {
			size_t idx = c->count++;
			for (uint64_t k = 0; !rc && k < m->ndistinct; k++) {
				bool added;
				size_t slot = idd_digest_set_add(&c->lookup, &m->digests[k], &added, err);
				if (slot == (size_t)-1)
					rc = IDD_ENOMEM;
				else /* the copy just checked: read it there from now on */
					c->lookup.aux[slot] = (uint64_t)idx << 40 | first[k];
			}
		}
	}
	pthread_rwlock_unlock(&c->lock);
	free(first);
	return rc;
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
		n += atomic_load(&c->e[i].damaged) || atomic_load(&c->e[i].warned);
	pthread_rwlock_unlock(&c->lock);
	return n;
}

void idd_cache_usage(idd_cache *c, uint64_t *disk_bytes, uint64_t *partial_images)
{
	*disk_bytes = *partial_images = 0;
	pthread_rwlock_rdlock(&c->lock);
	for (size_t i = 0; i < c->count; i++) {
		const idd_cache_entry *e = &c->e[i];
		struct stat st;
		if (e->fd >= 0 ? fstat(e->fd, &st) != 0 : stat(e->abs, &st) != 0)
			continue; /* gone: nothing on disk */
		*disk_bytes += (uint64_t)st.st_blocks * 512;
		*partial_images += e->partial;
	}
	pthread_rwlock_unlock(&c->lock);
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
	bool was = e->rewritable ? atomic_exchange(&e->warned, true) : atomic_exchange(&e->damaged, true);
	char *path = was ? NULL : strdup(e->abs);
	pthread_rwlock_unlock(&c->lock);
	if (path)
		idd_warnf(c->warn, c->ctx, "warning: cache: %s: block at offset %llu does not match the cache index (file "
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
			pthread_rwlock_rdlock(&c->lock);
			bool rewritable = c->e[loc[k].entry].rewritable;
			pthread_rwlock_unlock(&c->lock);
			if (rewritable)
				continue; /* that block only: it is refetched and written back */
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

static int register_locked(idd_cache *c, const char *path, const idd_map *m, idd_error *err);

int idd_cache_register(idd_cache *c, const char *path, const idd_map *m, idd_error *err)
{
	/* entries are moved aside while the index is rewritten: readers wait */
	pthread_rwlock_wrlock(&c->lock);
	int rc = register_locked(c, path, m, err);
	pthread_rwlock_unlock(&c->lock);
	return rc;
}

static int register_locked(idd_cache *c, const char *path, const idd_map *m, idd_error *err)
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
				idd_cache_entry_free(&c->e[i]);
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
			if (!first_blocks(m, e->blocks))
				rc = idd_fail(err, "%s: map digests are not in order of first occurrence", path);
			else
				memcpy(e->digests, m->digests, (size_t)m->ndistinct * sizeof *e->digests);
		}
	}
	if (!rc)
		rc = idd_cache_save_index(c, err);
	idd_unlock(lockfd);
	/* keep this run's open descriptors: swap back the entries we read from */
	for (size_t i = 0; i < c->count; i++)
		idd_cache_entry_free(&c->e[i]);
	free(c->e);
	c->e = old_e;
	c->count = old_count;
	free(used);
	return rc;
}
