/* test_file.c - base/file: local files read by range, holes found with
 * next_data, slices (archive members) over local files and over slices,
 * and errors that name the file. */
#include "testutil.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MiB ((uint64_t)1 << 20)

static char *dir;

static int setup(void **state)
{
	(void)state;
	dir = tu_mkdtemp();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	free(dir);
	return 0;
}

/* A sparse file: data [0, 8 KiB), hole, data [1 MiB, 1 MiB + 4 KiB), hole
 * up to 3 MiB.  Returns its path; *holes says whether the filesystem keeps
 * holes (SEEK_HOLE finds the first one before the end). */
static char *make_sparse(const char *name, unsigned char *content, bool *holes)
{
	char *p = idd_path_join(dir, name, NULL);
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	memset(content, 0, 3 * MiB);
	tu_fill_random(content, 8192, 1);
	tu_fill_random(content + MiB, 4096, 2);
	assert_int_equal(pwrite(fd, content, 8192, 0), 8192);
	assert_int_equal(pwrite(fd, content + MiB, 4096, (off_t)MiB), 4096);
	assert_int_equal(ftruncate(fd, (off_t)(3 * MiB)), 0);
	assert_int_equal(fsync(fd), 0);
	*holes = lseek(fd, 0, SEEK_HOLE) < (off_t)(3 * MiB);
	close(fd);
	return p;
}

static void test_local_read(void **state)
{
	(void)state;
	unsigned char data[10000];
	tu_fill_random(data, sizeof data, 9);
	char *p = tu_write(dir, "plain.raw", data, sizeof data);
	idd_file *f;
	idd_error err;
	assert_int_equal(idd_file_open_local(p, &f, &err), 0);
	assert_int_equal(f->size, sizeof data);
	assert_string_equal(f->name, p);
	assert_true(f->fd >= 0);
	unsigned char buf[10000];
	assert_int_equal(idd_file_pread(f, buf, sizeof buf, 0, &err), 0);
	assert_memory_equal(buf, data, sizeof data);
	assert_int_equal(idd_file_pread(f, buf, 17, 9983, &err), 0); /* up to the last byte */
	assert_memory_equal(buf, data + 9983, 17);
	assert_int_equal(idd_file_pread(f, buf, 0, sizeof data, &err), 0);
	/* Past the end: an error naming the file, never a short read. */
	assert_int_not_equal(idd_file_pread(f, buf, 18, 9983, &err), 0);
	assert_non_null(strstr(err.msg, p));
	assert_non_null(strstr(err.msg, "past the end"));
	assert_int_not_equal(idd_file_pread(f, buf, 1, UINT64_MAX, &err), 0);
	/* Without next_data support in the filesystem or not: the whole file
	 * is data from any offset inside it. */
	uint64_t d, e;
	assert_int_equal(idd_file_next_data(f, 100, &d, &e, &err), 0);
	assert_int_equal(d, 100);
	assert_int_equal(e, sizeof data);
	idd_file_close(f);
	idd_file_close(NULL); /* harmless */
	free(p);
}

static void test_local_errors(void **state)
{
	(void)state;
	idd_file *f;
	idd_error err = {{0}, 0};
	char *missing = idd_path_join(dir, "missing.raw", NULL);
	assert_int_not_equal(idd_file_open_local(missing, &f, &err), 0);
	assert_int_equal(err.code, IDD_ENOENT);
	assert_non_null(strstr(err.msg, missing));
	free(missing);
	/* A directory is not an image file. */
	assert_int_not_equal(idd_file_open_local(dir, &f, &err), 0);
	assert_non_null(strstr(err.msg, "not a regular file"));
	/* A file that shrinks under the reader: an error, not zeros. */
	unsigned char data[8192] = {1};
	char *p = tu_write(dir, "shrinks.raw", data, sizeof data);
	assert_int_equal(idd_file_open_local(p, &f, &err), 0);
	tu_truncate(p, 4096);
	unsigned char buf[8192];
	assert_int_not_equal(idd_file_pread(f, buf, sizeof buf, 0, &err), 0);
	assert_non_null(strstr(err.msg, "shrank"));
	idd_file_close(f);
	free(p);
}

static void test_next_data_over_holes(void **state)
{
	(void)state;
	unsigned char *content = malloc(3 * MiB);
	assert_non_null(content);
	bool holes;
	char *p = make_sparse("sparse.raw", content, &holes);
	idd_file *f;
	idd_error err;
	assert_int_equal(idd_file_open_local(p, &f, &err), 0);
	assert_int_equal(f->size, 3 * MiB);
	uint64_t d, e;
	/* Walk data runs from the start: they cover every non-zero byte, and
	 * what lies between them reads as zeros. */
	uint64_t off = 0, covered = 0;
	unsigned char *buf = malloc(3 * MiB);
	assert_non_null(buf);
	while (off < f->size) {
		assert_int_equal(idd_file_next_data(f, off, &d, &e, &err), 0);
		assert_true(d >= off && d <= e && e <= f->size);
		assert_true(idd_is_zero(content + off, (size_t)(d - off))); /* a hole */
		if (d == f->size)
			break;
		assert_true(e > d);
		assert_int_equal(idd_file_pread(f, buf, (size_t)(e - d), d, &err), 0);
		assert_memory_equal(buf, content + d, (size_t)(e - d));
		covered += e - d;
		off = e;
	}
	if (holes) {
		/* This filesystem keeps holes: the runs are the written pieces
		 * (rounded to its blocks), nothing more. */
		assert_int_equal(idd_file_next_data(f, 0, &d, &e, &err), 0);
		assert_int_equal(d, 0);
		assert_true(e >= 8192 && e < MiB);
		assert_int_equal(idd_file_next_data(f, 8192 + 65536, &d, &e, &err), 0);
		assert_int_equal(d, MiB);
		assert_true(e >= MiB + 4096 && e < 3 * MiB);
		/* Only a hole after the last data: data = end = size. */
		assert_int_equal(idd_file_next_data(f, 2 * MiB, &d, &e, &err), 0);
		assert_int_equal(d, 3 * MiB);
		assert_int_equal(e, 3 * MiB);
		assert_true(covered < MiB);
	} else {
		print_message("note: %s keeps no holes; only coverage was checked\n", dir);
	}
	/* At or past the end: nothing more. */
	assert_int_equal(idd_file_next_data(f, 3 * MiB, &d, &e, &err), 0);
	assert_int_equal(d, 3 * MiB);
	assert_int_equal(e, 3 * MiB);
	assert_int_equal(idd_file_next_data(f, UINT64_MAX, &d, &e, &err), 0);
	assert_int_equal(d, 3 * MiB);
	idd_file_close(f);
	free(buf);
	free(content);
	free(p);
}

static void test_slices(void **state)
{
	(void)state;
	unsigned char *content = malloc(3 * MiB);
	assert_non_null(content);
	bool holes;
	char *p = make_sparse("member.tar", content, &holes);
	idd_file *parent, *s, *inner;
	idd_error err;
	assert_int_equal(idd_file_open_local(p, &parent, &err), 0);
	/* A member from 4096 to 2 MiB. */
	assert_int_equal(idd_file_open_slice(parent, false, 4096, 2 * MiB - 4096, "member.tar/disk.raw",
	                                     &s, &err), 0);
	assert_int_equal(s->size, 2 * MiB - 4096);
	assert_int_equal(s->fd, -1);
	assert_string_equal(s->name, "member.tar/disk.raw");
	unsigned char buf[8192];
	assert_int_equal(idd_file_pread(s, buf, 4096, 0, &err), 0);
	assert_memory_equal(buf, content + 4096, 4096);
	assert_int_equal(idd_file_pread(s, buf, 4096, MiB - 4096, &err), 0);
	assert_memory_equal(buf, content + MiB, 4096);
	/* The slice ends where the member ends, not where the file does. */
	assert_int_not_equal(idd_file_pread(s, buf, 2, s->size - 1, &err), 0);
	assert_non_null(strstr(err.msg, "member.tar/disk.raw"));
	/* Data runs in the slice's own offsets, clipped to it. */
	uint64_t d, e;
	assert_int_equal(idd_file_next_data(s, 0, &d, &e, &err), 0);
	assert_int_equal(d, 0);
	assert_true(e <= s->size);
	if (holes) {
		assert_int_equal(idd_file_next_data(s, 8192, &d, &e, &err), 0);
		assert_int_equal(d, MiB - 4096);
		assert_int_equal(idd_file_next_data(s, MiB + 4096, &d, &e, &err), 0);
		assert_int_equal(d, s->size);
		assert_int_equal(e, s->size);
	}
	/* A slice of a slice adds the offsets; it owns its parent slice. */
	assert_int_equal(idd_file_open_slice(s, true, MiB - 8192, 8192, "inner", &inner, &err), 0);
	assert_int_equal(idd_file_pread(inner, buf, 8192, 0, &err), 0);
	assert_memory_equal(buf, content + MiB - 4096, 8192);
	idd_file_close(inner); /* closes s, not parent */
	assert_int_equal(idd_file_pread(parent, buf, 10, 0, &err), 0);
	/* A range outside the parent is refused; with ownership the parent is
	 * closed all the same (ASan would see a leak otherwise). */
	assert_int_not_equal(idd_file_open_slice(parent, false, 3 * MiB - 10, 11, "x", &s, &err), 0);
	assert_non_null(strstr(err.msg, "outside the file"));
	assert_int_not_equal(idd_file_open_slice(parent, false, UINT64_MAX, 2, "x", &s, &err), 0);
	assert_int_not_equal(idd_file_open_slice(parent, true, 0, 3 * MiB + 1, "x", &s, &err), 0);
	free(content);
	free(p);
}

/* A byte source without next_data: everything is data. */
struct mem {
	const unsigned char *p;
};

static int mem_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	struct mem *m = f->priv;
	if (off > f->size || len > f->size - off)
		return idd_fail(err, "%s: past the end", f->name);
	memcpy(buf, m->p + off, len);
	return IDD_OK;
}

static void mem_close(idd_file *f) { free(f->priv); }

static void test_source_without_next_data(void **state)
{
	(void)state;
	static const struct idd_file_ops ops = {mem_pread, NULL, mem_close};
	static const unsigned char bytes[100] = {0};
	idd_file *f = calloc(1, sizeof *f);
	struct mem *m = calloc(1, sizeof *m);
	assert_non_null(f);
	assert_non_null(m);
	m->p = bytes;
	f->ops = &ops;
	f->name = strdup("mem");
	f->size = sizeof bytes;
	f->fd = -1;
	f->priv = m;
	uint64_t d, e;
	idd_error err;
	assert_int_equal(idd_file_next_data(f, 0, &d, &e, &err), 0);
	assert_int_equal(d, 0);
	assert_int_equal(e, 100);
	assert_int_equal(idd_file_next_data(f, 60, &d, &e, &err), 0);
	assert_int_equal(d, 60);
	assert_int_equal(e, 100);
	assert_int_equal(idd_file_next_data(f, 500, &d, &e, &err), 0);
	assert_int_equal(d, 100);
	assert_int_equal(e, 100);
	/* A slice over it inherits "everything is data". */
	idd_file *s;
	assert_int_equal(idd_file_open_slice(f, true, 10, 50, "mem/slice", &s, &err), 0);
	assert_int_equal(idd_file_next_data(s, 5, &d, &e, &err), 0);
	assert_int_equal(d, 5);
	assert_int_equal(e, 50);
	idd_file_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_local_read),
		cmocka_unit_test(test_local_errors),
		cmocka_unit_test(test_next_data_over_holes),
		cmocka_unit_test(test_slices),
		cmocka_unit_test(test_source_without_next_data),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
