/* test_indexfile.c - the index file container: round trip, atomic
 * replacement, and rejection of truncated, corrupted and newer files. */
#include "testutil.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>
#include <unistd.h>

static const char MAGIC[8] = {'I', 'D', 'D', '-', 'T', 'S', 'T', 0};

static char *dir;

static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

static char *write_sample(bool compress, size_t len)
{
	char *p = idd_path_join(dir, "f", NULL);
	unsigned char *data = malloc(len + 1);
	tu_fill_random(data, len, 7);
	memset(data, 0, len / 2); /* something to compress */
	idd_error err;
	assert_int_equal(idd_indexfile_write(p, MAGIC, 3, data, len, compress, &err), IDD_OK);
	free(data);
	return p;
}

static void test_round_trip(void **state)
{
	(void)state;
	for (int c = 0; c < 2; c++) {
		for (size_t len = 0; len < 200000; len = len * 3 + 1) {
			char *p = write_sample(c, len);
			unsigned char *want = malloc(len + 1);
			tu_fill_random(want, len, 7);
			memset(want, 0, len / 2);
			void *got;
			size_t glen;
			uint32_t ver;
			idd_error err;
			assert_int_equal(idd_indexfile_read(p, MAGIC, 3, &got, &glen, &ver, &err), IDD_OK);
			assert_int_equal(glen, len);
			assert_int_equal(ver, 3);
			if (len)
				assert_memory_equal(got, want, len);
			free(got);
			free(want);
			free(p);
		}
	}
	/* no temporary files left behind */
	char *tmpglob = idd_asprintf(NULL, "ls %s | grep -c tmp", dir);
	assert_int_not_equal(system(tmpglob), 0);
	free(tmpglob);
}

static void expect_reject(const char *p, uint32_t maxver, const char *needle)
{
	void *got = NULL;
	size_t glen;
	idd_error err = {{0}, 0};
	int rc = idd_indexfile_read(p, MAGIC, maxver, &got, &glen, NULL, &err);
	assert_int_not_equal(rc, IDD_OK);
	assert_null(got);
	assert_non_null(strstr(err.msg, p)); /* names the file */
	if (!strstr(err.msg, needle))
		fail_msg("message '%s' lacks '%s'", err.msg, needle);
}

static void test_truncated(void **state)
{
	(void)state;
	char *p = write_sample(true, 5000);
	uint64_t size = tu_file_size(p);
	for (uint64_t cut = 0; cut < size; cut += 1 + size / 37) {
		char *q = write_sample(true, 5000);
		tu_truncate(q, cut);
		expect_reject(q, 3, "truncated");
		free(q);
	}
	free(p);
}

static void test_corrupted_every_region(void **state)
{
	(void)state;
	char *p = write_sample(true, 5000);
	uint64_t size = tu_file_size(p);
	free(p);
	for (uint64_t off = 16; off < size; off += 1 + size / 53) {
		char *q = write_sample(true, 5000);
		tu_flip_byte(q, off);
		void *got = NULL;
		size_t glen;
		idd_error err = {{0}, 0};
		assert_int_not_equal(idd_indexfile_read(q, MAGIC, 3, &got, &glen, NULL, &err), IDD_OK);
		assert_non_null(strstr(err.msg, q));
		free(q);
	}
}

static void test_newer_version_and_magic(void **state)
{
	(void)state;
	char *p = write_sample(false, 100);
	expect_reject(p, 2, "newer");
	static const char OTHER[8] = {'I', 'D', 'D', '-', 'X', 'X', 'X', 0};
	void *got = NULL;
	size_t glen;
	idd_error err;
	assert_int_not_equal(idd_indexfile_read(p, OTHER, 3, &got, &glen, NULL, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "magic"));
	free(p);
	char *missing = idd_path_join(dir, "nope", NULL);
	assert_int_equal(idd_indexfile_read(missing, MAGIC, 3, &got, &glen, NULL, &err), IDD_ENOENT);
	free(missing);
}

/* A small file declaring a huge payload (a zstd "bomb") is refused before
 * anything is allocated for it, unless the caller expects that size. */
static void test_decompression_bomb(void **state)
{
	(void)state;
	size_t big = (size_t)80 << 20; /* zeros: compresses to a few KiB */
	unsigned char *zeros = calloc(1, big);
	assert_non_null(zeros);
	char *p = idd_path_join(dir, "bomb", NULL);
	idd_error err;
	assert_int_equal(idd_indexfile_write(p, MAGIC, 1, zeros, big, true, &err), IDD_OK);
	free(zeros);
	assert_true(tu_file_size(p) < 64 * 1024);
	expect_reject(p, 3, "at most");
	void *file, *got;
	size_t flen, glen;
	assert_int_equal(idd_read_file(p, 1 << 20, &file, &flen, &err), IDD_OK);
	assert_int_equal(idd_indexfile_parse_limit(p, file, flen, MAGIC, 3, big, &got, &glen, NULL, &err),
	                 IDD_OK);
	assert_int_equal(glen, big);
	assert_true(idd_is_zero(got, glen));
	free(got);
	assert_int_not_equal(idd_indexfile_parse_limit(p, file, flen, MAGIC, 3, big - 1, &got, &glen, NULL, &err),
	                     IDD_OK);
	free(file);
	free(p);
}

/* A header declaring more than its zstd frame holds is corrupt, found
 * before anything is allocated for the declared size (a hostile 10 MB file
 * could otherwise ask for gigabytes and fail as "out of memory"). */
static void test_header_disagrees_with_frame(void **state)
{
	(void)state;
	unsigned char zeros[1000] = {0}, f[IDD_IF_HEADER + 256 + IDD_IF_TRAILER];
	size_t z = ZSTD_compress(f + IDD_IF_HEADER, 256, zeros, sizeof zeros, 1);
	assert_false(ZSTD_isError(z));
	memcpy(f, MAGIC, 8);
	idd_le32_put(f + 8, 1);
	idd_le32_put(f + 12, IDD_IF_ZSTD);
	idd_le64_put(f + 16, (uint64_t)1 << 36); /* 64 GiB declared */
	idd_le64_put(f + 24, z);
	idd_error err;
	assert_int_equal(idd_sha256(f, IDD_IF_HEADER + z, f + IDD_IF_HEADER + z, &err), IDD_OK);
	void *got;
	size_t glen;
	assert_int_equal(idd_indexfile_parse_limit("hostile", f, IDD_IF_HEADER + z + IDD_IF_TRAILER, MAGIC, 1,
	                                           (uint64_t)1 << 37, &got, &glen, NULL, &err),
	                 IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "hostile: corrupt header"));
	assert_non_null(strstr(err.msg, "the zstd frame holds 1000"));
}

/* A file of another kind is named by what it should have been. */
static void test_bad_magic_names_the_kind(void **state)
{
	(void)state;
	char *p = idd_path_join(dir, "catalog", NULL);
	idd_error err;
	static const char MAP[8] = {'I', 'D', 'D', '-', 'M', 'A', 'P', 0};
	assert_int_equal(idd_indexfile_write(p, MAP, 1, "x", 1, true, &err), IDD_OK);
	idd_catalog *cat;
	assert_int_not_equal(idd_catalog_load(dir, &cat, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "catalog: not an imgdedup catalog file (bad magic)"));
	free(p);
}

static void test_lock(void **state)
{
	(void)state;
	idd_error err;
	int fd1, fd2;
	assert_int_equal(idd_lock(dir, true, &fd1, &err), IDD_OK);
	/* flock locks belong to the open file description: a second open in
	 * the same process conflicts just as another process would */
	assert_int_equal(idd_lock(dir, true, &fd2, &err), IDD_EBUSY);
	assert_non_null(strstr(err.msg, "locked"));
	idd_unlock(fd1);
	assert_int_equal(idd_lock(dir, true, &fd2, &err), IDD_OK);
	idd_unlock(fd2);
}

/* A batch: nothing under a final name before commit; after it every file
 * reads back; a batch freed without commit leaves no temporary. */
static void test_batch(void **state)
{
	(void)state;
	idd_indexfile_batch b = {0};
	idd_error err;
	char *p[3];
	for (int i = 0; i < 3; i++) {
		char name[16];
		snprintf(name, sizeof name, "b%d", i);
		p[i] = idd_path_join(dir, name, NULL);
		assert_int_equal(idd_indexfile_batch_add(&b, p[i], MAGIC, 1, name, 2, i == 1, &err), IDD_OK);
		assert_int_not_equal(access(p[i], F_OK), 0);
	}
	assert_int_equal(idd_indexfile_batch_commit(&b, dir, &err), IDD_OK);
	for (int i = 0; i < 3; i++) {
		void *got;
		size_t len;
		assert_int_equal(idd_indexfile_read(p[i], MAGIC, 1, &got, &len, NULL, &err), IDD_OK);
		assert_int_equal(len, 2);
		assert_memory_equal(got, i == 0 ? "b0" : i == 1 ? "b1" : "b2", 2);
		free(got);
		unlink(p[i]);
	}
	assert_int_equal(idd_indexfile_batch_add(&b, p[0], MAGIC, 1, "x", 1, false, &err), IDD_OK);
	idd_indexfile_batch_free(&b);
	assert_int_not_equal(access(p[0], F_OK), 0);
	DIR *d = opendir(dir);
	struct dirent *de;
	while ((de = readdir(d)))
		assert_null(strstr(de->d_name, ".tmp."));
	closedir(d);
	for (int i = 0; i < 3; i++)
		free(p[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupted_every_region, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_version_and_magic, setup, teardown),
		cmocka_unit_test_setup_teardown(test_decompression_bomb, setup, teardown),
		cmocka_unit_test_setup_teardown(test_header_disagrees_with_frame, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_magic_names_the_kind, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch, setup, teardown),
	};
	return cmocka_run_group_tests_name("indexfile", tests, NULL, NULL);
}
