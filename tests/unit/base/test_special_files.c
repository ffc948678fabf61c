/* test_special_files.c - local byte sources: FIFOs, devices and links refused
 * without waiting, regular files read normally. */
#include "testutil.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;

static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

/* A FIFO with no writer: open() without O_NONBLOCK would wait forever (the
 * test would hang); it is refused at once, naming the file and the kind. */
static void test_fifo_refused_without_waiting(void **state)
{
	(void)state;
	char *p = idd_path_join(dir, "a.raw", NULL);
	assert_int_equal(mkfifo(p, 0644), 0);
	idd_file *f = NULL;
	idd_error err;
	alarm(10); /* a hang fails the test instead of blocking the suite */
	assert_int_equal(idd_file_open_local(p, &f, &err), IDD_EPERM);
	alarm(0);
	assert_non_null(strstr(err.msg, p));
	assert_non_null(strstr(err.msg, "FIFO"));
	void *data;
	size_t len;
	alarm(10);
	assert_int_equal(idd_read_file(p, 1 << 20, &data, &len, &err), IDD_EPERM);
	alarm(0);
	assert_non_null(strstr(err.msg, "not a regular file"));
	free(p);
}

static void test_devices_and_directories_refused(void **state)
{
	(void)state;
	idd_file *f = NULL;
	idd_error err;
	assert_int_equal(idd_file_open_local("/dev/null", &f, &err), IDD_EPERM);
	assert_non_null(strstr(err.msg, "character device"));
	assert_int_equal(idd_file_open_local(dir, &f, &err), IDD_EPERM);
	assert_non_null(strstr(err.msg, "directory"));
}

/* Regular files read as before (O_NONBLOCK cleared); a link is followed
 * unless IDD_FILE_NOFOLLOW. */
static void test_regular_and_links(void **state)
{
	(void)state;
	char *p = tu_write(dir, "a.raw", "hello", 5);
	char *l = idd_path_join(dir, "l.raw", NULL);
	assert_int_equal(symlink("a.raw", l), 0);
	idd_file *f = NULL;
	idd_error err;
	assert_int_equal(idd_file_open_local(p, &f, &err), IDD_OK);
	assert_int_equal(f->size, 5);
	assert_int_equal(fcntl(f->fd, F_GETFL) & O_NONBLOCK, 0);
	char buf[5];
	assert_int_equal(idd_file_pread(f, buf, 5, 0, &err), IDD_OK);
	assert_memory_equal(buf, "hello", 5);
	idd_file_close(f);
	assert_int_equal(idd_file_open_local(l, &f, &err), IDD_OK);
	idd_file_close(f);
	assert_int_equal(idd_file_open_local_flags(l, IDD_FILE_NOFOLLOW, &f, &err), IDD_EPERM);
	assert_non_null(strstr(err.msg, "symbolic link"));
	free(p);
	free(l);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fifo_refused_without_waiting, setup, teardown),
		cmocka_unit_test_setup_teardown(test_devices_and_directories_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_regular_and_links, setup, teardown),
	};
	return cmocka_run_group_tests_name("special files", tests, NULL, NULL);
}
