/* test_outfile.c - -o PATH: exclusive temporaries, links written through,
 * devices and FIFOs written directly, every write error reported. */
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;

static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

static char *slurp(const char *path)
{
	void *data;
	size_t len;
	idd_error err;
	if (idd_read_file(path, 1 << 20, &data, &len, &err))
		fail_msg("%s", err.msg);
	char *s = realloc(data, len + 1);
	s[len] = 0;
	return s;
}

static int write_text(const char *path, const char *text, idd_error *err)
{
	idd_outfile o;
	int rc = idd_outfile_open(&o, path, err);
	if (rc)
		return rc;
	fputs(text, o.f);
	return idd_outfile_commit(&o, err);
}

/* only the named files are left in dir (no temporaries) */
static int entries(void)
{
	char *cmd = idd_asprintf(NULL, "exit $(ls -A %s | wc -l)", dir);
	int rc = WEXITSTATUS(system(cmd));
	free(cmd);
	return rc;
}

static void test_new_and_replaced_regular_file(void **state)
{
	(void)state;
	idd_error err;
	char *p = idd_path_join(dir, "out.csv", NULL);
	assert_int_equal(write_text(p, "one\n", &err), IDD_OK);
	char *s = slurp(p);
	assert_string_equal(s, "one\n");
	free(s);
	assert_int_equal(chmod(p, 0640), 0);
	assert_int_equal(write_text(p, "two\n", &err), IDD_OK);
	s = slurp(p);
	assert_string_equal(s, "two\n");
	free(s);
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0640); /* the replaced file's mode is kept */
	assert_int_equal(entries(), 1);
	free(p);
}

/* A link at PATH is written through: the file it names gets the content,
 * the link stays a link.  A dangling link is refused. */
static void test_symlink_written_through(void **state)
{
	(void)state;
	idd_error err;
	char *real = tu_write(dir, "real.csv", "old\n", 4);
	char *link = idd_path_join(dir, "link.csv", NULL);
	assert_int_equal(symlink("real.csv", link), 0);
	assert_int_equal(write_text(link, "new\n", &err), IDD_OK);
	struct stat st;
	assert_int_equal(lstat(link, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	char *s = slurp(real);
	assert_string_equal(s, "new\n");
	free(s);
	char *dangling = idd_path_join(dir, "dangling.csv", NULL);
	assert_int_equal(symlink("nowhere/x.csv", dangling), 0);
	assert_int_equal(write_text(dangling, "x\n", &err), IDD_EPERM);
	assert_non_null(strstr(err.msg, "dangling"));
	assert_int_equal(lstat(dangling, &st), 0);
	assert_true(S_ISLNK(st.st_mode));
	assert_int_equal(entries(), 3);
	free(real);
	free(link);
	free(dangling);
}

/* The temporary is created exclusively: a link planted where an older
 * version put its temporary (PATH.tmp.PID) is not followed. */
static void test_planted_temporary_not_followed(void **state)
{
	(void)state;
	idd_error err;
	char *victim = tu_write(dir, "victim", "keep\n", 5);
	char *p = idd_path_join(dir, "out.csv", NULL);
	char *planted = idd_asprintf(NULL, "%s.tmp.%ld", p, (long)getpid());
	assert_int_equal(symlink(victim, planted), 0);
	assert_int_equal(write_text(p, "data\n", &err), IDD_OK);
	char *s = slurp(victim);
	assert_string_equal(s, "keep\n");
	free(s);
	s = slurp(p);
	assert_string_equal(s, "data\n");
	free(s);
	free(victim);
	free(p);
	free(planted);
}

/* Devices and FIFOs are written directly, never replaced; a directory is
 * refused; a device that fails writes is an error naming it. */
static void test_devices_and_fifos(void **state)
{
	(void)state;
	idd_error err;
	struct stat st;
	assert_int_equal(write_text("/dev/null", "gone\n", &err), IDD_OK);
	assert_int_equal(stat("/dev/null", &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	assert_int_equal(write_text("/dev/full", "no room\n", &err), IDD_EIO);
	assert_non_null(strstr(err.msg, "/dev/full: No space left on device"));
	assert_int_equal(stat("/dev/full", &st), 0);
	assert_true(S_ISCHR(st.st_mode));
	char *fifo = idd_path_join(dir, "fifo", NULL);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	int rd = open(fifo, O_RDWR); /* keeps a reader so the writer's open does not wait */
	assert_true(rd >= 0);
	assert_int_equal(write_text(fifo, "piped\n", &err), IDD_OK);
	char buf[16] = {0};
	assert_int_equal(read(rd, buf, sizeof buf - 1), 6);
	assert_string_equal(buf, "piped\n");
	close(rd);
	assert_int_equal(lstat(fifo, &st), 0);
	assert_true(S_ISFIFO(st.st_mode));
	assert_int_equal(write_text(dir, "x", &err), IDD_EPERM);
	assert_non_null(strstr(err.msg, "directory"));
	assert_int_equal(entries(), 1);
	free(fifo);
}

/* A write failing half-way (here: the file size limit) leaves the old
 * file in place, no temporary behind, and says why. */
static void test_write_error_keeps_old_file(void **state)
{
	(void)state;
	idd_error err;
	char *p = tu_write(dir, "big.svg", "old\n", 4);
	struct rlimit old, lim = {.rlim_cur = 65536, .rlim_max = RLIM_INFINITY};
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim.rlim_max = old.rlim_max;
	void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	idd_outfile o;
	assert_int_equal(idd_outfile_open(&o, p, &err), IDD_OK);
	char chunk[4096];
	memset(chunk, 'x', sizeof chunk);
	for (int i = 0; i < 64; i++)
		fwrite(chunk, 1, sizeof chunk, o.f);
	int rc = idd_outfile_commit(&o, &err);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, prev);
	assert_int_equal(rc, IDD_EIO);
	assert_non_null(strstr(err.msg, "big.svg"));
	assert_non_null(strstr(err.msg, strerror(EFBIG)));
	char *s = slurp(p);
	assert_string_equal(s, "old\n");
	free(s);
	assert_int_equal(entries(), 1);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_new_and_replaced_regular_file, setup, teardown),
		cmocka_unit_test_setup_teardown(test_symlink_written_through, setup, teardown),
		cmocka_unit_test_setup_teardown(test_planted_temporary_not_followed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_devices_and_fifos, setup, teardown),
		cmocka_unit_test_setup_teardown(test_write_error_keeps_old_file, setup, teardown),
	};
	return cmocka_run_group_tests_name("outfile", tests, NULL, NULL);
}
