/* similarity.c - exact pairwise similarity of every image in the index:
 * the counts come from the engine of simcount.c (docs/similarity.md); this
 * file keeps them in the index's similarity cache and updates that cache
 * when images are added or removed (only the added images' rows are
 * computed), and derives the metrics, the clustering order and the top seeds
 * from them. */
#include "base/util.h"
#include "base/error.h"
#include "index/indexfile.h"
#include "index/catalog.h"
#include "index/simcount.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char SIM_MAGIC[8] = {'I', 'D', 'D', '-', 'S', 'I', 'M', 0};
#define SIM_VERSION 2
#define SIM_FILE "similarity"
/* an update computes the rows of at most this share of the images (1/4);
 * beyond it a fresh computation costs about as much */
#define UPDATE_MAX_SHARE 4

uint64_t idd_similarity_shared(const idd_similarity *s, size_t a, size_t b)
{
	return sim_cell_get(s->counts, s->counts_wide, 2 * (a * s->n + b));
}

uint64_t idd_similarity_contained(const idd_similarity *s, size_t a, size_t b)
{
	return sim_cell_get(s->counts, s->counts_wide, 2 * (a * s->n + b) + 1);
}

static void set_pair(idd_similarity *s, size_t a, size_t b, uint64_t shared, uint64_t contained)
{
	sim_cell_set(s->counts, s->counts_wide, 2 * (a * s->n + b), shared);
	sim_cell_set(s->counts, s->counts_wide, 2 * (a * s->n + b) + 1, contained);
}

void idd_similarity_free(idd_similarity *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->ids && i < s->n; i++)
		free(s->ids[i]);
	free(s->ids);
	free(s->nonzero);
	free(s->distinct);
	free(s->counts);
	free(s);
}

/* 64-bit counts only when an image may hold 2^32 non-zero blocks or more */
static bool needs_wide(const idd_catalog *cat)
{
	for (size_t i = 0; i < cat->count; i++)
		if (cat->images[i].nblocks - IDD_MIN(cat->images[i].zero_blocks, cat->images[i].nblocks) >=
		    UINT32_MAX)
			return true;
	return false;
}

/* ids, per-image arrays; counts NULL (the caller fills them) */
static idd_similarity *sim_alloc(const idd_catalog *cat, idd_error *err)
{
	size_t n = cat->count;
	idd_similarity *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return NULL;
	s->n = n;
	s->counts_wide = needs_wide(cat);
	s->ids = idd_calloc(n + 1, sizeof *s->ids, err);
	s->nonzero = s->ids ? idd_calloc(n + 1, sizeof *s->nonzero, err) : NULL;
	s->distinct = s->nonzero ? idd_calloc(n + 1, sizeof *s->distinct, err) : NULL;
	bool ok = s->distinct;
	for (size_t i = 0; ok && i < n; i++)
		ok = (s->ids[i] = idd_strdup(cat->images[i].id, err));
	if (!ok) {
		idd_similarity_free(s);
		return NULL;
	}
	return s;
}

static int compute(const idd_similarity_opts *o, const char *index_dir, const idd_catalog *cat,
                   idd_similarity *res, idd_error *err)
{
	size_t n = cat->count;
	int threads = idd_threads_for_jobs(o->jobs);
	sim_matrix m;
	if (sim_matrix_init(&m, n, res->counts_wide, threads, err))
		return IDD_ERR;
	sim_count_opts co = {.index_dir = index_dir, .cat = cat, .threads = threads,
	                     .mem_budget = o->mem_budget, .tmp_dir = o->tmp_dir,
	                     .progress = o->progress, .ctx = o->ctx};
	sim_count *c;
	int rc = sim_count_start(&co, &c, err);
	if (rc) {
		sim_matrix_free(&m);
		return rc;
	}
	sim_sink sink = {sim_matrix_expand, &m};
	rc = sim_count_finish(c, &sink, err);
	if (!rc) {
		sim_matrix_finish(&m, sim_count_nonzero(c), sim_count_distinct(c));
		memcpy(res->nonzero, sim_count_nonzero(c), n * sizeof *res->nonzero);
		memcpy(res->distinct, sim_count_distinct(c), n * sizeof *res->distinct);
		res->counts = m.cells;
		m.cells = NULL;
		res->signatures = sim_count_signatures(c);
		res->records = sim_count_records(c);
		res->rows_computed = n;
	}
	sim_matrix_free(&m);
	sim_count_free(c);
	return rc;
}

/* ---- the cache (docs/formats.md, "Similarity cache") ---- */

static int cache_save(const char *index_dir, const idd_catalog *cat, const idd_similarity *s,
                      idd_error *err)
{
	idd_buf b = {0};
	size_t n = s->n;
	idd_buf_put_u32(&b, cat->block_size);
	idd_buf_put_u64(&b, n);
	idd_buf_put_u64(&b, s->signatures);
	idd_buf_put_u64(&b, s->records);
	for (size_t i = 0; i < n; i++) {
		idd_buf_put_str(&b, s->ids[i]);
		idd_buf_put(&b, cat->images[i].list_key.b, IDD_DIGEST_SIZE);
		idd_buf_put_varint(&b, s->nonzero[i]);
		idd_buf_put_varint(&b, s->distinct[i]);
	}
	for (size_t a = 0; a < n; a++)
		for (size_t c = a + 1; c < n; c++)
			idd_buf_put_varint(&b, idd_similarity_shared(s, a, c));
	for (size_t a = 0; a < n; a++)
		for (size_t c = 0; c < n; c++)
			if (c != a)
				idd_buf_put_varint(&b, idd_similarity_contained(s, a, c) - idd_similarity_shared(s, a, c));
	char *path = idd_path_join(index_dir, SIM_FILE, err);
	int rc = b.failed ? idd_fail(err, "out of memory caching the similarity")
	         : path ? idd_indexfile_write(path, SIM_MAGIC, SIM_VERSION, b.data, b.len, true, err)
	                : IDD_ERR;
	free(path);
	idd_buf_free(&b);
	return rc;
}

typedef struct cache_entry {
	char *id;
	idd_digest key;
	uint64_t nonzero, distinct;
} cache_entry;

/* Read the cache against the catalog.  IDD_OK: *out holds the counts of
 * every image the cache still describes (same id, same block list), and
 * (*added)[0..*nadded) lists the catalog images it does not; IDD_ENOENT:
 * absent, of another block size or format version, or too far behind to
 * be worth updating. */
static int cache_load(const char *index_dir, const idd_catalog *cat, uint64_t mem_budget,
                      idd_similarity **out, size_t **added, size_t *nadded, size_t *dropped,
                      idd_error *err)
{
	*out = NULL;
	*added = NULL;
	*nadded = *dropped = 0;
	char *path = idd_path_join(index_dir, SIM_FILE, err);
	if (!path)
		return IDD_ERR;
	void *p = NULL;
	size_t len;
	uint32_t version;
	int rc = idd_indexfile_read(path, SIM_MAGIC, SIM_VERSION, &p, &len, &version, err);
	if (rc) {
		free(path);
		return rc;
	}
	idd_reader r;
	idd_reader_init(&r, p, len);
	uint32_t bs = 0;
	uint64_t on = 0, sigs = 0, recs = 0;
	cache_entry *old = NULL;
	size_t *map = NULL, *add = NULL;
	idd_similarity *s = NULL;
	size_t n = cat->count, nold = 0;
	rc = IDD_ENOENT;
	if (version < SIM_VERSION) /* written by an earlier release: recomputed, no warning */
		goto out;
	bool ok = idd_get_u32(&r, &bs) && idd_get_u64(&r, &on) && idd_get_u64(&r, &sigs) &&
	          idd_get_u64(&r, &recs) && on <= idd_reader_left(&r) / (IDD_DIGEST_SIZE + 3);
	if (ok && !(old = idd_calloc((size_t)on + 1, sizeof *old, err))) {
		rc = IDD_ERR;
		goto out;
	}
	for (size_t i = 0; ok && i < on; i++, nold++)
		ok = idd_get_str(&r, &old[i].id, 4096) && idd_get_bytes(&r, old[i].key.b, IDD_DIGEST_SIZE) &&
		     idd_get_varint(&r, &old[i].nonzero) && idd_get_varint(&r, &old[i].distinct) &&
		     (i == 0 || strcmp(old[i - 1].id, old[i].id) < 0);
	if (!ok) {
		rc = idd_fail(err, "%s: corrupt similarity cache", path);
		goto out;
	}
	if (bs != cat->block_size)
		goto out;
	/* both lists are sorted by id: match them in one merge */
	map = idd_malloc((nold + 1) * sizeof *map, err);
	add = map ? idd_malloc((n + 1) * sizeof *add, err) : NULL;
	if (!add) {
		rc = IDD_ERR;
		goto out;
	}
	size_t i = 0, j = 0, kept = 0;
	while (i < nold || j < n) {
		int c = i == nold ? 1 : j == n ? -1 : strcmp(old[i].id, cat->images[j].id);
		if (c == 0 && !memcmp(old[i].key.b, cat->images[j].list_key.b, IDD_DIGEST_SIZE)) {
			map[i++] = j++;
			kept++;
		} else if (c == 0) { /* changed: its row is recomputed */
			map[i++] = SIZE_MAX;
			add[(*nadded)++] = j++;
		} else if (c < 0) {
			map[i++] = SIZE_MAX;
		} else {
			add[(*nadded)++] = j++;
		}
	}
	*dropped = nold - kept;
	/* an update reads every list once and holds the added images' keys */
	uint64_t add_keys = 0;
	for (size_t k = 0; k < *nadded; k++)
		add_keys += cat->images[add[k]].nblocks - IDD_MIN(cat->images[add[k]].zero_blocks,
		                                                 cat->images[add[k]].nblocks);
	uint64_t budget = mem_budget ? mem_budget : (512ull << 20);
	if (*nadded * UPDATE_MAX_SHARE > n || add_keys * 40 + (uint64_t)*nadded * n * 24 > budget)
		goto out;
	if (!(s = sim_alloc(cat, err))) {
		rc = IDD_ERR;
		goto out;
	}
	size_t cells;
	if (__builtin_mul_overflow(n, n, &cells) ||
	    !(s->counts = calloc(cells ? 2 * cells : 1, s->counts_wide ? 8 : 4))) {
		rc = idd_fail_code(err, IDD_ENOMEM, "out of memory for the %zu x %zu similarity matrix", n, n);
		goto out;
	}
	s->signatures = sigs;
	s->records = recs;
	for (size_t a = 0; a < nold; a++)
		if (map[a] != SIZE_MAX) {
			s->nonzero[map[a]] = old[a].nonzero;
			s->distinct[map[a]] = old[a].distinct;
			set_pair(s, map[a], map[a], old[a].distinct, old[a].nonzero);
		}
	for (size_t a = 0; ok && a < nold; a++)
		for (size_t c = a + 1; ok && c < nold; c++) {
			uint64_t v;
			ok = idd_get_varint(&r, &v);
			if (map[a] != SIZE_MAX && map[c] != SIZE_MAX) {
				sim_cell_set(s->counts, s->counts_wide, 2 * (map[a] * n + map[c]), v);
				sim_cell_set(s->counts, s->counts_wide, 2 * (map[c] * n + map[a]), v);
			}
		}
	for (size_t a = 0; ok && a < nold; a++)
		for (size_t c = 0; ok && c < nold; c++) {
			if (c == a)
				continue;
			uint64_t extra, v;
			ok = idd_get_varint(&r, &extra);
			if (ok && map[a] != SIZE_MAX && map[c] != SIZE_MAX) {
				ok = idd_add_ok(extra, idd_similarity_shared(s, map[a], map[c]), &v) &&
				     v <= old[a].nonzero;
				sim_cell_set(s->counts, s->counts_wide, 2 * (map[a] * n + map[c]) + 1, v);
			}
		}
	if (!ok || idd_reader_left(&r)) {
		rc = idd_fail(err, "%s: corrupt similarity cache", path);
		goto out;
	}
	s->from_cache = *nadded == 0 && *dropped == 0;
	*out = s;
	s = NULL;
	*added = add;
	add = NULL;
	rc = IDD_OK;
out:
	for (size_t k = 0; old && k < nold; k++)
		free(old[k].id);
	free(old);
	free(map);
	free(add);
	idd_similarity_free(s);
	free(p);
	free(path);
	if (rc)
		*nadded = *dropped = 0;
	return rc;
}

/* Compute the rows of the images added[0..k) (new or changed) into s. */
static int update_rows(const idd_similarity_opts *o, const char *index_dir, const idd_catalog *cat,
                       idd_similarity *s, const size_t *added, size_t k, idd_error *err)
{
	size_t n = cat->count;
	uint64_t *sh = idd_calloc(k * n + 1, sizeof *sh, err);
	uint64_t *cab = sh ? idd_calloc(k * n + 1, sizeof *cab, err) : NULL;
	uint64_t *cba = cab ? idd_calloc(k * n + 1, sizeof *cba, err) : NULL;
	int rc = cba ? sim_rows(index_dir, cat, added, k, idd_threads_for_jobs(o->jobs), sh, cab, cba, err)
	             : IDD_ERR;
	for (size_t j = 0; !rc && j < k; j++) {
		size_t a = added[j];
		for (size_t b = 0; b < n; b++) {
			size_t x = j * n + b;
			set_pair(s, a, b, sh[x], cab[x]);
			set_pair(s, b, a, sh[x], cba[x]);
		}
		s->distinct[a] = sh[j * n + a];
		s->nonzero[a] = cab[j * n + a];
	}
	free(sh);
	free(cab);
	free(cba);
	return rc;
}

/* One attempt over the catalog as it is now.  IDD_ENOENT: a block list
 * vanished under us (a concurrent scan collected it). */
static int compute_once(const idd_similarity_opts *o, const char *index_dir, idd_similarity **out,
                        idd_error *err)
{
	idd_catalog *cat = NULL;
	idd_similarity *res = NULL;
	size_t *added = NULL, nadded = 0, dropped = 0;
	int rc = idd_catalog_load(index_dir, &cat, err);
	if (rc == IDD_ENOENT)
		rc = IDD_ERR; /* no index at all: nothing to retry */
	if (rc)
		goto out;
	if (!o->no_cache) {
		idd_error e2;
		int crc = cache_load(index_dir, cat, o->mem_budget, &res, &added, &nadded, &dropped, &e2);
		if (crc == IDD_OK && res->from_cache)
			goto out;
		if (crc == IDD_OK) {
			res->rows_dropped = dropped;
			res->cache_updated = true;
			if (nadded && (rc = update_rows(o, index_dir, cat, res, added, nadded, err)))
				goto out;
			res->rows_computed = nadded;
			goto save;
		}
		if (crc != IDD_ENOENT && o->warn) /* damaged cache: say so, recompute */
			o->warn(o->ctx, e2.msg);
	}
	if (!(res = sim_alloc(cat, err))) {
		rc = IDD_ERR;
		goto out;
	}
	if ((rc = compute(o, index_dir, cat, res, err)))
		goto out;
save:;
	idd_error e3;
	if (cache_save(index_dir, cat, res, &e3) && o->warn) /* read-only index: still answer */
		o->warn(o->ctx, e3.msg);
out:
	if (rc) {
		idd_similarity_free(res);
		res = NULL;
	}
	*out = res;
	free(added);
	idd_catalog_free(cat);
	return rc;
}

int idd_similarity_compute(const idd_similarity_opts *o, idd_similarity **out, idd_error *err)
{
	char *index_dir = NULL;
	if (idd_index_path(o->repo, o->index_dir, &index_dir, err))
		return IDD_ERR;
	/* readers take no lock: a scan may replace the catalog and collect the
	 * lists of the one read; start over from the new catalog */
	int rc;
	for (int attempt = 0; (rc = compute_once(o, index_dir, out, err)) == IDD_ENOENT && attempt < 2;
	     attempt++)
		;
	free(index_dir);
	return rc;
}

double idd_similarity_value(const idd_similarity *s, idd_metric m, size_t a, size_t b)
{
	if (a == b)
		return 1.0;
	if (m == IDD_METRIC_CONTAINMENT) {
		uint64_t tot = s->nonzero[a];
		return tot ? (double)idd_similarity_contained(s, a, b) / (double)tot : 0.0;
	}
	uint64_t inter = idd_similarity_shared(s, a, b);
	uint64_t uni = s->distinct[a] + s->distinct[b] - inter;
	return uni ? (double)inter / (double)uni : 0.0;
}

/* ---- clustering: average linkage, nearest-neighbour chain, O(n^2) ---- */

typedef struct node {
	size_t left, right, minleaf;
} node;

int idd_similarity_cluster_order(const idd_similarity *s, idd_metric m, size_t *order, idd_error *err)
{
	size_t n = s->n;
	if (n <= 2) {
		for (size_t i = 0; i < n; i++)
			order[i] = i;
		return IDD_OK;
	}
	float *D = idd_malloc(n * n * sizeof *D, err);
	size_t *slot_node = idd_malloc(n * sizeof *slot_node, err);
	size_t *size = idd_malloc(n * sizeof *size, err);
	size_t *chain = idd_malloc(n * sizeof *chain, err);
	bool *active = idd_calloc(n, sizeof *active, err);
	node *nodes = idd_malloc((2 * n) * sizeof *nodes, err);
	size_t *stack = idd_malloc((2 * n) * sizeof *stack, err);
	int rc = D && slot_node && size && chain && active && nodes && stack ? IDD_OK : IDD_ERR;
	if (!rc) {
		for (size_t a = 0; a < n; a++) {
			for (size_t b = 0; b < n; b++) {
				double v = m == IDD_METRIC_CONTAINMENT
				           ? (idd_similarity_value(s, m, a, b) + idd_similarity_value(s, m, b, a)) / 2
				           : idd_similarity_value(s, m, a, b);
				D[a * n + b] = (float)(1.0 - v);
			}
			slot_node[a] = a;
			size[a] = 1;
			active[a] = true;
			nodes[a] = (node){.left = SIZE_MAX, .right = SIZE_MAX, .minleaf = a};
		}
		size_t nactive = n, len = 0, next = n;
		while (nactive > 1) {
			if (len == 0) {
				size_t f = 0;
				while (!active[f])
					f++;
				chain[len++] = f;
			}
			size_t a = chain[len - 1], prev = len >= 2 ? chain[len - 2] : SIZE_MAX;
			size_t best = prev;
			float bestd = prev != SIZE_MAX ? D[a * n + prev] : 2.0f;
			for (size_t k = 0; k < n; k++)
				if (active[k] && k != a && D[a * n + k] < bestd) {
					best = k;
					bestd = D[a * n + k];
				}
			if (best != prev || prev == SIZE_MAX) {
				chain[len++] = best;
				continue;
			}
			/* merge a and prev into slot lo */
			size_t lo = IDD_MIN(a, prev), hi = IDD_MAX(a, prev);
			size_t na = slot_node[lo], nb = slot_node[hi];
			if (nodes[nb].minleaf < nodes[na].minleaf) {
				size_t t = na;
				na = nb;
				nb = t;
			}
			nodes[next] = (node){.left = na, .right = nb, .minleaf = nodes[na].minleaf};
			for (size_t k = 0; k < n; k++) {
				if (!active[k] || k == lo || k == hi)
					continue;
				float d = (float)(((double)size[lo] * D[lo * n + k] + (double)size[hi] * D[hi * n + k]) /
				                  (double)(size[lo] + size[hi]));
				D[lo * n + k] = D[k * n + lo] = d;
			}
			size[lo] += size[hi];
			active[hi] = false;
			slot_node[lo] = next++;
			nactive--;
			len -= 2;
		}
		/* leaf order: depth-first, left (smaller first leaf) before right */
		size_t sp = 0, out = 0;
		stack[sp++] = next - 1;
		while (sp) {
			size_t x = stack[--sp];
			if (nodes[x].left == SIZE_MAX) {
				order[out++] = x;
				continue;
			}
			stack[sp++] = nodes[x].right;
			stack[sp++] = nodes[x].left;
		}
	}
	free(D);
	free(slot_node);
	free(size);
	free(chain);
	free(active);
	free(nodes);
	free(stack);
	return rc;
}

/* b is a better seed for a than c? */
static bool seed_better(const idd_similarity *s, size_t a, size_t b, size_t c)
{
	double cb = idd_similarity_value(s, IDD_METRIC_CONTAINMENT, a, b);
	double cc = idd_similarity_value(s, IDD_METRIC_CONTAINMENT, a, c);
	if (cb != cc)
		return cb > cc;
	double jb = idd_similarity_value(s, IDD_METRIC_JACCARD, a, b);
	double jc = idd_similarity_value(s, IDD_METRIC_JACCARD, a, c);
	if (jb != jc)
		return jb > jc;
	return strcmp(s->ids[b], s->ids[c]) < 0;
}

size_t idd_similarity_top(const idd_similarity *s, size_t a, size_t k, size_t *out)
{
	size_t got = 0;
	for (size_t b = 0; b < s->n && k; b++) {
		if (b == a)
			continue;
		if (got == k && !seed_better(s, a, b, out[got - 1]))
			continue;
		size_t pos = got < k ? got++ : k - 1;
		while (pos > 0 && seed_better(s, a, b, out[pos - 1])) {
			out[pos] = out[pos - 1];
			pos--;
		}
		out[pos] = b;
	}
	return got;
}

void idd_similar_free(idd_similar *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i].id);
	free(v);
}

int idd_image_top_similar(const char *index_dir, const char *id, size_t k, idd_similar **out,
                          size_t *n, idd_error *err)
{
	*out = NULL;
	*n = 0;
	idd_similarity_opts o = {.repo = ".", .index_dir = index_dir};
	idd_similarity *s;
	if (idd_similarity_compute(&o, &s, err))
		return IDD_ERR;
	size_t a = 0;
	while (a < s->n && strcmp(s->ids[a], id))
		a++;
	if (a == s->n) {
		idd_fail(err, "%s: no image '%s' in the index", index_dir, id);
		idd_similarity_free(s);
		return IDD_ENOENT;
	}
	size_t kk = IDD_MIN(k, s->n);
	size_t *top = idd_calloc(kk + 1, sizeof *top, err);
	idd_similar *v = top ? idd_calloc(kk + 1, sizeof *v, err) : NULL;
	int rc = v ? IDD_OK : IDD_ERR;
	size_t got = rc ? 0 : idd_similarity_top(s, a, kk, top);
	for (size_t i = 0; !rc && i < got; i++) {
		size_t b = top[i];
		v[i].containment = idd_similarity_value(s, IDD_METRIC_CONTAINMENT, a, b);
		v[i].jaccard = idd_similarity_value(s, IDD_METRIC_JACCARD, a, b);
		v[i].shared = idd_similarity_shared(s, a, b);
		if (!(v[i].id = idd_strdup(s->ids[b], err)))
			rc = IDD_ERR;
	}
	if (rc) {
		idd_similar_free(v, kk);
	} else {
		*out = v;
		*n = got;
	}
	free(top);
	idd_similarity_free(s);
	return rc;
}
