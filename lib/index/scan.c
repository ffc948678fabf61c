/* scan.c - incremental, parallel, crash-safe block indexing of a repository.
 *
 * A run: lock the index, walk the repository, keep the catalog entries of
 * files whose identity (device, inode, size, mtime, ctime) is unchanged,
 * carry renamed files over without reading them, and hash the rest on
 * several threads.  Block lists are written first (content-named, atomic),
 * the catalog last (atomic), so a run killed at any moment leaves the
 * previous catalog and every file it names intact. */
#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "formats/image.h"
#include "formats/archive.h"
#include "index/indexfile.h"
#include "index/indexdir.h"
#include "index/catalog.h"
#include "index/entries.h"
#include "index/blocktable.h"
#include "index/repo.h"

#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <pthread.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Work is handed out in chunks this large: big enough for few syscalls and
 * long sequential reads, small enough to balance two images on two cores. */
#define SCAN_CHUNK ((uint64_t)4 << 20)
/* A long run saves its progress this often, so a kill loses little. */
#define CHECKPOINT_NS ((int64_t)30 * 1000000000)

/* Distinct-block counting on 64-bit digest prefixes: a quarter of the
 * memory of full digests and far fewer cache misses.  Two distinct blocks
 * share a prefix with probability n^2 / 2^65 (n = distinct blocks): under
 * 0.0003 expected miscounts for 10^8 blocks, so the counts are exact in
 * practice.  owner[] remembers the last image that added a key, so one
 * pass yields both each image's distinct count and the repository's. */
typedef struct prefix_set {
	uint64_t *keys; /* 0 = empty slot */
	uint32_t *owner;
	size_t cap, count;
} prefix_set;

static inline size_t pset_slot(uint64_t key, size_t cap)
{
	return (size_t)(key * 0x9E3779B97F4A7C15ull >> 7) & (cap - 1);
}

static int pset_grow(prefix_set *p, idd_error *err)
{
	size_t cap = p->cap ? p->cap * 2 : (size_t)1 << 16;
	uint64_t *keys = idd_calloc(cap, sizeof *keys, err);
	uint32_t *owner = keys ? idd_calloc(cap, sizeof *owner, err) : NULL;
	if (!owner) {
		free(keys);
		return IDD_ERR;
	}
	for (size_t i = 0; i < p->cap; i++) {
		if (!p->keys[i])
			continue;
		size_t j = pset_slot(p->keys[i], cap);
		while (keys[j])
			j = (j + 1) & (cap - 1);
		keys[j] = p->keys[i];
		owner[j] = p->owner[i];
	}
	free(p->keys);
	free(p->owner);
	p->keys = keys;
	p->owner = owner;
	p->cap = cap;
	return IDD_OK;
}

/* Adds d for image `who`; *new_for_owner says whether `who` had not
 * added it before.  Images are added one at a time, never interleaved. */
static int pset_add(prefix_set *p, const idd_digest *d, uint32_t who, bool *new_for_owner,
                    idd_error *err)
{
	if ((p->count + 1) * 10 > p->cap * 7 && pset_grow(p, err))
		return IDD_ERR;
	uint64_t k;
	memcpy(&k, d->b, sizeof k);
	k = k ? k : 1;
	size_t j = pset_slot(k, p->cap);
	while (p->keys[j] && p->keys[j] != k)
		j = (j + 1) & (p->cap - 1);
	if (!p->keys[j]) {
		p->keys[j] = k;
		p->owner[j] = who;
		p->count++;
		*new_for_owner = true;
	} else {
		*new_for_owner = p->owner[j] != who;
		p->owner[j] = who;
	}
	return IDD_OK;
}

/* Count one image's block list into p as a new owner; *distinct (may be
 * NULL) receives its distinct non-zero blocks.  Only the non-zero blocks
 * are visited: a thin image costs its data, not its size. */
static int pset_add_image(prefix_set *p, uint32_t who, const idd_blocklist *bl, uint64_t *distinct,
                          idd_error *err)
{
	uint64_t fresh_total = 0;
	for (uint64_t k = 0; k < bl->ndata; k++) {
		bool fresh;
		if (pset_add(p, &bl->digests[k], who, &fresh, err))
			return IDD_ERR;
		fresh_total += fresh;
	}
	if (distinct)
		*distinct = fresh_total;
	return IDD_OK;
}

static void pset_free(prefix_set *p)
{
	free(p->keys);
	free(p->owner);
	memset(p, 0, sizeof *p);
}

struct piece {
	uint64_t block, count;
	idd_digest *d;
};

struct job {
	idd_repo_entry e;
	idd_image *img;
	bool opened, planned, done, failed;
	uint64_t cursor;       /* next virtual offset to plan (block aligned) */
	unsigned inflight;     /* chunks handed out and not yet hashed */
	uint64_t nblocks;
	/* The digests of the chunks handed out, in block order: only data is
	 * held, so a thin image costs what it stores, not its virtual size. */
	struct piece *pieces;
	size_t npieces, pieces_cap;
	idd_blocklist list;    /* built from the pieces when the job finishes */
	uint64_t bytes_hashed;
	idd_error err;
	idd_file_ident before; /* identity of the file when opened (stat, or HEAD in an object store) */
	idd_chain chain;       /* backing files read with the image */
	idd_image_info info;   /* filled when finished */
	bool have_info;
};

struct entries {
	idd_image_info *v;
	size_t n;
};

struct scan {
	const idd_scan_opts *o;
	struct entries *kept;   /* entries carried over without reading */
	const char *index_dir;
	const char *catalog_dir;  /* where the catalog goes: index_dir, or a shard's directory */
	uint32_t bs;
	pthread_mutex_t mu;       /* job states, the task cursor, progress */
	pthread_mutex_t finish_mu; /* finishing jobs: the distinct-count set, checkpoints */
	struct job *jobs;
	size_t njobs, next_job; /* jobs before next_job are opened */
	uint64_t total_bytes, done_bytes;
	bool fatal;
	idd_error fatal_err;
	uint64_t dropped;       /* kept images whose block list was unreadable */
	/* checkpointing */
	idd_catalog *old;
	bool *old_dropped;      /* old entries replaced or moved */
	int64_t last_save_ns;
	int64_t start_ns;       /* wall clock when the run started */
};

static void job_release(struct job *j)
{
	idd_image_close(j->img);
	j->img = NULL;
	if (j->e.spooled) { /* the decompressed member: no longer needed */
		close(j->e.spool_fd);
		j->e.spooled = false;
	}
	for (size_t i = 0; i < j->npieces; i++)
		free(j->pieces[i].d);
	free(j->pieces);
	j->pieces = NULL;
	j->npieces = j->pieces_cap = 0;
	idd_blocklist_clear(&j->list);
}

/* Messages name the file: allocation failures deep in a format reader
 * ("out of memory allocating ...") get the image's path in front. */
static void name_file(idd_error *e, const char *path)
{
	if (!strstr(e->msg, path))
		idd_error_prefix(e, "%s", path);
}

/* Open a job's image; called with the lock held. */
static void job_open(struct scan *s, struct job *j)
{
	j->opened = true;
	if (idd_repo_file_ident(j->e.path, &j->before, &j->err)) {
		j->failed = true;
		return;
	}
	/* Archive member offsets (and spooled members) come from the listing:
	 * the file must still be the one listed. */
	const idd_file_ident listed = {NULL, j->e.dev, j->e.ino, j->e.size, j->e.mtime_ns, j->e.ctime_ns};
	if (!idd_repo_ident_same(&j->before, &listed)) {
		idd_fail(&j->err, "%s: modified while being read; not indexed this run", j->e.path);
		j->failed = true;
		return;
	}
	if (idd_repo_open_image_chain(s->o->repo, &j->e, &j->chain, &j->img, &j->err)) {
		name_file(&j->err, j->e.path);
		j->failed = true;
		return;
	}
	if (j->img->file->fd >= 0)
		posix_fadvise(j->img->file->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	uint64_t size = j->img->size;
	j->nblocks = size / s->bs + (size % s->bs != 0);
	idd_blocklist_init(&j->list, s->bs);
}

/* Room for the digests of one chunk; lock held. */
static idd_digest *job_add_piece(struct scan *s, struct job *j, uint64_t off, uint64_t len)
{
	if (j->npieces == j->pieces_cap) {
		size_t nc = j->pieces_cap ? j->pieces_cap * 2 : 16;
		struct piece *v = idd_realloc_array(j->pieces, nc, sizeof *v, &j->err);
		if (!v)
			goto nomem;
		j->pieces = v;
		j->pieces_cap = nc;
	}
	uint64_t n = (len + s->bs - 1) / s->bs;
	idd_digest *d = idd_malloc((size_t)n * sizeof *d, &j->err);
	if (!d)
		goto nomem;
	j->pieces[j->npieces++] = (struct piece){off / s->bs, n, d};
	return d;
nomem:
	idd_error_prefix(&j->err, "%s", j->e.path);
	j->err.code = IDD_ENOMEM;
	j->failed = true;
	return NULL;
}

/* Next chunk of job j: the next run of non-zero extents from the cursor,
 * block aligned, at most SCAN_CHUNK.  Zero extents are skipped unread.
 * Returns false when the job has nothing left (or failed). */
static bool job_next_chunk(struct scan *s, struct job *j, uint64_t *off, uint64_t *len)
{
	uint64_t size = j->img->size, skipped_from = j->cursor;
	while (!j->failed && j->cursor < size) {
		idd_extent ext;
		if (idd_image_extent(j->img, j->cursor, &ext, &j->err)) {
			j->failed = true;
			break;
		}
		uint64_t ext_end = ext.voff + ext.vlen;
		if (ext.kind == IDD_EXT_ZERO) {
			/* Only whole zero blocks can be skipped; a partial one at the
			 * end of the extent is read with the data that follows. */
			uint64_t next = ext_end >= size ? size : ext_end / s->bs * s->bs;
			if (next <= j->cursor) {
				/* zero extent inside one block: read that block */
				ext.kind = IDD_EXT_DATA;
			} else {
				j->cursor = next;
				continue;
			}
		}
		uint64_t start = j->cursor;
		uint64_t end = IDD_MIN(start + SCAN_CHUNK, size);
		/* stop at the end of this extent, rounded up to a block, unless the
		 * following extents are data too (checked next round) */
		uint64_t ext_block_end = (ext_end + s->bs - 1) / s->bs * s->bs;
		if (ext_block_end < end && ext_block_end > start)
			end = ext_block_end;
		*off = start;
		*len = end - start;
		j->cursor = end;
		s->done_bytes += start - skipped_from;
		if (!job_add_piece(s, j, start, end - start))
			break;
		return true;
	}
	s->done_bytes += j->cursor > skipped_from ? j->cursor - skipped_from : 0;
	return false;
}

static int save_checkpoint(struct scan *s, idd_error *err);

struct list_save {
	struct scan *s;
	struct job *j;
	int rc;
	idd_error err;
};

static void *list_save_main(void *arg)
{
	struct list_save *ls = arg;
	ls->rc = idd_blocklist_write(ls->s->index_dir, &ls->j->list, &ls->j->info.list_key, &ls->err);
	return NULL;
}

/* Racily clean files (as git calls them): a file whose mtime lies within
 * the timestamp granularity of the start of this run may be written again
 * within the same timestamp tick after it was read, and then keep its
 * identity with other content.  Its entry records the mtime as unknown, so
 * that the next run reads it again (once its mtime is old enough, it is
 * recorded normally).  Granularity: the kernel's coarse clock, which
 * stamps files on Linux, for files with sub-second timestamps; 2 s (FAT,
 * ext3, some NFS servers) for files whose timestamps are whole seconds. */
static bool racy_time(const struct scan *s, int64_t mtime_ns, int64_t ctime_ns)
{
	int64_t window = (int64_t)2 * 1000000000;
	if (mtime_ns % 1000000000 || ctime_ns % 1000000000) {
		struct timespec res;
		int64_t r = clock_getres(CLOCK_REALTIME_COARSE, &res) ? 10000000 : idd_ts_ns(res);
		window = IDD_MAX(2 * r, (int64_t)1000000);
	}
	return mtime_ns > s->start_ns - window;
}

static bool racily_clean(const struct scan *s, int64_t mtime_ns, int64_t ctime_ns,
                         const idd_file_ident *backing, size_t nbacking)
{
	if (racy_time(s, mtime_ns, ctime_ns))
		return true;
	for (size_t i = 0; i < nbacking; i++)
		if (racy_time(s, backing[i].mtime_ns, backing[i].ctime_ns))
			return true;
	return false;
}

/* Finish a job whose chunks are all hashed: check the file did not change
 * under us, write its block list, fill its catalog entry.  Called with
 * finish_mu held and mu not held: the other threads go on hashing. */
static void job_finish(struct scan *s, struct job *j)
{
	if (!j->failed) {
		idd_file_ident after;
		if (idd_repo_file_ident(j->e.path, &after, &j->err)) {
			j->failed = true;
		} else if (!idd_repo_ident_same(&j->before, &after) ||
		           !idd_chain_unchanged(s->o->repo, j->chain.v, j->chain.n)) {
			idd_fail(&j->err, "%s: modified while being read; not indexed this run", j->e.path);
			j->failed = true;
		}
	}
	/* the pieces, in block order, become the block list */
	for (size_t i = 0; !j->failed && i < j->npieces; i++) {
		struct piece *pc = &j->pieces[i];
		if (idd_blocklist_append(&j->list, pc->block, pc->d, pc->count, &j->err)) {
			idd_error_prefix(&j->err, "%s", j->e.path);
			j->failed = true;
		}
		free(pc->d);
		pc->d = NULL;
	}
	if (!j->failed && idd_blocklist_finish(&j->list, j->nblocks, &j->err)) {
		idd_error_prefix(&j->err, "%s", j->e.path);
		j->failed = true;
	}
	if (!j->failed) {
		idd_image_info *im = &j->info;
		memset(im, 0, sizeof *im);
		/* Writing the block list (compress, checksum, fsync) and counting
		 * its distinct blocks are independent: do them on two cores, as
		 * this is the serial tail of every scan. */
		struct list_save ls = {s, j, IDD_OK, {{0}, 0}};
		pthread_t saver;
		bool threaded = pthread_create(&saver, NULL, list_save_main, &ls) == 0;
		if (!threaded)
			list_save_main(&ls);
		uint64_t zero = j->list.nblocks - j->list.ndata, distinct = 0;
		prefix_set mine = {0};
		if (pset_add_image(&mine, 1, &j->list, &distinct, &j->err)) {
			idd_error_prefix(&j->err, "%s", j->e.path);
			j->failed = true;
		}
		pset_free(&mine);
		if (threaded)
			pthread_join(saver, NULL);
		if (j->failed || ls.rc) {
			if (ls.rc && !j->failed)
				j->err = ls.err;
			j->failed = true;
		}
		im->distinct_blocks = distinct;
		if (!j->failed) {
			im->id = strdup(j->e.id);
			im->file = strdup(j->e.id);
			im->member = strdup(j->e.member ? j->e.member : "");
			im->format = strdup(j->img->format);
			im->container = strdup(j->e.container ? j->e.container : "");
			if (j->e.member) { /* the file is the id minus "/member" */
				size_t fl = strlen(j->e.id) - strlen(j->e.member) - 1;
				if (im->file)
					im->file[fl] = 0;
			}
			if (!im->id || !im->file || !im->member || !im->format || !im->container) {
				idd_image_info_free(im);
				idd_fail(&j->err, "out of memory");
				j->failed = true;
			}
		}
		if (!j->failed) {
			im->streamed = j->e.streamed;
			im->backing = j->chain.v; /* moved: the entry owns the chain now */
			im->nbacking = j->chain.n;
			j->chain.v = NULL;
			j->chain.n = 0;
			im->member_off = j->e.member_off;
			im->member_len = j->e.member_len;
			/* the identity as listed (checked equal to the file's when it
			 * was opened and again now), so the next run compares like
			 * with like */
			im->dev = j->e.dev;
			im->ino = j->e.ino;
			im->file_size = j->e.size;
			im->mtime_ns = j->e.mtime_ns;
			im->ctime_ns = j->e.ctime_ns;
			if (racily_clean(s, im->mtime_ns, im->ctime_ns, im->backing, im->nbacking))
				im->mtime_ns = IDD_MTIME_UNKNOWN;
			im->virtual_size = j->img->size;
			im->nblocks = j->nblocks;
			im->zero_blocks = zero;
			im->scanned_at = idd_now_ns() / 1000000000;
			j->have_info = true;
		}
	}
	if (j->failed && s->o->warn)
		s->o->warn(s->o->ctx, j->err.msg);
	job_release(j);
	if (idd_now_ns() - s->last_save_ns > CHECKPOINT_NS) {
		idd_error e;
		if (save_checkpoint(s, &e)) {
			pthread_mutex_lock(&s->mu);
			if (!s->fatal)
				s->fatal_err = e;
			s->fatal = true;
			pthread_mutex_unlock(&s->mu);
		}
	}
}

/* Called with mu held on a job whose last chunk is hashed: claim it, and
 * finish it with mu released. */
static void finish_claimed(struct scan *s, struct job *j)
{
	j->done = true;
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_lock(&s->finish_mu);
	job_finish(s, j);
	pthread_mutex_unlock(&s->finish_mu);
	pthread_mutex_lock(&s->mu);
}

struct task {
	struct job *job;
	uint64_t off, len;
	idd_digest *out; /* the chunk's piece */
};

/* Hand out the next chunk, opening images as needed.  Lock held. */
static bool next_task(struct scan *s, struct task *t)
{
	for (size_t i = 0; i < s->njobs && !s->fatal; i++) {
		struct job *j = &s->jobs[i];
		if (j->done)
			continue;
		if (!j->opened) {
			/* opened only once every earlier image is handed out: about one
			 * open image (and digest array) per thread at any time */
			job_open(s, j);
		}
		if (!j->failed && !j->planned) {
			if (job_next_chunk(s, j, &t->off, &t->len)) {
				t->job = j;
				t->out = j->pieces[j->npieces - 1].d;
				j->inflight++;
				return true;
			}
			j->planned = true;
		}
		if (j->failed)
			j->planned = true;
		if (j->planned && j->inflight == 0)
			finish_claimed(s, j);
		else if (j->planned)
			continue; /* its last chunks are being hashed by others */
	}
	return false;
}

struct worker {
	struct scan *s;
	unsigned char *buf;
	idd_hasher *h;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	struct scan *s = w->s;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		struct task t;
		if (!next_task(s, &t))
			break;
		pthread_mutex_unlock(&s->mu);
		struct job *j = t.job;
		idd_error e;
		uint64_t hashed = 0;
		int rc = idd_image_read(j->img, t.off, w->buf, (size_t)t.len, &e);
		if (!rc)
			rc = idd_hash_blocks(w->h, w->buf, (size_t)t.len, s->bs, t.out, &hashed, &e);
		pthread_mutex_lock(&s->mu);
		j->bytes_hashed += hashed;
		s->done_bytes += t.len;
		if (rc && !j->failed) {
			j->failed = true;
			j->err = e;
			name_file(&j->err, j->e.path);
		}
		j->inflight--;
		if (j->planned && j->inflight == 0 && !j->done)
			finish_claimed(s, j);
		if (s->o->progress)
			s->o->progress(s->o->ctx, IDD_MIN(s->done_bytes, s->total_bytes), s->total_bytes);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* Hash every job not yet done on the worker threads; returns when all are. */
static int run_workers(struct scan *s, idd_error *err)
{
	const idd_scan_opts *o = s->o;
	int nthreads = idd_threads_for_jobs(o->jobs);
	struct worker *workers = idd_calloc((size_t)nthreads, sizeof *workers, err);
	pthread_t *tids = idd_calloc((size_t)nthreads, sizeof *tids, err);
	if (!workers || !tids) {
		free(workers);
		free(tids);
		return IDD_ERR;
	}
	int started = 0;
	for (int i = 0; i < nthreads; i++) {
		workers[i].s = s;
		workers[i].buf = idd_malloc((size_t)SCAN_CHUNK, err);
		workers[i].h = workers[i].buf ? idd_hasher_new(err) : NULL;
		if (!workers[i].h)
			break;
		if (pthread_create(&tids[i], NULL, worker_main, &workers[i])) {
			idd_fail(err, "cannot start a worker thread");
			break;
		}
		started++;
	}
	for (int i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	for (int i = 0; i < nthreads; i++) {
		free(workers[i].buf);
		idd_hasher_free(workers[i].h);
	}
	free(workers);
	free(tids);
	return started ? IDD_OK : IDD_ERR;
}

/* ---- assembling catalogs ---- */

static int cmp_info_id(const void *a, const void *b)
{
	return strcmp(((const idd_image_info *)a)->id, ((const idd_image_info *)b)->id);
}

static int entries_push_copy(struct entries *es, const idd_image_info *im, idd_error *err)
{
	idd_image_info *v = idd_realloc_array(es->v, es->n + 1, sizeof *v, err);
	if (!v)
		return IDD_ERR;
	es->v = v;
	if (idd_image_info_copy(&es->v[es->n], im, err))
		return IDD_ERR;
	es->n++;
	return IDD_OK;
}

static void entries_free(struct entries *es)
{
	for (size_t i = 0; i < es->n; i++)
		idd_image_info_free(&es->v[i]);
	free(es->v);
	es->v = NULL;
	es->n = 0;
}

/* kept: entries carried over; plus every finished job; plus (checkpoint)
 * the old entries nothing has superseded yet.  Sorted by id. */
static int build_catalog(struct scan *s, const struct entries *kept, bool include_old,
                         idd_catalog *out, idd_error *err)
{
	struct entries all = {0};
	for (size_t i = 0; i < kept->n; i++)
		if (entries_push_copy(&all, &kept->v[i], err))
			goto fail;
	for (size_t i = 0; i < s->njobs; i++)
		if (s->jobs[i].have_info && entries_push_copy(&all, &s->jobs[i].info, err))
			goto fail;
	for (size_t i = 0; include_old && s->old && i < s->old->count; i++) {
		const idd_image_info *im = &s->old->images[i];
		bool superseded = s->old_dropped[i];
		for (size_t k = 0; k < s->njobs && !superseded; k++)
			superseded = s->jobs[k].have_info && strcmp(s->jobs[k].info.id, im->id) == 0;
		if (!superseded && entries_push_copy(&all, im, err))
			goto fail;
	}
	if (all.n)
		qsort(all.v, all.n, sizeof *all.v, cmp_info_id);
	out->images = all.v;
	out->count = all.n;
	return IDD_OK;
fail:
	entries_free(&all);
	return IDD_ERR;
}

static int save_checkpoint(struct scan *s, idd_error *err)
{
	/* The distinct count is only known at the end: a checkpoint says
	 * "unknown", and the next run recounts. */
	idd_catalog cat = {.block_size = s->bs,
	                   .generation = (s->old ? s->old->generation : 0) + 1,
	                   .unique_blocks = IDD_UNIQUE_UNKNOWN};
	if (build_catalog(s, s->kept, true, &cat, err))
		return IDD_ERR;
	int rc = idd_catalog_save(s->catalog_dir, &cat, err);
	for (size_t i = 0; i < cat.count; i++)
		idd_image_info_free(&cat.images[i]);
	free(cat.images);
	s->last_save_ns = idd_now_ns();
	return rc;
}

static int cmp_hex(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int add_keys(char ***keys, size_t *n, const idd_catalog *cat)
{
	char **v = realloc(*keys, (*n + cat->count + 1) * sizeof *v);
	if (!v)
		return IDD_ERR;
	*keys = v;
	for (size_t i = 0; i < cat->count; i++) {
		char hex[2 * IDD_DIGEST_SIZE + 1];
		idd_digest_hex(&cat->images[i].list_key, hex);
		if (!(v[*n] = strdup(hex)))
			return IDD_ERR;
		(*n)++;
	}
	return IDD_OK;
}

/* The results shards left (INDEX/shards/K-of-N/catalog), by K; *n_out is
 * N (0: none); more than one N is an error. */
static int load_shards(const char *index_dir, idd_catalog ***out, uint32_t *n_out, idd_error *err)
{
	*out = NULL;
	*n_out = 0;
	char *dir = idd_path_join(index_dir, "shards", err);
	if (!dir)
		return IDD_ERR;
	DIR *d = opendir(dir);
	struct dirent *de;
	int rc = IDD_OK;
	idd_catalog **v = NULL;
	uint32_t n = 0;
	while (!rc && d && (de = readdir(d))) {
		unsigned k, nn;
		char tail;
		if (sscanf(de->d_name, "%u-of-%u%c", &k, &nn, &tail) != 2 || !nn || !k || k > nn ||
		    nn > 1000000)
			continue;
		if (n && nn != n) {
			rc = idd_fail(err, "%s: results of shards of both %u and %u; re-run the shards of one partition",
			              dir, n, nn);
			break;
		}
		if (!n) {
			n = nn;
			if (!(v = idd_calloc(n + 1, sizeof *v, err))) {
				rc = IDD_ERR;
				break;
			}
		}
		char *sub = idd_path_join(dir, de->d_name, err);
		int lrc = sub ? idd_catalog_load(sub, &v[k - 1], err) : IDD_ERR;
		if (lrc == IDD_ENOENT) /* a shard that never finished a checkpoint */
			lrc = IDD_OK;
		rc = lrc;
		free(sub);
	}
	if (d)
		closedir(d);
	free(dir);
	if (rc) {
		for (uint32_t i = 0; v && i < n; i++)
			idd_catalog_free(v[i]);
		free(v);
		return rc;
	}
	*out = v;
	*n_out = n;
	return IDD_OK;
}

static void free_shards(idd_catalog **v, uint32_t n)
{
	for (uint32_t i = 0; v && i < n; i++)
		idd_catalog_free(v[i]);
	free(v);
}

struct block_keep {
	char **keys; /* sorted hex names of the lists to keep */
	size_t nkeys;
	bool sharding;
	int64_t now;
};

static bool keep_block_list(void *ctx, const idd_dir_entry *e)
{
	const struct block_keep *k = ctx;
	const char *name = e->name;
	if (k->nkeys && bsearch(&name, k->keys, k->nkeys, sizeof *k->keys, cmp_hex))
		return true;
	/* a shard's list written within the hour may belong to a shard still
	 * running */
	struct stat st;
	return k->sharding && (lstat(e->path, &st) || k->now - idd_ts_ns(st.st_mtim) <
	                                                   (int64_t)3600 * 1000000000);
}

static void warn_gc(const struct scan *s, const idd_error *e)
{
	if (s->o->warn)
		s->o->warn(s->o->ctx, e->msg);
}

/* Remove block lists no catalog entry names, and temporaries of killed
 * runs.  Only after the new catalog is in place, under the lock.  Lists
 * that shards' results name are kept; while shard results exist, so is any
 * list written in the last hour (a shard running elsewhere may have written
 * it and not yet its results: git's gc.pruneExpire, for the same race).
 * A failure is a warning: the catalog is committed, the next run retries. */
static void collect_garbage(const struct scan *s, const char *index_dir, const idd_catalog *cat)
{
	struct block_keep k = {.now = idd_now_ns()};
	idd_catalog **shards = NULL;
	uint32_t nshards = 0;
	idd_error e;
	char *shard_dir = idd_path_join(index_dir, "shards", NULL);
	struct stat sst;
	k.sharding = shard_dir && stat(shard_dir, &sst) == 0;
	free(shard_dir);
	if (add_keys(&k.keys, &k.nkeys, cat) || load_shards(index_dir, &shards, &nshards, &e))
		goto out; /* keep everything rather than guess */
	for (uint32_t i = 0; i < nshards; i++)
		if (shards[i] && add_keys(&k.keys, &k.nkeys, shards[i]))
			goto out;
	if (k.nkeys)
		qsort(k.keys, k.nkeys, sizeof *k.keys, cmp_hex);
	char *dir = idd_path_join(index_dir, IDD_BLOCKS_DIR, &e);
	if (!dir || idd_dir_gc(dir, keep_block_list, &k, NULL, &e))
		warn_gc(s, &e);
	free(dir);
out:
	for (size_t i = 0; i < k.nkeys; i++)
		free(k.keys[i]);
	free(k.keys);
	free_shards(shards, nshards);
}

/* Temporaries (NAME.tmp.PID) that a killed run left in DIR: removed when
 * their process is gone.  Writers of index files hold the lock this run
 * holds, and a live process's temporary is left alone (a similarity cache
 * being written, say). */
static void remove_dead_temporaries(const struct scan *s, const char *dir)
{
	idd_error e;
	if (idd_dir_gc(dir, idd_keep_live_temporaries, NULL, NULL, &e))
		warn_gc(s, &e);
}

static int cmp_file_id(const void *a, const void *b, void *ctx)
{
	const idd_repo_list *l = ctx;
	return strcmp(l->v[*(const size_t *)a].id, l->v[*(const size_t *)b].id);
}

/* Index of the walked file with this id, or -1. */
static ptrdiff_t find_file(const idd_repo_list *l, const size_t *by_id, const char *id)
{
	size_t lo = 0, hi = l->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(l->v[by_id[mid]].id, id);
		if (c == 0)
			return (ptrdiff_t)by_id[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static bool entry_matches(const idd_image_info *im, const idd_repo_entry *e, bool ignore_ctime)
{
	return im->dev == e->dev && im->ino == e->ino && im->file_size == e->size &&
	       im->mtime_ns == e->mtime_ns && (ignore_ctime || im->ctime_ns == e->ctime_ns);
}

enum file_state { FILE_NEW, FILE_UNCHANGED, FILE_CHANGED, FILE_MOVED, FILE_FAILED, FILE_DEFERRED };

/* Returns IDD_OK, 1 when the file could not even be listed (reported), or a
 * negative error. */
/* With defer_compressed, a compressed archive is not listed yet and 2 is
 * returned: listing it decompresses its disk images into temporary files,
 * so those are listed, hashed and released one archive at a time. */
static int add_jobs_for_file(struct scan *s, const idd_repo_entry *f, bool defer_compressed,
                             idd_error *err)
{
	/* One job per image: the file itself, or each disk image inside an archive. */
	unsigned char head[1024];
	size_t hl = 0;
	/* not followed, not waited on: the walk saw a regular file, and
	 * whatever replaced it since is refused when the job opens it */
	idd_file *hf;
	idd_error he;
	if (idd_repo_file_open(f->path, f->size, &hf, &he) == IDD_OK) {
		hl = (size_t)IDD_MIN(hf->size, (uint64_t)sizeof head);
		if (hl && idd_file_pread(hf, head, hl, 0, &he))
			hl = 0;
		idd_file_close(hf);
	}
	const char *kind = hl ? idd_archive_kind(head, hl) : NULL;
	if (kind && defer_compressed && strcmp(kind, "tar") != 0)
		return 2;
	idd_repo_list members = {0};
	if (kind) {
		idd_error e;
		if (idd_repo_list_archive(f, &members, &e)) {
			if (s->o->warn)
				s->o->warn(s->o->ctx, e.msg);
			return 1; /* reported; counts as a failure */
		}
	}
	size_t add = kind ? members.n : 1;
	struct job *v = idd_realloc_array(s->jobs, s->njobs + add, sizeof *v, err);
	if (!v) {
		idd_repo_list_free(&members);
		return IDD_ERR;
	}
	s->jobs = v;
	for (size_t i = 0; i < add; i++) {
		struct job *j = &s->jobs[s->njobs];
		memset(j, 0, sizeof *j);
		if (kind) {
			j->e = members.v[i]; /* takes ownership */
		} else {
			j->e = *f;
			j->e.id = strdup(f->id);
			j->e.path = strdup(f->path);
			j->e.container = strdup("");
			j->e.member = NULL;
			if (!j->e.id || !j->e.path || !j->e.container) {
				idd_repo_entry_free(&j->e);
				return idd_fail(err, "out of memory");
			}
		}
		s->njobs++;
		s->total_bytes += kind ? members.v[i].member_len : f->size;
	}
	free(members.v); /* entries moved into jobs */
	return IDD_OK;
}

/* ---- a run, phase by phase ---- */

/* Everything one run of idd_scan holds; each phase below reads and fills
 * part of it. */
struct scan_run {
	const idd_scan_opts *o;
	idd_scan_stats *st;
	struct scan s;
	char *index_dir;
	int lock_fd;
	struct entries kept;          /* entries carried over without reading */
	idd_repo_list files;          /* the walk */
	enum file_state *file_state;  /* per walked file */
	size_t nold;                  /* entries of the previous catalog */
	ptrdiff_t *old_file;          /* per old entry: the walked file it belongs to, or -1 */
	size_t *by_id;                /* walked files sorted by id */
	uint64_t upgraded;            /* kept lists rewritten in the current format */
	idd_blocktable *table;        /* the block table as the last run left it, or NULL */
	char *shard_dir;              /* --shard: INDEX/shards/K-of-N */
};

/* Shard of a file id among n (0-based): the top 64 bits of its SHA-256,
 * so the same id always lands in the same shard for a given n. */
static uint32_t shard_of(const char *file_id, uint32_t n)
{
	unsigned char h[32];
	if (idd_sha256(file_id, strlen(file_id), h, NULL))
		return 0;
	return (uint32_t)(idd_be64(h) % n);
}

/* The images of cat whose file falls in shard k (0-based) of n, copied. */
static int catalog_shard(const idd_catalog *cat, uint32_t k, uint32_t n, struct entries *out,
                         idd_error *err)
{
	for (size_t i = 0; cat && i < cat->count; i++)
		if (shard_of(cat->images[i].file, n) == k && entries_push_copy(out, &cat->images[i], err))
			return IDD_ERR;
	return IDD_OK;
}

/* --merge: every shard's result, or the catalog's own images of a shard
 * that left none, become the kept entries. */
static int merge_shards(struct scan_run *r, idd_error *err)
{
	idd_catalog **shards;
	uint32_t n;
	if (load_shards(r->index_dir, &shards, &n, err))
		return IDD_ERR;
	int rc = IDD_OK;
	if (!n)
		rc = idd_fail_code(err, IDD_ENOENT, "%s: no shard results to merge (run 'imgdedup scan --shard K/N' first)",
		                   r->index_dir);
	bool any = false;
	for (uint32_t k = 0; !rc && k < n; k++) {
		const idd_catalog *c = shards[k];
		if (!c) {
			rc = catalog_shard(r->s.old, k, n, &r->kept, err);
			continue;
		}
		if (any && c->block_size != r->s.bs) {
			rc = idd_fail(err, "%s: shard %u of %u used %u-byte blocks, another %u", r->index_dir, k + 1,
			              n, c->block_size, r->s.bs);
			break;
		}
		r->s.bs = c->block_size;
		any = true;
		for (size_t i = 0; !rc && i < c->count; i++) {
			if (shard_of(c->images[i].file, n) != k)
				rc = idd_fail(err, "%s: shard %u of %u holds %s, which is not of that shard",
				              r->index_dir, k + 1, n, c->images[i].id);
			else
				rc = entries_push_copy(&r->kept, &c->images[i], err);
		}
	}
	if (!rc && r->s.old && any && r->s.old->block_size != r->s.bs)
		rc = idd_fail(err, "%s: the index uses %u-byte blocks, the shards %u", r->index_dir,
		              r->s.old->block_size, r->s.bs);
	r->st->unchanged = r->kept.n;
	free_shards(shards, n);
	return rc;
}

/* After a merge is in place: the shards' results are spent.  A shard
 * running again right now keeps its lock and its directory. */
static void remove_shard_results(const char *index_dir)
{
	char *dir = idd_path_join(index_dir, "shards", NULL);
	DIR *d = dir ? opendir(dir) : NULL;
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char *sub = idd_path_join(dir, de->d_name, NULL);
		int fd = -1;
		idd_error e;
		if (sub && idd_lock(sub, true, &fd, &e) == IDD_OK) {
			char *cat = idd_path_join(sub, IDD_CATALOG_FILE, NULL);
			char *lock = idd_path_join(sub, "lock", NULL);
			if (cat)
				unlink(cat);
			if (lock)
				unlink(lock);
			idd_unlock(fd);
			rmdir(sub);
			free(cat);
			free(lock);
		}
		free(sub);
	}
	if (d)
		closedir(d);
	if (dir) {
		rmdir(dir);
		(void)idd_fsync_dir(index_dir, NULL);
	}
	free(dir);
}

/* Lock the index, load the previous catalog, settle the block size and
 * walk the repository. */
static int phase_open(struct scan_run *r, idd_error *err)
{
	const idd_scan_opts *o = r->o;
	if (idd_index_path(o->repo, o->index_dir, &r->index_dir, err))
		return IDD_ERR;
	r->s.index_dir = r->index_dir;
	/* a mistyped REPO must not be created (mkdir -p) and indexed as empty */
	struct stat rst;
	if (idd_repo_is_remote(o->repo)) {
		/* an object store: the walk finds out whether it is there */
	} else if (stat(o->repo, &rst)) {
		return idd_fail_errno(err, o->repo, "cannot open repository");
	} else if (!S_ISDIR(rst.st_mode)) {
		return idd_fail(err, "%s: repository is not a directory", o->repo);
	}
	if (idd_mkdir_p(r->index_dir, err))
		return IDD_ERR;
	r->s.catalog_dir = r->index_dir;
	if (o->shard_n) {
		/* a shard locks its own directory: shards run at once, each
		 * writing its own results and content-named lists */
		if (!o->shard_k || o->shard_k > o->shard_n)
			return idd_fail(err, "--shard %u/%u: K must be from 1 to N", o->shard_k, o->shard_n);
		if (!(r->shard_dir = idd_asprintf(err, "%s/shards/%u-of-%u", r->index_dir, o->shard_k,
		                                  o->shard_n)) ||
		    idd_mkdir_p(r->shard_dir, err))
			return IDD_ERR;
		r->s.catalog_dir = r->shard_dir;
	}
	int rc = idd_lock(r->shard_dir ? r->shard_dir : r->index_dir, o->no_wait, &r->lock_fd, err);
	if (rc)
		return rc;
	int lrc = idd_catalog_load(r->index_dir, &r->s.old, err);
	if (lrc == IDD_OK && r->shard_dir) {
		/* the shard's own last result, else the catalog's images of it */
		idd_catalog *mine = NULL;
		int src = idd_catalog_load(r->shard_dir, &mine, err);
		struct entries sub = {0};
		if (src == IDD_ENOENT) {
			if (catalog_shard(r->s.old, o->shard_k - 1, o->shard_n, &sub, err))
				return IDD_ERR;
			mine = idd_calloc(1, sizeof *mine, err);
			if (!mine) {
				entries_free(&sub);
				return IDD_ERR;
			}
			mine->block_size = r->s.old->block_size;
			mine->generation = r->s.old->generation;
			mine->unique_blocks = IDD_UNIQUE_UNKNOWN;
			mine->images = sub.v;
			mine->count = sub.n;
		} else if (src) {
			return IDD_ERR;
		}
		idd_catalog_free(r->s.old);
		r->s.old = mine;
	} else if (lrc == IDD_ENOENT && r->shard_dir) {
		idd_catalog *mine = NULL;
		lrc = idd_catalog_load(r->shard_dir, &mine, err);
		r->s.old = mine;
	}
	if (lrc == IDD_ENOENT) {
		r->s.old = NULL;
	} else if (lrc) {
		idd_error_prefix(err, "cannot read the existing index (run 'imgdedup verify'; delete %s to start over)",
		                 r->index_dir);
		return IDD_ERR;
	}
	const idd_catalog *old = r->s.old;
	idd_error te;
	if (old && idd_blocktable_open(r->index_dir, &r->table, &te))
		r->table = NULL; /* lists are then checked by reading them */
	r->s.bs = old ? old->block_size : (o->block_size ? o->block_size : IDD_DEFAULT_BLOCK_SIZE);
	if (o->block_size && old && o->block_size != old->block_size)
		return idd_fail(err, "%s: the index uses %u-byte blocks; --block-size %u needs a new index (--index DIR)",
		                r->index_dir, old->block_size, o->block_size);
	if (!idd_is_power_of_two(r->s.bs) || r->s.bs < IDD_MIN_BLOCK_SIZE || r->s.bs > IDD_MAX_BLOCK_SIZE)
		return idd_fail(err, "block size %u is not a power of two from 512 to 1048576", r->s.bs);
	if (o->merge)
		return merge_shards(r, err); /* reads no image: no walk */
	if (idd_repo_walk(o->repo, r->index_dir, o->includes, o->n_includes, &r->files, o->warn, o->ctx,
	                  err))
		return IDD_ERR;
	if (o->shard_n) { /* only this shard's files */
		size_t w = 0;
		for (size_t f = 0; f < r->files.n; f++) {
			if (shard_of(r->files.v[f].id, o->shard_n) == o->shard_k - 1)
				r->files.v[w++] = r->files.v[f];
			else
				idd_repo_entry_free(&r->files.v[f]);
		}
		r->files.n = w;
	}
	r->nold = old ? old->count : 0;
	size_t nold = r->nold, nfiles = r->files.n;
	r->s.old_dropped = idd_calloc(nold ? nold : 1, sizeof *r->s.old_dropped, err);
	r->old_file = idd_calloc(nold ? nold : 1, sizeof *r->old_file, err);
	r->file_state = idd_calloc(nfiles ? nfiles : 1, sizeof *r->file_state, err);
	/* The walk lists each directory in order, which is not strcmp order
	 * over whole paths: look files up through a sorted index (a cron run
	 * over thousands of images stays O(n log n)). */
	r->by_id = idd_calloc(nfiles ? nfiles : 1, sizeof *r->by_id, err);
	if (!r->s.old_dropped || !r->old_file || !r->file_state || !r->by_id)
		return IDD_ERR;
	for (size_t f = 0; f < nfiles; f++) {
		r->file_state[f] = FILE_NEW;
		r->by_id[f] = f;
	}
	if (nfiles)
		qsort_r(r->by_id, nfiles, sizeof *r->by_id, cmp_file_id, &r->files);
	return IDD_OK;
}

/* Can a kept image's block list be relied on?  Its checksum and name are
 * checked (one read, constant memory, no decompression): a cron run
 * notices a damaged, swapped or lost list, says so, and reads the image
 * again.  *dense says the list is in the format of imgdedup 0.1. */
static bool list_usable(struct scan_run *r, const idd_image_info *im, bool *dense)
{
	idd_error e;
	uint32_t version = 0;
	if (r->table && idd_blocktable_list_trusted(r->table, r->index_dir, im)) {
		*dense = false;
		return true;
	}
	if (idd_blocklist_check(r->index_dir, im, &version, &e)) {
		idd_warnf(r->o->warn, r->o->ctx, "%s; %s is read again", e.msg, im->id);
		r->st->repaired++;
		return false;
	}
	*dense = version == 1;
	return true;
}

/* Rewrite a kept image's dense (version 1) list in the current format: its
 * key changes, so the catalog is written. */
static int upgrade_list(struct scan_run *r, idd_image_info *im, idd_error *err)
{
	idd_blocklist *bl;
	int rc = idd_blocklist_open(r->index_dir, im, &bl, err);
	if (rc == IDD_OK) {
		rc = idd_blocklist_write(r->index_dir, bl, &im->list_key, err);
		idd_blocklist_free(bl);
	}
	if (!rc)
		r->upgraded++;
	return rc;
}

/* Pass 1: a file is unchanged when it has old entries, every one of them
 * still matches its identity, and their block lists are still there; those
 * entries are kept unread. */
static int phase_unchanged(struct scan_run *r, idd_error *err)
{
	const idd_catalog *old = r->s.old;
	for (size_t i = 0; i < r->nold; i++) {
		const idd_image_info *im = &old->images[i];
		r->old_file[i] = find_file(&r->files, r->by_id, im->file);
		if (r->old_file[i] < 0)
			continue;
		size_t f = (size_t)r->old_file[i];
		bool match = entry_matches(im, &r->files.v[f], false) &&
		             idd_chain_unchanged(r->o->repo, im->backing, im->nbacking);
		if (r->file_state[f] == FILE_NEW)
			r->file_state[f] = match ? FILE_UNCHANGED : FILE_CHANGED;
		else if (!match)
			r->file_state[f] = FILE_CHANGED;
	}
	/* a damaged, swapped, deleted or lost list is rebuilt by reading the
	 * image again; a list in the dense format of 0.1 is rewritten */
	bool *upgrade = idd_calloc(r->nold ? r->nold : 1, sizeof *upgrade, err);
	if (!upgrade)
		return IDD_ERR;
	for (size_t i = 0; i < r->nold; i++) {
		if (r->old_file[i] >= 0 && r->file_state[r->old_file[i]] == FILE_UNCHANGED &&
		    !list_usable(r, &old->images[i], &upgrade[i]))
			r->file_state[r->old_file[i]] = FILE_CHANGED;
	}
	int rc = IDD_OK;
	for (size_t i = 0; !rc && i < r->nold; i++) {
		if (r->old_file[i] >= 0 && r->file_state[r->old_file[i]] == FILE_UNCHANGED) {
			if ((rc = entries_push_copy(&r->kept, &old->images[i], err)))
				break;
			r->s.old_dropped[i] = true;
			r->st->unchanged++;
			if (upgrade[i])
				rc = upgrade_list(r, &r->kept.v[r->kept.n - 1], err);
		}
	}
	free(upgrade);
	return rc;
}

/* Pass 2: a new path whose identity (ignoring ctime, which a rename
 * updates) equals that of a vanished file is that file, moved. */
static int phase_renames(struct scan_run *r, idd_error *err)
{
	const idd_catalog *old = r->s.old;
	for (size_t f = 0; f < r->files.n; f++) {
		if (r->file_state[f] != FILE_NEW)
			continue;
		const idd_repo_entry *file = &r->files.v[f];
		for (size_t i = 0; i < r->nold; i++) {
			const idd_image_info *im = &old->images[i];
			/* an image with backing files resolves them from where it lies:
			 * moved, it is read again */
			bool dense = false;
			if (r->old_file[i] >= 0 || r->s.old_dropped[i] || im->nbacking ||
			    !entry_matches(im, file, true) || !list_usable(r, im, &dense))
				continue;
			idd_image_info copy;
			if (idd_image_info_copy(&copy, im, err))
				return IDD_ERR;
			free(copy.id);
			free(copy.file);
			copy.file = strdup(file->id);
			copy.id = im->member[0] ? idd_asprintf(NULL, "%s/%s", file->id, im->member)
			                        : strdup(file->id);
			copy.ctime_ns = file->ctime_ns;
			bool ok = copy.id && copy.file && entries_push_copy(&r->kept, &copy, err) == IDD_OK;
			idd_image_info_free(&copy);
			if (!ok)
				return idd_fail(err, "out of memory");
			r->s.old_dropped[i] = true;
			r->st->unchanged++;
			r->st->renamed++;
			r->file_state[f] = FILE_MOVED;
			if (dense && upgrade_list(r, &r->kept.v[r->kept.n - 1], err))
				return IDD_ERR;
		}
	}
	return IDD_OK;
}

/* Everything else is read: one job per image (compressed archives are
 * deferred, see add_jobs_for_file). */
static int phase_queue(struct scan_run *r, idd_error *err)
{
	for (size_t f = 0; f < r->files.n; f++) {
		if (r->file_state[f] != FILE_NEW && r->file_state[f] != FILE_CHANGED)
			continue;
		int n = add_jobs_for_file(&r->s, &r->files.v[f], true, err);
		if (n < 0)
			return IDD_ERR;
		if (n == 1)
			r->file_state[f] = FILE_FAILED;
		else if (n == 2)
			r->file_state[f] = FILE_DEFERRED;
	}
	return IDD_OK;
}

/* Hash the queued jobs, then each compressed archive on its own: list
 * (decompress), hash, release. */
static int phase_hash(struct scan_run *r, idd_error *err)
{
	struct scan *s = &r->s;
	s->kept = &r->kept;
	s->last_save_ns = idd_now_ns();
	if (run_workers(s, err))
		return IDD_ERR;
	for (size_t f = 0; f < r->files.n && !s->fatal; f++) {
		if (r->file_state[f] != FILE_DEFERRED)
			continue;
		int n = add_jobs_for_file(s, &r->files.v[f], false, err);
		if (n < 0)
			return IDD_ERR;
		r->file_state[f] = n > 0 ? FILE_FAILED : FILE_CHANGED;
		if (run_workers(s, err))
			return IDD_ERR;
	}
	if (s->fatal) {
		*err = s->fatal_err;
		return IDD_ERR;
	}
	if (r->o->progress)
		r->o->progress(r->o->ctx, s->total_bytes, s->total_bytes);
	return IDD_OK;
}

/* Settle every old entry not carried over yet.  A failed image keeps its
 * old entries: their identity no longer matches the file, so the next run
 * retries it.  Entries of vanished files are removed. */
static int phase_reconcile(struct scan_run *r, idd_error *err)
{
	struct scan *s = &r->s;
	idd_scan_stats *st = r->st;
	for (size_t i = 0; i < s->njobs; i++) {
		struct job *j = &s->jobs[i];
		if (j->have_info) {
			st->scanned++;
			st->bytes_hashed += j->bytes_hashed;
		} else {
			st->failed++;
		}
	}
	for (size_t f = 0; f < r->files.n; f++)
		st->failed += r->file_state[f] == FILE_FAILED;
	for (size_t i = 0; i < r->nold; i++) {
		if (s->old_dropped[i])
			continue;
		const idd_image_info *im = &s->old->images[i];
		bool keep = r->old_file[i] >= 0 && r->file_state[r->old_file[i]] == FILE_FAILED;
		bool replaced = false;
		for (size_t k = 0; k < s->njobs; k++) {
			if (strcmp(s->jobs[k].e.id, im->id) == 0) {
				replaced = s->jobs[k].have_info;
				keep = !replaced;
			}
		}
		if (keep) {
			if (entries_push_copy(&r->kept, im, err))
				return IDD_ERR;
		} else if (!replaced) {
			st->removed++;
		}
		s->old_dropped[i] = true;
	}
	return IDD_OK;
}

static void count_blocks(idd_scan_stats *st, const idd_catalog *cat)
{
	st->images = cat->count;
	for (size_t i = 0; i < cat->count; i++) {
		st->blocks += cat->images[i].nblocks;
		st->zero_blocks += cat->images[i].zero_blocks;
	}
}

/* A shard's result: its images, written to its own directory (the
 * repository-wide counts are the merge's).  Takes cat's entries. */
static int commit_shard(struct scan_run *r, idd_catalog *cat, idd_error *err)
{
	idd_scan_stats *st = r->st;
	cat->generation = (r->s.old ? r->s.old->generation : 0) + 1;
	cat->unique_blocks = IDD_UNIQUE_UNKNOWN;
	int rc = idd_catalog_save(r->shard_dir, cat, err);
	if (!rc)
		st->committed = true;
	count_blocks(st, cat);
	st->unique_blocks = IDD_UNIQUE_UNKNOWN;
	for (size_t i = 0; i < cat->count; i++)
		idd_image_info_free(&cat->images[i]);
	free(cat->images);
	if (!rc && st->failed)
		rc = idd_fail(err, "%llu image(s) could not be indexed (see the messages above)",
		              (unsigned long long)st->failed);
	return rc;
}

/* Count distinct blocks, assemble the catalog and, when anything changed,
 * write it and collect the block lists it no longer names. */
static int phase_commit(struct scan_run *r, idd_error *err)
{
	struct scan *s = &r->s;
	idd_scan_stats *st = r->st;
	const idd_catalog *old = s->old;
	bool changed = !old || st->scanned || st->removed || st->renamed || r->upgraded ||
	               old->unique_blocks == IDD_UNIQUE_UNKNOWN || r->o->merge;
	idd_catalog cat = {.block_size = s->bs};
	if (build_catalog(s, &r->kept, false, &cat, err))
		return IDD_ERR;
	if (r->shard_dir)
		return commit_shard(r, &cat, err);
	/* the block table follows the change, reading only the lists of images
	 * added, changed or removed; it counts the repository's distinct blocks.
	 * A kept image whose list cannot be read is dropped, so the next run
	 * reads it again rather than failing every run from now on. */
	bool *dropped = idd_calloc(cat.count + 1, sizeof *dropped, err);
	idd_bt_update_stats bst;
	int rc = dropped ? idd_blocktable_update(r->index_dir, r->table, &cat, dropped, true, &bst, r->o->warn,
	                                         r->o->ctx, err)
	                 : IDD_ERR;
	if (!rc) {
		size_t w = 0;
		for (size_t i = 0; i < cat.count; i++) {
			if (dropped[i]) {
				idd_image_info_free(&cat.images[i]);
				s->dropped++;
			} else {
				cat.images[w++] = cat.images[i];
			}
		}
		cat.count = w;
	}
	free(dropped);
	changed = changed || s->dropped || cat.count != r->nold ||
	          (old && old->unique_blocks != bst.entries);
	if (!rc) {
		cat.generation = changed ? (old ? old->generation : 0) + 1 : old->generation;
		cat.unique_blocks = changed ? bst.entries : old->unique_blocks;
	}
	/* the per-image entries a node reads instead of the catalog: written
	 * before the catalog names them, the removed ones dropped after (an
	 * index written before they existed gets them all, changed or not) */
	idd_entries_sync esy;
	if (!rc)
		rc = idd_entries_prepare(r->index_dir, old, &cat, &esy, err);
	if (rc) {
		/* nothing to write */
	} else if (!changed) {
		st->committed = true;
	} else {
		rc = idd_catalog_save(r->index_dir, &cat, err);
		if (!rc) {
			st->committed = true;
			if (r->o->merge)
				remove_shard_results(r->index_dir);
			collect_garbage(s, r->index_dir, &cat);
		}
	}
	if (st->committed)
		rc = idd_entries_commit(r->index_dir, old, &cat, &esy, err);
	if (st->committed) {
		remove_dead_temporaries(s, r->index_dir);
		char *edir = idd_path_join(r->index_dir, IDD_ENTRIES_DIR, NULL);
		if (edir)
			remove_dead_temporaries(s, edir);
		free(edir);
	}
	st->failed += s->dropped; /* a damaged index is worth an exit status of 1 */
	count_blocks(st, &cat);
	st->unique_blocks = cat.unique_blocks;
	for (size_t i = 0; i < cat.count; i++)
		idd_image_info_free(&cat.images[i]);
	free(cat.images);
	if (!rc && st->failed)
		rc = idd_fail(err, "%llu image(s) could not be indexed (see the messages above)",
		              (unsigned long long)st->failed);
	return rc;
}

static void scan_run_free(struct scan_run *r)
{
	struct scan *s = &r->s;
	for (size_t i = 0; i < s->njobs; i++) {
		job_release(&s->jobs[i]);
		idd_chain_free(&s->jobs[i].chain);
		idd_repo_entry_free(&s->jobs[i].e);
		if (s->jobs[i].have_info)
			idd_image_info_free(&s->jobs[i].info);
	}
	free(s->jobs);
	free(s->old_dropped);
	idd_catalog_free(s->old);
	idd_blocktable_free(r->table);
	free(r->shard_dir);
	free(r->file_state);
	free(r->old_file);
	free(r->by_id);
	entries_free(&r->kept);
	idd_repo_list_free(&r->files);
	idd_unlock(r->lock_fd);
	free(r->index_dir);
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->finish_mu);
}

int idd_scan(const idd_scan_opts *o, idd_scan_stats *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	if (o->merge && o->shard_n)
		return idd_fail(err, "--merge and --shard exclude each other");
	struct scan_run r = {.o = o, .st = st, .lock_fd = -1};
	r.s.o = o;
	r.s.start_ns = idd_now_ns();
	pthread_mutex_init(&r.s.mu, NULL);
	pthread_mutex_init(&r.s.finish_mu, NULL);
	int rc = phase_open(&r, err);
	if (!rc && !o->merge)
		rc = phase_unchanged(&r, err);
	if (!rc && !o->merge)
		rc = phase_renames(&r, err);
	if (!rc && !o->merge)
		rc = phase_queue(&r, err);
	if (!rc && !o->merge)
		rc = phase_hash(&r, err);
	if (!rc && !o->merge)
		rc = phase_reconcile(&r, err);
	if (!rc)
		rc = phase_commit(&r, err);
	scan_run_free(&r);
	return rc;
}
