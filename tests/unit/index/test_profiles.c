/* test_profiles.c - boot profiles in the index: stored and read back in
 * order (duplicates and zero digests dropped), the list of profiles kept
 * sorted and up to date, removal, and damaged or foreign files refused. */
#include "testutil.h"
#include "index/profiles.h"

#include <stdlib.h>
#include <string.h>

static idd_digest dg(int v)
{
	idd_digest d = {{0}};
	d.b[0] = (unsigned char)v;
	d.b[31] = 0x5a;
	return d;
}

static void read_profile(const char *idx, const char *id, idd_boot_profile *p, int want_rc)
{
	idd_error err;
	char *rel = idd_boot_profile_relpath(id, &err);
	char *path = idd_path_join(idx, rel, &err);
	void *file = NULL;
	size_t len = 0;
	assert_int_equal(idd_read_file(path, IDD_PROFILE_MAX_FILE, &file, &len, &err), IDD_OK);
	assert_int_equal(idd_boot_profile_parse(path, file, len, id, p, &err), want_rc);
	free(file);
	free(path);
	free(rel);
}

static void test_store_list_remove(void **state)
{
	(void)state;
	char *idx = tu_mkdtemp();
	idd_error err;
	idd_digest v[] = {dg(3), dg(1), dg(3), {{0}}, dg(2)};
	idd_boot_profile p = {.id = (char *)"b.raw", .block_size = 4096, .digests = v, .n = 5};
	assert_int_equal(idd_boot_profile_store(idx, &p, &err), IDD_OK);
	p.id = (char *)"a.raw";
	p.n = 2;
	assert_int_equal(idd_boot_profile_store(idx, &p, &err), IDD_OK);
	idd_boot_profile got;
	read_profile(idx, "b.raw", &got, IDD_OK);
	assert_int_equal(got.block_size, 4096);
	assert_int_equal(got.n, 3); /* first occurrences, in order */
	assert_memory_equal(got.digests[0].b, v[0].b, 32);
	assert_memory_equal(got.digests[1].b, v[1].b, 32);
	assert_memory_equal(got.digests[2].b, v[4].b, 32);
	idd_boot_profile_free(&got);
	/* the file of one image is not taken for another's */
	read_profile(idx, "b.raw", &got, IDD_OK);
	idd_boot_profile_free(&got);
	idd_profiles_index x;
	assert_int_equal(idd_profiles_index_load(idx, &x, &err), IDD_OK);
	assert_int_equal(x.n, 2);
	assert_string_equal(x.ids[0], "a.raw");
	assert_int_equal(x.counts[0], 2);
	assert_string_equal(x.ids[1], "b.raw");
	assert_int_equal(x.counts[1], 3);
	idd_profiles_index_free(&x);
	/* stored again: replaced, not listed twice */
	p.n = 1;
	assert_int_equal(idd_boot_profile_store(idx, &p, &err), IDD_OK);
	assert_int_equal(idd_profiles_index_load(idx, &x, &err), IDD_OK);
	assert_int_equal(x.n, 2);
	assert_int_equal(x.counts[0], 1);
	idd_profiles_index_free(&x);
	assert_int_equal(idd_boot_profile_remove(idx, "a.raw", &err), IDD_OK);
	assert_int_equal(idd_boot_profile_remove(idx, "a.raw", &err), IDD_ENOENT);
	assert_int_equal(idd_profiles_index_load(idx, &x, &err), IDD_OK);
	assert_int_equal(x.n, 1);
	assert_string_equal(x.ids[0], "b.raw");
	idd_profiles_index_free(&x);
	tu_rmtree(idx);
	free(idx);
}

static void test_damage_refused(void **state)
{
	(void)state;
	char *idx = tu_mkdtemp();
	idd_error err;
	idd_digest v[] = {dg(1), dg(2)};
	idd_boot_profile p = {.id = (char *)"a.raw", .block_size = 4096, .digests = v, .n = 2};
	assert_int_equal(idd_boot_profile_store(idx, &p, &err), IDD_OK);
	char *rel = idd_boot_profile_relpath("a.raw", &err);
	char *path = idd_path_join(idx, rel, &err);
	void *file;
	size_t len;
	assert_int_equal(idd_read_file(path, IDD_PROFILE_MAX_FILE, &file, &len, &err), IDD_OK);
	idd_boot_profile got;
	/* another image's name */
	assert_int_equal(idd_boot_profile_parse(path, file, len, "b.raw", &got, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "another image"));
	/* every truncation and a flipped byte fail cleanly */
	for (size_t cut = 0; cut < len; cut += 7)
		assert_int_not_equal(idd_boot_profile_parse(path, file, cut, NULL, &got, &err), IDD_OK);
	((unsigned char *)file)[len / 2] ^= 1;
	assert_int_not_equal(idd_boot_profile_parse(path, file, len, NULL, &got, &err), IDD_OK);
	free(file);
	/* a profiles index that is not one */
	idd_profiles_index x;
	char *junk = tu_write(idx, "junk", "not an index file at all, not at all", 36);
	assert_int_equal(idd_read_file(junk, 1 << 20, &file, &len, &err), IDD_OK);
	assert_int_not_equal(idd_profiles_index_parse(junk, file, len, &x, &err), IDD_OK);
	free(file);
	free(junk);
	free(path);
	free(rel);
	tu_rmtree(idx);
	free(idx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {cmocka_unit_test(test_store_list_remove),
	                                   cmocka_unit_test(test_damage_refused)};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
