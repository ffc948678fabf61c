/* estimate.c - what this node still lacks of an image, for a scheduler:
 * the bytes a deploy would fetch, found by running the deploy's own plan
 * (plan.c) against the node cache and pricing its fetches with the sources
 * in estimate mode, in the deploy's windows; and the bytes a boot would
 * fetch: the blocks of the boot profile serve would prefetch (the image's
 * own published profile, else the one overlapping it most) that the node
 * lacks, priced the same way.  Only index data is read from SOURCE (the
 * image's entry, its map, its pack view, the published profiles); no block
 * is transferred and nothing in the cache is written.  docs/scheduler.md. */
#include "imgdedup.h"
#include "node/cache.h"
#include "node/plan.h"
#include "node/profile.h"
#include "node/remote_index.h"
#include "node/source_cache.h"
#include "base/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

struct estimator {
	const idd_estimate_opts *o;
	idd_remote_index *ri;
	idd_cache *cache;
	idd_block_source *cache_src;
	uint32_t prepared_bs; /* block size the cache lookup was built for, 0: none */
};

static int prepare_cache(struct estimator *e, uint32_t bs, idd_error *err)
{
	if (!e->cache || e->prepared_bs == bs)
		return IDD_OK;
	idd_block_source_close(e->cache_src);
	e->cache_src = NULL;
	int rc = idd_cache_prepare(e->cache, bs, err);
	if (!rc)
		rc = idd_cache_source_open(e->cache, bs, e->o->node.warn, e->o->node.ctx, &e->cache_src, err);
	if (!rc)
		e->prepared_bs = bs;
	return rc;
}

/* Ask the chain for the fetch list in the windows deploy's fill uses: the
 * pack source's frames and frame cache then see the same calls. */
static int price_fetches(const idd_map *m, const idd_blist *fetch, idd_block_chain *chain,
                         idd_error *err)
{
	uint32_t bs = m->block_size;
	size_t wb = (size_t)IDD_MAX(IDD_PLAN_FETCH_WINDOW_BYTES / bs, 1);
	idd_block_req *reqs = idd_calloc(IDD_MIN(wb, IDD_MAX(fetch->n, 1)), sizeof *reqs, err);
	if (!reqs)
		return IDD_ENOMEM;
	int rc = IDD_OK;
	for (size_t first = 0; !rc && first < fetch->n; first += wb) {
		size_t n = IDD_MIN(wb, fetch->n - first);
		for (size_t i = 0; i < n; i++) {
			uint64_t b = fetch->v[first + i];
			idd_block_req *q = &reqs[i];
			memset(q, 0, sizeof *q);
			q->digest = m->digests[idd_map_ref(m, b) - 1];
			q->block = b;
			q->len = (uint32_t)IDD_MIN((uint64_t)bs, m->image_size - b * bs);
			q->origin_fd = -1;
		}
		rc = idd_block_chain_read(chain, reqs, n, err);
		for (size_t i = 0; !rc && i < n; i++)
			if (reqs[i].status != IDD_OK) /* the image's source prices every block */
				rc = idd_fail(err, "estimate: internal error: block %llu not priced",
				              (unsigned long long)reqs[i].block);
	}
	free(reqs);
	return rc;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* The profile's blocks the plan fetches (the others are zero, or local),
 * priced by sources of their own: a boot starts with no frame cached. */
static int estimate_boot(struct estimator *e, const char *id, const idd_image_info *info,
                         const idd_map *m, const idd_plan *plan, idd_image_estimate *out,
                         idd_error *err)
{
	uint64_t *blocks = NULL;
	size_t n = 0;
	char *from = NULL;
	idd_error e2;
	int rc = idd_profile_choose(e->ri, id, m, IDD_PROFILE_CANDIDATES, &blocks, &n, &from, &e2);
	if (rc == IDD_ENOMEM) {
		*err = e2;
		return rc;
	}
	if (rc) /* unreadable profiles: the boot's cost is unknown, not an error */
		idd_warnf(e->o->node.warn, e->o->node.ctx, "warning: %s: boot profiles: %s", id, e2.msg);
	out->has_boot = !rc && from;
	free(from);
	if (!out->has_boot) {
		free(blocks);
		return IDD_OK;
	}
	idd_blist fetch = {0};
	rc = IDD_OK;
	for (size_t i = 0; !rc && i < n; i++) {
		uint32_t ref = idd_map_ref(m, blocks[i]);
		if (ref && plan->origin[ref] == IDD_PLAN_FETCH)
			rc = idd_blist_push(&fetch, blocks[i], err);
	}
	free(blocks);
	/* in block order, as the windows of a fetch are */
	if (!rc && fetch.n)
		qsort(fetch.v, fetch.n, sizeof *fetch.v, cmp_u64);
	out->boot_bytes_missing = 0;
	if (!rc && fetch.n) {
		idd_fetch_sources fs = {0};
		idd_fetch_sources_opts fo = {.no_pack = e->o->node.no_pack, .estimate = true,
		                             .warn = e->o->node.warn, .ctx = e->o->node.ctx};
		rc = idd_fetch_sources_open(&fs, e->ri, info, m, &fo, err);
		idd_block_chain chain;
		if (!rc) {
			idd_fetch_sources_chain(&fs, &chain);
			rc = price_fetches(m, &fetch, &chain, err);
		}
		if (!rc)
			out->boot_bytes_missing = idd_fetch_sources_bytes(&fs);
		idd_fetch_sources_close(&fs);
	}
	idd_blist_free(&fetch);
	return rc;
}

static int estimate_one(struct estimator *e, const char *id, idd_image_estimate *out, idd_error *err)
{
	const idd_image_info *info;
	idd_map *m = NULL;
	int rc = idd_remote_index_image(e->ri, id, &info, err);
	if (!rc)
		rc = idd_remote_index_map(e->ri, info, &m, err);
	if (!rc)
		rc = prepare_cache(e, m->block_size, err);
	if (rc) {
		idd_map_free(m);
		return rc;
	}
	idd_plan plan;
	idd_blist local = {0}, fetch = {0};
	idd_plan_settled settled;
	idd_fetch_sources fs = {0};
	rc = idd_plan_init(&plan, m, err);
	if (!rc) {
		idd_plan_locate(&plan, e->cache_src);
		rc = idd_plan_sort(&plan, &local, &fetch, NULL, &settled, err);
	}
	out->bytes_total = m->image_size;
	out->bytes_zero = settled.bytes_zero;
	if (!rc && fetch.n) {
		idd_fetch_sources_opts fo = {.no_pack = e->o->node.no_pack, .estimate = true,
		                             .warn = e->o->node.warn, .ctx = e->o->node.ctx};
		rc = idd_fetch_sources_open(&fs, e->ri, info, m, &fo, err);
		idd_block_chain chain;
		if (!rc) {
			idd_fetch_sources_chain(&fs, &chain);
			rc = price_fetches(m, &fetch, &chain, err);
		}
		if (!rc) {
			out->bytes_missing = idd_fetch_sources_bytes(&fs);
			out->from_pack = fs.pack != NULL;
		}
	}
	if (!rc)
		rc = estimate_boot(e, id, info, m, &plan, out, err);
	if (!rc && e->o->bandwidth) {
		out->has_seconds = true;
		out->seconds = (double)out->bytes_missing / (double)e->o->bandwidth;
	}
	idd_fetch_sources_close(&fs);
	idd_blist_free(&local);
	idd_blist_free(&fetch);
	idd_plan_free(&plan);
	idd_map_free(m);
	return rc;
}

int idd_cache_estimate(const idd_estimate_opts *o, idd_image_estimate **out, idd_error *err)
{
	*out = NULL;
	if (!o->node.source || !o->node.cache_dir || !o->n_images)
		return idd_fail_code(err, IDD_EPERM, "estimate: SOURCE, cache directory and IMAGE are required");
	for (size_t i = 0; i < o->n_images; i++)
		if (!idd_relpath_ok(o->images[i]))
			return idd_fail_code(err, IDD_EPERM, "%s: refused: an image id must be a relative path "
			                     "inside the source (no '..', no absolute path)", o->images[i]);
	idd_image_estimate *v = idd_calloc(o->n_images, sizeof *v, err);
	if (!v)
		return IDD_ENOMEM;
	struct estimator e = {.o = o};
	idd_fetch_opts fo = {.connections = o->node.connections, .warn = o->node.warn, .ctx = o->node.ctx,
	                     .timeout_s = o->node.timeout_s};
	int rc = idd_remote_index_open(o->node.source, o->node.index, &fo, &e.ri, err);
	/* no cache directory yet: nothing is here (and none is created) */
	struct stat st;
	if (!rc && stat(o->node.cache_dir, &st) == 0)
		rc = idd_cache_open(o->node.cache_dir, o->node.warn, o->node.ctx, &e.cache, err);
	else if (!rc && errno != ENOENT)
		rc = idd_fail_errno(err, o->node.cache_dir, "cannot open cache directory");
	for (size_t i = 0; !rc && i < o->n_images; i++) {
		v[i].image = o->images[i];
		rc = estimate_one(&e, o->images[i], &v[i], err);
	}
	idd_block_source_close(e.cache_src);
	idd_cache_close(e.cache);
	idd_remote_index_close(e.ri);
	if (rc) {
		free(v);
		return rc < 0 ? rc : IDD_ERR;
	}
	*out = v;
	return IDD_OK;
}

void idd_cache_estimate_free(idd_image_estimate *v)
{
	free(v);
}

/* ---- the estimates as JSON (cache estimate --json, serve's /estimate) ---- */

static void json_str(idd_buf *b, const char *s)
{
	idd_buf_put(b, "\"", 1);
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		char esc[8];
		switch (*c) {
		case '"': idd_buf_put(b, "\\\"", 2); break;
		case '\\': idd_buf_put(b, "\\\\", 2); break;
		case '\n': idd_buf_put(b, "\\n", 2); break;
		case '\t': idd_buf_put(b, "\\t", 2); break;
		case '\r': idd_buf_put(b, "\\r", 2); break;
		default:
			if (*c < 0x20) {
				snprintf(esc, sizeof esc, "\\u%04x", *c);
				idd_buf_put(b, esc, 6);
			} else {
				idd_buf_put(b, c, 1);
			}
		}
	}
	idd_buf_put(b, "\"", 1);
}

static void json_key_u64(idd_buf *b, const char *k, uint64_t v)
{
	char num[48];
	int n = snprintf(num, sizeof num, ",\"%s\":%" PRIu64, k, v);
	idd_buf_put(b, num, (size_t)n);
}

int idd_cache_estimate_json(const idd_image_estimate *v, size_t n, char **text, size_t *len,
                            idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put(&b, "{\"images\":[", 11);
	for (size_t i = 0; i < n; i++) {
		idd_buf_put(&b, i ? ",{\"image\":" : "{\"image\":", i ? 10 : 9);
		json_str(&b, v[i].image);
		json_key_u64(&b, "bytes_missing", v[i].bytes_missing);
		if (v[i].has_boot)
			json_key_u64(&b, "boot_bytes_missing", v[i].boot_bytes_missing);
		else
			idd_buf_put(&b, ",\"boot_bytes_missing\":null", 26);
		char num[64];
		int k = v[i].has_seconds ? snprintf(num, sizeof num, ",\"seconds\":%.6f", v[i].seconds)
		                         : snprintf(num, sizeof num, ",\"seconds\":null");
		idd_buf_put(&b, num, (size_t)k);
		json_key_u64(&b, "bytes_total", v[i].bytes_total);
		json_key_u64(&b, "bytes_zero", v[i].bytes_zero);
		k = snprintf(num, sizeof num, ",\"from_pack\":%s}", v[i].from_pack ? "true" : "false");
		idd_buf_put(&b, num, (size_t)k);
	}
	idd_buf_put(&b, "]}\n", 4); /* with the NUL, left out of *len */
	if (b.failed) {
		idd_buf_free(&b);
		return idd_fail_code(err, IDD_ENOMEM, "estimate: out of memory");
	}
	*text = (char *)b.data;
	*len = b.len - 1;
	return IDD_OK;
}
