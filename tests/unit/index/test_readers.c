/* test_readers.c - readers take no lock: when a scan replaces the catalog
 * and collects the block lists of the one a reader just read, the reader
 * looks again instead of failing.  The race is made deterministic with
 * idd_catalog_load_hook: right after the reader's catalog load, every image
 * changes and a scan runs. */
#include "testutil.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *repo, *idx;
static int seed;

static void write_images(void)
{
	unsigned char buf[6 * 4096];
	for (int i = 0; i < 3; i++) {
		tu_fill_random(buf, sizeof buf, (uint64_t)(seed * 10 + i + 1));
		char name[32];
		snprintf(name, sizeof name, "i%d.raw", i);
		free(tu_write(repo, name, buf, sizeof buf));
	}
	seed++;
}

static void scan_now(void)
{
	idd_scan_opts o = {.repo = repo, .jobs = 1};
	idd_scan_stats st;
	idd_error err;
	if (idd_scan(&o, &st, &err))
		fail_msg("%s", err.msg);
}

/* after the next catalog load (the reader's): rewrite, rescan, collect */
static int races;
static void race_hook(void *ctx, const char *index_dir)
{
	(void)ctx;
	(void)index_dir;
	if (!races)
		return;
	races--;
	idd_catalog_load_hook = NULL; /* the scan loads the catalog too */
	write_images();
	scan_now();
	idd_catalog_load_hook = race_hook;
}

static int setup(void **state)
{
	(void)state;
	repo = tu_mkdtemp();
	idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	seed = 0;
	write_images();
	scan_now();
	idd_catalog_load_hook = race_hook;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	idd_catalog_load_hook = NULL;
	tu_rmtree(repo);
	free(repo);
	free(idx);
	return 0;
}

/* every list named by the catalog before the race is gone after it */
static void assert_lists_collected(const idd_catalog *before)
{
	for (size_t i = 0; i < before->count; i++) {
		char *p = idd_blocks_path(idx, &before->images[i].list_key, NULL);
		assert_int_not_equal(access(p, F_OK), 0);
		free(p);
	}
}

static void test_similarity_retries(void **state)
{
	(void)state;
	idd_catalog *before;
	idd_error err;
	idd_catalog_load_hook = NULL;
	assert_int_equal(idd_catalog_load(idx, &before, &err), IDD_OK);
	idd_catalog_load_hook = race_hook;
	races = 1;
	idd_similarity_opts o = {.repo = repo, .no_cache = true, .jobs = 1};
	idd_similarity *s;
	assert_int_equal(idd_similarity_compute(&o, &s, &err), IDD_OK);
	assert_int_equal(races, 0); /* the race happened */
	assert_lists_collected(before);
	assert_int_equal(s->n, 3);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(s->nonzero[i], 6);
	idd_similarity_free(s);
	idd_catalog_free(before);
}

static void test_verify_retries(void **state)
{
	(void)state;
	races = 1;
	idd_verify_opts o = {.repo = repo, .deep = true};
	uint64_t problems = 99;
	idd_error err;
	assert_int_equal(idd_verify(&o, &problems, &err), IDD_OK);
	assert_int_equal(races, 0);
	assert_int_equal(problems, 0);
}

static void test_open_by_id_retries(void **state)
{
	(void)state;
	races = 1;
	idd_blocklist *bl;
	idd_error err;
	assert_int_equal(idd_blocklist_open_id(idx, "i1.raw", &bl, &err), IDD_OK);
	assert_int_equal(races, 0);
	assert_int_equal(bl->ndata, 6);
	idd_blocklist_free(bl);
	/* a catalog that really names a missing list is still an error */
	idd_catalog_load_hook = NULL;
	idd_catalog *cat;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	char *p = idd_blocks_path(idx, &idd_catalog_find(cat, "i1.raw")->list_key, NULL);
	assert_int_equal(unlink(p), 0);
	assert_int_equal(idd_blocklist_open_id(idx, "i1.raw", &bl, &err), IDD_ENOENT);
	assert_non_null(strstr(err.msg, p));
	free(p);
	idd_catalog_free(cat);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_similarity_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_verify_retries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_by_id_retries, setup, teardown),
	};
	return cmocka_run_group_tests_name("readers", tests, NULL, NULL);
}
