/* simtop.c - each image's K best cache seeds without the n x n matrix
 * (docs/similarity.md, "--top K").
 *
 *  1. Candidates from a consistent sample of the digests (FracMinHash): a
 *     digest is sampled when its mixed key falls below 2^64 / s, the same
 *     digests in every image, so an image's sample shared with another's is
 *     a sample of what they share.  For image a, every image b scores the
 *     number of a's sampled digests it holds (an estimate of s x shared);
 *     a digest in more than half the images is counted through the few
 *     images without it.  The C best scores are a's candidates.
 *  2. Exact counts for those pairs only, by the engine of simcount.c: each
 *     distinct signature adds to (a, b) when both are in it and b is one of
 *     a's candidates.  Every reported containment and jaccard is exact.
 *  With n - 1 <= C every pair is a candidate and the answer is exact. */
#include "base/util.h"
#include "base/error.h"
#include "index/catalog.h"
#include "index/simcount.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* sampling: aim at this many sampled digests per image on average, with at
 * most MAX_SAMPLES in memory (16 bytes each, twice while sorted) */
#define SAMPLES_PER_IMAGE 256
#define MAX_SAMPLES (1ull << 25)

void idd_top_seeds_free(idd_top_seeds *t)
{
	if (!t)
		return;
	for (size_t i = 0; t->ids && i < t->n; i++)
		free(t->ids[i]);
	free(t->ids);
	free(t->nonzero);
	free(t->distinct);
	free(t->count);
	free(t->seeds);
	free(t);
}

/* ---- candidates ---- */

typedef struct cand_job {
	size_t n, c;
	/* sampled digests: images holding each, digests of each image */
	size_t *post_off;
	uint32_t *post_img;
	bool *frequent;      /* held by more than half the images: its complement is listed */
	size_t *comp_off;
	uint32_t *comp_img;
	size_t *img_off;
	uint32_t *img_key;
	/* out: n x c */
	uint32_t *cand, *ccount;
	pthread_mutex_t mu;
	size_t next;
	bool failed;
} cand_job;

typedef struct scored {
	int64_t score;
	uint32_t image;
} scored;

/* a before b: higher score, then lower index */
static bool scored_before(scored a, scored b)
{
	return a.score != b.score ? a.score > b.score : a.image < b.image;
}

static void cand_worker(void *arg, int tid)
{
	(void)tid;
	cand_job *j = arg;
	size_t n = j->n, c = j->c;
	int32_t *score = malloc(n * sizeof *score);
	uint32_t *stamp = calloc(n, sizeof *stamp), *touched = malloc(n * sizeof *touched);
	scored *heap = malloc((c + 1) * sizeof *heap);
	if (!score || !stamp || !touched || !heap) {
		pthread_mutex_lock(&j->mu);
		j->failed = true;
		pthread_mutex_unlock(&j->mu);
		goto out;
	}
	for (;;) {
		pthread_mutex_lock(&j->mu);
		size_t a = j->next++;
		bool stop = j->failed || a >= n;
		pthread_mutex_unlock(&j->mu);
		if (stop)
			break;
		uint32_t mark = (uint32_t)a + 1;
		size_t nt = 0;
		for (size_t q = j->img_off[a]; q < j->img_off[a + 1]; q++) {
			size_t d = j->img_key[q];
			bool freq = j->frequent[d];
			const uint32_t *v = freq ? j->comp_img + j->comp_off[d] : j->post_img + j->post_off[d];
			size_t len = freq ? j->comp_off[d + 1] - j->comp_off[d] : j->post_off[d + 1] - j->post_off[d];
			/* a frequent digest raises every image but those without it:
			 * they go down instead, against a common base */
			int32_t inc = freq ? -1 : 1;
			for (size_t x = 0; x < len; x++) {
				uint32_t b = v[x];
				if (stamp[b] != mark) {
					stamp[b] = mark;
					score[b] = 0;
					touched[nt++] = b;
				}
				score[b] += inc;
			}
		}
		/* the c best among those above the base: a min-heap on the order */
		size_t hn = 0;
		for (size_t x = 0; x < nt; x++) {
			uint32_t b = touched[x];
			if (b == a || score[b] <= 0)
				continue;
			scored s = {score[b], b};
			if (hn == c && !scored_before(s, heap[0]))
				continue;
			if (hn == c) { /* replace the worst (the root), sift down */
				size_t i = 0;
				for (;;) {
					size_t l = 2 * i + 1, r = l + 1, w = l;
					if (l >= hn)
						break;
					if (r < hn && scored_before(heap[l], heap[r]))
						w = r;
					if (!scored_before(s, heap[w]))
						break;
					heap[i] = heap[w];
					i = w;
				}
				heap[i] = s;
			} else { /* sift up */
				size_t i = hn++;
				while (i && scored_before(heap[(i - 1) / 2], s)) {
					heap[i] = heap[(i - 1) / 2];
					i = (i - 1) / 2;
				}
				heap[i] = s;
			}
		}
		uint32_t *out = j->cand + a * c;
		size_t got = 0;
		for (size_t x = 0; x < hn; x++)
			out[got++] = heap[x].image;
		/* fewer than c above the base: images at the base, lowest index
		 * first (held every frequent sampled digest, nothing else sampled) */
		for (size_t b = 0; got < c && b < n; b++) {
			if (b == a || (stamp[b] == mark && score[b] != 0))
				continue;
			out[got++] = (uint32_t)b;
		}
		j->ccount[a] = (uint32_t)got;
	}
out:
	free(score);
	free(stamp);
	free(touched);
	free(heap);
}

static int make_candidates(const sim_count *cnt, size_t n, size_t c, int threads, uint32_t *cand,
                           uint32_t *ccount, idd_error *err)
{
	size_t ns;
	const sim_sample *smp = sim_count_samples(cnt, &ns);
	cand_job j = {.n = n, .c = c, .cand = cand, .ccount = ccount};
	sim_sample *s = idd_malloc((ns + 1) * sizeof *s, err);
	sim_sample *tmp = s ? idd_malloc((ns + 1) * sizeof *tmp, err) : NULL;
	int rc = tmp ? IDD_OK : IDD_ERR;
	size_t nd = 0;
	if (!rc) {
		memcpy(s, smp, ns * sizeof *s);
		sim_sort_samples(s, tmp, ns);
		for (size_t i = 0; i < ns; i++)
			nd += i == 0 || s[i].key != s[i - 1].key;
	}
	free(tmp);
	j.post_off = rc ? NULL : idd_malloc((nd + 2) * sizeof *j.post_off, err);
	j.post_img = j.post_off ? idd_malloc((ns + 1) * sizeof *j.post_img, err) : NULL;
	j.frequent = j.post_img ? idd_calloc(nd + 1, sizeof *j.frequent, err) : NULL;
	j.comp_off = j.frequent ? idd_malloc((nd + 2) * sizeof *j.comp_off, err) : NULL;
	j.img_off = j.comp_off ? idd_calloc(n + 2, sizeof *j.img_off, err) : NULL;
	j.img_key = j.img_off ? idd_malloc((ns + 1) * sizeof *j.img_key, err) : NULL;
	if (!j.img_key)
		rc = IDD_ERR;
	size_t d = 0, ncomp = 0;
	for (size_t i = 0; !rc && i < ns; i++) {
		if (i && s[i].key != s[i - 1].key)
			d++;
		if (i == 0 || s[i].key != s[i - 1].key)
			j.post_off[d] = i;
		j.post_img[i] = s[i].image;
		j.img_off[s[i].image + 1]++;
	}
	free(s);
	if (!rc) {
		j.post_off[nd] = ns;
		for (size_t x = 0; x < nd; x++) {
			size_t df = j.post_off[x + 1] - j.post_off[x];
			j.frequent[x] = 2 * df > n;
			j.comp_off[x] = ncomp;
			if (j.frequent[x])
				ncomp += n - df;
		}
		j.comp_off[nd] = ncomp;
		if (!(j.comp_img = idd_malloc((ncomp + 1) * sizeof *j.comp_img, err)))
			rc = IDD_ERR;
	}
	if (!rc) {
		/* complements: the images a frequent digest's posting list lacks */
		bool *in = idd_calloc(n + 1, sizeof *in, err);
		if (!in)
			rc = IDD_ERR;
		for (size_t x = 0; !rc && x < nd; x++) {
			if (!j.frequent[x])
				continue;
			for (size_t q = j.post_off[x]; q < j.post_off[x + 1]; q++)
				in[j.post_img[q]] = true;
			size_t o = j.comp_off[x];
			for (size_t b = 0; b < n; b++)
				if (!in[b])
					j.comp_img[o++] = (uint32_t)b;
			for (size_t q = j.post_off[x]; q < j.post_off[x + 1]; q++)
				in[j.post_img[q]] = false;
		}
		free(in);
		/* each image's sampled digests */
		for (size_t a = 0; a < n; a++)
			j.img_off[a + 1] += j.img_off[a];
		size_t *fill = rc ? NULL : idd_malloc((n + 1) * sizeof *fill, err);
		if (!fill)
			rc = IDD_ERR;
		else {
			memcpy(fill, j.img_off, (n + 1) * sizeof *fill);
			for (size_t x = 0; x < nd; x++)
				for (size_t q = j.post_off[x]; q < j.post_off[x + 1]; q++)
					j.img_key[fill[j.post_img[q]]++] = (uint32_t)x;
			free(fill);
		}
	}
	if (!rc && nd >= UINT32_MAX)
		rc = idd_fail(err, "too many sampled digests");
	if (!rc) {
		pthread_mutex_init(&j.mu, NULL);
		sim_run_threads(threads, cand_worker, &j);
		pthread_mutex_destroy(&j.mu);
		if (j.failed)
			rc = idd_fail_code(err, IDD_ENOMEM, "out of memory choosing candidates");
	}
	free(j.post_off);
	free(j.post_img);
	free(j.frequent);
	free(j.comp_off);
	free(j.comp_img);
	free(j.img_off);
	free(j.img_key);
	return rc;
}

/* ---- exact counts of the candidate pairs ---- */

typedef struct pair_sink {
	size_t n, c;
	const uint32_t *cand, *ccount;
	uint64_t *shared, *contained; /* n x c, next to cand */
	uint32_t *stamp[IDD_MAX_THREADS];
	uint32_t stamp_now[IDD_MAX_THREADS];
} pair_sink;

static void pair_expand(void *ctx, const sim_sigtab *t, int tid, int nt)
{
	pair_sink *p = ctx;
	uint32_t *st = p->stamp[tid];
	sim_sig s;
	for (size_t pos = 0; sim_sigtab_next(t, &pos, &s);) {
		uint32_t sv = ++p->stamp_now[tid];
		if (!sv) {
			memset(st, 0, p->n * sizeof *st);
			sv = p->stamp_now[tid] = 1;
		}
		for (uint32_t x = 0; x < s.len; x++)
			st[s.pairs[2 * x]] = sv;
		for (uint32_t x = 0; x < s.len; x++) {
			size_t a = s.pairs[2 * x];
			if ((int)(a % (size_t)nt) != tid)
				continue;
			uint64_t wa = s.weight * s.pairs[2 * x + 1];
			const uint32_t *cd = p->cand + a * p->c;
			for (uint32_t q = 0; q < p->ccount[a]; q++)
				if (st[cd[q]] == sv) {
					p->shared[a * p->c + q] += s.weight;
					p->contained[a * p->c + q] += wa;
				}
		}
	}
}

/* ---- the whole ---- */

/* the order of idd_similarity_top(): containment, jaccard, id */
static int cmp_seed(const void *x, const void *y, void *ctx)
{
	const idd_top_seeds *sort_ctx = ctx;
	const idd_seed *a = x, *b = y;
	if (a->containment != b->containment)
		return a->containment > b->containment ? -1 : 1;
	if (a->jaccard != b->jaccard)
		return a->jaccard > b->jaccard ? -1 : 1;
	return strcmp(sort_ctx->ids[a->image], sort_ctx->ids[b->image]);
}

static int top_once(const idd_similarity_opts *o, const char *index_dir, size_t k,
                    idd_top_seeds **out, idd_error *err)
{
	idd_catalog *cat = NULL;
	idd_top_seeds *res = NULL;
	sim_count *cnt = NULL;
	uint32_t *cand = NULL, *ccount = NULL;
	pair_sink ps = {0};
	int rc = idd_catalog_load(index_dir, &cat, err);
	if (rc == IDD_ENOENT)
		rc = IDD_ERR;
	if (rc)
		goto out;
	size_t n = cat->count;
	int threads = idd_threads_for_jobs(o->jobs);
	size_t c = o->top_candidates ? o->top_candidates : IDD_MAX(2 * k, k + 16);
	bool every_pair = n <= c + 1;
	if (every_pair)
		c = n ? n - 1 : 0;
	uint64_t records = 0;
	for (size_t i = 0; i < n; i++)
		records += IDD_MIN(cat->images[i].distinct_blocks,
		                   cat->images[i].nblocks - IDD_MIN(cat->images[i].zero_blocks, cat->images[i].nblocks));
	uint64_t rate = 1;
	if (!every_pair) {
		if (o->top_sample_rate)
			rate = o->top_sample_rate;
		else {
			while (rate < (1u << 20) && records / n / (rate * 2) >= SAMPLES_PER_IMAGE)
				rate *= 2;
			while (rate < (1u << 20) && records / rate > MAX_SAMPLES)
				rate *= 2;
		}
	}
	if (!(res = idd_calloc(1, sizeof *res, err))) {
		rc = IDD_ERR;
		goto out;
	}
	res->n = n;
	res->k = k;
	res->sample_rate = every_pair ? 0 : (uint32_t)rate;
	res->ids = idd_calloc(n + 1, sizeof *res->ids, err);
	res->nonzero = res->ids ? idd_calloc(n + 1, sizeof *res->nonzero, err) : NULL;
	res->distinct = res->nonzero ? idd_calloc(n + 1, sizeof *res->distinct, err) : NULL;
	res->count = res->distinct ? idd_calloc(n + 1, sizeof *res->count, err) : NULL;
	res->seeds = res->count ? idd_calloc(n * k + 1, sizeof *res->seeds, err) : NULL;
	cand = res->seeds ? idd_malloc((n * c + 1) * sizeof *cand, err) : NULL;
	ccount = cand ? idd_calloc(n + 1, sizeof *ccount, err) : NULL;
	ps.shared = ccount ? idd_calloc(n * c + 1, sizeof *ps.shared, err) : NULL;
	ps.contained = ps.shared ? idd_calloc(n * c + 1, sizeof *ps.contained, err) : NULL;
	rc = ps.contained ? IDD_OK : IDD_ERR;
	for (size_t i = 0; !rc && i < n; i++)
		if (!(res->ids[i] = idd_strdup(cat->images[i].id, err)))
			rc = IDD_ERR;
	for (int t = 0; !rc && t < threads; t++)
		if (!(ps.stamp[t] = idd_calloc(n + 1, sizeof *ps.stamp[t], err)))
			rc = IDD_ERR;
	if (rc)
		goto out;
	sim_count_opts co = {.index_dir = index_dir, .cat = cat, .threads = threads,
	                     .mem_budget = o->mem_budget, .tmp_dir = o->tmp_dir,
	                     .sample_below = every_pair ? 0 : (rate == 1 ? UINT64_MAX : UINT64_MAX / rate),
	                     .progress = o->progress, .ctx = o->ctx};
	if ((rc = sim_count_start(&co, &cnt, err)))
		goto out;
	if (every_pair) {
		for (size_t a = 0; a < n; a++) {
			size_t q = 0;
			for (size_t b = 0; b < n; b++)
				if (b != a)
					cand[a * c + q++] = (uint32_t)b;
			ccount[a] = (uint32_t)q;
		}
	} else if ((rc = make_candidates(cnt, n, c, threads, cand, ccount, err))) {
		goto out;
	}
	sim_count_drop_samples(cnt);
	ps.n = n;
	ps.c = c;
	ps.cand = cand;
	ps.ccount = ccount;
	sim_sink sink = {pair_expand, &ps};
	if ((rc = sim_count_finish(cnt, &sink, err)))
		goto out;
	memcpy(res->nonzero, sim_count_nonzero(cnt), n * sizeof *res->nonzero);
	memcpy(res->distinct, sim_count_distinct(cnt), n * sizeof *res->distinct);
	/* a signature of one image adds nothing to a pair: pairs of an image
	 * with itself never occur, so every count is complete */
	idd_seed *all = idd_malloc((c + 1) * sizeof *all, err);
	if (!all) {
		rc = IDD_ERR;
		goto out;
	}
	for (size_t a = 0; a < n; a++) {
		size_t m = ccount[a];
		for (size_t q = 0; q < m; q++) {
			size_t b = cand[a * c + q];
			uint64_t sh = ps.shared[a * c + q], ct = ps.contained[a * c + q];
			uint64_t uni = res->distinct[a] + res->distinct[b] - sh;
			all[q] = (idd_seed){.image = b, .shared = sh,
			                    .containment = res->nonzero[a] ? (double)ct / (double)res->nonzero[a] : 0.0,
			                    .jaccard = uni ? (double)sh / (double)uni : 0.0};
		}
		qsort_r(all, m, sizeof *all, cmp_seed, res);
		res->count[a] = IDD_MIN(m, k);
		memcpy(res->seeds + a * k, all, res->count[a] * sizeof *all);
		res->candidates += m;
	}
	free(all);
out:
	for (int t = 0; t < IDD_MAX_THREADS; t++)
		free(ps.stamp[t]);
	free(ps.shared);
	free(ps.contained);
	free(cand);
	free(ccount);
	sim_count_free(cnt);
	idd_catalog_free(cat);
	if (rc) {
		idd_top_seeds_free(res);
		res = NULL;
	}
	*out = res;
	return rc;
}

int idd_similarity_top_compute(const idd_similarity_opts *o, size_t k, idd_top_seeds **out,
                               idd_error *err)
{
	*out = NULL;
	if (k == 0)
		return idd_fail(err, "--top needs K >= 1");
	char *index_dir = NULL;
	if (idd_index_path(o->repo, o->index_dir, &index_dir, err))
		return IDD_ERR;
	int rc;
	for (int attempt = 0; (rc = top_once(o, index_dir, k, out, err)) == IDD_ENOENT && attempt < 2;
	     attempt++)
		;
	free(index_dir);
	return rc;
}
