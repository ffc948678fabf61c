/* test_profile.c - boot profiles: written and read back in order, ids that
 * cannot be written skipped, malformed lines refused by line number. */
#include "testutil.h"
#include "node/profile.h"

#include <stdlib.h>
#include <string.h>

static void test_round_trip_and_errors(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *path = idd_path_join(dir, "boot.profile", NULL);
	idd_profile_writer w;
	idd_error err;
	uint64_t a[] = {7, 3, 9}, b[] = {1};
	assert_int_equal(idd_profile_writer_begin(&w, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_add(&w, "sub/a.raw", NULL, a, 3, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_add(&w, "bad\tid", NULL, b, 1, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_add(&w, "b.qcow2", NULL, b, 1, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_commit(&w, path, &err), IDD_OK);
	idd_profile_writer_free(&w);
	idd_profile p;
	assert_int_equal(idd_profile_load(path, &p, &err), IDD_OK);
	assert_int_equal(p.n, 4);
	assert_string_equal(p.ids[0], "sub/a.raw");
	assert_int_equal(p.blocks[0], 7);
	assert_int_equal(p.blocks[1], 3);
	assert_int_equal(p.blocks[2], 9);
	assert_string_equal(p.ids[3], "b.qcow2");
	idd_profile_free(&p);
	free(tu_write(dir, "bad.profile", "# x\na.raw\t12\na.raw 13\n", 22));
	char *bad = idd_path_join(dir, "bad.profile", NULL);
	assert_int_equal(idd_profile_load(bad, &p, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "line 3"));
	free(bad);
	free(path);
	tu_rmtree(dir);
	free(dir);
}

/* Blocks are written with their content's digest, from the map; a block
 * past the map or a zero block has none.  The digests an image's entries
 * name come from the file, else from the map. */
static void test_digests(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *path = idd_path_join(dir, "boot.profile", NULL);
	idd_digest dense[6] = {{{0}}};
	for (int i = 0; i < 6; i++)
		if (i != 2)
			dense[i].b[0] = (unsigned char)(0x10 + i % 4); /* blocks 0 and 4 alike */
	idd_map *m;
	idd_error err;
	assert_int_equal(idd_map_build(dense, 6, 4096, 6 * 4096, &m, &err), IDD_OK);
	idd_profile_writer w;
	uint64_t order[] = {4, 2, 1, 99};
	assert_int_equal(idd_profile_writer_begin(&w, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_add(&w, "a.raw", m, order, 4, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_commit(&w, path, &err), IDD_OK);
	idd_profile_writer_free(&w);
	idd_profile p;
	assert_int_equal(idd_profile_load(path, &p, &err), IDD_OK);
	assert_int_equal(p.n, 4);
	assert_memory_equal(p.digests[0].b, dense[4].b, 32);
	assert_true(idd_digest_is_zero(&p.digests[1]));
	assert_memory_equal(p.digests[2].b, dense[1].b, 32);
	assert_true(idd_digest_is_zero(&p.digests[3]));
	idd_digest *d;
	size_t n;
	assert_int_equal(idd_profile_digests(&p, "a.raw", m, &d, &n, &err), IDD_OK);
	assert_int_equal(n, 2); /* the zero block and the one past the map left out */
	assert_memory_equal(d[0].b, dense[4].b, 32);
	assert_memory_equal(d[1].b, dense[1].b, 32);
	free(d);
	assert_int_equal(idd_profile_digests(&p, "other.raw", m, &d, &n, &err), IDD_OK);
	assert_int_equal(n, 0);
	free(d);
	idd_profile_free(&p);
	/* a line as older versions wrote it: named through the map */
	free(tu_write(dir, "old.profile", "# old\na.raw\t3\n", 14));
	char *old = idd_path_join(dir, "old.profile", NULL);
	assert_int_equal(idd_profile_load(old, &p, &err), IDD_OK);
	assert_int_equal(idd_profile_digests(&p, "a.raw", m, &d, &n, &err), IDD_OK);
	assert_int_equal(n, 1);
	assert_memory_equal(d[0].b, dense[3].b, 32);
	free(d);
	idd_profile_free(&p);
	/* a digest that is not 64 lower-case hex digits */
	static const char upper[] =
	    "a.raw\t1\tZZ00000000000000000000000000000000000000000000000000000000000000\n";
	const char *bad[] = {"a.raw\t1\tabc\n", upper, "a.raw\t1\t\n"};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		free(tu_write(dir, "bad.profile", bad[i], strlen(bad[i])));
		char *bp = idd_path_join(dir, "bad.profile", NULL);
		assert_int_equal(idd_profile_load(bp, &p, &err), IDD_ECORRUPT);
		assert_non_null(strstr(err.msg, "line 1"));
		free(bp);
	}
	free(old);
	idd_map_free(m);
	free(path);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_round_trip_and_errors),
	                                   cmocka_unit_test(test_digests)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
