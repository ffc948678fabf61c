/* deploy.c - materialise an image from its block map: zero blocks become
 * holes, blocks the node already holds (an interrupted OUT, the cache,
 * seeds) are copied locally, each distinct missing block is fetched once
 * (peers, the pack, the image in SOURCE), and repeats inside the image are
 * copied from their first copy in OUT.  Every block is verified against its
 * digest before it is written.  How and why: docs/deploy.md.
 *
 * This file only orchestrates: the index comes from remote_index.c, the
 * output file from outpart.c, blocks from the sources (source_*.c) through
 * fill.c. */
#include "node/cache.h"
#include "node/fill.h"
#include "node/outpart.h"
#include "node/remote_index.h"
#include "node/source_cache.h"
#include "node/source_pack.h"
#include "node/source_peer.h"
#include "node/source_remote.h"
#include "node/source_seed.h"
#include "index/indexfile.h"

#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Windows: local copies in runs of 1 MiB, fetches of up to 16 MiB. */
#define LOCAL_WINDOW_BYTES ((uint64_t)1 << 20)
#define FETCH_WINDOW_BYTES ((uint64_t)16 << 20)

enum plan { P_FETCH, P_HAVE, P_LOCAL };

struct deploy {
	const idd_deploy_opts *o;
	idd_deploy_stats *st;
	idd_error *err;
	idd_remote_index *ri;
	const idd_image_info *info;
	idd_map *m;
	uint32_t bs;
	idd_cache *cache;
	idd_outpart part;
	bool part_open;
	idd_block_source *cache_src, *seed_src, *peer_src, *pack_src, *remote_src, *out_src;
	bool pack_tried;
	atomic_bool can_clone;
	/* per digest k = 1..ndistinct */
	unsigned char *plan;
	uint64_t *pos;        /* block of OUT holding its first copy, UINT64_MAX: none yet */
	/* blocks found right in an interrupted OUT.part, ascending */
	uint64_t *valid;
	size_t nvalid, cap_valid;
	bool valid_oom;
};

static void progress(struct deploy *d)
{
	if (!d->o->progress)
		return;
	idd_fetch_stats fs;
	idd_remote_index_fetch_stats(d->ri, &fs);
	idd_block_source_counters rc = {0};
	idd_block_source_counters_get(d->remote_src, &rc);
	d->st->requests = fs.requests + rc.requests;
	d->o->progress(d->o->ctx, d->st);
}

static void fill_progress(void *ctx, uint64_t written)
{
	struct deploy *d = ctx;
	uint64_t save = d->st->bytes_done;
	d->st->bytes_done += written;
	progress(d);
	d->st->bytes_done = save;
}

static uint64_t block_len(const struct deploy *d, uint64_t b)
{
	return IDD_MIN((uint64_t)d->bs, d->m->image_size - b * d->bs);
}

static void on_valid(void *ctx, uint64_t block, uint32_t ref)
{
	struct deploy *d = ctx;
	if (d->pos[ref] == UINT64_MAX)
		d->pos[ref] = block;
	d->plan[ref] = P_HAVE;
	if (d->nvalid == d->cap_valid) {
		size_t nc = d->cap_valid ? d->cap_valid * 2 : 1024;
		uint64_t *nv = realloc(d->valid, nc * sizeof *nv);
		if (!nv) {
			d->valid_oom = true;
			return;
		}
		d->valid = nv;
		d->cap_valid = nc;
	}
	d->valid[d->nvalid++] = block;
}

static bool is_valid(const struct deploy *d, uint64_t b)
{
	size_t lo = 0, hi = d->nvalid;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (d->valid[mid] < b)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < d->nvalid && d->valid[lo] == b;
}

/* A growable list of block numbers. */
struct blist {
	uint64_t *v;
	size_t n, cap;
};

static int blist_push(struct blist *l, uint64_t b, idd_error *err)
{
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 1024;
		uint64_t *nv = idd_realloc_array(l->v, nc, sizeof *nv, err);
		if (!nv)
			return IDD_ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n++] = b;
	return IDD_OK;
}

/* Walk the map in order and sort the non-zero blocks still to write: the
 * first copy of each digest goes to `local` or `fetch` by plan, every
 * later copy to `repeat`.  Zero blocks and resumed blocks are settled. */
static int sort_blocks(struct deploy *d, struct blist *local, struct blist *fetch,
                       struct blist *repeat)
{
	const idd_map *m = d->m;
	for (size_t ri = 0; ri < m->nruns; ri++) {
		const idd_map_span *sp = &m->runs[ri];
		if (sp->kind == IDD_RUN_ZERO) {
			uint64_t end = sp->block + sp->count;
			uint64_t bytes = IDD_MIN(end * d->bs, m->image_size) - sp->block * d->bs;
			d->st->bytes_zero += bytes;
			d->st->bytes_done += bytes;
			continue;
		}
		for (uint64_t b = sp->block; b < sp->block + sp->count; b++) {
			if (d->nvalid && is_valid(d, b)) {
				d->st->bytes_from_cache += block_len(d, b);
				d->st->bytes_done += block_len(d, b);
				continue;
			}
			uint32_t k = idd_map_span_ref(sp, b);
			int rc;
			if (d->pos[k] != UINT64_MAX) {
				rc = blist_push(repeat, b, d->err);
			} else {
				d->pos[k] = b; /* this block is the digest's first copy, whoever writes it */
				rc = blist_push(d->plan[k] == P_LOCAL ? local : fetch, b, d->err);
			}
			if (rc)
				return rc;
		}
	}
	return IDD_OK;
}

/* Digests no local source holds yet, for the seeds to look for. */
static int open_seeds(struct deploy *d)
{
	const idd_deploy_opts *o = d->o;
	if (!o->n_seeds)
		return IDD_OK;
	size_t need = 0;
	for (uint64_t k = 1; k <= d->m->ndistinct; k++)
		need += d->plan[k] == P_FETCH;
	idd_digest_set want;
	int rc = idd_digest_set_init(&want, need + 16, true, d->err);
	for (uint64_t k = 1; !rc && k <= d->m->ndistinct; k++) {
		if (d->plan[k] != P_FETCH)
			continue;
		bool added;
		if (idd_digest_set_add(&want, &d->m->digests[k - 1], &added, d->err) == (size_t)-1)
			rc = IDD_ENOMEM;
	}
	if (!rc)
		rc = idd_seed_source_open(o->seeds, o->n_seeds, d->ri, d->info, d->m, &want, o->warn, o->ctx,
		                          &d->st->seeds_mapped, &d->seed_src, d->err);
	idd_digest_set_free(&want);
	for (uint64_t k = 1; !rc && k <= d->m->ndistinct; k++)
		if (d->plan[k] == P_FETCH && d->seed_src->ops->has(d->seed_src, &d->m->digests[k - 1]))
			d->plan[k] = P_LOCAL;
	return rc;
}

static int plan_digests(struct deploy *d)
{
	for (uint64_t k = 1; k <= d->m->ndistinct; k++) {
		if (d->plan[k] == P_HAVE)
			continue;
		d->plan[k] = d->cache_src->ops->has(d->cache_src, &d->m->digests[k - 1]) ? P_LOCAL : P_FETCH;
	}
	return open_seeds(d);
}

static int run_fill(struct deploy *d, idd_block_chain *chain, struct blist *l, uint64_t window,
                    int jobs, idd_fill *f)
{
	memset(f, 0, sizeof *f);
	f->part = &d->part;
	f->m = d->m;
	f->chain = chain;
	f->can_clone = &d->can_clone;
	f->window_blocks = (size_t)IDD_MAX(window / d->bs, 1);
	f->jobs = jobs;
	f->progress = fill_progress;
	f->ctx = d;
	int rc = idd_fill_run(f, l->v, l->n, d->err);
	d->st->bytes_done += f->bytes_written;
	return rc;
}

/* Local copies on every core (SHA-256 is the cost); what fails
 * verification joins the fetches. */
static int copy_local(struct deploy *d, struct blist *local, struct blist *fetch)
{
	idd_block_chain chain = {.n = 0};
	chain.src[chain.n++] = d->cache_src;
	if (d->seed_src)
		chain.src[chain.n++] = d->seed_src;
	idd_fill f;
	int rc = run_fill(d, &chain, local, LOCAL_WINDOW_BYTES, d->o->jobs, &f);
	if (!rc) {
		idd_block_source_counters sc = {0};
		idd_block_source_counters_get(d->seed_src, &sc);
		d->st->bytes_from_cache += f.bytes_written;
		d->st->bytes_reflinked += f.bytes_cloned;
		d->st->bytes_seed = sc.blocks * d->bs;
		d->st->cache_damaged = idd_cache_damaged_count(d->cache);
		for (size_t i = 0; !rc && i < f.nfailed; i++)
			rc = blist_push(fetch, f.failed[i], d->err);
		if (!rc && f.nfailed) { /* keep fetches in output order: adjacent ranges coalesce */
			uint64_t *merged = idd_malloc(fetch->n * sizeof *merged, d->err);
			if (!merged)
				rc = IDD_ENOMEM;
			else {
				size_t a = 0, b = fetch->n - f.nfailed, w = 0, na = fetch->n - f.nfailed;
				while (a < na || b < fetch->n)
					merged[w++] = (b >= fetch->n || (a < na && fetch->v[a] < fetch->v[b]))
					                  ? fetch->v[a++]
					                  : fetch->v[b++];
				memcpy(fetch->v, merged, fetch->n * sizeof *merged);
				free(merged);
			}
		}
	}
	idd_fill_free(&f);
	return rc;
}

static int fetch_missing(struct deploy *d, struct blist *fetch)
{
	if (!fetch->n)
		return IDD_OK;
	if (!d->remote_src) {
		char *dir = idd_strdup(d->part.part, d->err);
		if (!dir)
			return IDD_ENOMEM;
		idd_fetch_opts fo = {.connections = d->o->connections, .warn = d->o->warn, .ctx = d->o->ctx,
		                     .timeout_s = d->o->timeout_s};
		int rc = idd_remote_source_open(idd_source_root(d->ri->src), d->info, d->m->image_size, d->bs,
		                                dirname(dir), 1, &fo, d->o->warn, d->o->ctx, &d->remote_src,
		                                d->err);
		free(dir);
		if (rc)
			return rc;
	}
	if (d->o->n_peers && !d->peer_src) {
		/* peers are a shortcut: failing to open them is a warning */
		idd_fetch_opts pfo = {.warn = d->o->warn, .ctx = d->o->ctx};
		idd_error e2;
		if (idd_peer_source_open(d->o->peers, d->o->n_peers, d->bs, &pfo, d->o->warn, d->o->ctx,
		                         &d->peer_src, &e2))
			idd_warnf(d->o->warn, d->o->ctx, "warning: peers not used: %s", e2.msg);
	}
	if (!d->o->no_pack && !d->pack_tried) {
		/* the pack, when SOURCE has one for this image: fewer bytes; any
		 * trouble with it is a warning and the images are read instead */
		d->pack_tried = true;
		idd_error e2;
		int prc = idd_pack_source_open(d->ri->isrc, d->ri->prefix, d->m, d->o->warn, d->o->ctx,
		                               &d->pack_src, &e2);
		if (prc && prc != IDD_ENOENT)
			idd_warnf(d->o->warn, d->o->ctx, "warning: pack not used: %s", e2.msg);
		if (!prc)
			d->st->bytes_index += idd_pack_source_index_bytes(d->pack_src);
	}
	idd_block_chain chain = {.n = 0};
	if (d->peer_src)
		chain.src[chain.n++] = d->peer_src;
	if (d->pack_src)
		chain.src[chain.n++] = d->pack_src;
	chain.src[chain.n++] = d->remote_src;
	idd_fill f;
	int rc = run_fill(d, &chain, fetch, FETCH_WINDOW_BYTES, 1, &f);
	idd_block_source_counters rc2, pc = {0}, kc = {0};
	idd_block_source_counters_get(d->remote_src, &rc2);
	idd_block_source_counters_get(d->peer_src, &pc);
	idd_block_source_counters_get(d->pack_src, &kc);
	d->st->bytes_fetched = rc2.bytes + kc.bytes;
	d->st->bytes_from_peers = pc.bytes;
	if (!rc && f.nfailed) {
		uint64_t b = f.failed[0];
		if (f.failed_status == IDD_ECORRUPT)
			rc = idd_fail_code(d->err, IDD_ECORRUPT, "%s: block at offset %llu fetched from %s does "
			                   "not match its digest (the source is damaged or changed since it was "
			                   "indexed)", d->info->id, (unsigned long long)(b * d->bs),
			                   d->remote_src->name);
		else if (chain.failure.code < 0)
			rc = idd_fail_code(d->err, chain.failure.code == IDD_ERR ? IDD_ENET : chain.failure.code,
			                   "%s", chain.failure.msg);
		else
			rc = idd_fail_code(d->err, IDD_ENOENT, "%s: no source holds the block at offset %llu",
			                   d->info->id, (unsigned long long)(b * d->bs));
	}
	idd_fill_free(&f);
	progress(d);
	return rc;
}

/* Repeats inside the image: read back from the first copy in OUT (written
 * and verified moments ago, verified again). */
static int copy_repeats(struct deploy *d, struct blist *repeat)
{
	if (!repeat->n)
		return IDD_OK;
	int rc = idd_output_source_open(&d->part, d->m, d->pos, &d->out_src, d->err);
	if (rc)
		return rc;
	idd_block_chain chain = {.n = 0};
	chain.src[chain.n++] = d->out_src;
	idd_fill f;
	rc = run_fill(d, &chain, repeat, LOCAL_WINDOW_BYTES, d->o->jobs, &f);
	if (!rc) {
		d->st->bytes_from_cache += f.bytes_written;
		if (f.nfailed)
			rc = idd_fail_code(d->err, IDD_EIO, "%s: block at offset %llu changed in %s while "
			                   "deploying", d->info->id, (unsigned long long)(f.failed[0] * d->bs),
			                   d->part.part);
	}
	idd_fill_free(&f);
	return rc;
}

static int prepare_out(struct deploy *d, char **out)
{
	const idd_deploy_opts *o = d->o;
	if (idd_mkdir_p(o->cache_dir, d->err))
		return IDD_ERR;
	*out = o->out ? idd_strdup(o->out, d->err) : idd_cache_default_out(o->cache_dir, o->image, d->err);
	if (!*out)
		return IDD_ENOMEM;
	snprintf(d->st->out_path, sizeof d->st->out_path, "%s", *out);
	idd_error e2;
	if (!o->out && idd_cache_migrate_name(o->cache_dir, d->ri, o->image, d->m, o->warn, o->ctx, &e2))
		idd_warnf(o->warn, o->ctx, "warning: cache: %s", e2.msg);
	struct stat sb;
	if (!o->force && lstat(*out, &sb) == 0)
		return idd_fail_code(d->err, IDD_EPERM, "%s: exists (use --force to replace it)", *out);
	if (!o->out) {
		char *dir = idd_strdup(*out, d->err);
		int rc = dir ? idd_mkdir_p(dirname(dir), d->err) : IDD_ENOMEM;
		free(dir);
		return rc;
	}
	return IDD_OK;
}

static int run(struct deploy *d)
{
	const idd_deploy_opts *o = d->o;
	idd_fetch_opts fo = {.connections = o->connections, .warn = o->warn, .ctx = o->ctx,
	                     .timeout_s = o->timeout_s};
	char *out = NULL;
	int rc = idd_remote_index_open(o->source, o->index, &fo, &d->ri, d->err);
	if (!rc)
		rc = idd_remote_index_image(d->ri, o->image, &d->info, d->err);
	if (!rc)
		rc = idd_remote_index_map(d->ri, d->info, &d->m, d->err);
	if (!rc)
		rc = prepare_out(d, &out);
	if (rc)
		goto out;
	d->bs = d->m->block_size;
	d->st->bytes_index = idd_remote_index_bytes(d->ri);
	d->st->bytes_total = d->m->image_size;
	if ((rc = idd_cache_open(o->cache_dir, o->warn, o->ctx, &d->cache, d->err)) ||
	    (rc = idd_cache_prepare(d->cache, d->bs, d->err)) ||
	    (rc = idd_cache_source_open(d->cache, d->bs, o->warn, o->ctx, &d->cache_src, d->err)))
		goto out;
	uint64_t nd = d->m->ndistinct;
	d->plan = idd_calloc(nd + 1, 1, d->err);
	d->pos = idd_malloc((nd + 1) * sizeof *d->pos, d->err);
	if (!d->plan || !d->pos) {
		rc = IDD_ENOMEM;
		goto out;
	}
	for (uint64_t k = 0; k <= nd; k++)
		d->pos[k] = UINT64_MAX;
	if ((rc = idd_outpart_open(&d->part, out, d->m->image_size, d->bs, d->err)))
		goto out;
	d->part_open = true;
	if ((rc = idd_outpart_resume(&d->part, d->m, on_valid, d, &d->st->bytes_resumed, d->err)))
		goto out;
	if (d->valid_oom) {
		rc = idd_fail_code(d->err, IDD_ENOMEM, "%s: out of memory listing resumed blocks", d->part.part);
		goto out;
	}
	if ((rc = plan_digests(d)))
		goto out;
	progress(d);
	struct blist local = {0}, fetch = {0}, repeat = {0};
	rc = sort_blocks(d, &local, &fetch, &repeat);
	if (!rc)
		rc = copy_local(d, &local, &fetch);
	if (!rc)
		rc = fetch_missing(d, &fetch);
	if (!rc)
		rc = copy_repeats(d, &repeat);
	free(local.v);
	free(fetch.v);
	free(repeat.v);
	if (!rc)
		rc = idd_outpart_finish(&d->part, o->force, d->err);
	if (rc)
		goto out;
	/* Register in the cache: failing to is worth a warning, not a failure. */
	char *abs = realpath(out, NULL);
	idd_error e2;
	if (!abs || idd_cache_register(d->cache, abs, d->m, &e2))
		idd_warnf(o->warn, o->ctx, "warning: cache: %s: could not register the image: %s",
		          o->cache_dir, abs ? e2.msg : strerror(errno));
	free(abs);
out:
	free(out);
	return rc;
}

int idd_deploy(const idd_deploy_opts *o, idd_deploy_stats *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	if (!o->source || !o->cache_dir || !o->image)
		return idd_fail(err, "deploy: SOURCE, cache directory and IMAGE are required");
	if (!idd_relpath_ok(o->image))
		return idd_fail_code(err, IDD_EPERM, "%s: refused: an image id must be a relative path "
		                     "inside the source (no '..', no absolute path)", o->image);
	struct deploy dd = {.o = o, .st = st, .err = err};
	struct deploy *d = &dd;
	atomic_init(&d->can_clone, true);
	int rc = run(d);
	if (d->ri) {
		idd_fetch_stats fs;
		idd_remote_index_fetch_stats(d->ri, &fs);
		idd_block_source_counters sc = {0}, kc = {0};
		idd_block_source_counters_get(d->remote_src, &sc);
		idd_block_source_counters_get(d->pack_src, &kc);
		st->requests = fs.requests + sc.requests + kc.requests;
		st->retries = fs.retries + sc.retries + kc.retries;
		/* what seeds looked up counts too */
		st->bytes_index = idd_remote_index_bytes(d->ri) +
		                  (d->pack_src ? idd_pack_source_index_bytes(d->pack_src) : 0);
	}
	if (d->part_open) {
		/* keep OUT.part only when a re-run can resume it: a damaged or
		 * refused source will not get better by itself */
		bool permanent = rc && (err->code == IDD_ECORRUPT || err->code == IDD_EPERM ||
		                        err->code == IDD_ENOENT);
		idd_outpart_close(&d->part, permanent);
	}
	idd_block_source_close(d->out_src);
	idd_block_source_close(d->peer_src);
	idd_block_source_close(d->pack_src);
	idd_block_source_close(d->remote_src);
	idd_block_source_close(d->seed_src);
	idd_block_source_close(d->cache_src);
	idd_cache_close(d->cache);
	idd_map_free(d->m);
	idd_remote_index_close(d->ri);
	free(d->plan);
	free(d->pos);
	free(d->valid);
	return rc ? (rc < 0 ? rc : IDD_ERR) : IDD_OK;
}
