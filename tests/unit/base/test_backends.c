/* test_backends.c - base/fetch's table of backends: which backend claims
 * which root (the local one last, for everything else), what each one
 * offers, and that a source opened on a directory uses the local backend
 * and refuses what only an object store can do. */
#include "testutil.h"
#include "base/source.h"

#include <stdlib.h>
#include <string.h>

static const idd_source_backend *claimer(const char *root)
{
	size_t n;
	const idd_source_backend *const *b = idd_source_backends(&n);
	for (size_t i = 0; i < n; i++)
		if (b[i]->claims(root))
			return b[i];
	return NULL;
}

static void test_table_order_and_claims(void **state)
{
	(void)state;
	size_t n;
	const idd_source_backend *const *b = idd_source_backends(&n);
	assert_int_equal(n, 3);
	assert_ptr_equal(b[n - 1], &idd_source_local); /* claims everything: last */
	assert_ptr_equal(claimer("s3://bucket/prefix"), &idd_source_s3);
	assert_ptr_equal(claimer("http://host/repo"), &idd_source_http);
	assert_ptr_equal(claimer("HTTPS://host/repo"), &idd_source_http);
	assert_ptr_equal(claimer("/srv/repo"), &idd_source_local);
	assert_ptr_equal(claimer("relative/dir"), &idd_source_local);
	assert_ptr_equal(claimer("ftp://host/x"), &idd_source_local);
}

static void test_each_backend_offers_its_operations(void **state)
{
	(void)state;
	size_t n;
	const idd_source_backend *const *b = idd_source_backends(&n);
	for (size_t i = 0; i < n; i++) {
		assert_non_null(b[i]->name);
		assert_non_null(b[i]->open);
		assert_non_null(b[i]->close);
		assert_non_null(b[i]->name_of);
		assert_non_null(b[i]->stat);
		assert_non_null(b[i]->get);
		/* remote backends read by range, local ones open files */
		assert_true(b[i]->remote ? b[i]->read_ranges != NULL : b[i]->open_local != NULL);
	}
	/* listing, upload and delete: the object store only */
	assert_non_null(idd_source_s3.list_page);
	assert_non_null(idd_source_s3.put_fd);
	assert_non_null(idd_source_s3.remove);
	assert_null(idd_source_http.list_page);
	assert_null(idd_source_local.put_fd);
}

static void test_local_source_through_the_table(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	free(tu_write(dir, "a.raw", "hello", 5));
	idd_source *s;
	idd_error err = {{0}, 0};
	assert_int_equal(idd_source_open(dir, NULL, &s, &err), IDD_OK);
	assert_false(idd_source_is_remote(s));
	assert_false(idd_source_is_s3(s));
	idd_remote_stat st;
	assert_int_equal(idd_source_stat(s, "a.raw", &st, &err), IDD_OK);
	assert_int_equal(st.size, 5);
	assert_true(st.etag[0] != 0); /* the backend's identity of the file */
	assert_int_equal(idd_source_stat(s, "missing.raw", &st, &err), IDD_ENOENT);
	void *data;
	size_t len;
	assert_int_equal(idd_source_get(s, "a.raw", 100, &data, &len, &err), IDD_OK);
	assert_int_equal(len, 5);
	assert_memory_equal(data, "hello", 5);
	free(data);
	idd_fetch_stats fs;
	idd_source_stats(s, &fs);
	assert_int_equal(fs.requests, 1);
	assert_int_equal(fs.bytes, 5);
	idd_s3_object_list l;
	assert_int_equal(idd_source_list(s, "", &l, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "listing needs an s3:// location"));
	assert_int_equal(idd_source_delete(s, "a.raw", &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "delete needs an s3:// location"));
	assert_int_equal(idd_source_stat(s, "../x", &st, &err), IDD_EPERM);
	idd_source_close(s);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table_order_and_claims),
		cmocka_unit_test(test_each_backend_offers_its_operations),
		cmocka_unit_test(test_local_source_through_the_table),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
