/* pack_build.c - `imgdedup pack`: keep INDEX/pack up to date with the index.
 *
 * Every distinct non-zero block is stored once, zstd level 9, in frames of
 * up to 256 KiB of whole blocks.  Blocks are grouped by the set of images
 * that hold them (their signature): for any image deployed with any set of
 * whole images already cached, a block is needed exactly when its
 * signature holds the image and none of the cached ones, so every frame is
 * wanted whole or not at all, and the frames a deploy needs lie in a few
 * contiguous stretches.  Inside a signature, blocks follow their order in
 * the image they are read from, which is what compresses best.  Measured
 * on the corpus (docs/formats.md): 14.5 MB for the blocks a deploy of
 * debian12-web.raw needs with debian12-minbase.raw cached, against 16.8 MB
 * for one frame per block and 16.3 MB for frames in plain image order.
 *
 * A run appends: the blocks not in the pack yet go into one new data file,
 * the views of images holding them are rewritten, the pack index is
 * written last (temp, fsync, rename).  Files the new index no longer names
 * are deleted only after it is in place, so a run killed at any moment
 * leaves the previous pack whole.  When blocks no image holds any more
 * fill more than a quarter of the frames, everything is rewritten
 * (compaction).  Memory: about 80 bytes per distinct block of the
 * repository, plus one image's block map at a time. */
#include "index/pack.h"
#include "index/indexfile.h"
#include "index/catalog.h"
#include "index/map.h"
#include "index/repo.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NONE64 UINT64_MAX
#define NONE32 UINT32_MAX
/* Frames compressed in parallel before they are written in order. */
#define BATCH_FRAMES 32

/* Every distinct non-zero digest of the repository. */
typedef struct live {
	idd_digest_set set; /* aux: index into the arrays below */
	size_t n, cap;
	size_t *slot;        /* its slot in set (the digest) */
	uint64_t *sig;       /* signature: hash of the images holding it */
	uint64_t *src_block; /* where it is read: block ... */
	uint32_t *src;       /* ... of this catalog image */
	uint8_t *src_cost;
	uint64_t *ordinal;   /* place in the pack, NONE64 when not packed */
	bool *in_old;        /* the pack held it before this run */
} live;

static void live_free(live *L)
{
	idd_digest_set_free(&L->set);
	free(L->slot);
	free(L->sig);
	free(L->src_block);
	free(L->src);
	free(L->src_cost);
	free(L->ordinal);
	free(L->in_old);
}

static int live_grow(live *L, idd_error *err)
{
	size_t nc = L->cap ? L->cap * 2 : 4096;
#define GROW(field)                                                              \
	do {                                                                     \
		void *p_ = idd_realloc_array(L->field, nc, sizeof *L->field, err); \
		if (!p_)                                                         \
			return IDD_ENOMEM;                                       \
		L->field = p_;                                                   \
	} while (0)
	GROW(slot);
	GROW(sig);
	GROW(src_block);
	GROW(src);
	GROW(src_cost);
	GROW(ordinal);
	GROW(in_old);
#undef GROW
	L->cap = nc;
	return IDD_OK;
}

static const idd_digest *live_digest(const live *L, size_t e) { return &L->set.slots[L->slot[e]]; }

/* What reading a block of this image costs: a raw file (or a raw member
 * of an uncompressed archive) is a pread, a qcow2/VMDK may decompress, a
 * member of a compressed archive is decompressed whole first. */
static uint8_t image_cost(const idd_image_info *im)
{
	if (im->streamed)
		return 2;
	return strcmp(im->format, "raw") ? 1 : 0;
}

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

static uint64_t hash_str(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return mix64(h);
}

/* The image's current map (map order is the view's order): the saved one
 * when it matches the catalog, else built from the block list. */
static int image_map(const char *index_dir, const idd_catalog *cat, const idd_image_info *im,
                     idd_map **out, idd_error *err)
{
	idd_error e2;
	idd_map *m = NULL;
	if (idd_map_load(index_dir, im->id, &m, &e2) == IDD_OK) {
		if (!memcmp(m->list_key.b, im->list_key.b, 32) && m->block_size == cat->block_size &&
		    m->nblocks == im->nblocks) {
			*out = m;
			return IDD_OK;
		}
		idd_map_free(m);
		m = NULL;
	}
	/* from the sparse list: a thin image costs its data, not its size */
	idd_blocklist *bl = NULL;
	if (idd_blocklist_open(index_dir, im, &bl, err))
		return IDD_ERR;
	int rc = bl->block_size == cat->block_size
	         ? idd_map_build_list(bl, im->virtual_size, &m, err)
	         : idd_fail(err, "block list of %u-byte blocks in an index of %u", bl->block_size,
	                    cat->block_size);
	idd_blocklist_free(bl);
	if (rc) {
		idd_error_prefix(err, "%s", im->id);
		return IDD_ERR;
	}
	m->list_key = im->list_key;
	*out = m;
	return IDD_OK;
}

/* The first block holding each digest of m (map order): digests are
 * introduced in order, so the first reference to k + 1 follows the first
 * reference to k. */
static int first_blocks(const idd_map *m, uint64_t **out, idd_error *err)
{
	uint64_t *fb = idd_calloc(m->ndistinct + 1, sizeof *fb, err);
	if (!fb)
		return IDD_ENOMEM;
	uint64_t next = 1; /* the next reference not yet seen */
	for (size_t i = 0; i < m->nruns && next <= m->ndistinct; i++) {
		const idd_map_span *r = &m->runs[i];
		if (r->kind == IDD_RUN_ZERO)
			continue;
		if (r->kind == IDD_RUN_SAME) {
			if (r->ref == next)
				fb[next++ - 1] = r->block;
			continue;
		}
		uint64_t last = (uint64_t)r->ref + r->count - 1;
		if (last < next)
			continue;
		if (r->ref > next) {
			free(fb);
			return idd_fail_code(err, IDD_ECORRUPT, "%s: block map references a digest before introducing it",
			                     m->id ? m->id : "map");
		}
		for (uint64_t j = next - r->ref; j < r->count; j++)
			fb[next++ - 1] = r->block + j;
	}
	if (next != m->ndistinct + 1) {
		free(fb);
		return idd_fail_code(err, IDD_ECORRUPT, "%s: block map does not introduce every digest",
		                     m->id ? m->id : "map");
	}
	*out = fb;
	return IDD_OK;
}

/* ---- the run ---- */

typedef struct img_handle {
	pthread_mutex_t mu;
	idd_image *img;
	bool tried;
	bool warned;
} img_handle;

typedef struct frame_job {
	size_t first, count;    /* into the sorted list of blocks to pack */
	unsigned char *out;     /* compressed frame */
	size_t cap, clen;
	uint32_t nok;           /* blocks read and verified */
	uint8_t *ok;            /* per block */
	int rc;
	idd_error err;
} frame_job;

typedef struct worker {
	ZSTD_CCtx *cctx;
	unsigned char *raw;
	idd_hasher *h;
} worker;

typedef struct build {
	const idd_pack_opts *o;
	const char *index_dir;
	const idd_catalog *cat;
	uint32_t bs, frame_blocks;
	int level;
	live *L;
	size_t *todo;            /* live indices to pack, in pack order */
	size_t ntodo;
	img_handle *imgs;
	pthread_mutex_t warn_mu;
	atomic_uint_least64_t failed;
	frame_job *jobs;
	size_t njobs;
	atomic_size_t next_job;
	worker *workers;
	int nworkers;
} build;

static void build_warn(build *b, const char *fmt, ...) IDD_PRINTF(2, 3);
static void build_warn(build *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&b->warn_mu); /* workers warn too: one line at a time */
	idd_vwarnf(b->o->warn, b->o->ctx, fmt, ap);
	pthread_mutex_unlock(&b->warn_mu);
	va_end(ap);
}

/* Read block e from its image into buf (block-size bytes, zero padded) and
 * check it against its digest. */
static bool read_block(build *b, worker *w, size_t e, unsigned char *buf)
{
	live *L = b->L;
	uint32_t i = L->src[e];
	const idd_image_info *im = &b->cat->images[i];
	img_handle *ih = &b->imgs[i];
	idd_error err;
	bool ok = false;
	pthread_mutex_lock(&ih->mu);
	if (!ih->tried) {
		ih->tried = true;
		char *path = idd_path_join(b->o->repo, im->file, &err);
		idd_repo_entry ent = {.id = im->id, .path = path, .member = im->member[0] ? im->member : NULL,
		                      .container = im->container, .member_off = im->member_off,
		                      .member_len = im->member_len, .streamed = im->streamed};
		if (!path || idd_repo_open_image(b->o->repo, &ent, &ih->img, &err)) {
			ih->img = NULL;
		} else if (ih->img->size != im->virtual_size) {
			snprintf(err.msg, sizeof err.msg, "%s: image is %llu bytes, the index says %llu (re-run scan)",
			         im->id, (unsigned long long)ih->img->size, (unsigned long long)im->virtual_size);
			idd_image_close(ih->img);
			ih->img = NULL;
		}
		free(path);
		if (!ih->img) {
			ih->warned = true;
			build_warn(b, "%s; its blocks are not packed", err.msg);
		}
	}
	if (ih->img) {
		uint64_t off = L->src_block[e] * b->bs;
		size_t len = (size_t)IDD_MIN((uint64_t)b->bs, ih->img->size - off);
		if (off < ih->img->size && idd_image_read(ih->img, off, buf, len, &err) == IDD_OK) {
			memset(buf + len, 0, b->bs - len);
			idd_digest got;
			ok = idd_hasher_digest(w->h, buf, b->bs, &got, &err) == IDD_OK &&
			     !memcmp(got.b, live_digest(L, e)->b, 32);
			if (!ok)
				snprintf(err.msg, sizeof err.msg,
				         "%s: block %llu does not match the index (changed since the scan? re-run scan)",
				         im->id, (unsigned long long)L->src_block[e]);
		}
		if (!ok && !ih->warned) {
			ih->warned = true;
			build_warn(b, "%s; such blocks are not packed", err.msg);
		}
	}
	pthread_mutex_unlock(&ih->mu);
	return ok;
}

static void run_job(build *b, worker *w, frame_job *j)
{
	j->nok = 0;
	j->clen = 0;
	for (size_t k = 0; k < j->count; k++) {
		size_t e = b->todo[j->first + k];
		j->ok[k] = read_block(b, w, e, w->raw + (size_t)j->nok * b->bs);
		if (j->ok[k])
			j->nok++;
		else
			atomic_fetch_add(&b->failed, 1);
	}
	if (!j->nok)
		return;
	size_t z = ZSTD_compress2(w->cctx, j->out, j->cap, w->raw, (size_t)j->nok * b->bs);
	if (ZSTD_isError(z)) {
		j->rc = idd_fail(&j->err, "zstd: %s", ZSTD_getErrorName(z));
		return;
	}
	j->clen = z;
}

static void *worker_main(void *arg)
{
	void **a = arg;
	build *b = a[0];
	worker *w = a[1];
	for (;;) {
		size_t k = atomic_fetch_add(&b->next_job, 1);
		if (k >= b->njobs)
			break;
		run_job(b, w, &b->jobs[k]);
	}
	return NULL;
}

/* Run the current batch of jobs on every worker (this thread included). */
static int run_batch(build *b, idd_error *err)
{
	atomic_store(&b->next_job, 0);
	pthread_t th[64];
	void *args[64][2];
	int started = 0;
	for (int i = 1; i < b->nworkers; i++) {
		args[i][0] = b;
		args[i][1] = &b->workers[i];
		if (pthread_create(&th[started], NULL, worker_main, args[i]) != 0)
			break;
		started++;
	}
	args[0][0] = b;
	args[0][1] = &b->workers[0];
	worker_main(args[0]);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	for (size_t k = 0; k < b->njobs; k++)
		if (b->jobs[k].rc) {
			*err = b->jobs[k].err;
			return b->jobs[k].rc;
		}
	return IDD_OK;
}

/* Sort key of a block to pack: signature, then where it is read. */
static int cmp_todo(const void *x, const void *y, void *ctx)
{
	const live *L = ctx;
	size_t a = *(const size_t *)x, c = *(const size_t *)y;
	if (L->sig[a] != L->sig[c])
		return L->sig[a] < L->sig[c] ? -1 : 1;
	if (L->src[a] != L->src[c])
		return L->src[a] < L->src[c] ? -1 : 1;
	return L->src_block[a] < L->src_block[c] ? -1 : L->src_block[a] > L->src_block[c];
}

static void workers_free(build *b)
{
	for (int i = 0; b->workers && i < b->nworkers; i++) {
		ZSTD_freeCCtx(b->workers[i].cctx);
		free(b->workers[i].raw);
		idd_hasher_free(b->workers[i].h);
	}
	free(b->workers);
	b->workers = NULL;
}

static int workers_init(build *b, idd_error *err)
{
	b->nworkers = idd_threads_for_jobs(b->o->jobs);
	if (!(b->workers = idd_calloc((size_t)b->nworkers, sizeof *b->workers, err)))
		return IDD_ENOMEM;
	for (int i = 0; i < b->nworkers; i++) {
		worker *w = &b->workers[i];
		w->cctx = ZSTD_createCCtx();
		w->raw = idd_malloc((size_t)b->frame_blocks * b->bs, err);
		w->h = idd_hasher_new(err);
		if (!w->cctx || !w->raw || !w->h)
			return w->cctx ? IDD_ERR : idd_fail_code(err, IDD_ENOMEM, "zstd: out of memory");
		/* plain frames: content size in the header (readers check it), no
		 * checksum (every block is checked against its SHA-256), no dictionary */
		if (ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, b->level)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 0)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_dictIDFlag, 0)))
			return idd_fail(err, "zstd: cannot set the compression parameters");
	}
	return IDD_OK;
}

/* Growable array of frames. */
typedef struct frame_vec {
	idd_pack_frame *v;
	size_t n, cap;
} frame_vec;

static int frame_push(frame_vec *fv, const idd_pack_frame *f, idd_error *err)
{
	if (fv->n == fv->cap) {
		size_t nc = fv->cap ? fv->cap * 2 : 256;
		idd_pack_frame *p = idd_realloc_array(fv->v, nc, sizeof *p, err);
		if (!p)
			return IDD_ENOMEM;
		fv->v = p;
		fv->cap = nc;
	}
	fv->v[fv->n++] = *f;
	return IDD_OK;
}

/* Compress the blocks in b->todo into a new data file; its frames are
 * appended to fv (with ordinals from *next_ordinal on) and its entry to
 * *newfile.  *wrote says whether a file was made (nothing when every block
 * failed). */
static int write_data(build *b, uint32_t file_index, frame_vec *fv, uint64_t *next_ordinal,
                      idd_pack_file *newfile, bool *wrote, uint64_t *added, idd_error *err)
{
	*wrote = false;
	char *dir = idd_path_join(b->index_dir, IDD_PACK_DATA_DIR, err);
	char *tmp = dir ? idd_asprintf(err, "%s/new.tmp.%ld", dir, (long)getpid()) : NULL;
	int fd = -1, rc = IDD_OK;
	EVP_MD_CTX *sha = EVP_MD_CTX_new();
	frame_job *jobs = NULL;
	uint8_t *okbuf = NULL;
	size_t cap = ZSTD_compressBound((size_t)b->frame_blocks * b->bs);
	if (!tmp) {
		rc = IDD_ENOMEM;
		goto out;
	}
	if (!sha || EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1) {
		rc = idd_fail(err, "OpenSSL: SHA-256 failed");
		goto out;
	}
	if ((rc = workers_init(b, err)))
		goto out;
	jobs = idd_calloc(BATCH_FRAMES, sizeof *jobs, err);
	okbuf = idd_malloc((size_t)BATCH_FRAMES * b->frame_blocks, err);
	if (!jobs || !okbuf) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t k = 0; k < BATCH_FRAMES; k++) {
		jobs[k].cap = cap;
		jobs[k].ok = okbuf + k * b->frame_blocks;
		if (!(jobs[k].out = idd_malloc(cap, err))) {
			rc = IDD_ENOMEM;
			goto out;
		}
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = idd_fail_errno(err, tmp, "cannot create");
		goto out;
	}
	unsigned char hdr[IDD_PACK_DATA_HEADER] = {0};
	idd_le32_put(hdr, IDD_PACK_SKIPPABLE_MAGIC);
	idd_le32_put(hdr + 4, IDD_PACK_DATA_HEADER - 8);
	memcpy(hdr + 8, "IDD-PKD", 8);
	idd_le32_put(hdr + 16, 1);
	idd_le32_put(hdr + 20, b->bs);
	idd_le32_put(hdr + 24, b->frame_blocks);
	if (idd_pwrite_all(fd, hdr, sizeof hdr, 0)) {
		rc = idd_fail_errno(err, tmp, "write");
		goto out;
	}
	EVP_DigestUpdate(sha, hdr, sizeof hdr);
	uint64_t off = IDD_PACK_DATA_HEADER, nframes = 0, done = 0;
	b->jobs = jobs;
	/* frames: runs of one signature, at most frame_blocks blocks */
	size_t i = 0;
	while (i < b->ntodo) {
		b->njobs = 0;
		while (i < b->ntodo && b->njobs < BATCH_FRAMES) {
			size_t j = i + 1;
			while (j < b->ntodo && j - i < b->frame_blocks && b->L->sig[b->todo[j]] == b->L->sig[b->todo[i]])
				j++;
			frame_job *jb = &jobs[b->njobs++];
			jb->first = i;
			jb->count = j - i;
			jb->rc = IDD_OK;
			i = j;
		}
		if ((rc = run_batch(b, err)))
			goto out;
		for (size_t k = 0; k < b->njobs; k++) {
			frame_job *jb = &jobs[k];
			done += jb->count;
			if (!jb->nok)
				continue;
			if (idd_pwrite_all(fd, jb->out, jb->clen, off)) {
				rc = idd_fail_errno(err, tmp, "write");
				goto out;
			}
			EVP_DigestUpdate(sha, jb->out, jb->clen);
			idd_pack_frame f = {.file = file_index, .nblocks = jb->nok, .off = off,
			                    .clen = jb->clen, .first = *next_ordinal};
			if ((rc = frame_push(fv, &f, err)))
				goto out;
			for (size_t q = 0; q < jb->count; q++)
				if (jb->ok[q])
					b->L->ordinal[b->todo[jb->first + q]] = (*next_ordinal)++;
			*added += jb->nok;
			off += jb->clen;
			nframes++;
		}
		if (b->o->progress)
			b->o->progress(b->o->ctx, done, b->ntodo);
	}
	if (!nframes) { /* every block failed: no file */
		close(fd);
		fd = -1;
		unlink(tmp);
		goto out;
	}
	if (fsync(fd)) {
		rc = idd_fail_errno(err, tmp, "fsync");
		goto out;
	}
	if (close(fd)) {
		fd = -1;
		rc = idd_fail_errno(err, tmp, "close");
		goto out;
	}
	fd = -1;
	unsigned int n = 0;
	if (EVP_DigestFinal_ex(sha, newfile->name.b, &n) != 1) {
		rc = idd_fail(err, "OpenSSL: SHA-256 failed");
		goto out;
	}
	newfile->size = off;
	newfile->nframes = nframes;
	char *rel = idd_pack_data_relpath(&newfile->name, err);
	char *path = rel ? idd_path_join(b->index_dir, rel, err) : NULL;
	free(rel);
	if (!path) {
		rc = IDD_ENOMEM;
		goto out;
	}
	if (rename(tmp, path))
		rc = idd_fail_errno(err, path, "cannot rename the new data file into place");
	free(path);
	if (!rc)
		rc = idd_fsync_dir(dir, err);
	if (!rc)
		*wrote = true;
out:
	if (fd >= 0)
		close(fd);
	if (rc && tmp)
		unlink(tmp);
	for (size_t k = 0; jobs && k < BATCH_FRAMES; k++)
		free(jobs[k].out);
	free(jobs);
	free(okbuf);
	b->jobs = NULL;
	workers_free(b);
	EVP_MD_CTX_free(sha);
	free(tmp);
	free(dir);
	return rc;
}

static int cmp_entry(const void *a, const void *b) { return memcmp(a, b, 32); }
static int cmp_digest(const void *a, const void *b) { return memcmp(a, b, 32); }
static int cmp_size(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return x < y ? -1 : x > y;
}

static bool digest_in(const idd_digest *v, size_t n, const idd_digest *d)
{
	return n && bsearch(d, v, n, sizeof *v, cmp_digest) != NULL;
}

static bool file_has_size(const char *index_dir, const char *rel, uint64_t size, bool any_size)
{
	char *p = idd_path_join(index_dir, rel, NULL);
	struct stat st;
	bool ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode) &&
	          (any_size || (uint64_t)st.st_size == size);
	free(p);
	return ok;
}

/* The view of image im over the new pack: frames (global) fv, files. */
static int write_view(build *b, const idd_image_info *im, const idd_pack_file *files,
                      const frame_vec *fv, idd_error *err)
{
	idd_map *m = NULL;
	if (image_map(b->index_dir, b->cat, im, &m, err))
		return IDD_ERR;
	idd_pack_view v = {.list_key = im->list_key, .block_size = b->bs, .ndistinct = m->ndistinct};
	size_t *gframe = NULL, *uniq = NULL, *fmap = NULL;
	uint32_t *slot = NULL;
	int rc = IDD_OK;
	if (m->ndistinct && (!(gframe = idd_calloc(m->ndistinct, sizeof *gframe, err)) ||
	                     !(slot = idd_calloc(m->ndistinct, sizeof *slot, err)) ||
	                     !(uniq = idd_calloc(m->ndistinct, sizeof *uniq, err)) ||
	                     !(v.slot = idd_calloc(m->ndistinct, sizeof *v.slot, err)))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	size_t nu = 0;
	for (uint64_t k = 0; k < m->ndistinct; k++) {
		size_t s = idd_digest_set_find(&b->L->set, &m->digests[k]);
		uint64_t p = s == (size_t)-1 ? NONE64 : b->L->ordinal[b->L->set.aux[s]];
		if (p == NONE64 || !fv->n) {
			gframe[k] = SIZE_MAX;
			continue;
		}
		size_t f = idd_pack_frame_of(fv->v, fv->n, p);
		gframe[k] = f;
		slot[k] = (uint32_t)(p - fv->v[f].first);
		uniq[nu++] = f;
	}
	if (nu) /* an image of zero blocks only has none (and uniq is NULL) */
		qsort(uniq, nu, sizeof *uniq, cmp_size);
	size_t nf = 0;
	for (size_t i = 0; i < nu; i++)
		if (!nf || uniq[nf - 1] != uniq[i])
			uniq[nf++] = uniq[i];
	/* the files those frames lie in, in pack order */
	uint32_t nfiles_all = 0;
	for (size_t i = 0; i < fv->n; i++)
		nfiles_all = IDD_MAX(nfiles_all, fv->v[i].file + 1);
	if (!(fmap = idd_calloc(nfiles_all + 1, sizeof *fmap, err)) ||
	    (nf && (!(v.frames = idd_calloc(nf, sizeof *v.frames, err)) ||
	            !(v.files = idd_calloc(nfiles_all, sizeof *v.files, err))))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (uint32_t f = 0; f <= nfiles_all; f++)
		fmap[f] = SIZE_MAX;
	uint64_t vslots = 0;
	for (size_t i = 0; i < nf; i++) {
		const idd_pack_frame *g = &fv->v[uniq[i]];
		if (fmap[g->file] == SIZE_MAX) {
			fmap[g->file] = v.nfiles;
			v.files[v.nfiles].name = files[g->file].name;
			v.files[v.nfiles].size = files[g->file].size;
			v.nfiles++;
		}
		v.frames[i] = *g;
		v.frames[i].file = (uint32_t)fmap[g->file];
		v.frames[i].first = vslots;
		vslots += g->nblocks;
	}
	v.nframes = nf;
	v.nslots = vslots;
	for (uint64_t k = 0; k < m->ndistinct; k++) {
		if (gframe[k] == SIZE_MAX)
			continue;
		size_t *pos = bsearch(&gframe[k], uniq, nf, sizeof *uniq, cmp_size);
		v.slot[k] = v.frames[pos - uniq].first + slot[k] + 1;
	}
	rc = idd_pack_view_save(b->index_dir, &v, err);
out:
	free(gframe);
	free(slot);
	free(uniq);
	free(fmap);
	free(v.frames);
	free(v.files);
	free(v.slot);
	idd_map_free(m);
	return rc;
}

/* Delete from DIR every file not in keep (names), temporaries included:
 * we hold the lock, so nothing else writes there. */
static void remove_unlisted(const char *index_dir, const char *sub, char **keep, size_t nkeep)
{
	char *dir = idd_path_join(index_dir, sub, NULL);
	DIR *d = dir ? opendir(dir) : NULL;
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		bool kept = false;
		for (size_t i = 0; i < nkeep && !kept; i++)
			kept = !strcmp(keep[i], de->d_name);
		if (kept)
			continue;
		char *p = idd_path_join(dir, de->d_name, NULL);
		if (p)
			unlink(p);
		free(p);
	}
	if (d) {
		closedir(d);
		idd_fsync_dir(dir, NULL);
	}
	free(dir);
}

static uint64_t dir_bytes(const char *index_dir, const char *sub)
{
	char *dir = idd_path_join(index_dir, sub, NULL);
	DIR *d = dir ? opendir(dir) : NULL;
	struct dirent *de;
	uint64_t total = 0;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.' || strstr(de->d_name, ".tmp."))
			continue;
		char *p = idd_path_join(dir, de->d_name, NULL);
		struct stat st;
		if (p && stat(p, &st) == 0 && S_ISREG(st.st_mode))
			total += (uint64_t)st.st_size;
		free(p);
	}
	if (d)
		closedir(d);
	free(dir);
	return total;
}

static uint64_t pack_bytes(const char *index_dir)
{
	struct stat st;
	char *p = idd_path_join(index_dir, IDD_PACK_INDEX_FILE, NULL);
	uint64_t n = p && stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
	free(p);
	return n + dir_bytes(index_dir, IDD_PACK_DATA_DIR) + dir_bytes(index_dir, IDD_PACK_VIEWS_DIR);
}

/* Is the old pack complete for this catalog (same state, every file in
 * place)?  Then there is nothing to write. */
static bool pack_current(const char *index_dir, const idd_catalog *cat, const idd_pack_index *x,
                         const idd_digest *key)
{
	if (x->block_size != cat->block_size || memcmp(x->catalog_key.b, key->b, 32) ||
	    (x->flags & IDD_PACK_INCOMPLETE))
		return false;
	for (size_t i = 0; i < x->nfiles; i++) {
		char *rel = idd_pack_data_relpath(&x->files[i].name, NULL);
		bool ok = rel && file_has_size(index_dir, rel, x->files[i].size, false);
		free(rel);
		if (!ok)
			return false;
	}
	for (size_t i = 0; i < cat->count; i++) {
		if (!digest_in(x->views, x->nviews, &cat->images[i].list_key))
			return false;
		char *rel = idd_pack_view_relpath(&cat->images[i].list_key, NULL);
		bool ok = rel && file_has_size(index_dir, rel, 0, true);
		free(rel);
		if (!ok)
			return false;
	}
	return true;
}

/* The old pack's data files are all there, whole? */
static bool data_files_present(const char *index_dir, const idd_pack_index *x)
{
	for (size_t i = 0; i < x->nfiles; i++) {
		char *rel = idd_pack_data_relpath(&x->files[i].name, NULL);
		bool ok = rel && file_has_size(index_dir, rel, x->files[i].size, false);
		free(rel);
		if (!ok)
			return false;
	}
	return true;
}

static int pack_locked(const idd_pack_opts *o, const char *index_dir, idd_pack_stats *st,
                       idd_error *err)
{
	idd_catalog *cat = NULL;
	idd_pack_index *old = NULL;
	live L = {0};
	build b = {.o = o, .index_dir = index_dir};
	frame_vec fv = {0};
	idd_pack_file *files = NULL;
	idd_digest *views = NULL;
	unsigned char *entries = NULL;
	bool *fresh = NULL;
	char **keep = NULL;
	size_t nkeep = 0;
	int rc = idd_catalog_load(index_dir, &cat, err);
	if (rc)
		return rc;
	b.cat = cat;
	b.bs = cat->block_size;
	b.frame_blocks = IDD_MAX(IDD_PACK_FRAME_BYTES / cat->block_size, 1u);
	b.level = o->level > 0 ? IDD_MIN(o->level, 19) : IDD_PACK_LEVEL;
	pthread_mutex_init(&b.warn_mu, NULL);
	atomic_init(&b.failed, 0);
	idd_digest key;
	if ((rc = idd_catalog_key(cat, &key, err)))
		goto out;

	idd_error e2;
	int orc = idd_pack_index_load(index_dir, &old, &e2);
	if (orc && orc != IDD_ENOENT && o->warn) {
		char msg[1200];
		snprintf(msg, sizeof msg, "%s; the pack is rebuilt", e2.msg);
		o->warn(o->ctx, msg);
	}
	if (!orc && pack_current(index_dir, cat, old, &key)) {
		st->blocks = old->nentries;
		st->raw_bytes = old->nentries * old->block_size;
		st->pack_bytes = pack_bytes(index_dir);
		st->committed = true;
		goto out;
	}
	bool rebuild = orc != IDD_OK || old->block_size != cat->block_size ||
	               old->frame_blocks != b.frame_blocks || !data_files_present(index_dir, old);
	if (!orc && rebuild && old->block_size == cat->block_size && o->warn &&
	    !data_files_present(index_dir, old))
		o->warn(o->ctx, "pack: a data file is missing or damaged; the pack is rebuilt");

	/* every distinct digest: its signature, where to read it, whether the
	 * pack holds it already */
	if ((rc = idd_digest_set_init(&L.set, (size_t)IDD_MIN(cat->unique_blocks == IDD_UNIQUE_UNKNOWN ? 1024 : cat->unique_blocks + 1, (uint64_t)1 << 26), true, err)))
		goto out;
	if (cat->count && !(fresh = idd_calloc(cat->count, sizeof *fresh, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	uint64_t kept = 0;
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		idd_map *m = NULL;
		uint64_t *fb = NULL;
		if ((rc = image_map(index_dir, cat, im, &m, err)) || (rc = first_blocks(m, &fb, err))) {
			idd_map_free(m);
			goto out;
		}
		uint64_t h = hash_str(im->id);
		uint8_t cost = image_cost(im);
		for (uint64_t k = 0; k < m->ndistinct; k++) {
			bool added;
			size_t s = idd_digest_set_add(&L.set, &m->digests[k], &added, err);
			if (s == (size_t)-1 || (added && L.n == L.cap && live_grow(&L, err))) {
				rc = IDD_ENOMEM;
				break;
			}
			if (added) {
				size_t e = L.n++;
				L.set.aux[s] = e;
				L.slot[e] = s;
				L.sig[e] = 0;
				L.src[e] = NONE32;
				L.src_cost[e] = UINT8_MAX;
				idd_pack_loc loc;
				L.ordinal[e] = NONE64;
				L.in_old[e] = orc == IDD_OK && idd_pack_lookup(old, &m->digests[k], &loc);
				if (L.in_old[e]) {
					kept++;
					if (!rebuild)
						L.ordinal[e] = old->frames[loc.frame].first + loc.slot;
				}
			}
			size_t e = L.set.aux[s];
			L.sig[e] = mix64(L.sig[e] ^ h);
			if (cost < L.src_cost[e]) {
				L.src[e] = (uint32_t)i;
				L.src_cost[e] = cost;
				L.src_block[e] = fb[k];
			}
			if (L.ordinal[e] == NONE64)
				fresh[i] = true;
		}
		free(fb);
		idd_map_free(m);
		if (rc)
			goto out;
	}
	uint64_t old_entries = orc == IDD_OK ? old->nentries : 0;
	st->removed = old_entries - kept;
	/* compaction: blocks no image holds fill more than a quarter of the frames */
	uint64_t newcount = L.n - kept;
	if (!rebuild && (old->nslots - kept) * 4 > old->nslots + newcount) {
		rebuild = true;
		st->compacted = true;
		for (size_t e = 0; e < L.n; e++)
			L.ordinal[e] = NONE64;
	}
	if (rebuild && orc == IDD_OK)
		st->compacted = true;

	/* the old frames and files carry over unless rebuilt */
	size_t nfiles = 0;
	if (!(files = idd_calloc((rebuild ? 0 : old->nfiles) + 1, sizeof *files, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	uint64_t next_ordinal = 0;
	if (!rebuild) {
		for (size_t i = 0; i < old->nfiles; i++)
			files[nfiles++] = old->files[i];
		for (size_t i = 0; i < old->nframes; i++)
			if ((rc = frame_push(&fv, &old->frames[i], err)))
				goto out;
		next_ordinal = old->nslots;
	}

	/* the blocks to pack, in pack order */
	if (!(b.todo = idd_calloc(L.n + 1, sizeof *b.todo, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t e = 0; e < L.n; e++)
		if (L.ordinal[e] == NONE64)
			b.todo[b.ntodo++] = e;
	qsort_r(b.todo, b.ntodo, sizeof *b.todo, cmp_todo, &L);
	b.L = &L;
	char *dirs[2] = {idd_path_join(index_dir, IDD_PACK_DATA_DIR, err),
	                 idd_path_join(index_dir, IDD_PACK_VIEWS_DIR, err)};
	rc = dirs[0] && dirs[1] ? IDD_OK : IDD_ENOMEM;
	if (!rc)
		rc = idd_mkdir_p(dirs[0], err);
	if (!rc)
		rc = idd_mkdir_p(dirs[1], err);
	free(dirs[0]);
	free(dirs[1]);
	if (rc)
		goto out;
	if (b.ntodo) {
		if (!(b.imgs = idd_calloc(cat->count, sizeof *b.imgs, err))) {
			rc = IDD_ENOMEM;
			goto out;
		}
		for (size_t i = 0; i < cat->count; i++)
			pthread_mutex_init(&b.imgs[i].mu, NULL);
		bool wrote;
		uint64_t written = 0;
		rc = write_data(&b, (uint32_t)nfiles, &fv, &next_ordinal, &files[nfiles], &wrote, &written,
		                err);
		for (size_t i = 0; i < cat->count; i++) {
			idd_image_close(b.imgs[i].img);
			pthread_mutex_destroy(&b.imgs[i].mu);
		}
		if (rc)
			goto out;
		if (wrote) {
			st->data_bytes_written = files[nfiles].size;
			nfiles++;
		}
		st->changed = true;
	}
	st->failed = atomic_load(&b.failed);

	/* views: one per distinct block list; rewritten when the image has
	 * blocks packed this run (or still unpacked), when missing, and after
	 * a rebuild */
	if (cat->count && !(views = idd_calloc(cat->count, sizeof *views, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	size_t nviews = 0;
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		if (digest_in(views, nviews, &im->list_key)) {
			continue;
		}
		char *rel = idd_pack_view_relpath(&im->list_key, err);
		if (!rel) {
			rc = IDD_ENOMEM;
			goto out;
		}
		bool have = !rebuild && digest_in(old->views, old->nviews, &im->list_key) &&
		            file_has_size(index_dir, rel, 0, true);
		free(rel);
		bool need = !have || fresh[i];
		for (size_t j = 0; !need && j < cat->count; j++) /* a twin with new blocks */
			need = fresh[j] && !memcmp(cat->images[j].list_key.b, im->list_key.b, 32);
		if (need) {
			if ((rc = write_view(&b, im, files, &fv, err)))
				goto out;
			st->views_written++;
			st->changed = true;
		}
		/* kept sorted for the lookups above */
		size_t at = nviews;
		while (at > 0 && memcmp(views[at - 1].b, im->list_key.b, 32) > 0) {
			views[at] = views[at - 1];
			at--;
		}
		views[at] = im->list_key;
		nviews++;
	}

	/* the index, last */
	uint64_t nent = 0;
	for (size_t e = 0; e < L.n; e++)
		nent += L.ordinal[e] != NONE64;
	if (nent && !(entries = idd_malloc((size_t)nent * IDD_PACK_ENTRY, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	size_t q = 0;
	for (size_t e = 0; e < L.n; e++) {
		if (L.ordinal[e] == NONE64)
			continue;
		memcpy(entries + q * IDD_PACK_ENTRY, live_digest(&L, e)->b, 32);
		idd_le64_put(entries + q * IDD_PACK_ENTRY + 32, L.ordinal[e]);
		q++;
	}
	qsort(entries, (size_t)nent, IDD_PACK_ENTRY, cmp_entry);
	idd_pack_index nx = {.block_size = cat->block_size, .frame_blocks = b.frame_blocks,
	                     .level = (uint32_t)b.level, .flags = nent < L.n ? IDD_PACK_INCOMPLETE : 0,
	                     .catalog_key = key, .nfiles = nfiles,
	                     .files = files, .nframes = fv.n, .frames = fv.v, .nslots = next_ordinal,
	                     .nentries = nent, .entries = entries, .nviews = nviews, .views = views};
	if ((rc = idd_pack_index_save(index_dir, &nx, err)))
		goto out;
	st->changed = true;
	st->committed = true;
	st->blocks = nent;
	st->raw_bytes = nent * cat->block_size;
	for (size_t e = 0; e < L.n; e++)
		st->added += L.ordinal[e] != NONE64 && !L.in_old[e];

	/* only now: files the new index does not name */
	if (!(keep = idd_calloc(IDD_MAX(nfiles, nviews) + 1, sizeof *keep, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nfiles; i++) {
		char *rel = idd_pack_data_relpath(&files[i].name, err);
		char *slash = rel ? strrchr(rel, '/') : NULL;
		keep[nkeep++] = slash ? idd_strdup(slash + 1, err) : NULL;
		free(rel);
	}
	remove_unlisted(index_dir, IDD_PACK_DATA_DIR, keep, nkeep);
	for (size_t i = 0; i < nkeep; i++)
		free(keep[i]);
	nkeep = 0;
	for (size_t i = 0; i < nviews; i++) {
		char *rel = idd_pack_view_relpath(&views[i], err);
		char *slash = rel ? strrchr(rel, '/') : NULL;
		keep[nkeep++] = slash ? idd_strdup(slash + 1, err) : NULL;
		free(rel);
	}
	remove_unlisted(index_dir, IDD_PACK_VIEWS_DIR, keep, nkeep);
	st->pack_bytes = pack_bytes(index_dir);
	if (st->failed)
		rc = idd_fail(err, "%llu blocks could not be packed (see the warnings); the rest is packed",
		              (unsigned long long)st->failed);
out:
	for (size_t i = 0; i < nkeep; i++)
		free(keep[i]);
	free(keep);
	free(entries);
	free(views);
	free(files);
	free(fv.v);
	free(fresh);
	free(b.todo);
	free(b.imgs);
	pthread_mutex_destroy(&b.warn_mu);
	live_free(&L);
	idd_pack_index_free(old);
	idd_catalog_free(cat);
	return rc;
}

int idd_pack_run(const idd_pack_opts *o, idd_pack_stats *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	char *index_dir = NULL;
	if (idd_index_path(o->repo, o->index_dir, &index_dir, err))
		return IDD_ERR;
	char *catpath = idd_path_join(index_dir, IDD_CATALOG_FILE, err);
	int lockfd = -1, rc;
	if (!catpath) {
		rc = IDD_ENOMEM;
	} else if (access(catpath, F_OK) != 0) {
		rc = idd_fail_code(err, IDD_ENOENT, "%s: no index here (run 'imgdedup scan' first)", index_dir);
	} else if (!(rc = idd_lock(index_dir, o->no_wait, &lockfd, err))) {
		rc = pack_locked(o, index_dir, st, err);
		idd_unlock(lockfd);
	}
	free(catpath);
	free(index_dir);
	return rc;
}
