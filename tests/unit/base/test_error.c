/* test_error.c - base/error: messages and codes (from errno too),
 * prefixing, truncation at the buffer's end, the warning formatter and
 * the code names. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

static void test_fail_sets_message_and_code(void **state)
{
	(void)state;
	idd_error err = {{0}, 0};
	assert_int_equal(idd_fail(&err, "%s: bad %d", "a.raw", 7), IDD_ERR);
	assert_string_equal(err.msg, "a.raw: bad 7");
	assert_int_equal(err.code, IDD_ERR);
	assert_int_equal(idd_fail_code(&err, IDD_ECORRUPT, "%s: checksum", "catalog"), IDD_ECORRUPT);
	assert_string_equal(err.msg, "catalog: checksum");
	assert_int_equal(err.code, IDD_ECORRUPT);
	assert_int_equal(idd_fail_code(&err, IDD_ENET, "x"), IDD_ENET);
	assert_int_equal(err.code, IDD_ENET);
	/* No error struct: only the code comes back. */
	assert_int_equal(idd_fail(NULL, "nothing %d", 1), IDD_ERR);
	assert_int_equal(idd_fail_code(NULL, IDD_EBUSY, "nothing"), IDD_EBUSY);
}

static void test_fail_errno_codes(void **state)
{
	(void)state;
	static const struct {
		int e, code;
	} cases[] = {
		{ENOENT, IDD_ENOENT}, {ENOMEM, IDD_ENOMEM}, {EACCES, IDD_EPERM}, {EPERM, IDD_EPERM},
		{ELOOP, IDD_EPERM},   {EIO, IDD_EIO},       {ENOSPC, IDD_EIO},   {EROFS, IDD_EIO},
	};
	for (size_t i = 0; i < IDD_ARRAY_LEN(cases); i++) {
		idd_error err = {{0}, 0};
		errno = cases[i].e;
		int rc = idd_fail_errno(&err, "/srv/repo/a.raw", "cannot open");
		assert_int_equal(rc, cases[i].code);
		assert_int_equal(err.code, cases[i].code);
		char want[512];
		snprintf(want, sizeof want, "/srv/repo/a.raw: cannot open: %s", strerror(cases[i].e));
		assert_string_equal(err.msg, want);
	}
	errno = ENOENT;
	assert_int_equal(idd_fail_errno(NULL, "x", "y"), IDD_ENOENT);
	errno = EACCES;
	assert_int_equal(idd_fail_errno(NULL, "x", "y"), IDD_EPERM);
}

/* The file helpers built on idd_fail_errno return the code they put into
 * the error, so callers pass it on instead of working it out again. */
static void test_open_failures_return_their_code(void **state)
{
	(void)state;
	static const char *const paths[] = {"/nonexistent-dir/a.raw", "/dev/null/a.raw"};
	static const int codes[] = {IDD_ENOENT, IDD_EIO}; /* ENOENT, ENOTDIR */
	for (size_t i = 0; i < IDD_ARRAY_LEN(paths); i++) {
		idd_error err = {{0}, 0};
		int rc = idd_open_regular(paths[i], O_RDONLY, 0, &err);
		assert_int_equal(rc, codes[i]);
		assert_int_equal(err.code, codes[i]);
		void *data = NULL;
		size_t cap = 0, len = 0;
		memset(&err, 0, sizeof err);
		rc = idd_read_file_reuse(paths[i], 1024, &data, &cap, &len, &err);
		assert_int_equal(rc, codes[i]);
		assert_int_equal(err.code, codes[i]);
		free(data);
		idd_digest sum;
		memset(&err, 0, sizeof err);
		rc = idd_indexfile_verify(paths[i], "IDDTEST\0", 1, &sum, NULL, &err);
		assert_int_equal(rc, codes[i]);
		assert_int_equal(err.code, codes[i]);
	}
}

static void test_prefix(void **state)
{
	(void)state;
	idd_error err;
	idd_fail_code(&err, IDD_ECORRUPT, "bad L2 table");
	idd_error_prefix(&err, "%s", "top.qcow2: backing file base.qcow2");
	assert_string_equal(err.msg, "top.qcow2: backing file base.qcow2: bad L2 table");
	assert_int_equal(err.code, IDD_ECORRUPT); /* the code stays */
	idd_error_prefix(&err, "scan %d", 2);
	assert_string_equal(err.msg, "scan 2: top.qcow2: backing file base.qcow2: bad L2 table");
	idd_error_prefix(NULL, "nothing"); /* no error struct: nothing to do */
}

static void test_truncation(void **state)
{
	(void)state;
	idd_error err;
	char big[3000];
	memset(big, 'm', sizeof big - 1);
	big[sizeof big - 1] = 0;
	/* A message longer than the buffer is cut at its end, terminated. */
	idd_fail(&err, "%s", big);
	assert_int_equal(strlen(err.msg), sizeof err.msg - 1);
	/* A prefix onto a full message: the prefix survives, the tail is cut. */
	idd_error_prefix(&err, "%s", "file.raw");
	assert_int_equal(strlen(err.msg), sizeof err.msg - 1);
	assert_memory_equal(err.msg, "file.raw: mmm", 13);
	/* A prefix longer than the whole buffer: the prefix is cut, the reason
	 * kept. */
	idd_fail(&err, "reason");
	idd_error_prefix(&err, "%s", big);
	size_t n = strlen(err.msg);
	assert_true(n < sizeof err.msg);
	assert_int_equal(err.msg[0], 'm');
	assert_string_equal(err.msg + n - 8, ": reason");
	/* Near the edge: exactly what fits. */
	char old[sizeof err.msg];
	memset(old, 'o', sizeof old - 4);
	old[sizeof old - 4] = 0;
	idd_fail(&err, "%s", old);
	idd_error_prefix(&err, "ab");
	assert_int_equal(strlen(err.msg), sizeof err.msg - 1);
	assert_memory_equal(err.msg, "ab: ooo", 7);
	assert_int_equal(err.msg[sizeof err.msg - 2], 'o');
}

struct warned {
	int calls;
	char last[4096];
};

static void collect(void *ctx, const char *msg)
{
	struct warned *w = ctx;
	w->calls++;
	snprintf(w->last, sizeof w->last, "%s", msg);
}

static void test_warnf(void **state)
{
	(void)state;
	struct warned w = {0};
	idd_warnf(collect, &w, "%s: skipped (%d of %d)", "b.qcow2", 2, 5);
	assert_int_equal(w.calls, 1);
	assert_string_equal(w.last, "b.qcow2: skipped (2 of 5)");
	idd_warnf(NULL, &w, "never %s", "seen"); /* no callback: nothing happens */
	assert_int_equal(w.calls, 1);
	/* Long warnings are cut, not overflowed. */
	char big[5000];
	memset(big, 'w', sizeof big - 1);
	big[sizeof big - 1] = 0;
	idd_warnf(collect, &w, "%s", big);
	assert_int_equal(w.calls, 2);
	assert_true(strlen(w.last) > 1000 && strlen(w.last) < sizeof big - 1);
}

static void test_strerror(void **state)
{
	(void)state;
	assert_string_equal(idd_strerror(IDD_OK), "ok");
	assert_string_equal(idd_strerror(IDD_ECORRUPT), "corrupt");
	assert_string_equal(idd_strerror(IDD_ENOENT), "not found");
	assert_string_equal(idd_strerror(IDD_EBUSY), "busy");
	assert_string_equal(idd_strerror(IDD_EIO), "i/o error");
	assert_string_equal(idd_strerror(IDD_ENET), "network error");
	assert_string_equal(idd_strerror(IDD_ENOMEM), "out of memory");
	assert_string_equal(idd_strerror(IDD_EPERM), "refused");
	assert_string_equal(idd_strerror(IDD_ERR), "error");
	assert_string_equal(idd_strerror(-99), "error");
	assert_string_equal(idd_strerror(12), "error");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fail_sets_message_and_code),
		cmocka_unit_test(test_fail_errno_codes),
		cmocka_unit_test(test_open_failures_return_their_code),
		cmocka_unit_test(test_prefix),
		cmocka_unit_test(test_truncation),
		cmocka_unit_test(test_warnf),
		cmocka_unit_test(test_strerror),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
