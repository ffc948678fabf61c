/* test_extsort.c - the external sort: the same order as qsort whether the
 * records fit the budget or spill (one merge, or more runs than one merge
 * takes), duplicates kept, nothing left in the directory, nothing added. */
#include "testutil.h"
#include "base/extsort.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

struct rec {
	uint64_t key;
	uint32_t tag;
	uint32_t pad;
};

static int cmp_rec(const void *a, const void *b)
{
	const struct rec *x = a, *y = b;
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	return x->tag < y->tag ? -1 : x->tag > y->tag;
}

static size_t entries_in(const char *dir)
{
	DIR *d = opendir(dir);
	assert_non_null(d);
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* n records (keys from a small range: many duplicates) sorted with budget
 * bytes; checks the order against qsort and returns the spills. */
static uint64_t sort_and_check(const char *dir, size_t n, size_t budget)
{
	struct rec *want = calloc(n + 1, sizeof *want);
	assert_non_null(want);
	uint64_t s = n * 7 + budget;
	for (size_t i = 0; i < n; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		want[i] = (struct rec){.key = (s >> 33) % (n / 3 + 1), .tag = (uint32_t)i};
	}
	idd_extsort *x;
	idd_error err;
	assert_int_equal(idd_extsort_new(dir, sizeof(struct rec), budget, cmp_rec, &x, &err), IDD_OK);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(idd_extsort_add(x, &want[i], &err), IDD_OK);
	assert_int_equal(idd_extsort_count(x), n);
	assert_int_equal(idd_extsort_finish(x, &err), IDD_OK);
	assert_int_equal(entries_in(dir), 0); /* spills have no name */
	qsort(want, n, sizeof *want, cmp_rec);
	const void *got;
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(idd_extsort_next(x, &got, &err), 1);
		assert_memory_equal(got, &want[i], sizeof *want);
	}
	assert_int_equal(idd_extsort_next(x, &got, &err), 0);
	assert_int_equal(idd_extsort_next(x, &got, &err), 0);
	uint64_t spills = idd_extsort_spills(x);
	idd_extsort_free(x);
	free(want);
	return spills;
}

static void test_orders_in_memory_and_spilled(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	assert_int_equal(sort_and_check(dir, 0, 1 << 20), 0);
	assert_int_equal(sort_and_check(dir, 1, 1 << 20), 0);
	assert_int_equal(sort_and_check(dir, 5000, 1 << 20), 0);
	/* 100 records a run: 50 runs, merged in one pass */
	assert_int_equal(sort_and_check(dir, 5000, 100 * sizeof(struct rec)), 50);
	/* 10 records a run: 1000 runs, more than one merge takes at once */
	assert_int_equal(sort_and_check(dir, 10000, 10 * sizeof(struct rec)), 1000);
	/* a budget below a few records still sorts */
	assert_true(sort_and_check(dir, 300, 1) > 0);
	/* freed before finishing: nothing left */
	idd_extsort *x;
	idd_error err;
	assert_int_equal(idd_extsort_new(dir, sizeof(struct rec), 64, cmp_rec, &x, &err), IDD_OK);
	for (uint32_t i = 0; i < 100; i++)
		assert_int_equal(idd_extsort_add(x, &(struct rec){.key = i}, &err), IDD_OK);
	assert_true(idd_extsort_spills(x) > 0);
	idd_extsort_free(x);
	assert_int_equal(entries_in(dir), 0);
	/* a directory that cannot take files: spilling fails with a message */
	char *none = idd_path_join(dir, "missing", NULL);
	assert_int_equal(idd_extsort_new(none, sizeof(struct rec), 64, cmp_rec, &x, &err), IDD_OK);
	int rc = IDD_OK;
	for (uint32_t i = 0; i < 100 && !rc; i++)
		rc = idd_extsort_add(x, &(struct rec){.key = i}, &err);
	assert_int_not_equal(rc, IDD_OK);
	assert_non_null(strstr(err.msg, "missing"));
	idd_extsort_free(x);
	free(none);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_orders_in_memory_and_spilled)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
