/* test_similarity_scale.c - the counting engine against brute force on
 * repositories that exercise each of its paths (signatures counted
 * directly and through their complement, multiplicities on both, many spill
 * groups and early expansion under a tiny budget, one thread and two), the
 * cache brought up to date after additions, removals and changes (equal to a
 * fresh computation), and --top K: exact when every pair is a candidate,
 * and, with few candidates, exact values and a recall of at least 0.99
 * against the exact top K. */
#include "idxgen.h"
#include "index/indexfile.h"

#include <math.h>

static char *dir;
static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

static uint64_t rng_state;
static uint64_t rnd(void)
{
	rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
	return rng_state >> 33;
}

enum { MAXIMG = 240, MAXB = 512 };
static uint64_t content[MAXIMG][MAXB];
static char ids[MAXIMG][32];
static ig_image imgs[MAXIMG];
static size_t nimg, nblk;

/* Images in families of `family`; every image holds most "universal"
 * contents (each missing from a few random images, some repeated inside an
 * image), some contents held by about half the images, its family's base
 * with its own replacements, internal repeats and zero blocks. */
static void make_content(size_t n, size_t nb, size_t family, uint64_t seed)
{
	rng_state = seed;
	nimg = n;
	nblk = nb;
	for (size_t i = 0; i < n; i++) {
		size_t fam = i / family;
		snprintf(ids[i], sizeof ids[i], "img%04zu.raw", i);
		for (size_t k = 0; k < nb; k++) {
			uint64_t v;
			if (k < nb / 16)
				v = 0;
			else if (k < nb / 4) /* universal, missing here with probability 1/8 */
				v = rnd() % 8 ? 1 + k : 5000000 + i * 1000 + k;
			else if (k < nb / 3) /* about half the images */
				v = rnd() % 2 ? 2000 + k : 6000000 + i * 1000 + k;
			else if (rnd() % 100 < 30)
				v = 1000000 + i * 1000 + k; /* the image's own */
			else
				v = 10000 + fam * 1000 + k; /* the family's */
			content[i][k] = v;
		}
		/* repeats: of universal contents and of others */
		for (size_t r = 0; r < nb / 20; r++)
			content[i][nb / 3 + rnd() % (nb - nb / 3)] = content[i][nb / 16 + rnd() % (nb - nb / 16)];
		imgs[i] = (ig_image){ids[i], content[i], nb};
	}
}

/* write the images whose mask entry is set (NULL: all) */
static void write_index(const char *idx, const bool *mask, uint64_t gen)
{
	ig_image v[MAXIMG];
	size_t m = 0;
	for (size_t i = 0; i < nimg; i++)
		if (!mask || mask[i])
			v[m++] = imgs[i];
	ig_write_index(idx, 4096, v, m, gen);
}

typedef struct ref {
	uint64_t shared, contained;
} ref;

/* brute force over the contents */
static ref reference(size_t a, size_t b)
{
	ref r = {0, 0};
	for (size_t k = 0; k < nblk; k++) {
		uint64_t v = content[a][k];
		if (!v)
			continue;
		bool in_b = false, first = true;
		for (size_t q = 0; q < nblk && !in_b; q++)
			in_b = content[b][q] == v;
		for (size_t q = 0; q < k && first; q++)
			first = content[a][q] != v;
		if (in_b) {
			r.contained++;
			r.shared += first;
		}
	}
	return r;
}

static size_t index_of(const char *id)
{
	for (size_t i = 0; i < nimg; i++)
		if (!strcmp(ids[i], id))
			return i;
	fail_msg("unknown id %s", id);
	return 0;
}

static ref refs[MAXIMG][MAXIMG];
static void compute_refs(void)
{
	for (size_t a = 0; a < nimg; a++)
		for (size_t b = 0; b < nimg; b++)
			refs[a][b] = reference(a, b);
}

static void check_counts(const idd_similarity *s)
{
	for (size_t a = 0; a < s->n; a++) {
		size_t ia = index_of(s->ids[a]);
		for (size_t b = 0; b < s->n; b++) {
			size_t ib = index_of(s->ids[b]);
			ref r = refs[ia][ib];
			if (idd_similarity_shared(s, a, b) != r.shared || idd_similarity_contained(s, a, b) != r.contained)
				fail_msg("%s x %s: shared %llu want %llu, contained %llu want %llu", s->ids[a], s->ids[b],
				         (unsigned long long)idd_similarity_shared(s, a, b), (unsigned long long)r.shared,
				         (unsigned long long)idd_similarity_contained(s, a, b),
				         (unsigned long long)r.contained);
		}
		assert_int_equal(s->nonzero[a], refs[ia][ia].contained);
		assert_int_equal(s->distinct[a], refs[ia][ia].shared);
	}
}

static void test_engine_matches_brute_force(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_content(48, 300, 6, 77);
	compute_refs();
	write_index(idx, NULL, 1);
	uint64_t budgets[] = {0, 4096};
	for (int bi = 0; bi < 2; bi++)
		for (int jobs = 1; jobs <= 2; jobs++) {
			idd_similarity_opts o = {.repo = dir, .index_dir = idx, .no_cache = true, .jobs = jobs,
			                         .mem_budget = budgets[bi]};
			idd_similarity *s;
			idd_error err;
			assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
			assert_int_equal(s->n, nimg);
			assert_int_equal(s->rows_computed, nimg);
			check_counts(s);
			idd_similarity_free(s);
		}
	free(idx);
}

/* the counts of two results, image by image (by id) */
static void assert_same(const idd_similarity *x, const idd_similarity *y)
{
	assert_int_equal(x->n, y->n);
	for (size_t a = 0; a < x->n; a++) {
		assert_string_equal(x->ids[a], y->ids[a]);
		assert_int_equal(x->nonzero[a], y->nonzero[a]);
		assert_int_equal(x->distinct[a], y->distinct[a]);
		for (size_t b = 0; b < x->n; b++) {
			assert_int_equal(idd_similarity_shared(x, a, b), idd_similarity_shared(y, a, b));
			assert_int_equal(idd_similarity_contained(x, a, b), idd_similarity_contained(y, a, b));
		}
	}
}

static void check_update(const char *idx, const bool *mask, uint64_t gen, size_t want_computed,
                         size_t want_dropped, bool want_updated)
{
	write_index(idx, mask, gen);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx, .jobs = 2};
	idd_similarity *s, *fresh;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_false(s->from_cache);
	if (s->cache_updated != want_updated || s->rows_computed != want_computed ||
	    s->rows_dropped != want_dropped)
		fail_msg("updated %d, rows computed %zu, dropped %zu; want %d, %zu, %zu", s->cache_updated,
		         s->rows_computed, s->rows_dropped, want_updated, want_computed, want_dropped);
	check_counts(s);
	o.no_cache = true;
	assert_int_equal(idd_similarity_compute(&o, &fresh, &err), IDD_OK);
	assert_same(s, fresh);
	idd_similarity_free(fresh);
	idd_similarity_free(s);
	/* and the cache written by the update is current */
	o.no_cache = false;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_true(s->from_cache);
	check_counts(s);
	idd_similarity_free(s);
}

static void count_warning(void *ctx, const char *msg)
{
	(void)msg;
	(*(int *)ctx)++;
}

static void test_cache_update(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_content(40, 200, 5, 99);
	compute_refs();
	bool mask[MAXIMG];
	for (size_t i = 0; i < nimg; i++)
		mask[i] = i != 17;
	/* a cache of 39 images, then image 17 added: only its row computed */
	write_index(idx, mask, 1);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx};
	idd_similarity *s;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_int_equal(s->rows_computed, 39);
	idd_similarity_free(s);
	mask[17] = true;
	check_update(idx, mask, 2, 1, 0, true);
	/* three removed: rows dropped, nothing computed */
	mask[0] = mask[20] = mask[39] = false;
	check_update(idx, mask, 3, 0, 3, true);
	/* a removal reads no block list: it answers with every list gone */
	mask[1] = false;
	write_index(idx, mask, 31);
	char *blocks = idd_path_join(idx, "blocks", NULL);
	tu_rmtree(blocks);
	free(blocks);
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_true(s->cache_updated);
	assert_int_equal(s->rows_dropped, 1);
	assert_int_equal(s->rows_computed, 0);
	check_counts(s);
	idd_similarity_free(s);
	mask[1] = true;
	check_update(idx, mask, 32, 1, 0, true);
	/* one changed, one added, one removed */
	content[5][150] = 99999999;
	mask[0] = true;
	mask[30] = false;
	compute_refs();
	check_update(idx, mask, 4, 2, 2, true);
	/* more than a quarter added: a fresh computation */
	for (size_t i = 0; i < nimg; i++)
		mask[i] = i % 2 == 0;
	write_index(idx, mask, 5);
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	idd_similarity_free(s);
	for (size_t i = 0; i < nimg; i++)
		mask[i] = true;
	check_update(idx, mask, 6, 40, 0, false);
	/* a cache of the previous format is recomputed without a warning */
	char *cp = idd_path_join(idx, "similarity", NULL);
	static const char magic[8] = {'I', 'D', 'D', '-', 'S', 'I', 'M', 0};
	assert_int_equal(idd_indexfile_write(cp, magic, 1, "old", 3, true, &err), IDD_OK);
	int warnings = 0;
	o.warn = count_warning;
	o.ctx = &warnings;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_false(s->from_cache);
	assert_false(s->cache_updated);
	assert_int_equal(warnings, 0);
	check_counts(s);
	idd_similarity_free(s);
	/* a damaged one is recomputed with a warning */
	tu_flip_byte(cp, tu_file_size(cp) / 2);
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_false(s->from_cache);
	assert_int_equal(warnings, 1);
	check_counts(s);
	idd_similarity_free(s);
	free(cp);
	free(idx);
}

/* The exact seed order of a row from the matrix. */
static void exact_top(const idd_similarity *m, size_t a, size_t k, size_t *out, size_t *got)
{
	*got = idd_similarity_top(m, a, k, out);
}

static void test_top_every_pair_is_exact(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_content(30, 200, 5, 5);
	write_index(idx, NULL, 1);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx, .no_cache = true, .top_candidates = 64};
	idd_similarity *m;
	idd_top_seeds *t;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &m, &err), IDD_OK);
	for (size_t k = 1; k <= 40; k += 13) {
		assert_int_equal(idd_similarity_top_compute(&o, k, &t, &err), IDD_OK);
		assert_int_equal(t->sample_rate, 0); /* every pair counted */
		for (size_t a = 0; a < m->n; a++) {
			size_t want[64], got;
			exact_top(m, a, k, want, &got);
			assert_int_equal(t->count[a], got);
			for (size_t i = 0; i < got; i++) {
				const idd_seed *sd = &t->seeds[a * k + i];
				assert_int_equal(sd->image, want[i]);
				assert_true(sd->containment == idd_similarity_value(m, IDD_METRIC_CONTAINMENT, a, want[i]));
				assert_true(sd->jaccard == idd_similarity_value(m, IDD_METRIC_JACCARD, a, want[i]));
				assert_int_equal(sd->shared, idd_similarity_shared(m, a, want[i]));
			}
		}
		idd_top_seeds_free(t);
	}
	idd_similarity_free(m);
	free(idx);
}

static void test_top_sampled_recall(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_content(MAXIMG, 400, 8, 2024);
	write_index(idx, NULL, 1);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx, .no_cache = true, .jobs = 2,
	                         .top_candidates = 8, .top_sample_rate = 4};
	idd_similarity *m;
	idd_top_seeds *t;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &m, &err), IDD_OK);
	size_t k = 4;
	assert_int_equal(idd_similarity_top_compute(&o, k, &t, &err), IDD_OK);
	assert_int_equal(t->sample_rate, 4);
	assert_int_equal(t->candidates, (uint64_t)MAXIMG * 8); /* pruned: 8 of 239 per image */
	size_t hits = 0, total = 0;
	for (size_t a = 0; a < m->n; a++) {
		size_t want[8], got;
		exact_top(m, a, k, want, &got);
		double kc = idd_similarity_value(m, IDD_METRIC_CONTAINMENT, a, want[got - 1]);
		double kj = idd_similarity_value(m, IDD_METRIC_JACCARD, a, want[got - 1]);
		assert_int_equal(t->count[a], k);
		for (size_t i = 0; i < t->count[a]; i++) {
			const idd_seed *sd = &t->seeds[a * k + i];
			/* every value reported is the exact one */
			assert_true(sd->containment == idd_similarity_value(m, IDD_METRIC_CONTAINMENT, a, sd->image));
			assert_true(sd->jaccard == idd_similarity_value(m, IDD_METRIC_JACCARD, a, sd->image));
			assert_int_equal(sd->shared, idd_similarity_shared(m, a, sd->image));
			hits += sd->containment > kc || (sd->containment == kc && sd->jaccard >= kj);
		}
		total += got;
	}
	double recall = (double)hits / (double)total;
	if (recall < 0.99)
		fail_msg("recall %.4f", recall);
	idd_top_seeds_free(t);
	idd_similarity_free(m);
	free(idx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_engine_matches_brute_force, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cache_update, setup, teardown),
		cmocka_unit_test_setup_teardown(test_top_every_pair_is_exact, setup, teardown),
		cmocka_unit_test_setup_teardown(test_top_sampled_recall, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
