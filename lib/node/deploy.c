/* deploy.c - materialise an image from its block map: zero blocks become
 * holes, blocks the node already holds (cache, seeds, an interrupted OUT,
 * repeats inside OUT) are copied locally, and each distinct missing block is
 * fetched once from the repository, in its original format, by range.
 * Every block is verified against its digest before it is written.  How it
 * works and why: docs/deploy.md. */
#include "node/cache.h"
#include "index/indexfile.h"
#include "formats/archive.h"
#include "index/repo.h"
#include "index/catalog.h"
#include "formats/image.h"
#include "node/fetch.h"
#include "index/map.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* The catalog's container format (catalog.c owns the writer). */
#define MAX_INDEX_FILE ((size_t)1 << 32)
/* Fetch windows: bounded memory, yet large enough to coalesce well. */
#define WINDOW_BYTES ((uint64_t)16 << 20)
#define WINDOW_BLOCKS 16384
/* Local copies are done in runs of up to this many bytes. */
#define RUN_BYTES ((size_t)1 << 20)

enum src_state { ST_NONE, ST_HAVE, ST_CACHE, ST_SEED, ST_FETCH };

struct seed {
	char *path;
	int fd;
	uint64_t size;
};

/* Where the stored bytes of the image come from. */
struct remote_image {
	idd_file *file;        /* the file in SOURCE holding the image (root of ranges) */
	uint64_t base;         /* member offset inside an uncompressed archive */
	idd_image *img;        /* NULL: raw, virtual offset == stored offset */
	idd_file **backing;    /* backing files opened for img (their offsets are their own) */
	size_t nbacking;
	idd_source *src;
	const char *img_dir;   /* directory of the image, relative to SOURCE ("" at the top) */
	int tmp_fd;            /* compressed archives: the member extracted here */
};

struct deploy {
	const idd_deploy_opts *o;
	idd_deploy_stats *st;
	idd_error *err;
	idd_source *src, *isrc;
	char *index_prefix;    /* "" or ".imgdedup/" */
	idd_catalog *cat;
	const idd_image_info *info;
	idd_map *m;
	idd_cache *cache;
	struct seed *seeds;
	size_t nseeds;
	idd_digest_set seed_set; /* digest -> seed << 40 | block */
	bool have_seed_set;
	idd_hasher *h;
	char *out, *part;
	int fd;
	atomic_bool reflink_ok;   /* shared by the verify threads */
	uint32_t bs;
	/* per block / per digest (index k = ref, 1..ndistinct) */
	unsigned char *valid;  /* block already right in OUT.part */
	unsigned char *state;
	uint64_t *loc;         /* ST_CACHE: entry << 40 | block; ST_SEED: seed << 40 | block */
	uint64_t *pos;         /* block of OUT holding digest k, UINT64_MAX: none yet */
	struct remote_image ri;
	bool ri_open;
	uint64_t *fetch_list;  /* blocks to fetch, in order */
	size_t nfetch;
};

static void dwarn(struct deploy *d, const char *fmt, ...) IDD_PRINTF(2, 3);
static void dwarn(struct deploy *d, const char *fmt, ...)
{
	if (!d->o->warn)
		return;
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	d->o->warn(d->o->ctx, msg);
}

static void progress(struct deploy *d)
{
	if (d->o->progress) {
		idd_fetch_stats fs;
		idd_source_stats(d->src, &fs);
		d->st->requests = fs.requests;
		if (d->isrc != d->src) {
			idd_fetch_stats is;
			idd_source_stats(d->isrc, &is);
			d->st->requests += is.requests;
		}
		d->o->progress(d->o->ctx, d->st);
	}
}

static uint64_t block_len(const struct deploy *d, uint64_t b)
{
	uint64_t off = b * d->bs;
	return IDD_MIN((uint64_t)d->bs, d->m->image_size - off);
}

static int write_all_at(struct deploy *d, const void *buf, size_t len, uint64_t off)
{
	return idd_pwrite_all(d->fd, buf, len, off) ? idd_fail_errno(d->err, d->part, "write") : IDD_OK;
}

/* Start writing back what was just written: the device works while we hash
 * the next blocks, and the final fsync has little left to wait for.  Only a
 * hint: errors surface in that fsync. */
static void start_writeback(int fd, uint64_t off, uint64_t len)
{
	(void)sync_file_range(fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static bool digest_eq(const idd_digest *a, const idd_digest *b)
{
	return !memcmp(a->b, b->b, IDD_DIGEST_SIZE);
}

/* ---- reading the source's index ---- */

/* Fetch and check the block map of catalog image `in`.  The map is
 * untrusted: beyond the parser's checks, it must agree with the catalog and
 * every reference must fall inside its digest table. */
static int fetch_map(struct deploy *d, const idd_image_info *in, idd_map **out)
{
	*out = NULL;
	char *mrel = idd_map_relpath(in->id, d->err);
	char *mpath = mrel ? idd_asprintf(d->err, "%s%s", d->index_prefix, mrel) : NULL;
	free(mrel);
	if (!mpath)
		return IDD_ERR;
	void *file = NULL;
	size_t flen = 0;
	idd_map *m = NULL;
	int rc = idd_source_get(d->isrc, mpath, MAX_INDEX_FILE, &file, &flen, d->err);
	if (rc == IDD_ENOENT)
		idd_error_prefix(d->err, "%s: no block map (run 'imgdedup map' in the source)", in->id);
	if (!rc) {
		d->st->bytes_index += flen;
		rc = idd_map_parse(mpath, file, flen, &m, d->err);
		free(file);
	}
	free(mpath);
	if (rc)
		return IDD_ERR;
	static const idd_digest zero_key;
	rc = IDD_ERR;
	if (m->block_size != d->bs || m->image_size != in->virtual_size || m->nblocks != in->nblocks) {
		idd_fail(d->err, "%s: the block map does not match the catalog (size or block size); "
		         "run 'imgdedup map' in the source", in->id);
		goto out;
	}
	if (memcmp(m->list_key.b, zero_key.b, IDD_DIGEST_SIZE) && !digest_eq(&m->list_key, &in->list_key)) {
		idd_fail(d->err, "%s: the block map is older than the catalog; run 'imgdedup map' in the "
		         "source", in->id);
		goto out;
	}
	/* Independent of the parser's checks: every reference in range. */
	for (size_t i = 0; i < m->nruns; i++)
		if ((uint64_t)m->runs[i].ref + (m->runs[i].kind == IDD_RUN_SEQ ? m->runs[i].count - 1 : 0) >
		    m->ndistinct) {
			idd_fail(d->err, "%s: corrupt block map (reference past the digest table)", in->id);
			goto out;
		}
	for (uint64_t k = 0; k < m->ndistinct; k++)
		if (idd_digest_is_zero(&m->digests[k])) {
			idd_fail(d->err, "%s: corrupt block map (zero digest in the table)", in->id);
			goto out;
		}
	rc = IDD_OK;
out:
	if (rc)
		idd_map_free(m);
	else
		*out = m;
	return rc;
}

static int load_index(struct deploy *d)
{
	const idd_deploy_opts *o = d->o;
	char *rel = idd_asprintf(d->err, "%s%s", d->index_prefix, IDD_CATALOG_FILE);
	if (!rel)
		return IDD_ERR;
	void *file = NULL;
	size_t flen = 0;
	int rc = idd_source_get(d->isrc, rel, MAX_INDEX_FILE, &file, &flen, d->err);
	if (rc == IDD_ENOENT)
		idd_error_prefix(d->err, "no index in the source (run 'imgdedup scan' and 'imgdedup map' there)");
	if (!rc) {
		d->st->bytes_index += flen;
		rc = idd_catalog_parse_file(rel, file, flen, &d->cat, d->err);
	}
	free(file);
	free(rel);
	if (rc)
		return IDD_ERR;
	d->bs = d->cat->block_size;
	d->info = idd_catalog_find(d->cat, o->image);
	if (!d->info)
		return idd_fail(d->err, "%s: no image '%s' in the source's index", idd_source_root(d->src),
		                o->image);
	/* The catalog is untrusted: the file it names must stay inside SOURCE. */
	if (!idd_relpath_ok(d->info->file))
		return idd_fail(d->err, "%s: refused: the index names '%s', a path outside the source",
		                o->image, d->info->file);

	return fetch_map(d, d->info, &d->m);
}

/* ---- OUT.part: create, or verify what an interrupted run wrote ---- */

static int open_part(struct deploy *d)
{
	d->fd = open(d->part, O_RDWR | O_CREAT | O_CLOEXEC | O_NOCTTY, 0644);
	if (d->fd < 0)
		return idd_fail_errno(d->err, d->part, "cannot create");
	if (flock(d->fd, LOCK_EX | LOCK_NB))
		return idd_fail(d->err, "%s: another deploy is writing this file", d->part);
	struct stat st;
	if (fstat(d->fd, &st))
		return idd_fail_errno(d->err, d->part, "stat");
	if (!S_ISREG(st.st_mode))
		return idd_fail(d->err, "%s: not a regular file", d->part);
	if ((uint64_t)st.st_size != d->m->image_size) {
		if (ftruncate(d->fd, 0) || ftruncate(d->fd, (off_t)d->m->image_size))
			return idd_fail_errno(d->err, d->part, "cannot size");
		return IDD_OK;
	}
	/* Same size: probably our own interrupted run.  Trust nothing: hash the
	 * data regions and keep the blocks that match the map. */
	unsigned char *buf = idd_malloc(RUN_BYTES + d->bs, d->err);
	idd_digest *dg = idd_calloc(RUN_BYTES / d->bs + 1, sizeof *dg, d->err);
	if (!buf || !dg) {
		free(buf);
		free(dg);
		return IDD_ERR;
	}
	int rc = IDD_OK;
	uint64_t size = d->m->image_size, off = 0;
	while (off < size) {
		off_t ds = lseek(d->fd, (off_t)off, SEEK_DATA);
		if (ds < 0)
			break; /* ENXIO: only holes remain (or no SEEK_DATA: start over) */
		off_t he = lseek(d->fd, ds, SEEK_HOLE);
		uint64_t end = he < 0 ? size : IDD_MIN((uint64_t)he, size);
		uint64_t b0 = (uint64_t)ds / d->bs, b1 = (end + d->bs - 1) / d->bs;
		for (uint64_t b = b0; b < b1;) {
			uint64_t nb = IDD_MIN(b1 - b, (uint64_t)(RUN_BYTES / d->bs));
			uint64_t start = b * d->bs, len = IDD_MIN(nb * d->bs, size - start);
			memset(buf, 0, nb * d->bs);
			if (idd_pread_all(d->fd, buf, (size_t)len, start)) {
				rc = idd_fail_errno(d->err, d->part, "read");
				goto out;
			}
			uint64_t hashed = 0;
			if (idd_hash_blocks(d->h, buf, (size_t)(nb * d->bs), d->bs, dg, &hashed, d->err)) {
				rc = IDD_ERR;
				goto out;
			}
			for (uint64_t i = 0; i < nb; i++) {
				uint64_t blk = b + i;
				uint32_t ref = idd_map_ref(d->m, blk);
				if (ref == 0) {
					/* the map says zero: make it a hole again (or zeros) */
					uint64_t bl = block_len(d, blk);
					if (fallocate(d->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					              (off_t)(blk * d->bs), (off_t)bl) &&
					    !idd_digest_is_zero(&dg[i])) {
						memset(buf, 0, bl);
						if (write_all_at(d, buf, bl, blk * d->bs)) {
							rc = IDD_ERR;
							goto out;
						}
					}
				} else if (digest_eq(&dg[i], &d->m->digests[ref - 1])) {
					d->valid[blk] = 1;
					if (d->pos[ref] == UINT64_MAX)
						d->pos[ref] = blk;
					d->st->bytes_resumed += block_len(d, blk);
				}
			}
			b += nb;
		}
		off = end;
	}
out:
	free(buf);
	free(dg);
	return rc;
}

/* ---- seeds: read-only local raw images, known by their map or hashed ---- */

/* How many blocks of a seed found by name are read and compared with its
 * map before the map is believed (a renamed or reused file fails here). */
#define SEED_SPOT_CHECKS 8

static bool seed_block_is(struct deploy *d, struct seed *sd, uint64_t b, const idd_digest *want,
                          unsigned char *buf)
{
	uint64_t off = b * d->bs;
	if (off >= sd->size)
		return false;
	size_t n = (size_t)IDD_MIN((uint64_t)d->bs, sd->size - off);
	memset(buf + n, 0, d->bs - n);
	idd_digest got;
	return idd_pread_all(sd->fd, buf, n, off) == 0 && !idd_hasher_digest(d->h, buf, d->bs, &got, NULL) &&
	       digest_eq(&got, want);
}

/* The catalog image a seed is a copy of, if any: the seed's real path inside
 * a local SOURCE (*same_file when its identity is the one scanned), else an
 * image whose id or cache name ends like the seed's name, of the same size. */
static const idd_image_info *seed_candidate(struct deploy *d, struct seed *sd, bool *same_file)
{
	*same_file = false;
	struct stat st;
	if (fstat(sd->fd, &st))
		return NULL;
	const idd_image_info *in = NULL;
	if (!idd_source_is_remote(d->src)) {
		char *root = realpath(idd_source_root(d->src), NULL);
		char *real = realpath(sd->path, NULL);
		size_t rl = root ? strlen(root) : 0;
		if (root && real && !strncmp(real, root, rl) && real[rl] == '/')
			in = idd_catalog_find(d->cat, real + rl + 1);
		free(root);
		free(real);
		if (in && !in->member[0] && !strcmp(in->format, "raw") && in->dev == (uint64_t)st.st_dev &&
		    in->ino == (uint64_t)st.st_ino && in->file_size == (uint64_t)st.st_size &&
		    in->mtime_ns == idd_ts_ns(st.st_mtim) &&
		    in->ctime_ns == idd_ts_ns(st.st_ctim)) {
			*same_file = true;
			return in;
		}
	}
	if (in && in->virtual_size == sd->size)
		return in;
	const char *base = strrchr(sd->path, '/');
	base = base ? base + 1 : sd->path;
	const idd_image_info *found = NULL;
	for (size_t i = 0; i < d->cat->count; i++) {
		const idd_image_info *c = &d->cat->images[i];
		if (c->virtual_size != sd->size)
			continue;
		const char *cb = strrchr(c->id, '/');
		cb = cb ? cb + 1 : c->id;
		bool match = !strcmp(cb, base);
		if (!match) { /* a deploy into another cache: images/ID with '/' -> '__' */
			idd_error e2;
			char *flat = idd_cache_default_out(".", c->id, &e2);
			const char *fb = flat ? strrchr(flat, '/') : NULL;
			match = fb && !strcmp(fb + 1, base);
			free(flat);
		}
		if (match) {
			if (found)
				return NULL; /* ambiguous: hash it */
			found = c;
		}
	}
	return found;
}

/* Use the seed's map instead of hashing it: every block is still verified
 * when it is copied.  False (hash the seed) when no map fits. */
static bool seed_from_map(struct deploy *d, size_t s, idd_digest_set *want)
{
	struct seed *sd = &d->seeds[s];
	bool same_file;
	const idd_image_info *in = seed_candidate(d, sd, &same_file);
	if (!in)
		return false;
	idd_map *m = d->m; /* a copy of the very image being deployed: its map is loaded */
	if (in != d->info) {
		idd_error e2;
		idd_error *saved = d->err;
		d->err = &e2; /* a missing or bad map is not an error: hash instead */
		int rc = fetch_map(d, in, &m);
		d->err = saved;
		if (rc)
			return false;
	}
	bool ok = true;
	if (!same_file) { /* found by name only: a few blocks must agree */
		idd_error e3;
		unsigned char *buf = idd_malloc(d->bs, &e3);
		uint64_t nz = 0;
		for (uint64_t b = 0; b < m->nblocks; b++)
			nz += idd_map_ref(m, b) != 0;
		uint64_t step = nz / SEED_SPOT_CHECKS + 1, seen = 0;
		ok = buf != NULL;
		for (uint64_t b = 0; ok && b < m->nblocks; b++) {
			if (!idd_map_ref(m, b))
				continue;
			if (seen++ % step == 0)
				ok = seed_block_is(d, sd, b, &m->digests[idd_map_ref(m, b) - 1], buf);
		}
		free(buf);
	}
	if (ok) {
		for (uint64_t b = 0; b < m->nblocks; b++) {
			uint32_t ref = idd_map_ref(m, b);
			if (!ref)
				continue;
			size_t slot = idd_digest_set_find(want, &m->digests[ref - 1]);
			if (slot == (size_t)-1)
				continue;
			uint64_t k = want->aux[slot];
			if (d->state[k] == ST_FETCH) {
				d->state[k] = ST_SEED;
				d->loc[k] = (uint64_t)s << 40 | b;
			}
		}
		d->st->seeds_mapped++;
	}
	if (m != d->m)
		idd_map_free(m);
	return ok;
}

static int hash_seeds(struct deploy *d)
{
	/* Only digests nobody else provides are worth looking for. */
	size_t need = 0;
	for (uint64_t k = 1; k <= d->m->ndistinct; k++)
		need += d->state[k] == ST_FETCH;
	if (!need || !d->nseeds)
		return IDD_OK;
	idd_digest_set want;
	if (idd_digest_set_init(&want, need, true, d->err))
		return IDD_ERR;
	for (uint64_t k = 1; k <= d->m->ndistinct; k++) {
		if (d->state[k] != ST_FETCH)
			continue;
		bool added;
		size_t slot = idd_digest_set_add(&want, &d->m->digests[k - 1], &added, d->err);
		if (slot == (size_t)-1) {
			idd_digest_set_free(&want);
			return IDD_ERR;
		}
		want.aux[slot] = k;
	}
	unsigned char *buf = idd_malloc(RUN_BYTES, d->err);
	idd_digest *dg = idd_calloc(RUN_BYTES / d->bs, sizeof *dg, d->err);
	int rc = (!buf || !dg) ? IDD_ERR : IDD_OK;
	for (size_t s = 0; !rc && s < d->nseeds; s++) {
		struct seed *sd = &d->seeds[s];
		if (seed_from_map(d, s, &want))
			continue;
		uint64_t off = 0;
		while (!rc && off < sd->size) {
			off_t ds = lseek(sd->fd, (off_t)off, SEEK_DATA);
			if (ds < 0)
				break;
			off_t he = lseek(sd->fd, ds, SEEK_HOLE);
			uint64_t end = he < 0 ? sd->size : IDD_MIN((uint64_t)he, sd->size);
			for (uint64_t b = (uint64_t)ds / d->bs; !rc && b * d->bs < end;) {
				uint64_t start = b * d->bs;
				uint64_t len = IDD_MIN((uint64_t)RUN_BYTES, sd->size - start);
				uint64_t nb = (len + d->bs - 1) / d->bs;
				memset(buf, 0, nb * d->bs);
				uint64_t hashed = 0;
				if (idd_pread_all(sd->fd, buf, (size_t)len, start)) {
					rc = idd_fail_errno(d->err, sd->path, "read");
					break;
				}
				if (idd_hash_blocks(d->h, buf, (size_t)(nb * d->bs), d->bs, dg, &hashed, d->err)) {
					rc = IDD_ERR;
					break;
				}
				for (uint64_t i = 0; i < nb; i++) {
					if (idd_digest_is_zero(&dg[i]))
						continue;
					size_t slot = idd_digest_set_find(&want, &dg[i]);
					if (slot == (size_t)-1)
						continue;
					uint64_t k = want.aux[slot];
					if (d->state[k] == ST_FETCH) {
						d->state[k] = ST_SEED;
						d->loc[k] = (uint64_t)s << 40 | (b + i);
					}
				}
				b += nb;
			}
			off = end;
		}
	}
	free(buf);
	free(dg);
	idd_digest_set_free(&want);
	return rc;
}

/* ---- local copies: cache and seeds, in runs, verified on every core ---- */

/* Clone [src_off, +len) of src_fd into OUT at dst_off when the filesystem can. */
static bool try_reflink(struct deploy *d, int src_fd, uint64_t src_off, uint64_t len, uint64_t dst_off)
{
	if (!atomic_load_explicit(&d->reflink_ok, memory_order_relaxed))
		return false;
	struct file_clone_range r = {.src_fd = src_fd, .src_offset = src_off, .src_length = len,
	                             .dest_offset = dst_off};
	if (ioctl(d->fd, FICLONERANGE, &r) == 0)
		return true;
	if (errno == EOPNOTSUPP || errno == EXDEV || errno == ENOTTY || errno == EPERM ||
	    errno == ENOSYS || errno == EINVAL)
		atomic_store(&d->reflink_ok, false); /* this filesystem cannot: stop trying */
	return false;
}

/* Blocks b0..b0+n of OUT (first occurrences of their digests) are blocks
 * sb0..sb0+n of one local file: one pread, one verify per block, one pwrite
 * per verified stretch. */
struct local_run {
	uint64_t b0, sb0;
	uint32_t n;
	bool seed;           /* src: a seed index, else a cache entry index */
	uint32_t src;
	uint32_t first_bad;  /* result: first block failing verification, UINT32_MAX: none */
};

struct run_pool {
	struct deploy *d;
	struct local_run *runs;
	size_t nruns;
	atomic_size_t next;
	atomic_uchar *cache_bad;   /* per cache entry: a block failed, skip the rest */
	unsigned char *failed;     /* per OUT block: not written, fetch it */
	atomic_uint_least64_t done, reflinked;
	atomic_bool stop;          /* a worker hit a hard error (write failed) */
};

struct run_worker {
	struct run_pool *p;
	idd_hasher *h;
	unsigned char *buf;
	pthread_t thread;
	int rc;
	idd_error err;
};

/* The clone shares the source's blocks as they are now, not as they were
 * when hashed: a source changed in between would slip through.  Read the
 * clone back and compare it with the verified bytes; on a mismatch (or a
 * failed read) the caller writes the verified bytes instead. */
static bool reflink_matches(struct deploy *d, const unsigned char *verified, uint64_t len,
                            uint64_t dst)
{
	unsigned char *back = malloc((size_t)len);
	bool same = back && idd_pread_all(d->fd, back, (size_t)len, dst) == 0 &&
	            memcmp(back, verified, (size_t)len) == 0;
	free(back);
	return same;
}

static int run_one(struct run_worker *w, struct local_run *r)
{
	struct run_pool *p = w->p;
	struct deploy *d = p->d;
	int fd;
	uint64_t size;
	if (r->seed) {
		fd = d->seeds[r->src].fd;
		size = d->seeds[r->src].size;
	} else {
		fd = d->cache->e[r->src].fd;
		size = d->cache->e[r->src].size;
		if (atomic_load_explicit(&p->cache_bad[r->src], memory_order_relaxed)) {
			memset(p->failed + r->b0, 1, r->n);
			return IDD_OK;
		}
	}
	uint64_t bs = d->bs;
	uint64_t src_off = r->sb0 * bs;
	uint64_t avail = size > src_off ? size - src_off : 0;
	uint64_t want = IDD_MIN((uint64_t)r->n * bs, avail);
	memset(w->buf + want, 0, (size_t)(r->n * bs - want));
	bool read_ok = idd_pread_all(fd, w->buf, (size_t)want, src_off) == 0;
	for (uint32_t i = 0; i < r->n; i++) {
		bool ok = false;
		if (read_ok) {
			idd_digest got;
			if (idd_hasher_digest(w->h, w->buf + i * bs, d->bs, &got, &w->err))
				return IDD_ERR;
			ok = digest_eq(&got, &d->m->digests[idd_map_ref(d->m, r->b0 + i) - 1]);
		}
		if (!ok) {
			p->failed[r->b0 + i] = 1;
			if (r->first_bad == UINT32_MAX)
				r->first_bad = i;
		}
	}
	if (r->first_bad != UINT32_MAX && !r->seed)
		atomic_store(&p->cache_bad[r->src], 1);
	/* write each verified stretch: the bytes written are the bytes hashed */
	for (uint32_t i = 0; i < r->n;) {
		if (p->failed[r->b0 + i]) {
			i++;
			continue;
		}
		uint32_t j = i + 1;
		while (j < r->n && !p->failed[r->b0 + j])
			j++;
		uint64_t dst = (r->b0 + i) * bs, from = src_off + i * bs;
		uint64_t len = IDD_MIN((uint64_t)(j - i) * bs, d->m->image_size - dst);
		if (len % 4096 == 0 && from % 4096 == 0 && dst % 4096 == 0 && from + len <= size &&
		    try_reflink(d, fd, from, len, dst) && reflink_matches(d, w->buf + i * bs, len, dst))
			atomic_fetch_add(&p->reflinked, len);
		else if (idd_pwrite_all(d->fd, w->buf + i * bs, (size_t)len, dst))
			return idd_fail_errno(&w->err, d->part, "write");
		else
			start_writeback(d->fd, dst, len);
		atomic_fetch_add(&p->done, len);
		i = j;
	}
	return IDD_OK;
}

/* Take runs until none is left; the main thread reports progress between runs. */
static void run_loop(struct run_worker *w, bool main_thread)
{
	struct run_pool *p = w->p;
	struct deploy *d = p->d;
	uint64_t base = d->st->bytes_done, last = 0;
	while (!atomic_load(&p->stop)) {
		size_t i = atomic_fetch_add(&p->next, 1);
		if (i >= p->nruns)
			break;
		if (run_one(w, &p->runs[i])) {
			w->rc = IDD_ERR;
			atomic_store(&p->stop, true);
			break;
		}
		uint64_t done = atomic_load(&p->done);
		if (main_thread && d->o->progress && done - last > (64u << 20)) {
			last = done;
			d->st->bytes_done = base + done;
			progress(d);
		}
	}
	if (main_thread)
		d->st->bytes_done = base;
}

static void *run_worker_main(void *arg)
{
	run_loop(arg, false);
	return NULL;
}

static int deploy_jobs(const struct deploy *d, size_t nruns)
{
	long n = d->o->jobs > 0 ? d->o->jobs : sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > 64)
		n = 64;
	if ((size_t)n > nruns)
		n = (long)nruns;
	return (int)n;
}

/* Apply the runs' results to the plan (this thread only): failed blocks are
 * fetched, a damaged cache entry is warned about once and not used again. */
static int settle_runs(struct deploy *d, struct run_pool *p)
{
	bool *seed_warned = idd_calloc(d->nseeds ? d->nseeds : 1, sizeof *seed_warned, d->err);
	if (!seed_warned)
		return IDD_ERR;
	size_t before = d->nfetch;
	for (size_t r = 0; r < p->nruns; r++) {
		struct local_run *lr = &p->runs[r];
		bool wrote = false;
		for (uint32_t i = 0; i < lr->n; i++) {
			uint64_t b = lr->b0 + i, bl = block_len(d, b);
			uint32_t ref = idd_map_ref(d->m, b);
			if (p->failed[b]) {
				d->state[ref] = ST_FETCH; /* pos[ref] stays b: the fetch writes here */
				d->fetch_list[d->nfetch++] = b;
				continue;
			}
			wrote = true;
			d->st->bytes_from_cache += bl;
			d->st->bytes_done += bl;
			if (lr->seed)
				d->st->bytes_seed += bl;
		}
		if (lr->seed) {
			if (lr->first_bad != UINT32_MAX && !seed_warned[lr->src]) {
				seed_warned[lr->src] = true;
				dwarn(d, "warning: seed %s: block at offset %llu is not what it was (changed while "
				      "deploying, or not the indexed image); fetching what it would have provided",
				      d->seeds[lr->src].path,
				      (unsigned long long)((lr->sb0 + lr->first_bad) * d->bs));
			}
			continue;
		}
		idd_cache_entry *ce = &d->cache->e[lr->src];
		if (wrote)
			ce->used = true;
		if (lr->first_bad != UINT32_MAX && !ce->damaged) {
			ce->damaged = true;
			d->st->cache_damaged++;
			dwarn(d, "warning: cache: %s: block at offset %llu does not match the cache index "
			      "(file changed or damaged); fetching what it would have provided",
			      ce->abs, (unsigned long long)((lr->sb0 + lr->first_bad) * d->bs));
		}
	}
	d->st->bytes_reflinked += atomic_load(&p->reflinked);
	if (d->nfetch != before) /* keep fetches in output order: adjacent ranges coalesce */
		qsort(d->fetch_list, d->nfetch, sizeof *d->fetch_list, cmp_u64);
	free(seed_warned);
	return IDD_OK;
}

/* Run the local copies on every core (SHA-256 is the cost); the calling
 * thread works too and reports progress. */
static int run_local(struct deploy *d, struct local_run *runs, size_t nruns)
{
	if (!nruns)
		return IDD_OK;
	int nw = deploy_jobs(d, nruns);
	struct run_pool p = {.d = d, .runs = runs, .nruns = nruns};
	atomic_init(&p.next, 0);
	atomic_init(&p.done, 0);
	atomic_init(&p.reflinked, 0);
	atomic_init(&p.stop, false);
	p.cache_bad = idd_calloc(d->cache->count ? d->cache->count : 1, sizeof *p.cache_bad, d->err);
	p.failed = idd_calloc(d->m->nblocks, 1, d->err);
	struct run_worker *w = idd_calloc((size_t)nw, sizeof *w, d->err);
	int rc = (!p.cache_bad || !p.failed || !w) ? IDD_ERR : IDD_OK;
	for (int i = 0; !rc && i < nw; i++) {
		w[i].p = &p;
		w[i].h = idd_hasher_new(d->err);
		w[i].buf = idd_malloc(RUN_BYTES, d->err);
		if (!w[i].h || !w[i].buf)
			rc = IDD_ERR;
	}
	int started = 0;
	for (int i = 1; !rc && i < nw; i++) {
		int e = pthread_create(&w[i].thread, NULL, run_worker_main, &w[i]);
		if (e)
			break; /* fewer threads: the work still gets done */
		started = i;
	}
	if (!rc)
		run_loop(&w[0], true);
	for (int i = 1; i <= started; i++)
		pthread_join(w[i].thread, NULL);
	for (int i = 0; !rc && i < nw; i++)
		if (w[i].rc) {
			*d->err = w[i].err;
			rc = IDD_ERR;
		}
	if (!rc)
		rc = settle_runs(d, &p);
	for (int i = 0; w && i < nw; i++) {
		idd_hasher_free(w[i].h);
		free(w[i].buf);
	}
	free(w);
	free(p.cache_bad);
	free(p.failed);
	return rc;
}

/* Plan the local copies in output order: runs of blocks consecutive both in
 * OUT and in one cache file or seed; everything else is fetched. */
static int copy_local(struct deploy *d)
{
	struct local_run *runs = NULL;
	size_t nruns = 0, cap = 0;
	uint32_t max_run = (uint32_t)(RUN_BYTES / d->bs);
	for (uint64_t b = 0; b < d->m->nblocks; b++) {
		uint32_t ref = idd_map_ref(d->m, b);
		if (ref == 0) {
			d->st->bytes_zero += block_len(d, b);
			d->st->bytes_done += block_len(d, b);
			continue;
		}
		if (d->valid[b]) {
			d->st->bytes_from_cache += block_len(d, b);
			d->st->bytes_done += block_len(d, b);
			continue;
		}
		if (d->pos[ref] != UINT64_MAX)
			continue; /* a repeat: copied from OUT once its first copy is there */
		d->pos[ref] = b; /* this block is the digest's first copy, whoever writes it */
		if (d->state[ref] != ST_CACHE && d->state[ref] != ST_SEED) {
			d->fetch_list[d->nfetch++] = b;
			continue;
		}
		bool seed = d->state[ref] == ST_SEED;
		uint32_t src = (uint32_t)(d->loc[ref] >> 40);
		uint64_t sb = d->loc[ref] & (((uint64_t)1 << 40) - 1);
		struct local_run *last = nruns ? &runs[nruns - 1] : NULL;
		if (last && last->seed == seed && last->src == src && last->n < max_run &&
		    last->b0 + last->n == b && last->sb0 + last->n == sb) {
			last->n++;
			continue;
		}
		if (nruns == cap) {
			size_t nc = cap ? cap * 2 : 1024;
			struct local_run *nr = idd_realloc_array(runs, nc, sizeof *nr, d->err);
			if (!nr) {
				free(runs);
				return IDD_ERR;
			}
			runs = nr;
			cap = nc;
		}
		runs[nruns++] = (struct local_run){.b0 = b, .sb0 = sb, .n = 1, .seed = seed, .src = src,
		                                   .first_bad = UINT32_MAX};
	}
	int rc = run_local(d, runs, nruns);
	free(runs);
	return rc;
}

/* ---- the source image ---- */

static int backing_open(void *ctx, const char *name, idd_file **out, idd_error *err)
{
	struct remote_image *ri = ctx;
	if (name[0] == '/' || idd_is_url(name))
		return idd_fail(err, "backing file '%s' refused: it must be a relative path inside the source",
		                name);
	char *rel = ri->img_dir[0] ? idd_asprintf(err, "%s/%s", ri->img_dir, name) : idd_strdup(name, err);
	if (!rel)
		return IDD_ERR;
	if (!idd_relpath_ok(rel)) {
		idd_fail(err, "backing file '%s' refused: it leads outside the source", name);
		free(rel);
		return IDD_ERR;
	}
	if (ri->nbacking >= IDD_MAX_BACKING_DEPTH) {
		free(rel);
		return idd_fail(err, "backing chain deeper than %d (a cycle?)", IDD_MAX_BACKING_DEPTH);
	}
	idd_file *f;
	int rc = idd_source_open_file(ri->src, rel, UINT64_MAX, &f, err);
	free(rel);
	if (rc)
		return IDD_ERR;
	/* the image reader owns f; we only remember it to route its ranges */
	idd_file **nb = idd_realloc_array(ri->backing, ri->nbacking + 1, sizeof *nb, err);
	if (!nb) {
		idd_file_close(f);
		return IDD_ERR;
	}
	ri->backing = nb;
	ri->backing[ri->nbacking++] = f;
	*out = f;
	return IDD_OK;
}

/* A member that cannot be read by range (in a compressed archive, or a
 * sparse tar member): stream the archive once through archive.c's reader
 * and keep the member in an unlinked temporary file next to OUT.  The whole
 * archive is transferred. */
static int extract_member(struct deploy *d, idd_file *arch, int *fd_out)
{
	char *dir = idd_strdup(d->part, d->err);
	if (!dir)
		return IDD_ERR;
	int fd = open(dirname(dir), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	free(dir);
	if (fd < 0)
		return idd_fail_errno(d->err, d->part, "cannot create a temporary file beside");
	uint64_t read_bytes = 0;
	int rc = idd_archive_spool_member_from(arch, d->info->member, fd, &read_bytes, d->err);
	d->st->bytes_fetched += read_bytes;
	if (rc)
		close(fd);
	else
		*fd_out = fd;
	return rc;
}

static int open_source_image(struct deploy *d)
{
	struct remote_image *ri = &d->ri;
	const idd_image_info *in = d->info;
	ri->src = d->src;
	ri->tmp_fd = -1;
	char *dirbuf = idd_strdup(in->file, d->err);
	if (!dirbuf)
		return IDD_ERR;
	char *slash = strrchr(dirbuf, '/');
	if (slash)
		*slash = 0;
	else
		dirbuf[0] = 0;
	ri->img_dir = dirbuf;
	d->ri_open = true;
	bool member = in->member[0] != 0;
	/* Spare a HEAD request: the catalog knows the file's size (a wrong one
	 * fails cleanly on the range requests). */
	if (idd_source_open_file(d->src, in->file,
	                         idd_source_is_remote(d->src) ? in->file_size : UINT64_MAX, &ri->file,
	                         d->err))
		return IDD_ERR;
	uint64_t len = ri->file->size;
	if (member && in->streamed) {
		int fd = -1;
		if (extract_member(d, ri->file, &fd))
			return IDD_ERR;
		ri->tmp_fd = fd;
		char *p = idd_asprintf(d->err, "/proc/self/fd/%d", fd);
		if (!p)
			return IDD_ERR;
		idd_file *lf;
		int rc = idd_file_open_local(p, &lf, d->err);
		free(p);
		if (rc)
			return IDD_ERR;
		idd_file_close(ri->file);
		ri->file = lf; /* the member, local now: reading it costs no transfer */
		ri->base = 0;
		len = lf->size;
	} else if (member) {
		ri->base = in->member_off;
		len = in->member_len;
		uint64_t end;
		if (!idd_add_ok(in->member_off, in->member_len, &end) || end > ri->file->size)
			return idd_fail(d->err, "%s: the member lies outside %s", in->id, ri->file->name);
	}
	if (!strcmp(in->format, "raw")) {
		if (len < d->m->image_size)
			return idd_fail(d->err, "%s: the source file is smaller (%llu bytes) than the image "
			                "(%llu bytes)", ri->file->name, (unsigned long long)len,
			                (unsigned long long)d->m->image_size);
		return IDD_OK; /* raw: stored offset = base + virtual offset; no header to probe */
	}
	idd_file *imgfile;
	if (idd_file_open_slice(ri->file, false, ri->base, len, in->id, &imgfile, d->err))
		return IDD_ERR;
	if (idd_image_open(imgfile, true, backing_open, ri, &ri->img, d->err))
		return IDD_ERR;
	if (ri->img->size != d->m->image_size)
		return idd_fail(d->err, "%s: the source image's virtual size (%llu) differs from the index's "
		                "(%llu); re-scan the source", in->id, (unsigned long long)ri->img->size,
		                (unsigned long long)d->m->image_size);
	return IDD_OK;
}

static void close_source_image(struct deploy *d)
{
	if (!d->ri_open)
		return;
	idd_image_close(d->ri.img);
	idd_file_close(d->ri.file);
	free(d->ri.backing);
	free((char *)d->ri.img_dir);
	if (d->ri.tmp_fd >= 0)
		close(d->ri.tmp_fd);
}

/* ---- fetching, window by window ---- */

struct piece {
	size_t blk;        /* index in the window */
	uint32_t dst;      /* offset in the block */
	uint32_t n;
	bool unit;         /* from a decoded compressed unit (else a range wrote it in place) */
	size_t unit_idx;
	uint64_t unit_skip;
};

struct unit {
	idd_file *f;
	uint64_t off;      /* stored range (root offsets) */
	idd_extent ext;
	unsigned char *stored, *plain;
};

struct filegroup {
	idd_file *f;
	idd_range *r;
	size_t n, cap;
};

struct window {
	uint64_t *blocks;
	size_t nblocks;
	unsigned char *buf;  /* nblocks * bs */
	struct piece *pieces;
	size_t npieces, cap_pieces;
	struct unit *units;
	size_t nunits, cap_units;
	struct filegroup groups[IDD_MAX_BACKING_DEPTH + 2];
	size_t ngroups;
	uint64_t stored;     /* bytes this window will fetch */
};

static int add_range(struct deploy *d, struct window *w, idd_file *f, uint64_t off, uint64_t len,
                     void *buf)
{
	size_t g = 0;
	while (g < w->ngroups && w->groups[g].f != f)
		g++;
	if (g == w->ngroups) {
		if (g == IDD_ARRAY_LEN(w->groups))
			return idd_fail(d->err, "%s: too many files in the backing chain", d->info->id);
		w->groups[g].f = f;
		w->groups[g].n = 0;
		w->ngroups++;
	}
	struct filegroup *fg = &w->groups[g];
	/* the range continuing the previous one into the next block merges here */
	if (fg->n && fg->r[fg->n - 1].off + fg->r[fg->n - 1].len == off &&
	    (unsigned char *)fg->r[fg->n - 1].buf + fg->r[fg->n - 1].len == (unsigned char *)buf) {
		fg->r[fg->n - 1].len += len;
	} else {
		if (fg->n == fg->cap) {
			size_t nc = fg->cap ? fg->cap * 2 : 256;
			idd_range *nr = idd_realloc_array(fg->r, nc, sizeof *nr, d->err);
			if (!nr)
				return IDD_ERR;
			fg->r = nr;
			fg->cap = nc;
		}
		fg->r[fg->n++] = (idd_range){off, len, buf};
	}
	w->stored += len;
	return IDD_OK;
}

static int add_piece(struct deploy *d, struct window *w, struct piece p)
{
	if (w->npieces == w->cap_pieces) {
		size_t nc = w->cap_pieces ? w->cap_pieces * 2 : 256;
		struct piece *np = idd_realloc_array(w->pieces, nc, sizeof *np, d->err);
		if (!np)
			return IDD_ERR;
		w->pieces = np;
		w->cap_pieces = nc;
	}
	w->pieces[w->npieces++] = p;
	return IDD_OK;
}

/* Plan the stored bytes of block blk (window slot i). */
static int plan_block(struct deploy *d, struct window *w, size_t i, uint64_t blk)
{
	struct remote_image *ri = &d->ri;
	unsigned char *dst = w->buf + i * d->bs;
	uint64_t voff = blk * d->bs, blen = block_len(d, blk);
	memset(dst, 0, d->bs);
	if (!ri->img) /* raw */
		return add_range(d, w, ri->file, ri->base + voff, blen, dst);
	uint64_t done = 0;
	while (done < blen) {
		idd_extent ext;
		if (idd_image_extent(ri->img, voff + done, &ext, d->err))
			return IDD_ERR;
		uint64_t skip = voff + done - ext.voff;
		uint64_t n = IDD_MIN(blen - done, ext.vlen - skip);
		idd_file *f = ext.file ? ext.file : ri->file;
		uint64_t base = ext.file ? 0 : ri->base;
		if (ext.kind == IDD_EXT_DATA) {
			if (add_range(d, w, f, base + ext.file_off + skip, n, dst + done))
				return IDD_ERR;
		} else if (ext.kind == IDD_EXT_COMPRESSED) {
			if (ext.file_len == 0 || ext.file_len > IDD_MAX_COMPRESSED_UNIT || ext.vlen > IDD_MAX_COMPRESSED_UNIT)
				return idd_fail(d->err, "%s: compressed unit at offset %llu too large or empty",
				                d->info->id, (unsigned long long)ext.voff);
			size_t u = 0;
			while (u < w->nunits && !(w->units[u].f == f && w->units[u].off == base + ext.file_off))
				u++;
			if (u == w->nunits) {
				if (w->nunits == w->cap_units) {
					size_t nc = w->cap_units ? w->cap_units * 2 : 64;
					struct unit *nu = idd_realloc_array(w->units, nc, sizeof *nu, d->err);
					if (!nu)
						return IDD_ERR;
					w->units = nu;
					w->cap_units = nc;
				}
				struct unit *un = &w->units[w->nunits++];
				memset(un, 0, sizeof *un);
				un->f = f;
				un->off = base + ext.file_off;
				un->ext = ext;
				un->stored = idd_malloc((size_t)ext.file_len, d->err);
				un->plain = idd_malloc((size_t)ext.vlen, d->err);
				if (!un->stored || !un->plain ||
				    add_range(d, w, f, un->off, ext.file_len, un->stored))
					return IDD_ERR;
			} else {
				/* The same unit seen through an extent of another length
				 * (a qcow2 overlay cuts its backing's extents where its own
				 * clusters take over): decode the longest prefix any piece
				 * needs.  Units always decode from their start. */
				struct unit *un = &w->units[u];
				if (ext.voff != un->ext.voff || ext.file_len != un->ext.file_len ||
				    ext.codec != un->ext.codec)
					return idd_fail(d->err, "%s: compressed unit at offset %llu of %s is mapped "
					                "inconsistently", d->info->id, (unsigned long long)un->off,
					                f->name);
				if (ext.vlen > un->ext.vlen) {
					unsigned char *np = realloc(un->plain, (size_t)ext.vlen);
					if (!np)
						return idd_fail(d->err, "out of memory");
					un->plain = np;
					un->ext.vlen = ext.vlen;
				}
			}
			if (add_piece(d, w, (struct piece){i, (uint32_t)done, (uint32_t)n, true, u, skip}))
				return IDD_ERR;
		}
		/* IDD_EXT_ZERO: already zeros */
		done += n;
	}
	return IDD_OK;
}

static void window_reset(struct window *w)
{
	for (size_t u = 0; u < w->nunits; u++) {
		free(w->units[u].stored);
		free(w->units[u].plain);
	}
	w->nunits = 0;
	w->npieces = 0;
	w->nblocks = 0;
	w->stored = 0;
	for (size_t g = 0; g < w->ngroups; g++)
		w->groups[g].n = 0;
	w->ngroups = 0;
}

static void window_free(struct window *w)
{
	window_reset(w);
	for (size_t g = 0; g < IDD_ARRAY_LEN(w->groups); g++)
		free(w->groups[g].r);
	free(w->units);
	free(w->pieces);
	free(w->buf);
	free(w->blocks);
}

static int fetch_window(struct deploy *d, struct window *w, bool *source_bad)
{
	for (size_t g = 0; g < w->ngroups; g++) {
		/* ranges in any order, overlapping (sector-padded compressed
		 * units) or close: the batch reader merges them into few requests */
		if (idd_source_read_ranges(d->src, w->groups[g].f, w->groups[g].r, w->groups[g].n, d->err))
			return IDD_ERR;
	}
	if (d->ri.tmp_fd < 0) /* an extracted member was paid for when streamed */
		d->st->bytes_fetched += w->stored;
	for (size_t u = 0; u < w->nunits; u++) {
		struct unit *un = &w->units[u];
		if (idd_extent_decode(&un->ext, un->stored, (size_t)un->ext.file_len, un->plain, d->err)) {
			idd_error_prefix(d->err, "%s (from %s)", d->info->id, un->f->name);
			*source_bad = true;
			return IDD_ERR;
		}
	}
	for (size_t p = 0; p < w->npieces; p++) {
		struct piece *pc = &w->pieces[p];
		struct unit *un = &w->units[pc->unit_idx];
		uint64_t end;
		if (!idd_add_ok(pc->unit_skip, pc->n, &end) || end > un->ext.vlen)
			return idd_fail(d->err, "%s: internal error: piece past its decoded unit (%llu+%u > %llu)",
			                d->info->id, (unsigned long long)pc->unit_skip, pc->n,
			                (unsigned long long)un->ext.vlen);
		memcpy(w->buf + pc->blk * d->bs + pc->dst, un->plain + pc->unit_skip, pc->n);
	}
	for (size_t i = 0; i < w->nblocks; i++) {
		uint64_t blk = w->blocks[i];
		uint32_t ref = idd_map_ref(d->m, blk);
		idd_digest got;
		if (idd_hasher_digest(d->h, w->buf + i * d->bs, d->bs, &got, d->err))
			return IDD_ERR;
		if (!digest_eq(&got, &d->m->digests[ref - 1])) {
			*source_bad = true;
			return idd_fail(d->err, "%s: block at offset %llu fetched from %s does not match its "
			                "digest (the source is damaged or changed since it was indexed)",
			                d->info->id, (unsigned long long)(blk * d->bs), d->ri.file->name);
		}
	}
	/* write contiguous blocks with one call */
	for (size_t i = 0; i < w->nblocks;) {
		size_t j = i + 1;
		while (j < w->nblocks && w->blocks[j] == w->blocks[j - 1] + 1)
			j++;
		uint64_t len = 0;
		for (size_t k = i; k < j; k++)
			len += block_len(d, w->blocks[k]);
		if (write_all_at(d, w->buf + i * d->bs, (size_t)len, w->blocks[i] * d->bs))
			return IDD_ERR;
		start_writeback(d->fd, w->blocks[i] * d->bs, len);
		d->st->bytes_done += len;
		i = j;
	}
	window_reset(w);
	progress(d);
	return IDD_OK;
}

static int fetch_missing(struct deploy *d, bool *source_bad)
{
	if (!d->nfetch)
		return IDD_OK;
	if (open_source_image(d))
		return IDD_ERR;
	struct window w = {0};
	w.blocks = idd_calloc(WINDOW_BLOCKS, sizeof *w.blocks, d->err);
	w.buf = idd_malloc((size_t)WINDOW_BLOCKS * d->bs > WINDOW_BYTES + d->bs
	                       ? (size_t)(WINDOW_BYTES / d->bs + 1) * d->bs
	                       : (size_t)WINDOW_BLOCKS * d->bs,
	                   d->err);
	size_t max_blocks = (size_t)IDD_MIN((uint64_t)WINDOW_BLOCKS, WINDOW_BYTES / d->bs + 1);
	int rc = (!w.blocks || !w.buf) ? IDD_ERR : IDD_OK;
	for (size_t i = 0; !rc && i < d->nfetch; i++) {
		w.blocks[w.nblocks] = d->fetch_list[i];
		rc = plan_block(d, &w, w.nblocks, d->fetch_list[i]);
		w.nblocks++;
		if (!rc && (w.nblocks == max_blocks || w.stored >= WINDOW_BYTES))
			rc = fetch_window(d, &w, source_bad);
	}
	if (!rc && w.nblocks)
		rc = fetch_window(d, &w, source_bad);
	window_free(&w);
	return rc;
}

/* Repeats inside the image: copied from the first copy now in OUT (verified
 * when it was written), a run of consecutive repeats of consecutive blocks
 * with one read and one write.  First copies are never repeat targets, so a
 * run's sources and destinations do not overlap. */
static int copy_repeats(struct deploy *d)
{
	unsigned char *buf = idd_malloc(RUN_BYTES, d->err);
	if (!buf)
		return IDD_ERR;
	uint64_t max_run = RUN_BYTES / d->bs, size = d->m->image_size;
	int rc = IDD_OK;
	for (uint64_t b = 0; !rc && b < d->m->nblocks;) {
		uint32_t ref = idd_map_ref(d->m, b);
		if (!ref || d->valid[b] || d->pos[ref] == b) {
			b++;
			continue;
		}
		uint64_t from = d->pos[ref];
		if (from == UINT64_MAX) {
			rc = idd_fail(d->err, "%s: internal error: no copy of block %llu", d->info->id,
			              (unsigned long long)b);
			break;
		}
		uint64_t n = 1;
		while (n < max_run && b + n < d->m->nblocks) {
			uint32_t r2 = idd_map_ref(d->m, b + n);
			if (!r2 || d->valid[b + n] || d->pos[r2] != from + n)
				break;
			n++;
		}
		uint64_t rlen = IDD_MIN(n * d->bs, size - from * d->bs);
		uint64_t wlen = IDD_MIN(n * d->bs, size - b * d->bs);
		memset(buf + rlen, 0, (size_t)(n * d->bs - rlen));
		if (idd_pread_all(d->fd, buf, (size_t)rlen, from * d->bs)) {
			rc = idd_fail_errno(d->err, d->part, "read");
			break;
		}
		rc = write_all_at(d, buf, (size_t)wlen, b * d->bs);
		start_writeback(d->fd, b * d->bs, wlen);
		d->st->bytes_from_cache += wlen;
		d->st->bytes_done += wlen;
		b += n;
	}
	free(buf);
	return rc;
}

/* ---- the whole deploy ---- */

static int open_seeds(struct deploy *d)
{
	if (!d->o->n_seeds)
		return IDD_OK;
	d->seeds = idd_calloc(d->o->n_seeds, sizeof *d->seeds, d->err);
	if (!d->seeds)
		return IDD_ERR;
	for (size_t i = 0; i < d->o->n_seeds; i++) {
		struct seed *s = &d->seeds[i];
		s->fd = open(d->o->seeds[i], O_RDONLY | O_CLOEXEC | O_NOCTTY);
		d->nseeds = i + 1;
		if (s->fd < 0)
			return idd_fail_errno(d->err, d->o->seeds[i], "cannot open seed");
		struct stat st;
		if (fstat(s->fd, &st) || !S_ISREG(st.st_mode))
			return idd_fail(d->err, "%s: seed is not a regular file", d->o->seeds[i]);
		s->size = (uint64_t)st.st_size;
		s->path = idd_strdup(d->o->seeds[i], d->err);
		if (!s->path)
			return IDD_ERR;
	}
	return IDD_OK;
}

static int finish(struct deploy *d)
{
	if (fsync(d->fd))
		return idd_fail_errno(d->err, d->part, "fsync");
	if (!d->o->force && access(d->out, F_OK) == 0)
		return idd_fail(d->err, "%s: exists (use --force to replace it)", d->out);
	if (rename(d->part, d->out))
		return idd_fail_errno(d->err, d->out, "cannot rename the finished image into place");
	char *dir = idd_strdup(d->out, d->err);
	if (!dir)
		return IDD_ERR;
	int rc = idd_fsync_dir(dirname(dir), d->err);
	free(dir);
	return rc;
}

int idd_deploy(const idd_deploy_opts *o, idd_deploy_stats *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	struct deploy dd = {.o = o, .st = st, .err = err, .fd = -1};
	atomic_init(&dd.reflink_ok, true);
	struct deploy *d = &dd;
	int rc = IDD_ERR;
	bool source_bad = false;
	if (!o->source || !o->cache_dir || !o->image)
		return idd_fail(err, "deploy: SOURCE, cache directory and IMAGE are required");
	if (!idd_relpath_ok(o->image))
		return idd_fail(err, "%s: refused: an image id must be a relative path inside the source "
		                "(no '..', no absolute path)", o->image);
	idd_fetch_opts fo = {.connections = o->connections, .timeout_s = o->timeout_s, .warn = o->warn, .ctx = o->ctx};
	if (idd_source_open(o->source, &fo, &d->src, err))
		goto out;
	if (o->index) {
		if (idd_source_open(o->index, &fo, &d->isrc, err))
			goto out;
		d->index_prefix = idd_strdup("", err);
	} else {
		d->isrc = d->src;
		d->index_prefix = idd_strdup(IDD_INDEX_SUBDIR "/", err);
	}
	if (!d->index_prefix)
		goto out;
	if (idd_mkdir_p(o->cache_dir, err))
		goto out;
	d->out = o->out ? idd_strdup(o->out, err) : idd_cache_default_out(o->cache_dir, o->image, err);
	if (!d->out)
		goto out;
	snprintf(st->out_path, sizeof st->out_path, "%s", d->out);
	if (!o->force && access(d->out, F_OK) == 0) {
		idd_fail(err, "%s: exists (use --force to replace it)", d->out);
		goto out;
	}
	if (!o->out) {
		char *dir = idd_strdup(d->out, err);
		int mrc = dir ? idd_mkdir_p(dirname(dir), err) : IDD_ERR;
		free(dir);
		if (mrc)
			goto out;
	}
	d->part = idd_asprintf(err, "%s.part", d->out);
	d->h = idd_hasher_new(err);
	if (!d->part || !d->h)
		goto out;
	if (load_index(d))
		goto out;
	st->bytes_total = d->m->image_size;
	if (idd_cache_open(o->cache_dir, o->warn, o->ctx, &d->cache, err) ||
	    idd_cache_prepare(d->cache, d->bs, err) || open_seeds(d))
		goto out;
	uint64_t nd = d->m->ndistinct;
	d->valid = idd_calloc(d->m->nblocks ? d->m->nblocks : 1, 1, err);
	d->state = idd_calloc(nd + 1, 1, err);
	d->loc = idd_calloc(nd + 1, sizeof *d->loc, err);
	d->pos = idd_malloc((nd + 1) * sizeof *d->pos, err);
	d->fetch_list = idd_calloc(nd ? nd : 1, sizeof *d->fetch_list, err);
	if (!d->valid || !d->state || !d->loc || !d->pos || !d->fetch_list)
		goto out;
	for (uint64_t k = 0; k <= nd; k++)
		d->pos[k] = UINT64_MAX;
	if (open_part(d))
		goto out;
	/* plan each distinct digest: OUT already has it, cache, seed, or fetch */
	for (uint64_t k = 1; k <= nd; k++) {
		size_t e;
		uint64_t blk;
		if (d->pos[k] != UINT64_MAX)
			d->state[k] = ST_HAVE;
		else if (idd_cache_find(d->cache, &d->m->digests[k - 1], &e, &blk)) {
			d->state[k] = ST_CACHE;
			d->loc[k] = (uint64_t)e << 40 | blk;
		} else
			d->state[k] = ST_FETCH;
	}
	if (hash_seeds(d))
		goto out;
	progress(d);
	if (copy_local(d) || fetch_missing(d, &source_bad) || copy_repeats(d))
		goto out;
	if (finish(d))
		goto out;
	rc = IDD_OK;
	/* Register in the cache: failing to is worth a warning, not a failure. */
	char *abs = realpath(d->out, NULL);
	idd_error e2;
	if (!abs || idd_cache_register(d->cache, abs, d->m, &e2))
		dwarn(d, "warning: cache: %s: could not register the image: %s", o->cache_dir,
		      abs ? e2.msg : strerror(errno));
	free(abs);
out:
	if (d->src) {
		idd_fetch_stats fs;
		idd_source_stats(d->src, &fs);
		st->requests = fs.requests;
		st->retries = fs.retries;
		if (d->isrc && d->isrc != d->src) {
			idd_source_stats(d->isrc, &fs);
			st->requests += fs.requests;
			st->retries += fs.retries;
		}
	}
	if (d->fd >= 0)
		close(d->fd);
	if (rc && source_bad && d->part)
		unlink(d->part); /* a damaged source: nothing worth resuming */
	close_source_image(d);
	if (d->isrc && d->isrc != d->src)
		idd_source_close(d->isrc);
	idd_source_close(d->src);
	for (size_t i = 0; i < d->nseeds; i++) {
		if (d->seeds[i].fd >= 0)
			close(d->seeds[i].fd);
		free(d->seeds[i].path);
	}
	free(d->seeds);
	idd_cache_close(d->cache);
	idd_catalog_free(d->cat);
	idd_map_free(d->m);
	idd_hasher_free(d->h);
	free(d->index_prefix);
	free(d->out);
	free(d->part);
	free(d->valid);
	free(d->state);
	free(d->loc);
	free(d->pos);
	free(d->fetch_list);
	return rc;
}
