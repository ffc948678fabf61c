/* deploy.c - materialise an image from its block map: zero blocks become
 * holes, blocks the node already holds (an interrupted OUT, the cache,
 * seeds) are copied locally, each distinct missing block is fetched once
 * (peers, the pack, the image in SOURCE), and repeats inside the image are
 * copied from their first copy in OUT.  Every block is verified against its
 * digest before it is written.  How and why: docs/deploy.md.
 *
 * This file only orchestrates: the index comes from remote_index.c, the
 * plan (which block comes from where) and the fetch sources from plan.c,
 * the output file from outpart.c, blocks from the sources (source_*.c)
 * through fill.c. */
#include "node/cache.h"
#include "node/fill.h"
#include "node/outpart.h"
#include "node/plan.h"
#include "node/remote_index.h"
#include "node/source_cache.h"
#include "node/source_seed.h"
#include "index/indexfile.h"

#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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
	idd_block_source *cache_src, *seed_src, *out_src;
	idd_fetch_sources fetch;
	atomic_bool can_clone;
	idd_plan plan;
};

static void progress(struct deploy *d)
{
	if (!d->o->progress)
		return;
	idd_fetch_stats fs;
	idd_remote_index_fetch_stats(d->ri, &fs);
	idd_block_source_counters rc = {0};
	idd_block_source_counters_get(d->fetch.remote, &rc);
	d->st->requests = fs.requests + rc.requests;
	d->o->progress(d->o->node.ctx, d->st);
}

static void fill_progress(void *ctx, uint64_t written)
{
	struct deploy *d = ctx;
	uint64_t save = d->st->bytes_done;
	d->st->bytes_done += written;
	progress(d);
	d->st->bytes_done = save;
}

static void on_valid(void *ctx, uint64_t block, uint32_t ref)
{
	struct deploy *d = ctx;
	idd_plan_have(&d->plan, block, ref);
}

/* Keep open only the cache files this deploy copies from: the others are
 * free for gc to remove while it runs. */
static int release_cache(struct deploy *d)
{
	bool *needed = idd_calloc(d->cache->count + 1, sizeof *needed, d->err);
	if (!needed)
		return IDD_ENOMEM;
	for (uint64_t k = 1; k <= d->m->ndistinct; k++) {
		size_t entry;
		uint64_t block;
		if (d->plan.origin[k] == IDD_PLAN_LOCAL &&
		    idd_cache_find(d->cache, &d->m->digests[k - 1], &entry, &block))
			needed[entry] = true;
	}
	idd_cache_release(d->cache, needed);
	free(needed);
	return IDD_OK;
}

/* Digests no local source holds yet, for the seeds to look for. */
static int open_seeds(struct deploy *d)
{
	const idd_deploy_opts *o = d->o;
	if (!o->n_seeds)
		return IDD_OK;
	const unsigned char *origin = d->plan.origin;
	idd_digest_set want;
	int rc = idd_digest_set_init(&want, (size_t)idd_plan_count_fetch(&d->plan) + 16, true, d->err);
	for (uint64_t k = 1; !rc && k <= d->m->ndistinct; k++) {
		if (origin[k] != IDD_PLAN_FETCH)
			continue;
		bool added;
		if (idd_digest_set_add(&want, &d->m->digests[k - 1], &added, d->err) == (size_t)-1)
			rc = IDD_ENOMEM;
	}
	if (!rc)
		rc = idd_seed_source_open(o->seeds, o->n_seeds, d->ri, d->info, d->m, &want, o->node.warn, o->node.ctx,
		                          &d->st->seeds_mapped, &d->seed_src, d->err);
	idd_digest_set_free(&want);
	if (!rc)
		idd_plan_locate(&d->plan, d->seed_src);
	return rc;
}

static int run_fill(struct deploy *d, idd_block_chain *chain, idd_blist *l, uint64_t window,
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
static int copy_local(struct deploy *d, idd_blist *local, idd_blist *fetch)
{
	idd_block_chain chain;
	IDD_BLOCK_CHAIN_OF(&chain, d->cache_src, d->seed_src);
	idd_fill f;
	int rc = run_fill(d, &chain, local, IDD_PLAN_LOCAL_WINDOW_BYTES, d->o->jobs, &f);
	if (!rc) {
		idd_block_source_counters sc = {0};
		idd_block_source_counters_get(d->seed_src, &sc);
		d->st->bytes_from_cache += f.bytes_written;
		d->st->bytes_reflinked += f.bytes_cloned;
		d->st->bytes_seed = sc.blocks * d->bs;
		d->st->cache_damaged = idd_cache_damaged_count(d->cache);
		for (size_t i = 0; !rc && i < f.nfailed; i++)
			rc = idd_blist_push(fetch, f.failed[i], d->err);
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

static int fetch_missing(struct deploy *d, idd_blist *fetch)
{
	if (!fetch->n)
		return IDD_OK;
	char *dir = idd_strdup(d->part.part, d->err);
	if (!dir)
		return IDD_ENOMEM;
	idd_fetch_sources_opts fo = {.peers = d->o->node.peers, .n_peers = d->o->node.n_peers,
	                             .no_pack = d->o->node.no_pack, .connections = d->o->node.connections,
	                             .timeout_s = d->o->node.timeout_s, .tmp_dir = dirname(dir),
	                             .warn = d->o->node.warn, .ctx = d->o->node.ctx};
	int rc = idd_fetch_sources_open(&d->fetch, d->ri, d->info, d->m, &fo, d->err);
	free(dir);
	if (rc)
		return rc;
	d->st->bytes_index += d->fetch.index_bytes;
	idd_block_chain chain;
	idd_fetch_sources_chain(&d->fetch, &chain);
	idd_fill f;
	rc = run_fill(d, &chain, fetch, IDD_PLAN_FETCH_WINDOW_BYTES, 1, &f);
	idd_block_source_counters pc = {0};
	idd_block_source_counters_get(d->fetch.peer, &pc);
	d->st->bytes_fetched = idd_fetch_sources_bytes(&d->fetch);
	d->st->bytes_from_peers = pc.bytes;
	if (!rc && f.nfailed) {
		uint64_t b = f.failed[0];
		if (f.failed_status == IDD_ECORRUPT)
			rc = idd_fail_code(d->err, IDD_ECORRUPT, "%s: block at offset %llu fetched from %s does "
			                   "not match its digest (the source is damaged or changed since it was "
			                   "indexed)", d->info->id, (unsigned long long)(b * d->bs),
			                   d->fetch.remote->name);
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
static int copy_repeats(struct deploy *d, idd_blist *repeat)
{
	if (!repeat->n)
		return IDD_OK;
	int rc = idd_output_source_open(&d->part, d->m, d->plan.pos, &d->out_src, d->err);
	if (rc)
		return rc;
	idd_block_chain chain;
	IDD_BLOCK_CHAIN_OF(&chain, d->out_src);
	idd_fill f;
	rc = run_fill(d, &chain, repeat, IDD_PLAN_LOCAL_WINDOW_BYTES, d->o->jobs, &f);
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
	if (idd_mkdir_p(o->node.cache_dir, d->err))
		return IDD_ERR;
	*out = o->out ? idd_strdup(o->out, d->err) : idd_cache_default_out(o->node.cache_dir, o->image, d->err);
	if (!*out)
		return IDD_ENOMEM;
	snprintf(d->st->out_path, sizeof d->st->out_path, "%s", *out);
	idd_error e2;
	if (!o->out && idd_cache_migrate_name(o->node.cache_dir, d->ri, o->image, d->m, o->node.warn,
	                                      o->node.ctx, &e2))
		idd_warnf(o->node.warn, o->node.ctx, "warning: cache: %s", e2.msg);
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
	idd_fetch_opts fo = {.connections = o->node.connections, .warn = o->node.warn, .ctx = o->node.ctx,
	                     .timeout_s = o->node.timeout_s};
	char *out = NULL;
	int rc = idd_remote_index_open(o->node.source, o->node.index, &fo, &d->ri, d->err);
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
	if ((rc = idd_cache_open(o->node.cache_dir, o->node.warn, o->node.ctx, &d->cache, d->err)) ||
	    (rc = idd_cache_prepare(d->cache, d->bs, d->err)) ||
	    (rc = idd_cache_source_open(d->cache, d->bs, o->node.warn, o->node.ctx, &d->cache_src, d->err)))
		goto out;
	if ((rc = idd_plan_init(&d->plan, d->m, d->err)))
		goto out;
	if ((rc = idd_outpart_open(&d->part, out, d->m->image_size, d->bs, d->err)))
		goto out;
	d->part_open = true;
	if ((rc = idd_outpart_resume(&d->part, d->m, on_valid, d, &d->st->bytes_resumed, d->err)))
		goto out;
	if (d->plan.valid_oom) {
		rc = idd_fail_code(d->err, IDD_ENOMEM, "%s: out of memory listing resumed blocks", d->part.part);
		goto out;
	}
	idd_plan_locate(&d->plan, d->cache_src);
	if ((rc = release_cache(d)))
		goto out;
	if ((rc = open_seeds(d)))
		goto out;
	progress(d);
	idd_blist local = {0}, fetch = {0}, repeat = {0};
	idd_plan_settled settled;
	rc = idd_plan_sort(&d->plan, &local, &fetch, &repeat, &settled, d->err);
	d->st->bytes_zero += settled.bytes_zero;
	d->st->bytes_from_cache += settled.bytes_valid;
	d->st->bytes_done += settled.bytes_zero + settled.bytes_valid;
	if (!rc)
		rc = copy_local(d, &local, &fetch);
	if (!rc)
		rc = fetch_missing(d, &fetch);
	if (!rc)
		rc = copy_repeats(d, &repeat);
	idd_blist_free(&local);
	idd_blist_free(&fetch);
	idd_blist_free(&repeat);
	if (!rc)
		rc = idd_outpart_finish(&d->part, o->force, d->err);
	if (rc)
		goto out;
	/* Register in the cache: failing to is worth a warning, not a failure. */
	char *abs = realpath(out, NULL);
	idd_error e2;
	if (!abs || idd_cache_register(d->cache, abs, d->m, &e2))
		idd_warnf(o->node.warn, o->node.ctx, "warning: cache: %s: could not register the image: %s",
		          o->node.cache_dir, abs ? e2.msg : strerror(errno));
	free(abs);
out:
	free(out);
	return rc;
}

int idd_deploy(const idd_deploy_opts *o, idd_deploy_stats *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	if (!o->node.source || !o->node.cache_dir || !o->image)
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
		idd_block_source_counters_get(d->fetch.remote, &sc);
		idd_block_source_counters_get(d->fetch.pack, &kc);
		st->requests = fs.requests + sc.requests + kc.requests;
		st->retries = fs.retries + sc.retries + kc.retries;
		/* what seeds looked up counts too */
		st->bytes_index = idd_remote_index_bytes(d->ri) +
		                  d->fetch.index_bytes;
	}
	if (d->part_open) {
		/* keep OUT.part only when a re-run can resume it: a damaged or
		 * refused source will not get better by itself */
		bool permanent = rc && (err->code == IDD_ECORRUPT || err->code == IDD_EPERM ||
		                        err->code == IDD_ENOENT);
		idd_outpart_close(&d->part, permanent);
	}
	idd_block_source_close(d->out_src);
	idd_fetch_sources_close(&d->fetch);
	idd_block_source_close(d->seed_src);
	idd_block_source_close(d->cache_src);
	idd_cache_close(d->cache);
	idd_map_free(d->m);
	idd_remote_index_close(d->ri);
	idd_plan_free(&d->plan);
	return rc ? (rc < 0 ? rc : IDD_ERR) : IDD_OK;
}
