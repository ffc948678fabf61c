/* pack_build.c - `imgdedup pack`: keep INDEX/pack up to date with the index,
 * at the cost of what changed.
 *
 * Every distinct non-zero block is stored once, zstd level 9, in frames of
 * up to 256 KiB of whole blocks.  Blocks packed in one run are grouped by
 * the set of images that hold them (their signature): for any image
 * deployed with any set of whole images already cached, a block is needed
 * exactly when its signature holds the image and none of the cached ones,
 * so every frame is wanted whole or not at all, and the frames a deploy
 * needs lie in a few contiguous stretches.  Inside a signature, blocks
 * follow their order in the image they are read from, which is what
 * compresses best.  Measured on the corpus (docs/formats.md): 14.5 MB for
 * the blocks a deploy of debian12-web.raw needs with debian12-minbase.raw
 * cached, against 16.8 MB for one frame per block and 16.3 MB for frames in
 * plain image order.
 *
 * A run costs what changed.  The pack records the block lists it covers
 * (each has a view); comparing them with the catalog's lists gives the
 * lists added (or still incomplete) and the lists gone:
 *  - new blocks can only come from the added lists: a block held by a
 *    covered list is packed already.  So the added lists' maps are read,
 *    their digests not in the pack are the new blocks, and their signature
 *    is exact from those lists alone (every image holding a new block has
 *    an added list).  Blocks already packed keep their place: their
 *    signature is the one they had when packed.
 *  - a gone list's digests that no image holds any more (the block
 *    table's count is 0) leave the pack: the list is read back from the
 *    copy the pack kept when it wrote its view (a hard link,
 *    pack/lists/<key>, since scan deletes blocks/<key> with the image).
 *  - only the added lists' views are written.
 *  - the digest index is a log-structured merge (pack_index.c): the run
 *    writes one run of this change's entries and merges runs of similar
 *    size; the new data file comes with its own frame table.
 * Everything large goes through external sorts with a fixed budget
 * (idd_pack_sort_budget), so memory does not grow with the repository,
 * not even when everything is packed afresh.
 *
 * Crash safety: data files, frame tables, runs, views and kept lists are
 * written (temp, fsync, rename) before the manifest (pack/index), which is
 * replaced last; files the new manifest no longer names are deleted only
 * after it is in place, so a run killed at any moment leaves the previous
 * pack whole.  When blocks no image holds any more fill more than a quarter
 * of the frames, everything is packed afresh (compaction), and so when the
 * pack is damaged.  An index written by an older imgdedup (one file with
 * every entry and frame) is upgraded in place: its entries become the
 * first run, its frames the files' frame tables; no block is recompressed. */
#include "index/pack.h"
#include "index/indexfile.h"
#include "index/indexdir.h"
#include "index/catalog.h"
#include "index/blocktable.h"
#include "index/map.h"
#include "index/repo.h"
#include "base/extsort.h"

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

/* Frames compressed in parallel before they are written in order. */
#define BATCH_FRAMES 32
/* Images kept open between batches at most (each holds a descriptor). */
#define MAX_OPEN_IMAGES 64
/* A run is merged into the one before it once it holds at least half as
 * many entries: at most log2(pack / change) runs exist. */
#define RUN_RATIO 2

size_t idd_pack_sort_budget = (size_t)64 << 20;

/* What reading a block of this image costs: a raw file (or a raw member
 * of an uncompressed archive) is a pread, a qcow2/VMDK may decompress, a
 * member of a compressed archive is decompressed whole first. */
static uint32_t image_cost(const idd_image_info *im)
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

/* ---- records sorted on the way ---- */

/* A digest of a list being packed. */
struct cand {
	unsigned char d[32];
	uint64_t h;     /* signature share: the sum of the ids' hashes of the list's images */
	uint64_t block; /* its first block in the list */
	uint32_t src;   /* catalog image to read it from */
	uint32_t cost;
};

/* By digest; for one digest the cheapest image first. */
static int cmp_cand(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	int c = memcmp(x->d, y->d, 32);
	if (c)
		return c;
	if (x->cost != y->cost)
		return x->cost < y->cost ? -1 : 1;
	if (x->src != y->src)
		return x->src < y->src ? -1 : 1;
	return x->block < y->block ? -1 : x->block > y->block;
}

/* A block to pack. */
struct newblk {
	uint64_t sig;   /* the set of images holding it: sum of their ids' hashes */
	uint64_t block;
	uint32_t src;
	uint32_t in_old; /* the previous pack held it (a compaction packs it again) */
	unsigned char d[32];
};

/* Pack order: signature, then where it is read. */
static int cmp_newblk(const void *a, const void *b)
{
	const struct newblk *x = a, *y = b;
	if (x->sig != y->sig)
		return x->sig < y->sig ? -1 : 1;
	if (x->src != y->src)
		return x->src < y->src ? -1 : 1;
	if (x->block != y->block)
		return x->block < y->block ? -1 : 1;
	return memcmp(x->d, y->d, 32);
}

/* Run entries (digest, ordinal): by digest, a live ordinal before a
 * removal (should the block table ever disagree, the block stays). */
static int cmp_entry(const void *a, const void *b)
{
	int c = memcmp(a, b, 32);
	if (c)
		return c;
	uint64_t x = idd_le64((const unsigned char *)a + 32), y = idd_le64((const unsigned char *)b + 32);
	return x < y ? -1 : x > y;
}

static int cmp_digest32(const void *a, const void *b) { return memcmp(a, b, 32); }

/* ---- the catalog's block lists ---- */

/* One distinct block list of the catalog and the images holding it. */
struct clist {
	idd_digest key;
	uint32_t src;       /* the cheapest of its images to read from */
	uint32_t cost;
	uint64_t h;         /* sum of its images' id hashes */
	bool fresh;         /* read this run: new, incomplete, or its view lost */
	const idd_pack_list *old; /* its entry in the previous pack */
	idd_pack_list now;  /* its entry in the new one */
};

static int cmp_index_by_key(const void *a, const void *b, void *ctx)
{
	const idd_catalog *cat = ctx;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	int c = memcmp(cat->images[x].list_key.b, cat->images[y].list_key.b, 32);
	return c ? c : (x < y ? -1 : x > y);
}

static int catalog_lists(const idd_catalog *cat, struct clist **out, size_t *n, idd_error *err)
{
	uint32_t *ix = idd_calloc(cat->count + 1, sizeof *ix, err);
	struct clist *v = idd_calloc(cat->count + 1, sizeof *v, err);
	if (!ix || !v) {
		free(ix);
		free(v);
		return IDD_ENOMEM;
	}
	for (uint32_t i = 0; i < cat->count; i++)
		ix[i] = i;
	qsort_r(ix, cat->count, sizeof *ix, cmp_index_by_key, (void *)cat);
	size_t nl = 0;
	for (size_t i = 0; i < cat->count;) {
		const idd_image_info *first = &cat->images[ix[i]];
		struct clist *l = &v[nl++];
		l->key = first->list_key;
		l->cost = UINT32_MAX;
		for (; i < cat->count && !memcmp(cat->images[ix[i]].list_key.b, first->list_key.b, 32); i++) {
			const idd_image_info *im = &cat->images[ix[i]];
			l->h += hash_str(im->id);
			uint32_t c = image_cost(im);
			if (c < l->cost) { /* ix is in catalog order within a list */
				l->cost = c;
				l->src = ix[i];
			}
		}
	}
	free(ix);
	*out = v;
	*n = nl;
	return IDD_OK;
}

/* ---- maps ---- */

typedef struct run_ctx {
	const idd_pack_opts *o;
	const char *index_dir;
	const idd_catalog *cat;
	idd_pack_stats *st;
	uint32_t bs, frame_blocks;
	int level;
	char *sortdir;
} run_ctx;

/* The image's current map (map order is the view's order): the saved one
 * when it matches the catalog, else built from the block list. */
static int image_map(run_ctx *r, const idd_image_info *im, idd_map **out, idd_error *err)
{
	idd_error e2;
	idd_map *m = NULL;
	if (idd_map_load(r->index_dir, im->id, &m, &e2) == IDD_OK) {
		r->st->maps_read++;
		if (!memcmp(m->list_key.b, im->list_key.b, 32) && m->block_size == r->bs &&
		    m->nblocks == im->nblocks) {
			*out = m;
			return IDD_OK;
		}
		idd_map_free(m);
		m = NULL;
	}
	/* from the sparse list: a thin image costs its data, not its size */
	idd_blocklist *bl = NULL;
	if (idd_blocklist_open(r->index_dir, im, &bl, err))
		return IDD_ERR;
	r->st->lists_read++;
	int rc = bl->block_size == r->bs
	         ? idd_map_build_list(bl, im->virtual_size, &m, err)
	         : idd_fail(err, "block list of %u-byte blocks in an index of %u", bl->block_size,
	                    r->bs);
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

/* ---- compressing the new blocks ---- */

typedef struct img_handle {
	pthread_mutex_t mu;
	idd_image *img;
	bool failed; /* could not be opened: its blocks are not packed */
	bool warned;
} img_handle;

typedef struct frame_job {
	size_t first, count;    /* into the batch */
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
	run_ctx *r;
	struct newblk *batch;   /* the blocks of the frames being made */
	size_t nbatch;
	img_handle *imgs;
	size_t nopen;
	pthread_mutex_t open_mu;
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
	idd_vwarnf(b->r->o->warn, b->r->o->ctx, fmt, ap);
	pthread_mutex_unlock(&b->warn_mu);
	va_end(ap);
}

/* Read block nb from its image into buf (block-size bytes, zero padded) and
 * check it against its digest. */
static bool read_block(build *b, worker *w, const struct newblk *nb, unsigned char *buf)
{
	const idd_image_info *im = &b->r->cat->images[nb->src];
	img_handle *ih = &b->imgs[nb->src];
	uint32_t bs = b->r->bs;
	idd_error err;
	bool ok = false;
	pthread_mutex_lock(&ih->mu);
	if (!ih->img && !ih->failed) {
		char *path = idd_path_join(b->r->o->repo, im->file, &err);
		idd_repo_entry ent = {.id = im->id, .path = path, .member = im->member[0] ? im->member : NULL,
		                      .container = im->container, .member_off = im->member_off,
		                      .member_len = im->member_len, .streamed = im->streamed};
		if (!path || idd_repo_open_image(b->r->o->repo, &ent, &ih->img, &err)) {
			ih->img = NULL;
		} else if (ih->img->size != im->virtual_size) {
			snprintf(err.msg, sizeof err.msg, "%s: image is %llu bytes, the index says %llu (re-run scan)",
			         im->id, (unsigned long long)ih->img->size, (unsigned long long)im->virtual_size);
			idd_image_close(ih->img);
			ih->img = NULL;
		}
		free(path);
		if (!ih->img) {
			ih->failed = true;
			if (!ih->warned) {
				ih->warned = true;
				build_warn(b, "%s; its blocks are not packed", err.msg);
			}
		} else {
			pthread_mutex_lock(&b->open_mu);
			b->nopen++;
			pthread_mutex_unlock(&b->open_mu);
		}
	}
	if (ih->img) {
		uint64_t off = nb->block * bs;
		size_t len = (size_t)IDD_MIN((uint64_t)bs, ih->img->size - off);
		if (off < ih->img->size && idd_image_read(ih->img, off, buf, len, &err) == IDD_OK) {
			memset(buf + len, 0, bs - len);
			idd_digest got;
			ok = idd_hasher_digest(w->h, buf, bs, &got, &err) == IDD_OK && !memcmp(got.b, nb->d, 32);
			if (!ok)
				snprintf(err.msg, sizeof err.msg,
				         "%s: block %llu does not match the index (changed since the scan? re-run scan)",
				         im->id, (unsigned long long)nb->block);
		}
		if (!ok && !ih->warned) {
			ih->warned = true;
			build_warn(b, "%s; such blocks are not packed", err.msg);
		}
	}
	pthread_mutex_unlock(&ih->mu);
	return ok;
}

/* Between batches (no read in flight): close the images if too many are open. */
static void close_images(build *b, bool all)
{
	if (!all && b->nopen <= MAX_OPEN_IMAGES)
		return;
	for (size_t i = 0; i < b->r->cat->count; i++) {
		idd_image_close(b->imgs[i].img);
		b->imgs[i].img = NULL;
	}
	b->nopen = 0;
}

static void run_job(build *b, worker *w, frame_job *j)
{
	j->nok = 0;
	j->clen = 0;
	uint32_t bs = b->r->bs;
	for (size_t k = 0; k < j->count; k++) {
		j->ok[k] = read_block(b, w, &b->batch[j->first + k], w->raw + (size_t)j->nok * bs);
		if (j->ok[k])
			j->nok++;
		else
			atomic_fetch_add(&b->failed, 1);
	}
	if (!j->nok)
		return;
	size_t z = ZSTD_compress2(w->cctx, j->out, j->cap, w->raw, (size_t)j->nok * bs);
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
	pthread_t th[IDD_MAX_THREADS];
	void *args[IDD_MAX_THREADS][2];
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
	b->nworkers = idd_threads_for_jobs(b->r->o->jobs);
	if (!(b->workers = idd_calloc((size_t)b->nworkers, sizeof *b->workers, err)))
		return IDD_ENOMEM;
	for (int i = 0; i < b->nworkers; i++) {
		worker *w = &b->workers[i];
		w->cctx = ZSTD_createCCtx();
		w->raw = idd_malloc((size_t)b->r->frame_blocks * b->r->bs, err);
		w->h = idd_hasher_new(err);
		if (!w->cctx || !w->raw || !w->h)
			return w->cctx ? IDD_ERR : idd_fail_code(err, IDD_ENOMEM, "zstd: out of memory");
		/* plain frames: content size in the header (readers check it), no
		 * checksum (every block is checked against its SHA-256), no dictionary */
		if (ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, b->r->level)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_contentSizeFlag, 1)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_checksumFlag, 0)) ||
		    ZSTD_isError(ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_dictIDFlag, 0)))
			return idd_fail(err, "zstd: cannot set the compression parameters");
	}
	return IDD_OK;
}

/* Compress the blocks of `todo` (pack order) into one new data file and its
 * frame table; every block packed goes to `entries` with its ordinal (from
 * first_ordinal on).  *f receives the file (f->nframes 0: none was made,
 * every block failed). */
static int write_data(run_ctx *r, idd_extsort *todo, uint64_t first_ordinal, idd_extsort *entries,
                      idd_pack_file *f, uint64_t *packed, uint64_t *added, uint64_t *failed,
                      idd_error *err)
{
	memset(f, 0, sizeof *f);
	build b = {.r = r};
	pthread_mutex_init(&b.warn_mu, NULL);
	pthread_mutex_init(&b.open_mu, NULL);
	atomic_init(&b.failed, 0);
	char *dir = idd_path_join(r->index_dir, IDD_PACK_DATA_DIR, err);
	char *newpath = dir ? idd_path_join(dir, "new", err) : NULL;
	char *tmp = newpath ? idd_tmp_path(newpath, err) : NULL;
	free(newpath);
	char *ftpath = dir ? idd_asprintf(err, "%s/new%s", dir, IDD_PACK_FT_SUFFIX) : NULL;
	int fd = -1, rc = IDD_OK;
	idd_indexfile_out ft = {.fd = -1};
	EVP_MD_CTX *sha = EVP_MD_CTX_new();
	uint8_t *okbuf = NULL;
	size_t cap = ZSTD_compressBound((size_t)r->frame_blocks * r->bs);
	uint64_t total = idd_extsort_count(todo), done = 0;
	if (!tmp || !ftpath) {
		rc = IDD_ENOMEM;
		goto out;
	}
	if (!sha || EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1) {
		rc = idd_fail(err, "OpenSSL: SHA-256 failed");
		goto out;
	}
	if ((rc = workers_init(&b, err)))
		goto out;
	b.jobs = idd_calloc(BATCH_FRAMES, sizeof *b.jobs, err);
	okbuf = idd_malloc((size_t)BATCH_FRAMES * r->frame_blocks, err);
	b.batch = idd_calloc((size_t)BATCH_FRAMES * r->frame_blocks, sizeof *b.batch, err);
	b.imgs = idd_calloc(r->cat->count + 1, sizeof *b.imgs, err);
	if (!b.jobs || !okbuf || !b.batch || !b.imgs) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < r->cat->count; i++)
		pthread_mutex_init(&b.imgs[i].mu, NULL);
	for (size_t k = 0; k < BATCH_FRAMES; k++) {
		b.jobs[k].cap = cap;
		b.jobs[k].ok = okbuf + k * r->frame_blocks;
		if (!(b.jobs[k].out = idd_malloc(cap, err))) {
			rc = IDD_ENOMEM;
			goto out;
		}
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = idd_fail_errno(err, tmp, "cannot create");
		goto out;
	}
	if ((rc = idd_indexfile_out_begin(&ft, ftpath, IDD_PACK_FT_MAGIC, IDD_PACK_FT_VERSION, err)))
		goto out;
	unsigned char hdr[IDD_PACK_DATA_HEADER] = {0};
	idd_le32_put(hdr, IDD_PACK_SKIPPABLE_MAGIC);
	idd_le32_put(hdr + 4, IDD_PACK_DATA_HEADER - 8);
	memcpy(hdr + 8, "IDD-PKD", 8);
	idd_le32_put(hdr + 16, 1);
	idd_le32_put(hdr + 20, r->bs);
	idd_le32_put(hdr + 24, r->frame_blocks);
	if (idd_pwrite_all(fd, hdr, sizeof hdr, 0)) {
		rc = idd_fail_errno(err, tmp, "write");
		goto out;
	}
	EVP_DigestUpdate(sha, hdr, sizeof hdr);
	uint64_t off = IDD_PACK_DATA_HEADER, ordinal = first_ordinal;
	/* frames: runs of one signature, at most frame_blocks blocks */
	struct newblk next;
	const void *rec;
	int got = idd_extsort_next(todo, &rec, err);
	if (got > 0)
		next = *(const struct newblk *)rec;
	while (got > 0) {
		b.njobs = 0;
		b.nbatch = 0;
		while (got > 0 && b.njobs < BATCH_FRAMES) {
			frame_job *jb = &b.jobs[b.njobs++];
			jb->first = b.nbatch;
			jb->rc = IDD_OK;
			uint64_t sig = next.sig;
			while (got > 0 && next.sig == sig && b.nbatch - jb->first < r->frame_blocks) {
				b.batch[b.nbatch++] = next;
				if ((got = idd_extsort_next(todo, &rec, err)) > 0)
					next = *(const struct newblk *)rec;
			}
			jb->count = b.nbatch - jb->first;
		}
		if (got < 0) {
			rc = got;
			goto out;
		}
		if ((rc = run_batch(&b, err)))
			goto out;
		close_images(&b, false);
		for (size_t k = 0; k < b.njobs; k++) {
			frame_job *jb = &b.jobs[k];
			done += jb->count;
			if (!jb->nok)
				continue;
			if (idd_pwrite_all(fd, jb->out, jb->clen, off)) {
				rc = idd_fail_errno(err, tmp, "write");
				goto out;
			}
			EVP_DigestUpdate(sha, jb->out, jb->clen);
			unsigned char fr[IDD_PACK_FT_REC];
			idd_le64_put(fr, ordinal - first_ordinal);
			idd_le64_put(fr + 8, off);
			idd_le32_put(fr + 16, (uint32_t)jb->clen);
			idd_le32_put(fr + 20, jb->nok);
			if ((rc = idd_indexfile_out_append(&ft, fr, sizeof fr, err)))
				goto out;
			for (size_t q = 0; q < jb->count; q++) {
				if (!jb->ok[q])
					continue;
				*added += !b.batch[jb->first + q].in_old;
				unsigned char e[IDD_PACK_ENTRY];
				memcpy(e, b.batch[jb->first + q].d, 32);
				idd_le64_put(e + 32, ordinal++);
				if ((rc = idd_extsort_add(entries, e, err)))
					goto out;
			}
			*packed += jb->nok;
			off += jb->clen;
			f->nframes++;
		}
		if (r->o->progress)
			r->o->progress(r->o->ctx, done, total);
	}
	*failed += atomic_load(&b.failed);
	if (!f->nframes) { /* every block failed: no file */
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
	if (EVP_DigestFinal_ex(sha, f->name.b, &n) != 1) {
		rc = idd_fail(err, "OpenSSL: SHA-256 failed");
		goto out;
	}
	f->size = off;
	f->nslots = ordinal - first_ordinal;
	f->first = first_ordinal;
	char *rel = idd_pack_data_relpath(&f->name, err);
	char *path = rel ? idd_path_join(r->index_dir, rel, err) : NULL;
	free(rel);
	rel = idd_pack_ft_relpath(&f->name, err);
	char *ftfinal = rel ? idd_path_join(r->index_dir, rel, err) : NULL;
	free(rel);
	if (!path || !ftfinal) {
		free(path);
		free(ftfinal);
		rc = IDD_ENOMEM;
		goto out;
	}
	if (rename(tmp, path))
		rc = idd_fail_errno(err, path, "cannot rename the new data file into place");
	free(path);
	/* the frame table takes the data file's name */
	uint64_t ftsize = 0;
	if (!rc)
		rc = idd_indexfile_out_retarget(&ft, ftfinal, err);
	free(ftfinal);
	if (!rc && !(rc = idd_indexfile_out_finish(&ft, &ftsize, err)))
		r->st->index_bytes_written += ftsize;
	if (!rc)
		rc = idd_pack_ft_stat(r->index_dir, f, err);
	if (!rc)
		rc = idd_fsync_dir(dir, err);
	if (!rc)
		r->st->data_bytes_written = f->size;
out:
	if (rc)
		f->nframes = 0;
	if (fd >= 0)
		close(fd);
	if (rc && tmp)
		unlink(tmp);
	idd_indexfile_out_abort(&ft);
	if (b.imgs) {
		close_images(&b, true);
		for (size_t i = 0; i < r->cat->count; i++)
			pthread_mutex_destroy(&b.imgs[i].mu);
	}
	for (size_t k = 0; b.jobs && k < BATCH_FRAMES; k++)
		free(b.jobs[k].out);
	free(b.jobs);
	free(okbuf);
	free(b.batch);
	free(b.imgs);
	workers_free(&b);
	pthread_mutex_destroy(&b.warn_mu);
	pthread_mutex_destroy(&b.open_mu);
	EVP_MD_CTX_free(sha);
	free(tmp);
	free(ftpath);
	free(dir);
	return rc;
}

/* ---- runs of the digest index ---- */

static int runs_push(idd_pack_index *x, const idd_pack_idxrun *r, idd_error *err)
{
	idd_pack_idxrun *v = idd_realloc_array(x->runs, x->nruns + 1, sizeof *v, err);
	if (!v)
		return IDD_ENOMEM;
	x->runs = v;
	x->runs[x->nruns++] = *r;
	return IDD_OK;
}

/* Finish a run being written: an empty one is no file at all. */
static int run_close(run_ctx *r, idd_indexfile_out *o, idd_pack_idxrun *run, idd_error *err)
{
	run->entries = idd_indexfile_out_payload(o) / IDD_PACK_ENTRY;
	if (!run->entries) {
		idd_indexfile_out_abort(o);
		return IDD_OK;
	}
	uint64_t size;
	int rc = idd_indexfile_out_finish(o, &size, err);
	idd_indexfile_out_abort(o);
	if (!rc) {
		r->st->index_bytes_written += size;
		rc = idd_pack_run_map(r->index_dir, run, err);
	}
	return rc;
}

/* The sorted entries as run `seq` (the first of equal digests wins). */
static int write_run(run_ctx *r, idd_extsort *entries, uint64_t seq, idd_pack_idxrun *run,
                     idd_error *err)
{
	memset(run, 0, sizeof *run);
	run->seq = seq;
	char *path = idd_pack_run_path(r->index_dir, seq, err);
	idd_indexfile_out o = {.fd = -1};
	int rc = path ? idd_indexfile_out_begin(&o, path, IDD_PACK_RUN_MAGIC, IDD_PACK_RUN_VERSION, err)
	              : IDD_ENOMEM;
	free(path);
	unsigned char prev[32];
	bool have = false;
	const void *rec;
	int got;
	while (!rc && (got = idd_extsort_next(entries, &rec, err)) != 0) {
		if (got < 0) {
			rc = got;
			break;
		}
		if (have && !memcmp(prev, rec, 32))
			continue;
		memcpy(prev, rec, 32);
		have = true;
		rc = idd_indexfile_out_append(&o, rec, IDD_PACK_ENTRY, err);
	}
	if (rc) {
		idd_indexfile_out_abort(&o);
		return rc;
	}
	return run_close(r, &o, run, err);
}

/* Merge runs i and i+1 (adjacent) into one in place of both: the newer
 * entry wins; merging into the oldest run drops the removals. */
static int merge_pair(run_ctx *r, idd_pack_index *x, size_t i, idd_error *err)
{
	idd_pack_idxrun *a = &x->runs[i], *b = &x->runs[i + 1];
	bool bottom = i == 0;
	idd_pack_idxrun nr = {.seq = x->next_seq++};
	char *path = idd_pack_run_path(r->index_dir, nr.seq, err);
	idd_indexfile_out o = {.fd = -1};
	int rc = path ? idd_indexfile_out_begin(&o, path, IDD_PACK_RUN_MAGIC, IDD_PACK_RUN_VERSION, err)
	              : IDD_ENOMEM;
	free(path);
	uint64_t p = 0, q = 0;
	while (!rc && (p < a->entries || q < b->entries)) {
		const unsigned char *ea = p < a->entries ? a->recs + p * IDD_PACK_ENTRY : NULL;
		const unsigned char *eb = q < b->entries ? b->recs + q * IDD_PACK_ENTRY : NULL;
		int c = !ea ? 1 : !eb ? -1 : memcmp(ea, eb, 32);
		const unsigned char *e = c < 0 ? ea : eb;
		if (c <= 0)
			p++;
		if (c >= 0)
			q++;
		if (bottom && idd_le64(e + 32) == IDD_PACK_REMOVED)
			continue;
		rc = idd_indexfile_out_append(&o, e, IDD_PACK_ENTRY, err);
	}
	if (rc) {
		idd_indexfile_out_abort(&o);
		return rc;
	}
	if ((rc = run_close(r, &o, &nr, err)))
		return rc;
	idd_pack_run_unmap(a);
	idd_pack_run_unmap(b);
	if (nr.entries) {
		x->runs[i] = nr;
		memmove(&x->runs[i + 1], &x->runs[i + 2], (x->nruns - i - 2) * sizeof *x->runs);
		x->nruns--;
	} else {
		memmove(&x->runs[i], &x->runs[i + 2], (x->nruns - i - 2) * sizeof *x->runs);
		x->nruns -= 2;
	}
	r->st->runs_merged++;
	return IDD_OK;
}

static int compact_runs(run_ctx *r, idd_pack_index *x, idd_error *err)
{
	while (x->nruns >= 2 &&
	       x->runs[x->nruns - 1].entries * RUN_RATIO >= x->runs[x->nruns - 2].entries) {
		int rc = merge_pair(r, x, x->nruns - 2, err);
		if (rc)
			return rc;
	}
	return IDD_OK;
}

/* A run number no file in the runs directory has, so that a new run never
 * takes the name of one an older manifest may still name. */
static uint64_t next_free_seq(const char *index_dir, uint64_t at_least)
{
	char *dir = idd_path_join(index_dir, IDD_PACK_RUNS_DIR, NULL);
	DIR *d = dir ? opendir(dir) : NULL;
	struct dirent *de;
	while (d && (de = readdir(d))) {
		unsigned long long seq;
		if (strlen(de->d_name) >= 16 && sscanf(de->d_name, "%16llx", &seq) == 1 &&
		    seq + 1 > at_least)
			at_least = seq + 1;
	}
	if (d)
		closedir(d);
	free(dir);
	return at_least;
}

/* ---- views and kept lists ---- */

static int cmp_k(const void *a, const void *b, void *ctx)
{
	const idd_digest *d = ctx;
	return memcmp(d[*(const uint64_t *)a].b, d[*(const uint64_t *)b].b, 32);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static uint64_t file_size(const char *index_dir, const char *rel)
{
	char *p = idd_path_join(index_dir, rel, NULL);
	struct stat st;
	uint64_t n = p && stat(p, &st) == 0 ? (uint64_t)st.st_size : 0;
	free(p);
	return n;
}

/* Write the view of list l over the pack x; l->now receives its entry. */
static int write_view(run_ctx *r, idd_pack_index *x, struct clist *l, idd_error *err)
{
	const idd_image_info *im = &r->cat->images[l->src];
	idd_map *m = NULL;
	if (image_map(r, im, &m, err))
		return IDD_ERR;
	idd_pack_view v = {.list_key = im->list_key, .block_size = r->bs, .ndistinct = m->ndistinct};
	uint64_t *order = NULL, *frames = NULL;
	idd_pack_loc *loc = NULL;
	size_t *fmap = NULL;
	idd_pack_seeker sk = {0};
	int rc = idd_pack_seeker_init(&sk, x, err);
	size_t n = (size_t)m->ndistinct;
	if (!rc && n &&
	    (!(order = idd_calloc(n, sizeof *order, err)) || !(loc = idd_calloc(n, sizeof *loc, err)) ||
	     !(frames = idd_calloc(n, sizeof *frames, err)) ||
	     !(v.slot = idd_calloc(n, sizeof *v.slot, err))))
		rc = IDD_ENOMEM;
	if (!rc && !(fmap = idd_calloc(x->nfiles + 1, sizeof *fmap, err)))
		rc = IDD_ENOMEM;
	if (rc)
		goto out;
	for (size_t k = 0; k < n; k++)
		order[k] = k;
	if (n) /* an image of zero blocks has no arrays (qsort wants a pointer) */
		qsort_r(order, n, sizeof *order, cmp_k, m->digests);
	/* where each digest lies, looked up in digest order */
	size_t nf = 0;
	uint64_t packed = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t k = order[i], p;
		if (!idd_pack_seek(&sk, m->digests[k].b, &p)) {
			loc[k].frame = UINT64_MAX;
			continue;
		}
		if ((rc = idd_pack_locate(x, p, &loc[k], err)))
			goto out;
		frames[nf++] = loc[k].frame;
		packed++;
	}
	if (nf)
		qsort(frames, nf, sizeof *frames, cmp_u64);
	size_t w = 0;
	for (size_t i = 0; i < nf; i++)
		if (!w || frames[w - 1] != frames[i])
			frames[w++] = frames[i];
	nf = w;
	/* the view's frames in pack order (file, offset), its files as they come */
	if (nf && (!(v.frames = idd_calloc(nf, sizeof *v.frames, err)) ||
	           !(v.files = idd_calloc(x->nfiles, sizeof *v.files, err)))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t f = 0; f <= x->nfiles; f++)
		fmap[f] = SIZE_MAX;
	/* fill the frames from a digest lying in each (loc holds them) */
	for (size_t k = 0; k < n; k++) {
		if (loc[k].frame == UINT64_MAX)
			continue;
		size_t *pos = bsearch(&loc[k].frame, frames, nf, sizeof *frames, cmp_u64);
		idd_pack_frame *vf = &v.frames[pos - frames];
		vf->file = loc[k].file;
		vf->nblocks = loc[k].nblocks;
		vf->off = loc[k].off;
		vf->clen = loc[k].clen;
	}
	uint64_t vslots = 0;
	for (size_t i = 0; i < nf; i++) {
		idd_pack_frame *vf = &v.frames[i];
		if (fmap[vf->file] == SIZE_MAX) {
			fmap[vf->file] = v.nfiles;
			v.files[v.nfiles].name = x->files[vf->file].name;
			v.files[v.nfiles].size = x->files[vf->file].size;
			v.nfiles++;
		}
		vf->file = (uint32_t)fmap[vf->file];
		vf->first = vslots;
		vslots += vf->nblocks;
	}
	v.nframes = nf;
	v.nslots = vslots;
	for (size_t k = 0; k < n; k++) {
		if (loc[k].frame == UINT64_MAX)
			continue;
		size_t *pos = bsearch(&loc[k].frame, frames, nf, sizeof *frames, cmp_u64);
		v.slot[k] = v.frames[pos - frames].first + loc[k].slot + 1;
	}
	if ((rc = idd_pack_view_save(r->index_dir, &v, err)))
		goto out;
	char *rel = idd_pack_view_relpath(&v.list_key, err);
	if (rel)
		r->st->index_bytes_written += file_size(r->index_dir, rel);
	free(rel);
	r->st->views_written++;
	l->now = (idd_pack_list){.list_key = l->key, .nblocks = im->nblocks,
	                         .zero_blocks = im->zero_blocks, .ndistinct = m->ndistinct,
	                         .unpacked = m->ndistinct - packed};
out:
	idd_pack_seeker_free(&sk);
	free(order);
	free(loc);
	free(frames);
	free(fmap);
	free(v.frames);
	free(v.files);
	free(v.slot);
	idd_map_free(m);
	return rc;
}

/* Keep the block list a view was made from, for the run that sees it go:
 * a hard link (no space), a copy where links are not possible.  One that
 * cannot be kept is only a warning: that run checks every packed block
 * instead. */
static void keep_list(run_ctx *r, const idd_digest *key)
{
	idd_error e;
	char *src = idd_blocks_path(r->index_dir, key, &e);
	char *rel = idd_pack_list_relpath(key, &e);
	char *dst = rel ? idd_path_join(r->index_dir, rel, &e) : NULL;
	int rc = src && dst ? IDD_OK : IDD_ENOMEM;
	if (!rc && link(src, dst) && errno != EEXIST) { /* the name says the content */
		void *data = NULL;
		size_t len;
		rc = idd_read_file(src, (size_t)(IDD_IF_MAX_PAYLOAD + IDD_IF_HEADER + IDD_IF_TRAILER),
		                   &data, &len, &e);
		if (!rc)
			rc = idd_write_file_atomic(dst, data, len, &e);
		free(data);
	}
	if (rc)
		idd_warnf(r->o->warn, r->o->ctx, "%s (the pack keeps no copy of this block list)", e.msg);
	free(src);
	free(rel);
	free(dst);
}

static bool exists(const char *index_dir, char *rel)
{
	char *p = rel ? idd_path_join(index_dir, rel, NULL) : NULL;
	struct stat st;
	bool ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
	free(p);
	free(rel);
	return ok;
}

/* ---- removing what the manifest does not name ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct name_keep {
	char **names; /* sorted */
	size_t n;
};

static bool keep_named(void *ctx, const idd_dir_entry *e)
{
	const struct name_keep *k = ctx;
	const char *name = e->name;
	return e->kind == IDD_ENTRY_FILE && k->n && bsearch(&name, k->names, k->n, sizeof *k->names, cmp_str);
}

/* Delete from SUB every file not in keep (sorted names), temporaries
 * included: we hold the lock, so nothing else writes there.  A
 * failure is a warning: the new index is in place, the next run retries. */
static void remove_unlisted(const idd_pack_opts *o, const char *index_dir, const char *sub, char **keep,
                            size_t nkeep)
{
	struct name_keep k = {.names = keep, .n = nkeep};
	idd_error e;
	char *dir = idd_path_join(index_dir, sub, &e);
	if (!dir || idd_dir_gc(dir, keep_named, &k, NULL, &e))
		idd_warnf(o->warn, o->ctx, "%s", e.msg);
	free(dir);
}

static char *base_name(char *rel)
{
	char *slash = rel ? strrchr(rel, '/') : NULL;
	char *b = slash ? strdup(slash + 1) : NULL;
	free(rel);
	return b;
}

static void remove_unnamed(const idd_pack_opts *o, const char *index_dir, const idd_pack_index *x)
{
	size_t cap = 2 * x->nfiles + x->nlists + x->nruns + 1;
	char **keep = calloc(cap, sizeof *keep);
	if (!keep)
		return; /* nothing deleted: the next run tries again */
	size_t n = 0;
	bool ok = true;
	for (size_t i = 0; i < x->nfiles; i++) {
		ok = ok && (keep[n++] = base_name(idd_pack_data_relpath(&x->files[i].name, NULL)));
		ok = ok && (keep[n++] = base_name(idd_pack_ft_relpath(&x->files[i].name, NULL)));
	}
	if (ok) {
		qsort(keep, n, sizeof *keep, cmp_str);
		remove_unlisted(o, index_dir, IDD_PACK_DATA_DIR, keep, n);
	}
	for (size_t i = 0; i < n; i++)
		free(keep[i]);
	n = 0;
	for (size_t i = 0; ok && i < x->nlists; i++)
		ok = (keep[n++] = base_name(idd_pack_view_relpath(&x->lists[i].list_key, NULL))) != NULL;
	if (ok) { /* lists are sorted by key: so are their hex names */
		remove_unlisted(o, index_dir, IDD_PACK_VIEWS_DIR, keep, n);
		remove_unlisted(o, index_dir, IDD_PACK_LISTS_DIR, keep, n);
	}
	for (size_t i = 0; i < n; i++)
		free(keep[i]);
	n = 0;
	for (size_t i = 0; ok && i < x->nruns; i++) {
		char name[20];
		snprintf(name, sizeof name, "%016llx", (unsigned long long)x->runs[i].seq);
		ok = (keep[n++] = strdup(name)) != NULL;
	}
	if (ok)
		remove_unlisted(o, index_dir, IDD_PACK_RUNS_DIR, keep, n); /* seqs grow: sorted */
	for (size_t i = 0; i < n; i++)
		free(keep[i]);
	free(keep);
}

/* Bytes of the files under SUB; with only_own, those no other directory
 * links to (kept lists are hard links to blocks/ until scan drops them). */
static uint64_t dir_bytes(const char *index_dir, const char *sub, bool only_own)
{
	char *dir = idd_path_join(index_dir, sub, NULL);
	uint64_t total = dir ? idd_dir_bytes(dir, only_own) : 0;
	free(dir);
	return total;
}

static uint64_t pack_bytes(const char *index_dir)
{
	return file_size(index_dir, IDD_PACK_INDEX_FILE) + dir_bytes(index_dir, IDD_PACK_DATA_DIR, false) +
	       dir_bytes(index_dir, IDD_PACK_VIEWS_DIR, false) +
	       dir_bytes(index_dir, IDD_PACK_RUNS_DIR, false) +
	       dir_bytes(index_dir, IDD_PACK_LISTS_DIR, true);
}

/* ---- the run ---- */

/* The old pack's data files (and frame tables) are all there, whole? */
static bool data_files_present(const char *index_dir, const idd_pack_index *x)
{
	for (size_t i = 0; i < x->nfiles; i++) {
		char *rel = idd_pack_data_relpath(&x->files[i].name, NULL);
		uint64_t size = rel ? file_size(index_dir, rel) : 0;
		free(rel);
		if (size != x->files[i].size)
			return false;
		if (x->version >= 2) {
			rel = idd_pack_ft_relpath(&x->files[i].name, NULL);
			size = rel ? file_size(index_dir, rel) : 0;
			free(rel);
			if (size != x->files[i].ft_size)
				return false;
		}
	}
	return true;
}

/* The block table, counting exactly the catalog's images (brought up to
 * date when it does not: that reads the lists of what changed). */
static int blocktable_for(run_ctx *r, idd_blocktable **bt, idd_error *err)
{
	if (*bt)
		return IDD_OK;
	idd_error e;
	if (idd_blocktable_open(r->index_dir, bt, &e) == IDD_OK && idd_blocktable_matches(*bt, r->cat))
		return IDD_OK;
	idd_blocktable_free(*bt);
	*bt = NULL;
	idd_bt_update_stats bst;
	int rc = idd_blocktable_update(r->index_dir, NULL, r->cat, NULL, false, &bst, r->o->warn, r->o->ctx,
	                               err);
	r->st->lists_read += bst.lists_read;
	return rc ? rc : idd_blocktable_open(r->index_dir, bt, err);
}

static int tombstone(idd_extsort *entries, const unsigned char *d, idd_error *err)
{
	unsigned char e[IDD_PACK_ENTRY];
	memcpy(e, d, 32);
	idd_le64_put(e + 32, IDD_PACK_REMOVED);
	return idd_extsort_add(entries, e, err);
}

/* The digests of the gone lists that no image holds any more leave the
 * pack: removals into `entries`, counted in *removed. */
static int take_away(run_ctx *r, idd_pack_index *old, const idd_pack_list *const *gone,
                     size_t ngone, idd_blocktable *bt, idd_extsort *entries, uint64_t *removed,
                     idd_error *err)
{
	idd_extsort *t = NULL;
	int rc = idd_extsort_new(r->sortdir, 32, idd_pack_sort_budget, cmp_digest32, &t, err);
	bool sweep = false;
	for (size_t i = 0; !rc && i < ngone; i++) {
		char *rel = idd_pack_list_relpath(&gone[i]->list_key, err);
		char *path = rel ? idd_path_join(r->index_dir, rel, err) : NULL;
		free(rel);
		if (!path) {
			rc = IDD_ENOMEM;
			break;
		}
		idd_image_info im = {.id = path, .list_key = gone[i]->list_key,
		                     .nblocks = gone[i]->nblocks, .zero_blocks = gone[i]->zero_blocks};
		idd_blocklist *bl = NULL;
		idd_error e;
		int orc = idd_blocklist_open_path(path, &im, &bl, &e);
		free(path);
		if (orc == IDD_ENOMEM) {
			*err = e;
			rc = orc;
			break;
		}
		if (orc) { /* lost or damaged: check every packed block instead */
			idd_warnf(r->o->warn, r->o->ctx,
			          "%s; blocks no image holds are found by checking every packed block", e.msg);
			sweep = true;
			break;
		}
		r->st->lists_read++;
		for (uint64_t q = 0; !rc && q < bl->ndata; q++)
			rc = idd_extsort_add(t, bl->digests[q].b, err);
		idd_blocklist_free(bl);
	}
	if (!rc && !sweep)
		rc = idd_extsort_finish(t, err);
	if (!rc && sweep) {
		idd_pack_iter it;
		if (!(rc = idd_pack_iter_init(&it, old, err))) {
			const unsigned char *d;
			uint64_t ord;
			while (!rc && idd_pack_iter_next(&it, &d, &ord) > 0) {
				int64_t c;
				if (!(rc = idd_blocktable_count(bt, (const idd_digest *)d, &c, err)) && c <= 0) {
					rc = tombstone(entries, d, err);
					(*removed)++;
				}
			}
			idd_pack_iter_free(&it);
		}
	} else if (!rc) {
		idd_pack_seeker sk;
		if (!(rc = idd_pack_seeker_init(&sk, old, err))) {
			unsigned char prev[32];
			bool have = false;
			const void *rec;
			int got;
			while (!rc && (got = idd_extsort_next(t, &rec, err)) != 0) {
				if (got < 0) {
					rc = got;
					break;
				}
				if (have && !memcmp(prev, rec, 32))
					continue;
				memcpy(prev, rec, 32);
				have = true;
				uint64_t ord;
				int64_t c;
				if (!idd_pack_seek(&sk, rec, &ord))
					continue; /* not packed (it could not be read) */
				if (!(rc = idd_blocktable_count(bt, (const idd_digest *)rec, &c, err)) && c <= 0) {
					rc = tombstone(entries, rec, err);
					(*removed)++;
				}
			}
			idd_pack_seeker_free(&sk);
		}
	}
	idd_extsort_free(t);
	return rc;
}

/* The digests of the fresh lists not in the pack yet (all of them when
 * old is NULL), with their signatures and where to read them, into
 * `todo`; *kept counts those the old pack held (a compaction packs them
 * again). */
static int new_blocks(run_ctx *r, struct clist *cl, size_t ncl, idd_pack_index *old, bool repack,
                      idd_extsort *todo, uint64_t *kept, idd_error *err)
{
	idd_extsort *c = NULL;
	int rc = idd_extsort_new(r->sortdir, sizeof(struct cand), idd_pack_sort_budget, cmp_cand, &c,
	                         err);
	for (size_t i = 0; !rc && i < ncl; i++) {
		struct clist *l = &cl[i];
		if (!l->fresh)
			continue;
		idd_map *m = NULL;
		uint64_t *fb = NULL;
		if (!(rc = image_map(r, &r->cat->images[l->src], &m, err)))
			rc = first_blocks(m, &fb, err);
		for (uint64_t k = 0; !rc && k < (m ? m->ndistinct : 0); k++) {
			struct cand cd = {.h = l->h, .block = fb[k], .src = l->src, .cost = l->cost};
			memcpy(cd.d, m->digests[k].b, 32);
			rc = idd_extsort_add(c, &cd, err);
		}
		free(fb);
		idd_map_free(m);
	}
	if (!rc)
		rc = idd_extsort_finish(c, err);
	idd_pack_seeker sk = {0};
	if (!rc && old)
		rc = idd_pack_seeker_init(&sk, old, err);
	struct newblk nb;
	bool have = false;
	const void *rec;
	int got = 0;
	/* one digest's records are together, the cheapest source first */
	while (!rc && (got = idd_extsort_next(c, &rec, err)) >= 0) {
		const struct cand *cd = got ? rec : NULL;
		if (have && (!cd || memcmp(cd->d, nb.d, 32))) {
			uint64_t ord;
			nb.in_old = old && idd_pack_seek(&sk, nb.d, &ord);
			*kept += nb.in_old;
			if (!nb.in_old || repack)
				rc = idd_extsort_add(todo, &nb, err);
			have = false;
		}
		if (!cd)
			break;
		if (!have) {
			nb = (struct newblk){.sig = 0, .block = cd->block, .src = cd->src};
			memcpy(nb.d, cd->d, 32);
			have = true;
		}
		nb.sig += cd->h;
	}
	if (!rc && got < 0)
		rc = got;
	if (!rc)
		rc = idd_extsort_finish(todo, err);
	idd_pack_seeker_free(&sk);
	idd_extsort_free(c);
	return rc;
}

/* An index of the older format (one file with every entry and frame)
 * becomes the current one in place: its frames the files' frame tables,
 * its entries the first run (less those no image holds when the catalog
 * changed since), its views the lists it covers.  No block is read or
 * recompressed. */
static int upgrade(run_ctx *r, idd_pack_index *old, struct clist *cl, size_t ncl,
                   idd_blocktable **bt, idd_error *err)
{
	idd_pack_index nx = {.version = 2, .block_size = old->block_size,
	                     .frame_blocks = old->frame_blocks, .level = old->level,
	                     .nslots = old->nslots, .nfiles = old->nfiles};
	nx.next_seq = next_free_seq(r->index_dir, 0);
	int rc = IDD_OK;
	if ((nx.files = idd_calloc(old->nfiles + 1, sizeof *nx.files, err)) == NULL ||
	    (nx.lists = idd_calloc(ncl + 1, sizeof *nx.lists, err)) == NULL ||
	    (nx.runs = idd_calloc(1, sizeof *nx.runs, err)) == NULL)
		rc = IDD_ENOMEM;
	for (size_t i = 0; !rc && i < old->nfiles; i++) {
		idd_pack_file *f = &nx.files[i];
		*f = old->files[i];
		char *rel = idd_pack_ft_relpath(&f->name, err);
		char *path = rel ? idd_path_join(r->index_dir, rel, err) : NULL;
		free(rel);
		idd_indexfile_out o = {.fd = -1};
		rc = path ? idd_indexfile_out_begin(&o, path, IDD_PACK_FT_MAGIC, IDD_PACK_FT_VERSION, err)
		          : IDD_ENOMEM;
		free(path);
		for (uint64_t j = 0; !rc && j < f->nframes; j++) {
			const idd_pack_frame *fr = &old->frames[f->first_frame + j];
			unsigned char rec[IDD_PACK_FT_REC];
			idd_le64_put(rec, fr->first - f->first);
			idd_le64_put(rec + 8, fr->off);
			idd_le32_put(rec + 16, (uint32_t)fr->clen);
			idd_le32_put(rec + 20, fr->nblocks);
			rc = idd_indexfile_out_append(&o, rec, sizeof rec, err);
		}
		uint64_t size;
		if (!rc && !(rc = idd_indexfile_out_finish(&o, &size, err)))
			r->st->index_bytes_written += size;
		idd_indexfile_out_abort(&o);
		if (!rc)
			rc = idd_pack_ft_stat(r->index_dir, f, err);
	}
	idd_digest key;
	if (!rc)
		rc = idd_catalog_key(r->cat, &key, err);
	bool same = !rc && !memcmp(key.b, old->catalog_key.b, 32);
	if (!rc && !same && old->nruns)
		rc = blocktable_for(r, bt, err);
	idd_pack_idxrun base = {.seq = nx.next_seq++};
	char *path = rc ? NULL : idd_pack_run_path(r->index_dir, base.seq, err);
	idd_indexfile_out o = {.fd = -1};
	if (!rc)
		rc = path ? idd_indexfile_out_begin(&o, path, IDD_PACK_RUN_MAGIC, IDD_PACK_RUN_VERSION, err)
		          : IDD_ENOMEM;
	free(path);
	for (uint64_t i = 0; !rc && old->nruns && i < old->runs[0].entries; i++) {
		const unsigned char *e = old->runs[0].recs + i * IDD_PACK_ENTRY;
		int64_t c = 1;
		if (!same && (rc = idd_blocktable_count(*bt, (const idd_digest *)e, &c, err)))
			break;
		if (c <= 0) {
			r->st->removed++;
			continue;
		}
		rc = idd_indexfile_out_append(&o, e, IDD_PACK_ENTRY, err);
	}
	if (!rc)
		rc = run_close(r, &o, &base, err);
	else
		idd_indexfile_out_abort(&o);
	if (!rc && base.entries)
		nx.runs[nx.nruns++] = base;
	nx.nentries = base.entries;
	/* the lists the old pack covered and the catalog still has */
	for (size_t i = 0; !rc && i < ncl; i++) {
		const idd_pack_list *ol = idd_pack_index_list(old, &cl[i].key);
		if (!ol)
			continue;
		const idd_image_info *im = &r->cat->images[cl[i].src];
		nx.lists[nx.nlists++] = (idd_pack_list){
			.list_key = cl[i].key, .nblocks = im->nblocks, .zero_blocks = im->zero_blocks,
			.ndistinct = im->distinct_blocks, .unpacked = ol->unpacked};
		keep_list(r, &cl[i].key);
	}
	char *dirs[3] = {idd_path_join(r->index_dir, IDD_PACK_DATA_DIR, err),
	                 idd_path_join(r->index_dir, IDD_PACK_RUNS_DIR, err),
	                 idd_path_join(r->index_dir, IDD_PACK_LISTS_DIR, err)};
	for (int i = 0; i < 3; i++) {
		if (!rc)
			rc = dirs[i] ? idd_fsync_dir(dirs[i], err) : IDD_ENOMEM;
		free(dirs[i]);
	}
	if (!rc)
		rc = idd_pack_index_save(r->index_dir, &nx, err);
	if (!rc) {
		r->st->upgraded = true;
		r->st->changed = true;
		r->st->index_bytes_written += file_size(r->index_dir, IDD_PACK_INDEX_FILE);
	}
	for (size_t i = 0; i < nx.nruns; i++)
		idd_pack_run_unmap(&nx.runs[i]);
	free(nx.runs);
	free(nx.files);
	free(nx.lists);
	return rc;
}

static int pack_locked(const idd_pack_opts *o, const char *index_dir, idd_pack_stats *st,
                       idd_error *err)
{
	idd_catalog *cat = NULL;
	idd_pack_index *old = NULL, *nx = NULL;
	idd_blocktable *bt = NULL;
	struct clist *cl = NULL;
	const idd_pack_list **gone = NULL;
	idd_extsort *entries = NULL, *todo = NULL;
	size_t ncl = 0, ngone = 0;
	run_ctx r = {.o = o, .index_dir = index_dir, .st = st};
	int rc = idd_catalog_load(index_dir, &cat, err);
	if (rc)
		return rc;
	r.cat = cat;
	r.bs = cat->block_size;
	r.frame_blocks = IDD_MAX(IDD_PACK_FRAME_BYTES / cat->block_size, 1u);
	r.level = o->level > 0 ? IDD_MIN(o->level, 19) : IDD_PACK_LEVEL;
	if ((rc = catalog_lists(cat, &cl, &ncl, err)))
		goto out;
	const char *subs[] = {IDD_PACK_DATA_DIR, IDD_PACK_VIEWS_DIR, IDD_PACK_RUNS_DIR,
	                      IDD_PACK_LISTS_DIR};
	for (size_t i = 0; !rc && i < IDD_ARRAY_LEN(subs); i++) {
		char *d = idd_path_join(index_dir, subs[i], err);
		rc = d ? idd_mkdir_p(d, err) : IDD_ENOMEM;
		free(d);
	}
	if (rc || !(r.sortdir = idd_path_join(index_dir, IDD_PACK_DIR, err))) {
		rc = rc ? rc : IDD_ENOMEM;
		goto out;
	}

	/* the pack as it is, when it can be built on */
	idd_error e2;
	int orc = idd_pack_index_open(index_dir, &old, &e2);
	if (orc == IDD_ENOMEM) {
		*err = e2;
		rc = orc;
		goto out;
	}
	if (orc && orc != IDD_ENOENT)
		idd_warnf(o->warn, o->ctx, "%s; the pack is rebuilt", e2.msg);
	bool had_pack = orc != IDD_ENOENT;
	if (old && old->block_size == cat->block_size && !data_files_present(index_dir, old)) {
		idd_warnf(o->warn, o->ctx, "pack: a data file is missing or damaged; the pack is rebuilt");
		idd_pack_index_free(old);
		old = NULL;
	}
	if (old && (old->block_size != cat->block_size || old->frame_blocks != r.frame_blocks)) {
		idd_pack_index_free(old);
		old = NULL;
	}
	if (old && old->version < 2) {
		rc = upgrade(&r, old, cl, ncl, &bt, err);
		idd_pack_index_free(old);
		old = NULL;
		if (rc || (rc = idd_pack_index_open(index_dir, &old, err)))
			goto out;
	}
	bool full = !old;
	if (old && !(gone = idd_calloc(old->nlists + 1, sizeof *gone, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	uint64_t removed = 0, kept = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		/* which lists are read: new ones, incomplete ones, lost views */
		size_t nfresh = 0;
		for (size_t i = 0; i < ncl; i++) {
			struct clist *l = &cl[i];
			l->old = full ? NULL : idd_pack_index_list(old, &l->key);
			l->fresh = !l->old || l->old->unpacked ||
			           !exists(index_dir, idd_pack_view_relpath(&l->key, NULL));
			nfresh += l->fresh;
		}
		ngone = 0;
		for (size_t i = 0, j = 0; !full && i < old->nlists; i++) {
			while (j < ncl && memcmp(cl[j].key.b, old->lists[i].list_key.b, 32) < 0)
				j++;
			if (j == ncl || memcmp(cl[j].key.b, old->lists[i].list_key.b, 32))
				gone[ngone++] = &old->lists[i];
		}
		if (!full && !nfresh && !ngone) {
			/* current: nothing to write but a kept list that was lost */
			for (size_t i = 0; i < ncl; i++)
				if (!exists(index_dir, idd_pack_list_relpath(&cl[i].key, NULL))) {
					keep_list(&r, &cl[i].key);
					st->changed = true;
				}
			st->blocks = old->nentries;
			st->raw_bytes = old->nentries * old->block_size;
			st->pack_bytes = pack_bytes(index_dir);
			st->runs = old->nruns;
			st->committed = true;
			goto out;
		}
		idd_extsort_free(entries);
		idd_extsort_free(todo);
		entries = todo = NULL;
		if ((rc = idd_extsort_new(r.sortdir, IDD_PACK_ENTRY, idd_pack_sort_budget, cmp_entry,
		                          &entries, err)) ||
		    (rc = idd_extsort_new(r.sortdir, sizeof(struct newblk), idd_pack_sort_budget,
		                          cmp_newblk, &todo, err)))
			goto out;
		removed = kept = 0;
		if (!full && ngone && ((rc = blocktable_for(&r, &bt, err)) ||
		                       (rc = take_away(&r, old, gone, ngone, bt, entries, &removed, err))))
			goto out;
		if ((rc = new_blocks(&r, cl, ncl, old, full, todo, &kept, err)))
			goto out;
		if (full)
			break;
		/* compaction: blocks no image holds fill more than a quarter of the frames */
		uint64_t live = old->nentries - removed, fresh_blocks = idd_extsort_count(todo);
		if ((old->nslots - live) * 4 <= old->nslots + fresh_blocks)
			break;
		full = true;
	}
	if (had_pack && full)
		st->compacted = true;
	st->removed += full ? (old ? old->nentries - kept : 0) : removed;

	/* the new index: the old files and runs, then this run's */
	if (!(nx = idd_calloc(1, sizeof *nx, err)) || !(nx->dir = idd_strdup(index_dir, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	nx->version = 2;
	nx->block_size = r.bs;
	nx->frame_blocks = r.frame_blocks;
	nx->level = (uint32_t)r.level;
	nx->written_ns = old ? old->written_ns : 0; /* the trust of the files carried over */
	nx->next_seq = next_free_seq(index_dir, old ? old->next_seq : 0);
	size_t nfiles0 = full ? 0 : old->nfiles;
	if (!(nx->files = idd_calloc(nfiles0 + 1, sizeof *nx->files, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nfiles0; i++) {
		nx->files[i] = old->files[i];
		nx->files[i].ft = NULL; /* mapped again by nx */
		nx->files[i].ft_map = NULL;
	}
	nx->nfiles = nfiles0;
	nx->nslots = full ? 0 : old->nslots;
	nx->nframes = 0;
	for (size_t i = 0; i < nfiles0; i++)
		nx->nframes += (size_t)nx->files[i].nframes;
	uint64_t packed = 0;
	if (idd_extsort_count(todo)) {
		idd_pack_file *f = &nx->files[nx->nfiles];
		if ((rc = write_data(&r, todo, nx->nslots, entries, f, &packed, &st->added, &st->failed,
		                     err)))
			goto out;
		if (f->nframes) {
			f->first_frame = nx->nframes;
			nx->nframes += (size_t)f->nframes;
			nx->nslots += f->nslots;
			nx->nfiles++;
		}
	}
	if (!full) { /* the old runs move over */
		nx->runs = old->runs;
		nx->nruns = old->nruns;
		old->runs = NULL;
		old->nruns = 0;
	}
	idd_pack_idxrun run;
	if ((rc = idd_extsort_finish(entries, err)) ||
	    (rc = write_run(&r, entries, nx->next_seq++, &run, err)))
		goto out;
	if (run.entries && (rc = runs_push(nx, &run, err))) {
		idd_pack_run_unmap(&run);
		goto out;
	}
	if ((rc = compact_runs(&r, nx, err)))
		goto out;
	nx->nentries = (full ? 0 : old->nentries - removed) + packed;

	/* the views of the lists read, and what they were made from */
	if (!(nx->lists = idd_calloc(ncl + 1, sizeof *nx->lists, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < ncl; i++) {
		struct clist *l = &cl[i];
		if (l->fresh) {
			if ((rc = write_view(&r, nx, l, err)))
				goto out;
			keep_list(&r, &l->key);
		} else {
			l->now = *l->old;
			if (!exists(index_dir, idd_pack_list_relpath(&l->key, NULL)))
				keep_list(&r, &l->key);
		}
		nx->lists[nx->nlists++] = l->now;
	}
	/* the renames are durable before the manifest names them */
	for (size_t i = 0; i < IDD_ARRAY_LEN(subs); i++) {
		char *d = idd_path_join(index_dir, subs[i], err);
		rc = d ? idd_fsync_dir(d, err) : IDD_ENOMEM;
		free(d);
		if (rc)
			goto out;
	}
	if ((rc = idd_pack_index_save(index_dir, nx, err)))
		goto out;
	st->index_bytes_written += file_size(index_dir, IDD_PACK_INDEX_FILE);
	st->changed = true;
	st->committed = true;
	st->blocks = nx->nentries;
	st->raw_bytes = nx->nentries * r.bs;
	st->runs = nx->nruns;

	/* only now: files the new index does not name */
	remove_unnamed(o, index_dir, nx);
	st->pack_bytes = pack_bytes(index_dir);
	if (st->failed)
		rc = idd_fail(err, "%llu blocks could not be packed (see the warnings); the rest is packed",
		              (unsigned long long)st->failed);
out:
	idd_extsort_free(entries);
	idd_extsort_free(todo);
	free(gone);
	free(cl);
	free(r.sortdir);
	idd_pack_index_free(nx);
	idd_pack_index_free(old);
	idd_blocktable_free(bt);
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
