/* source_pack.c - blocks from the repository's pack: a view says which
 * frame holds each block of the image, frames are fetched by range
 * (adjacent frames in one request), decoded with a bounded output and
 * every block verified against its digest (source_pack.h). */
#include "node/source_pack.h"
#include "index/pack.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct cached_frame {
	uint64_t frame;     /* view frame index, UINT64_MAX when empty */
	uint64_t used;      /* LRU tick */
	unsigned char *data;
} cached_frame;

typedef struct pack_source {
	idd_block_source base;
	idd_source *repo;
	char *prefix;
	const idd_map *map;
	idd_pack_view *view;
	uint32_t *order;        /* map digest indices sorted by digest */
	idd_file **files;       /* the view's data files, opened on first use */
	pthread_mutex_t mu;
	ZSTD_DCtx *dctx;
	idd_hasher *h;
	uint32_t frame_max;     /* most blocks in a frame */
	cached_frame *cache;
	size_t ncache;
	uint64_t tick;
	atomic_bool dead;       /* a fetch failed: the source answers nothing any more */
	bool warned_damage;
	uint64_t index_bytes;
} pack_source;

static int cmp_order(const void *a, const void *b, void *ctx)
{
	const idd_digest *d = ctx;
	return memcmp(d[*(const uint32_t *)a].b, d[*(const uint32_t *)b].b, 32);
}

/* Map index of digest d, or -1. */
static int64_t find_k(const pack_source *ps, const idd_digest *d)
{
	size_t lo = 0, hi = (size_t)ps->map->ndistinct;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(ps->map->digests[ps->order[mid]].b, d->b, 32);
		if (c == 0)
			return ps->order[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static bool pack_has(idd_block_source *s, const idd_digest *d)
{
	pack_source *ps = s->priv;
	int64_t k = find_k(ps, d);
	return k >= 0 && ps->view->slot[k] != 0 && !atomic_load(&ps->dead);
}

static void pack_warn(pack_source *ps, const char *fmt, ...) IDD_PRINTF(2, 3);
static void pack_warn(pack_source *ps, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	idd_vwarnf(ps->base.warn, ps->base.warn_ctx, fmt, ap);
	va_end(ap);
}

static cached_frame *cache_find(pack_source *ps, uint64_t frame)
{
	for (size_t i = 0; i < ps->ncache; i++)
		if (ps->cache[i].frame == frame) {
			ps->cache[i].used = ++ps->tick;
			return &ps->cache[i];
		}
	return NULL;
}

/* A slot for a frame about to be decoded: an empty one, else the least
 * recently used. */
static cached_frame *cache_slot(pack_source *ps, idd_error *err)
{
	cached_frame *best = &ps->cache[0];
	for (size_t i = 0; i < ps->ncache; i++) {
		if (ps->cache[i].frame == UINT64_MAX) {
			best = &ps->cache[i];
			break;
		}
		if (ps->cache[i].used < best->used)
			best = &ps->cache[i];
	}
	if (!best->data &&
	    !(best->data = idd_malloc((size_t)ps->frame_max * ps->base.block_size, err)))
		return NULL;
	best->frame = UINT64_MAX;
	return best;
}

typedef struct want {
	uint64_t frame; /* view frame */
	uint32_t slot;
	size_t req;
} want;

static int cmp_want(const void *a, const void *b)
{
	const want *x = a, *y = b;
	if (x->frame != y->frame)
		return x->frame < y->frame ? -1 : 1;
	return x->req < y->req ? -1 : x->req > y->req;
}

/* Hand out the blocks of one decoded frame to the requests [w, w + n). */
static void deliver(pack_source *ps, const unsigned char *data, const want *w, size_t n,
                    idd_block_req *reqs)
{
	uint32_t bs = ps->base.block_size;
	for (size_t i = 0; i < n; i++) {
		idd_block_req *r = &reqs[w[i].req];
		memcpy(r->buf, data + (size_t)w[i].slot * bs, bs);
		r->origin_fd = -1;
		if (idd_block_verify(ps->h, r->buf, bs, &r->digest)) {
			r->status = IDD_OK;
			atomic_fetch_add(&ps->base.blocks, 1);
		} else {
			r->status = IDD_ECORRUPT;
			atomic_fetch_add(&ps->base.damaged, 1);
			if (!ps->warned_damage) {
				ps->warned_damage = true;
				pack_warn(ps, "%s: a block of the pack does not match its digest (damaged pack; "
				          "such blocks are read from the images)", ps->base.name);
			}
		}
	}
}

static int open_file(pack_source *ps, uint32_t f, idd_error *err)
{
	if (ps->files[f])
		return IDD_OK;
	char *rel = idd_pack_data_relpath(&ps->view->files[f].name, err);
	char *full = rel ? idd_asprintf(err, "%s%s", ps->prefix, rel) : NULL;
	int rc = full ? idd_source_open_file(ps->repo, full, ps->view->files[f].size, &ps->files[f], err)
	              : IDD_ENOMEM;
	if (!rc && ps->files[f]->size != ps->view->files[f].size) {
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: %llu bytes, the pack's view says %llu",
		                   ps->files[f]->name, (unsigned long long)ps->files[f]->size,
		                   (unsigned long long)ps->view->files[f].size);
		idd_file_close(ps->files[f]);
		ps->files[f] = NULL;
	}
	free(rel);
	free(full);
	return rc;
}

/* Fetch frames (view indices) fr[0..n) into bufs: one batch of ranges per
 * data file, adjacent frames coalesced by the fetch layer. */
static int fetch_frames(pack_source *ps, const uint64_t *fr, size_t n, unsigned char **bufs,
                        idd_error *err)
{
	idd_range *r = idd_calloc(n, sizeof *r, err);
	if (!r)
		return IDD_ENOMEM;
	int rc = IDD_OK;
	idd_fetch_stats before, after;
	idd_source_stats(ps->repo, &before);
	for (size_t i = 0; i < n && !rc;) {
		uint32_t file = ps->view->frames[fr[i]].file;
		size_t j = i;
		for (; j < n && ps->view->frames[fr[j]].file == file; j++) {
			const idd_pack_frame *f = &ps->view->frames[fr[j]];
			r[j - i] = (idd_range){f->off, f->clen, bufs[j]};
		}
		rc = open_file(ps, file, err);
		if (!rc)
			rc = idd_source_read_ranges(ps->repo, ps->files[file], r, j - i, err);
		i = j;
	}
	idd_source_stats(ps->repo, &after);
	atomic_fetch_add(&ps->base.requests, after.requests - before.requests);
	atomic_fetch_add(&ps->base.retries, after.retries - before.retries);
	free(r);
	return rc;
}

static int pack_read(idd_block_source *s, idd_block_req *reqs, size_t n, idd_error *err)
{
	pack_source *ps = s->priv;
	/* one reader at a time; a thread with a deadline waits no longer */
	int64_t deadline = idd_fetch_deadline();
	if (deadline) {
		struct timespec ts = {(time_t)(deadline / 1000000000), (long)(deadline % 1000000000)};
		if (pthread_mutex_clocklock(&ps->mu, CLOCK_MONOTONIC, &ts))
			return idd_fail_code(err, IDD_ETIMEDOUT, "%s: busy until the read's deadline",
			                     s->name);
	} else {
		pthread_mutex_lock(&ps->mu);
	}
	int rc = IDD_OK;
	want *w = NULL;
	uint64_t *fr = NULL;
	unsigned char **bufs = NULL, *batch = NULL;
	size_t nw = 0;
	if (atomic_load(&ps->dead) || !n)
		goto out;
	if (!(w = idd_calloc(n, sizeof *w, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (reqs[i].status != IDD_ENOENT)
			continue;
		int64_t k = find_k(ps, &reqs[i].digest);
		idd_pack_loc loc;
		if (k < 0 || !idd_pack_view_find(ps->view, (uint64_t)k, &loc))
			continue;
		w[nw++] = (want){loc.frame, loc.slot, i};
	}
	qsort(w, nw, sizeof *w, cmp_want);
	/* frames already decoded first; the others in batches */
	size_t nfr = 0;
	if (!(fr = idd_calloc(nw + 1, sizeof *fr, err)) ||
	    !(bufs = idd_calloc(nw + 1, sizeof *bufs, err))) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nw;) {
		size_t j = i;
		while (j < nw && w[j].frame == w[i].frame)
			j++;
		cached_frame *c = cache_find(ps, w[i].frame);
		if (c)
			deliver(ps, c->data, &w[i], j - i, reqs);
		else
			fr[nfr++] = w[i].frame;
		i = j;
	}
	size_t wi = 0; /* walks w alongside fr (both sorted by frame) */
	for (size_t a = 0; a < nfr;) {
		uint64_t bytes = 0;
		size_t b = a;
		while (b < nfr && (b == a || bytes + ps->view->frames[fr[b]].clen <= IDD_PACK_SOURCE_BATCH))
			bytes += ps->view->frames[fr[b++]].clen;
		free(batch);
		if (!(batch = idd_malloc((size_t)bytes, err))) {
			rc = IDD_ENOMEM;
			goto out;
		}
		uint64_t o = 0;
		for (size_t i = a; i < b; i++) {
			bufs[i] = batch + o;
			o += ps->view->frames[fr[i]].clen;
		}
		idd_error ferr;
		int frc = fetch_frames(ps, fr + a, b - a, bufs + a, &ferr);
		if (frc == IDD_ENOMEM || frc == IDD_ETIMEDOUT || frc == IDD_ECANCELED) {
			/* out of memory, out of time, stopping: not the pack's fault */
			*err = ferr;
			rc = frc;
			goto out;
		}
		if (frc) {
			atomic_store(&ps->dead, true);
			pack_warn(ps, "%s; the pack is not used any more (blocks are read from the images)",
			          ferr.msg);
			goto out;
		}
		for (size_t i = a; i < b; i++) {
			const idd_pack_frame *f = &ps->view->frames[fr[i]];
			while (w[wi].frame != fr[i])
				wi++;
			size_t wj = wi;
			while (wj < nw && w[wj].frame == fr[i])
				wj++;
			atomic_fetch_add(&ps->base.bytes, f->clen);
			cached_frame *c = cache_slot(ps, err);
			if (!c) {
				rc = IDD_ENOMEM;
				goto out;
			}
			idd_error derr;
			if (idd_pack_frame_decode(ps->dctx, ps->base.name, bufs[i], (size_t)f->clen, f->nblocks,
			                          ps->base.block_size, c->data, &derr)) {
				for (size_t q = wi; q < wj; q++)
					reqs[w[q].req].status = IDD_ECORRUPT;
				atomic_fetch_add(&ps->base.damaged, wj - wi);
				if (!ps->warned_damage) {
					ps->warned_damage = true;
					pack_warn(ps, "%s (frame at offset %llu); its blocks are read from the images",
					          derr.msg, (unsigned long long)f->off);
				}
			} else {
				c->frame = fr[i];
				c->used = ++ps->tick;
				deliver(ps, c->data, &w[wi], wj - wi, reqs);
			}
			wi = wj;
		}
		a = b;
	}
out:
	free(batch);
	free(bufs);
	free(fr);
	free(w);
	pthread_mutex_unlock(&ps->mu);
	return rc;
}

static void pack_close(idd_block_source *s)
{
	pack_source *ps = s->priv;
	if (!ps)
		return;
	for (size_t i = 0; ps->view && ps->files && i < ps->view->nfiles; i++)
		idd_file_close(ps->files[i]);
	for (size_t i = 0; ps->cache && i < ps->ncache; i++)
		free(ps->cache[i].data);
	free(ps->cache);
	free(ps->files);
	free(ps->order);
	idd_pack_view_free(ps->view);
	ZSTD_freeDCtx(ps->dctx);
	idd_hasher_free(ps->h);
	free(ps->prefix);
	pthread_mutex_destroy(&ps->mu);
	idd_block_source_fini(&ps->base);
	free(ps);
}

static const struct idd_block_source_ops pack_ops = {"pack", pack_has, pack_read, pack_close};

uint64_t idd_pack_source_index_bytes(const idd_block_source *s)
{
	return s->ops == &pack_ops ? ((const pack_source *)s->priv)->index_bytes : 0;
}

int idd_pack_source_open(idd_source *repo, const char *index_prefix, const idd_map *map,
                         idd_warn_fn warn, void *ctx, idd_block_source **out, idd_error *err)
{
	char *rel = idd_pack_view_relpath(&map->list_key, err);
	char *full = rel ? idd_asprintf(err, "%s%s", index_prefix, rel) : NULL;
	free(rel);
	if (!full)
		return IDD_ENOMEM;
	void *file = NULL;
	size_t len = 0;
	/* the view is untrusted: no larger than this image's view can be */
	uint64_t limit = idd_pack_view_max_payload(map->ndistinct);
	int rc = idd_source_get(repo, full, (size_t)IDD_MIN(limit + 64, IDD_PACK_MAX_VIEW), &file, &len, err);
	if (rc == IDD_ENOENT) {
		idd_fail_code(err, IDD_ENOENT, "%s: no pack for this image (none, or older than the image: run 'imgdedup pack')",
		              full);
		free(full);
		return IDD_ENOENT;
	}
	if (rc) {
		free(full);
		return rc;
	}
	pack_source *ps = idd_calloc(1, sizeof *ps, err);
	if (!ps) {
		free(file);
		free(full);
		return IDD_ENOMEM;
	}
	pthread_mutex_init(&ps->mu, NULL);
	atomic_init(&ps->dead, false);
	ps->repo = repo;
	ps->map = map;
	ps->index_bytes = len;
	ps->base.priv = ps;
	char *name = idd_asprintf(err, "%s/%s", idd_source_root(repo), full);
	rc = name ? idd_block_source_init(&ps->base, &pack_ops, name, map->block_size, warn, ctx, err)
	          : IDD_ENOMEM;
	free(name);
	if (!rc)
		rc = idd_pack_view_parse(full, file, len, limit, &ps->view, err);
	free(file);
	if (!rc && (memcmp(ps->view->list_key.b, map->list_key.b, 32) ||
	            ps->view->block_size != map->block_size || ps->view->ndistinct != map->ndistinct))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: the pack's view does not match the block map",
		                   full);
	free(full);
	if (rc) {
		pack_close(&ps->base);
		return rc;
	}
	ps->frame_max = 1;
	for (size_t i = 0; i < ps->view->nframes; i++)
		ps->frame_max = IDD_MAX(ps->frame_max, ps->view->frames[i].nblocks);
	uint64_t frame_bytes = (uint64_t)ps->frame_max * map->block_size;
	ps->ncache = (size_t)IDD_MAX(IDD_PACK_SOURCE_CACHE / frame_bytes, 1);
	ps->prefix = idd_strdup(index_prefix, err);
	ps->dctx = ZSTD_createDCtx();
	ps->h = idd_hasher_new(err);
	ps->order = idd_calloc((size_t)map->ndistinct + 1, sizeof *ps->order, err);
	ps->files = idd_calloc(ps->view->nfiles + 1, sizeof *ps->files, err);
	ps->cache = idd_calloc(ps->ncache, sizeof *ps->cache, err);
	if (!ps->prefix || !ps->dctx || !ps->h || !ps->order || !ps->files || !ps->cache) {
		pack_close(&ps->base);
		return idd_fail_code(err, IDD_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < ps->ncache; i++)
		ps->cache[i].frame = UINT64_MAX;
	for (uint32_t k = 0; k < map->ndistinct; k++)
		ps->order[k] = k;
	qsort_r(ps->order, (size_t)map->ndistinct, sizeof *ps->order, cmp_order, map->digests);
	*out = &ps->base;
	return IDD_OK;
}
