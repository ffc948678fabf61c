/* test_util.c - base/util: byte buffers and the bounds-checked reader
 * (round trips and hostile input), varints, byte order, checked arithmetic,
 * strings and paths, whole-buffer pread/pwrite, the jobs-to-threads rule. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_buf_roundtrip(void **state)
{
	(void)state;
	idd_buf b = {0};
	idd_buf_put_u8(&b, 0xab);
	idd_buf_put_u32(&b, 0x01020304u);
	idd_buf_put_u64(&b, 0x1122334455667788ull);
	idd_buf_put_varint(&b, 300);
	idd_buf_put_str(&b, "disk.raw");
	idd_buf_put(&b, "xyz", 0); /* nothing */
	assert_false(b.failed);
	static const unsigned char want[] = {
		0xab,
		0x04, 0x03, 0x02, 0x01,                         /* little-endian u32 */
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, /* little-endian u64 */
		0xac, 0x02,                                     /* 300 as a varint */
		8, 'd', 'i', 's', 'k', '.', 'r', 'a', 'w',      /* length-prefixed string */
	};
	assert_int_equal(b.len, sizeof want);
	assert_memory_equal(b.data, want, sizeof want);

	idd_reader r;
	idd_reader_init(&r, b.data, b.len);
	uint8_t u8;
	uint32_t u32;
	uint64_t u64, v;
	char *s;
	assert_true(idd_get_u8(&r, &u8));
	assert_int_equal(u8, 0xab);
	assert_true(idd_get_u32(&r, &u32));
	assert_int_equal(u32, 0x01020304u);
	assert_true(idd_get_u64(&r, &u64));
	assert_int_equal(u64, 0x1122334455667788ull);
	assert_true(idd_get_varint(&r, &v));
	assert_int_equal(v, 300);
	assert_true(idd_get_str(&r, &s, 64));
	assert_string_equal(s, "disk.raw");
	free(s);
	assert_int_equal(idd_reader_left(&r), 0);
	assert_false(r.bad);
	/* Past the end: fails and stays failed. */
	assert_false(idd_get_u8(&r, &u8));
	assert_true(r.bad);
	idd_buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.len, 0);
}

static void test_buf_growth(void **state)
{
	(void)state;
	idd_buf b = {0};
	unsigned char chunk[1000];
	for (size_t i = 0; i < sizeof chunk; i++)
		chunk[i] = (unsigned char)i;
	for (int i = 0; i < 300; i++)
		idd_buf_put(&b, chunk, sizeof chunk);
	assert_false(b.failed);
	assert_int_equal(b.len, 300000);
	assert_true(b.cap >= b.len);
	for (int i = 0; i < 300; i++)
		assert_memory_equal(b.data + (size_t)i * 1000, chunk, sizeof chunk);
	/* A reservation that cannot be represented latches the failure. */
	assert_int_not_equal(idd_buf_reserve(&b, SIZE_MAX), 0);
	assert_true(b.failed);
	size_t len = b.len;
	idd_buf_put_u8(&b, 1);
	assert_int_equal(b.len, len); /* a failed buffer takes nothing more */
	assert_int_not_equal(idd_buf_reserve(&b, 1), 0);
	idd_buf_free(&b);
}

static void test_varint_edges(void **state)
{
	(void)state;
	static const uint64_t values[] = {0, 1, 127, 128, 16383, 16384, UINT32_MAX,
	                                  (uint64_t)1 << 63, UINT64_MAX};
	static const size_t sizes[] = {1, 1, 1, 2, 2, 3, 5, 10, 10};
	for (size_t i = 0; i < IDD_ARRAY_LEN(values); i++) {
		idd_buf b = {0};
		idd_buf_put_varint(&b, values[i]);
		assert_int_equal(b.len, sizes[i]);
		idd_reader r;
		idd_reader_init(&r, b.data, b.len);
		uint64_t v = 0;
		assert_true(idd_get_varint(&r, &v));
		assert_int_equal(v, values[i]);
		assert_int_equal(idd_reader_left(&r), 0);
		/* Cut short by one byte: refused. */
		idd_reader_init(&r, b.data, b.len - 1);
		assert_false(idd_get_varint(&r, &v));
		assert_true(r.bad);
		idd_buf_free(&b);
	}
	/* More than 64 bits of value, or more than 10 bytes: refused. */
	static const unsigned char too_big[] = {0xff, 0xff, 0xff, 0xff, 0xff,
	                                        0xff, 0xff, 0xff, 0xff, 0x02};
	static const unsigned char too_long[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x80,
	                                         0x80, 0x80, 0x80, 0x80, 0x00};
	idd_reader r;
	uint64_t v;
	idd_reader_init(&r, too_big, sizeof too_big);
	assert_false(idd_get_varint(&r, &v));
	assert_true(r.bad);
	idd_reader_init(&r, too_long, sizeof too_long);
	assert_false(idd_get_varint(&r, &v));
	assert_true(r.bad);
}

static void test_reader_hostile(void **state)
{
	(void)state;
	idd_reader r;
	char *s = NULL;
	uint32_t u32;
	/* A string longer than the caller allows. */
	static const unsigned char long_str[] = {5, 'a', 'b', 'c', 'd', 'e'};
	idd_reader_init(&r, long_str, sizeof long_str);
	assert_false(idd_get_str(&r, &s, 4));
	assert_true(r.bad);
	idd_reader_init(&r, long_str, sizeof long_str);
	assert_true(idd_get_str(&r, &s, 5));
	assert_string_equal(s, "abcde");
	free(s);
	s = NULL;
	/* An embedded NUL. */
	static const unsigned char nul_str[] = {3, 'a', 0, 'c'};
	idd_reader_init(&r, nul_str, sizeof nul_str);
	assert_false(idd_get_str(&r, &s, 64));
	assert_null(s);
	/* A length past the end. */
	static const unsigned char short_str[] = {9, 'a', 'b'};
	idd_reader_init(&r, short_str, sizeof short_str);
	assert_false(idd_get_str(&r, &s, 64));
	/* A span too long, then everything fails, even what would fit. */
	static const unsigned char four[] = {1, 2, 3, 4};
	idd_reader_init(&r, four, sizeof four);
	assert_null(idd_get_span(&r, 5));
	assert_false(idd_get_u32(&r, &u32));
	assert_int_equal(r.pos, 0);
	/* Exact fits work; zero-length spans too. */
	idd_reader_init(&r, four, sizeof four);
	assert_non_null(idd_get_span(&r, 0));
	assert_true(idd_get_u32(&r, &u32));
	assert_int_equal(u32, 0x04030201u);
	unsigned char out[1];
	assert_false(idd_get_bytes(&r, out, 1));
}

static void test_endian(void **state)
{
	(void)state;
	unsigned char b[8];
	idd_le32_put(b, 0xdeadbeefu);
	assert_memory_equal(b, "\xef\xbe\xad\xde", 4);
	assert_int_equal(idd_le32(b), 0xdeadbeefu);
	idd_le64_put(b, 0x0102030405060708ull);
	assert_memory_equal(b, "\x08\x07\x06\x05\x04\x03\x02\x01", 8);
	assert_int_equal(idd_le64(b), 0x0102030405060708ull);
	static const unsigned char be[] = {0x51, 0x46, 0x49, 0xfb, 0x00, 0x00, 0x00, 0x03};
	assert_int_equal(idd_be16(be), 0x5146);
	assert_int_equal(idd_be32(be), 0x514649fbu);
	assert_int_equal(idd_be64(be), 0x514649fb00000003ull);
	/* High bits survive (no sign extension). */
	static const unsigned char ff[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe};
	assert_int_equal(idd_be64(ff), 0xfffffffffffffffeull);
	assert_int_equal(idd_le64(ff), 0xfeffffffffffffffull);
}

static void test_checked_arithmetic(void **state)
{
	(void)state;
	uint64_t r;
	assert_true(idd_add_ok(1, 2, &r));
	assert_int_equal(r, 3);
	assert_true(idd_add_ok(UINT64_MAX - 1, 1, &r));
	assert_int_equal(r, UINT64_MAX);
	assert_false(idd_add_ok(UINT64_MAX, 1, &r));
	assert_true(idd_mul_ok((uint64_t)1 << 32, ((uint64_t)1 << 32) - 1, &r));
	assert_false(idd_mul_ok((uint64_t)1 << 32, (uint64_t)1 << 32, &r));
	assert_true(idd_mul_ok(0, UINT64_MAX, &r));
	assert_int_equal(r, 0);
	assert_true(idd_is_power_of_two(1));
	assert_true(idd_is_power_of_two(4096));
	assert_true(idd_is_power_of_two((uint64_t)1 << 63));
	assert_false(idd_is_power_of_two(0));
	assert_false(idd_is_power_of_two(4095));
	assert_false(idd_is_power_of_two(UINT64_MAX));
	assert_int_equal(idd_hex_value('0'), 0);
	assert_int_equal(idd_hex_value('9'), 9);
	assert_int_equal(idd_hex_value('a'), 10);
	assert_int_equal(idd_hex_value('F'), 15);
	assert_int_equal(idd_hex_value('g'), -1);
	assert_int_equal(idd_hex_value('/'), -1);
	assert_int_equal(idd_hex_value(0), -1);
	/* Allocation sizes that overflow are refused, with a message. */
	idd_error err = {{0}, 0};
	assert_null(idd_realloc_array(NULL, SIZE_MAX / 2, 3, &err));
	assert_non_null(strstr(err.msg, "overflows"));
	assert_int_equal(err.code, IDD_ENOMEM);
}

static void test_strings_and_paths(void **state)
{
	(void)state;
	idd_error err;
	char *p = idd_path_join("/srv/repo", "a.raw", &err);
	assert_string_equal(p, "/srv/repo/a.raw");
	free(p);
	p = idd_path_join("/srv/repo/", "sub/a.raw", &err);
	assert_string_equal(p, "/srv/repo/sub/a.raw"); /* no doubled slash */
	free(p);
	p = idd_path_join("/", "a.raw", &err);
	assert_string_equal(p, "/a.raw");
	free(p);
	p = idd_path_join("rel", "a.raw", &err);
	assert_string_equal(p, "rel/a.raw");
	free(p);

	p = idd_asprintf(&err, "%s/%04x-%llu", "dir", 0x2au, 12345678901234ull);
	assert_string_equal(p, "dir/002a-12345678901234");
	free(p);
	/* Longer than any fixed buffer: the result is exact, not cut. */
	char big[10000];
	memset(big, 'q', sizeof big - 1);
	big[sizeof big - 1] = 0;
	p = idd_asprintf(&err, "<%s>", big);
	assert_int_equal(strlen(p), sizeof big + 1);
	assert_int_equal(p[0], '<');
	assert_int_equal(p[sizeof big], '>');
	free(p);
	p = idd_asprintf(&err, "%s", "");
	assert_string_equal(p, "");
	free(p);
	p = idd_strdup("copy", &err);
	assert_string_equal(p, "copy");
	free(p);

	struct timespec t = {3, 250};
	assert_int_equal(idd_ts_ns(t), 3000000250ll);
	assert_true(idd_now_ns() > (int64_t)1600000000 * 1000000000);
}

static void test_pread_pwrite_all(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *path = idd_path_join(dir, "data", NULL);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	size_t n = (size_t)3 << 20; /* larger than one transfer may go */
	unsigned char *src = malloc(n), *back = malloc(n);
	assert_non_null(src);
	assert_non_null(back);
	tu_fill_random(src, n, 42);
	assert_int_equal(idd_pwrite_all(fd, src, n, 4096), 0);
	assert_int_equal(tu_file_size(path), n + 4096);
	assert_int_equal(idd_pread_all(fd, back, n, 4096), 0);
	assert_memory_equal(back, src, n);
	/* The hole before the data reads as zeros. */
	unsigned char head[4096];
	assert_int_equal(idd_pread_all(fd, head, sizeof head, 0), 0);
	assert_true(idd_is_zero(head, sizeof head));
	/* Reading past the end is an error (EIO), never a short success. */
	errno = 0;
	assert_int_equal(idd_pread_all(fd, back, 100, n + 4096 - 50), -1);
	assert_int_equal(errno, EIO);
	/* Errors from the system come back with errno. */
	close(fd);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	errno = 0;
	assert_int_equal(idd_pwrite_all(fd, src, 10, 0), -1);
	assert_int_equal(errno, EBADF);
	close(fd);
	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	errno = 0;
	assert_int_equal(idd_pread_all(pfd[0], back, 1, 0), -1);
	assert_int_equal(errno, ESPIPE);
	close(pfd[0]);
	close(pfd[1]);
	free(src);
	free(back);
	free(path);
	tu_rmtree(dir);
	free(dir);
}

static void test_threads_for_jobs(void **state)
{
	(void)state;
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	int want = cpus < 1 ? 1 : cpus > IDD_MAX_THREADS ? IDD_MAX_THREADS : (int)cpus;
	assert_int_equal(idd_threads_for_jobs(0), want);
	assert_int_equal(idd_threads_for_jobs(-5), want);
	assert_int_equal(idd_threads_for_jobs(1), 1);
	assert_int_equal(idd_threads_for_jobs(7), 7);
	assert_int_equal(idd_threads_for_jobs(IDD_MAX_THREADS), IDD_MAX_THREADS);
	assert_int_equal(idd_threads_for_jobs(IDD_MAX_THREADS + 1), IDD_MAX_THREADS);
	assert_int_equal(idd_threads_for_jobs(1000000), IDD_MAX_THREADS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buf_roundtrip),
		cmocka_unit_test(test_buf_growth),
		cmocka_unit_test(test_varint_edges),
		cmocka_unit_test(test_reader_hostile),
		cmocka_unit_test(test_endian),
		cmocka_unit_test(test_checked_arithmetic),
		cmocka_unit_test(test_strings_and_paths),
		cmocka_unit_test(test_pread_pwrite_all),
		cmocka_unit_test(test_threads_for_jobs),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
