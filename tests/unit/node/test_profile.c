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
	assert_int_equal(idd_profile_writer_add(&w, "sub/a.raw", a, 3, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_add(&w, "bad\tid", b, 1, &err), IDD_OK);
	assert_int_equal(idd_profile_writer_add(&w, "b.qcow2", b, 1, &err), IDD_OK);
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

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_round_trip_and_errors)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
