/* test_repo_store.c - index/repo's stores: each store reads only the
 * identities it made (an object's identity never equals a local file's),
 * objects are unchanged when ETag and size agree, local files when every
 * stat field does; the local store takes plain paths. */
#include "testutil.h"
#include "index/repo_s3.h"

#include <stdlib.h>

static void test_identities_by_store(void **state)
{
	(void)state;
	idd_file_ident obj = {NULL, IDD_S3_DEV, 0x1234, 100, 0, 5000000000LL};
	idd_file_ident obj_listed = obj;
	obj_listed.ctime_ns = 0; /* listings spell Last-Modified differently */
	assert_true(idd_repo_ident_same(&obj, &obj_listed));
	idd_file_ident obj_changed = obj;
	obj_changed.ino = 0x9999; /* another ETag */
	assert_false(idd_repo_ident_same(&obj, &obj_changed));
	obj_changed = obj;
	obj_changed.size = 101;
	assert_false(idd_repo_ident_same(&obj, &obj_changed));

	idd_file_ident file = {NULL, 0x801, 0x1234, 100, 7, 5000000000LL};
	assert_false(idd_repo_ident_same(&obj, &file)); /* two stores' never match */
	assert_false(idd_repo_ident_same(&file, &obj));
	idd_file_ident touched = file;
	touched.mtime_ns = 8;
	assert_true(idd_repo_ident_same(&file, &file));
	assert_false(idd_repo_ident_same(&file, &touched));
}

static void test_local_store_by_path(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *p = tu_write(dir, "a.raw", "0123456789", 10);
	assert_false(idd_repo_is_remote(dir));
	assert_true(idd_repo_is_remote("s3://bucket/prefix"));
	idd_file_ident a, b;
	idd_error err = {{0}, 0};
	assert_int_equal(idd_repo_file_ident(p, &a, &err), IDD_OK);
	assert_int_equal(a.size, 10);
	assert_int_not_equal(a.dev, IDD_S3_DEV);
	assert_int_equal(idd_repo_file_ident(p, &b, &err), IDD_OK);
	assert_true(idd_repo_ident_same(&a, &b));
	idd_file *f;
	assert_int_equal(idd_repo_file_open(p, UINT64_MAX, &f, &err), IDD_OK);
	assert_int_equal(f->size, 10);
	idd_file_close(f);
	free(p);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_identities_by_store),
		cmocka_unit_test(test_local_store_by_path),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
