/* test_similarity.c - both metrics against a brute-force computation, the
 * partitioned (spilled) path, the cache, clustering order, top-K, svg. */
#include "idxgen.h"

#include <math.h>

static char *dir;
static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

enum { NIMG = 9, NB = 300 };
static uint64_t content[NIMG][NB];
static char ids[NIMG][32];
static ig_image imgs[NIMG];

/* Three families of three; ids interleave families (f0, f1, f2, f0, ...),
 * so sorted order is not family order.  Every image holds a common block
 * run, zeros, and internal duplicates. */
static void make_repo(const char *idx, uint64_t gen)
{
	uint64_t rng = 12345;
	for (int i = 0; i < NIMG; i++) {
		int fam = i % 3;
		snprintf(ids[i], sizeof ids[i], "img%02d.raw", i);
		for (int k = 0; k < NB; k++) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			uint64_t r = rng >> 33;
			uint64_t v;
			if (k < 20)
				v = 0;                               /* zero blocks */
			else if (k < 50)
				v = 1 + (uint64_t)k;                 /* in every image */
			else if (k < 60)
				v = 7;                               /* one content repeated */
			else if (r % 100 < 25 + 10 * (uint64_t)(i / 3))
				v = 1000000 + (uint64_t)i * 1000 + (uint64_t)k; /* image's own */
			else
				v = 1000 + (uint64_t)fam * 1000 + (uint64_t)k;  /* family's */
			content[i][k] = v;
		}
		imgs[i] = (ig_image){ids[i], content[i], NB};
	}
	ig_write_index(idx, 4096, imgs, NIMG, gen);
}

static bool holds(int img, uint64_t v)
{
	for (int k = 0; k < NB; k++)
		if (content[img][k] == v)
			return true;
	return false;
}

static double ref_jaccard(int a, int b)
{
	uint64_t inter = 0, ua = 0, ub = 0;
	for (int k = 0; k < NB; k++) {
		uint64_t v = content[a][k];
		bool first = true;
		for (int q = 0; q < k; q++)
			first &= content[a][q] != v;
		if (!v || !first)
			continue;
		ua++;
		inter += holds(b, v);
	}
	for (int k = 0; k < NB; k++) {
		uint64_t v = content[b][k];
		bool first = true;
		for (int q = 0; q < k; q++)
			first &= content[b][q] != v;
		ub += v && first;
	}
	return a == b ? 1.0 : (double)inter / (double)(ua + ub - inter);
}

static double ref_containment(int a, int b)
{
	uint64_t nz = 0, in = 0;
	for (int k = 0; k < NB; k++) {
		if (!content[a][k])
			continue;
		nz++;
		in += holds(b, content[a][k]);
	}
	return a == b ? 1.0 : (double)in / (double)nz;
}

static void check_against_reference(const idd_similarity *s)
{
	assert_int_equal(s->n, NIMG);
	for (int a = 0; a < NIMG; a++) {
		assert_string_equal(s->ids[a], ids[a]);
		for (int b = 0; b < NIMG; b++) {
			double j = idd_similarity_value(s, IDD_METRIC_JACCARD, (size_t)a, (size_t)b);
			double c = idd_similarity_value(s, IDD_METRIC_CONTAINMENT, (size_t)a, (size_t)b);
			if (fabs(j - ref_jaccard(a, b)) > 1e-12 || fabs(c - ref_containment(a, b)) > 1e-12)
				fail_msg("(%d,%d): jaccard %f want %f, containment %f want %f", a, b, j,
				         ref_jaccard(a, b), c, ref_containment(a, b));
		}
	}
}

static void test_matrices_match_reference(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_repo(idx, 1);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx, .no_cache = true};
	idd_similarity *s;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	check_against_reference(s);
	assert_false(s->from_cache);
	/* the 30 blocks common to all images form one signature, not 81 pairs each */
	assert_true(s->signatures < 60);
	idd_similarity_free(s);
	/* a tiny memory budget forces many spill partitions: same answer */
	o.mem_budget = 4096;
	o.jobs = 2;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	check_against_reference(s);
	idd_similarity_free(s);
	o.jobs = 1;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	check_against_reference(s);
	idd_similarity_free(s);
	free(idx);
}

static void test_cache(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_repo(idx, 1);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx};
	idd_similarity *s;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_false(s->from_cache);
	idd_similarity_free(s);
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_true(s->from_cache);
	check_against_reference(s);
	idd_similarity_free(s);
	/* a changed image invalidates the cache */
	content[4][100] = 99999999;
	ig_write_index(idx, 4096, imgs, NIMG, 2);
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_false(s->from_cache);
	check_against_reference(s);
	idd_similarity_free(s);
	/* a corrupted cache is recomputed, not trusted */
	char *cp = idd_path_join(idx, "similarity", NULL);
	tu_flip_byte(cp, tu_file_size(cp) / 2);
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_false(s->from_cache);
	check_against_reference(s);
	idd_similarity_free(s);
	free(cp);
	free(idx);
}

static void test_cluster_order_and_top(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_repo(idx, 1);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx};
	idd_similarity *s;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	for (int m = 0; m < 2; m++) {
		size_t order[NIMG];
		assert_int_equal(idd_similarity_cluster_order(s, (idd_metric)m, order, &err), IDD_OK);
		/* a permutation, with each family contiguous */
		bool seen[NIMG] = {0};
		for (int i = 0; i < NIMG; i++) {
			assert_true(order[i] < NIMG && !seen[order[i]]);
			seen[order[i]] = true;
		}
		for (int blk = 0; blk < 3; blk++)
			for (int i = 1; i < 3; i++)
				assert_int_equal(order[blk * 3 + i] % 3, order[blk * 3] % 3);
		/* deterministic: the family of image 0 comes first */
		assert_int_equal(order[0] % 3, 0);
	}
	/* top seeds of image 0 are its family (3 and 6) */
	size_t top[NIMG];
	assert_int_equal(idd_similarity_top(s, 0, 2, top), 2);
	assert_true((top[0] == 3 && top[1] == 6) || (top[0] == 6 && top[1] == 3));
	assert_true(idd_similarity_value(s, IDD_METRIC_CONTAINMENT, 0, top[0]) >=
	            idd_similarity_value(s, IDD_METRIC_CONTAINMENT, 0, top[1]));
	assert_int_equal(idd_similarity_top(s, 0, 100, top), 8);
	idd_similarity_free(s);
	/* the info helper agrees */
	idd_similar *v;
	size_t n;
	assert_int_equal(idd_image_top_similar(idx, "img00.raw", 2, &v, &n, &err), IDD_OK);
	assert_int_equal(n, 2);
	assert_true(!strcmp(v[0].id, "img03.raw") || !strcmp(v[0].id, "img06.raw"));
	assert_true(fabs(v[0].containment - ref_containment(0, v[0].id[4] - '0')) < 1e-12);
	idd_similar_free(v, n);
	assert_int_equal(idd_image_top_similar(idx, "nope", 2, &v, &n, &err), IDD_ENOENT);
	free(idx);
}

static void test_cluster_small_and_ties(void **state)
{
	(void)state;
	/* identical images (all distances 0) and n = 0..3 must not loop */
	for (size_t n = 0; n <= 5; n++) {
		uint32_t counts[50];
		uint64_t nz[5], dist[5];
		for (size_t i = 0; i < 50; i++)
			counts[i] = 10;
		for (size_t i = 0; i < 5; i++)
			nz[i] = dist[i] = 10;
		idd_similarity s = {.n = n, .counts = counts, .nonzero = nz, .distinct = dist};
		size_t order[5];
		idd_error err;
		assert_int_equal(idd_similarity_cluster_order(&s, IDD_METRIC_JACCARD, order, &err), IDD_OK);
		bool seen[5] = {0};
		for (size_t i = 0; i < n; i++) {
			assert_true(order[i] < n && !seen[order[i]]);
			seen[order[i]] = true;
		}
	}
}

static void test_svg(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	make_repo(idx, 1);
	idd_similarity_opts o = {.repo = dir, .index_dir = idx};
	idd_similarity *s;
	idd_error err;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	size_t order[NIMG], len;
	assert_int_equal(idd_similarity_cluster_order(s, IDD_METRIC_JACCARD, order, &err), IDD_OK);
	char *svg = idd_similarity_svg(s, IDD_METRIC_JACCARD, order, &len, &err);
	assert_non_null(svg);
	assert_int_equal(strlen(svg), len);
	assert_non_null(strstr(svg, "<svg"));
	assert_non_null(strstr(svg, "</svg>"));
	for (int i = 0; i < NIMG; i++)
		assert_non_null(strstr(svg, ids[i]));
	assert_non_null(strstr(svg, "1.00")); /* colour scale ticks */
	free(svg);
	idd_similarity_free(s);
	free(idx);
}

static void test_no_index(void **state)
{
	(void)state;
	idd_similarity_opts o = {.repo = dir};
	idd_similarity *s;
	idd_error err;
	assert_int_not_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "scan"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_matrices_match_reference, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cache, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cluster_order_and_top, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cluster_small_and_ties, setup, teardown),
		cmocka_unit_test_setup_teardown(test_svg, setup, teardown),
		cmocka_unit_test_setup_teardown(test_no_index, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
