/* test_indexdir.c - the index directory's rules: temporaries' names, the
 * iterator's sorting of files from leftovers, the garbage collector (what
 * it removes and what it never touches), directory sizes, and the streamed
 * index-file writer (a finished file reads back, an aborted one leaves
 * nothing). */
#include "testutil.h"
#include "index/indexdir.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char MAGIC[8] = {'I', 'D', 'D', '-', 'T', 'S', 'T', 0};

static char *dir;

static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

/* The id of a process that has exited and been reaped. */
static long dead_pid(void)
{
	pid_t p = fork();
	assert_true(p >= 0);
	if (p == 0)
		_exit(0);
	assert_int_equal(waitpid(p, NULL, 0), p);
	return (long)p;
}

static char *put(const char *name, size_t len)
{
	char buf[64] = {0};
	assert_true(len <= sizeof buf);
	return tu_write(dir, name, buf, len);
}

static bool exists(const char *name)
{
	char *p = idd_path_join(dir, name, NULL);
	struct stat st;
	bool r = lstat(p, &st) == 0;
	free(p);
	return r;
}

static void test_tmp_names(void **state)
{
	(void)state;
	idd_error err;
	char *t = idd_tmp_path("/x/catalog", &err);
	char want[64];
	snprintf(want, sizeof want, "/x/catalog.tmp.%ld", (long)getpid());
	assert_string_equal(t, want);
	long pid = -1;
	assert_true(idd_tmp_name(strrchr(t, '/') + 1, &pid));
	assert_int_equal(pid, (long)getpid());
	free(t);
	assert_true(idd_tmp_name("sort.tmp.123.Ab12Cd", &pid));
	assert_int_equal(pid, 123);
	assert_true(idd_tmp_name("out.raw.tmp.XyZ123", &pid)); /* mkstemp's: no pid */
	assert_int_equal(pid, 0);
	assert_true(idd_tmp_name("a.tmp.12x", &pid));
	assert_int_equal(pid, 0);
	assert_false(idd_tmp_name("catalog", &pid));
	assert_false(idd_tmp_name("a.tmp", NULL));
}

struct seen {
	char names[16][64];
	idd_entry_kind kinds[16];
	bool alive[16];
	int n;
	int stop_after; /* 0: never */
};

static int record(void *ctx, const idd_dir_entry *e, idd_error *err)
{
	struct seen *s = ctx;
	assert_true(s->n < 16);
	snprintf(s->names[s->n], sizeof s->names[0], "%s", e->rel);
	s->kinds[s->n] = e->kind;
	s->alive[s->n] = e->writer_alive;
	s->n++;
	if (s->stop_after && s->n == s->stop_after)
		return idd_fail(err, "stop");
	return IDD_OK;
}

static int find(const struct seen *s, const char *name)
{
	for (int i = 0; i < s->n; i++)
		if (!strcmp(s->names[i], name))
			return i;
	return -1;
}

/* index files, a dead writer's and a live writer's temporary, a dotfile,
 * a subdirectory holding a file, and a fifo */
static void populate(long dead)
{
	char name[64];
	free(put("a", 10));
	free(put("b", 20));
	snprintf(name, sizeof name, "c.tmp.%ld", dead);
	free(put(name, 5));
	snprintf(name, sizeof name, "d.tmp.%ld", (long)getpid());
	free(put(name, 6));
	free(put(".nfs000123", 7));
	char *sub = idd_path_join(dir, "sub", NULL);
	assert_int_equal(mkdir(sub, 0755), 0);
	free(tu_write(sub, "e", "eeee", 4));
	free(sub);
	char *fifo = idd_path_join(dir, "fifo", NULL);
	assert_int_equal(mkfifo(fifo, 0644), 0);
	free(fifo);
}

static void test_iterator(void **state)
{
	(void)state;
	long dead = dead_pid();
	populate(dead);
	char name[64];
	struct seen files = {0}, left = {0};
	idd_error err;
	assert_int_equal(idd_dir_for_each(dir, 0, record, record, &files, &err),
	                 IDD_OK);
	/* one callback for both: 7 entries, each once */
	assert_int_equal(files.n, 7);

	memset(&files, 0, sizeof files);
	assert_int_equal(idd_dir_for_each(dir, 0, record, NULL, &files, &err), IDD_OK);
	assert_int_equal(files.n, 2);
	assert_true(find(&files, "a") >= 0 && find(&files, "b") >= 0);
	assert_int_equal(files.kinds[0], IDD_ENTRY_FILE);

	assert_int_equal(idd_dir_for_each(dir, 0, NULL, record, &left, &err), IDD_OK);
	assert_int_equal(left.n, 5);
	snprintf(name, sizeof name, "c.tmp.%ld", dead);
	int i = find(&left, name);
	assert_true(i >= 0);
	assert_int_equal(left.kinds[i], IDD_ENTRY_TEMP);
	assert_false(left.alive[i]);
	snprintf(name, sizeof name, "d.tmp.%ld", (long)getpid());
	i = find(&left, name);
	assert_true(i >= 0);
	assert_int_equal(left.kinds[i], IDD_ENTRY_TEMP);
	assert_true(left.alive[i]);
	assert_int_equal(left.kinds[find(&left, ".nfs000123")], IDD_ENTRY_DOT);
	assert_int_equal(left.kinds[find(&left, "sub")], IDD_ENTRY_OTHER);
	assert_int_equal(left.kinds[find(&left, "fifo")], IDD_ENTRY_OTHER);

	/* recursive: the subdirectory's file, named relative to the root */
	memset(&files, 0, sizeof files);
	assert_int_equal(idd_dir_for_each(dir, IDD_DIR_RECURSE, record, NULL, &files, &err), IDD_OK);
	assert_int_equal(files.n, 3);
	assert_true(find(&files, "sub/e") >= 0);

	/* a callback's failure stops the walk and is returned */
	memset(&files, 0, sizeof files);
	files.stop_after = 1;
	assert_int_equal(idd_dir_for_each(dir, 0, record, record, &files, &err), IDD_ERR);
	assert_int_equal(files.n, 1);
	assert_string_equal(err.msg, "stop");

	/* a missing directory is empty */
	char *missing = idd_path_join(dir, "nothing-here", NULL);
	memset(&files, 0, sizeof files);
	assert_int_equal(idd_dir_for_each(missing, 0, record, record, &files, &err), IDD_OK);
	assert_int_equal(files.n, 0);
	free(missing);
}

static bool keep_a(void *ctx, const idd_dir_entry *e)
{
	int *offered = ctx;
	(*offered)++;
	return !strcmp(e->name, "a");
}

static void test_gc(void **state)
{
	(void)state;
	long dead = dead_pid();
	populate(dead);
	free(put("f.tmp.notapid", 3));
	char dead_tmp[64], live_tmp[64];
	snprintf(dead_tmp, sizeof dead_tmp, "c.tmp.%ld", dead);
	snprintf(live_tmp, sizeof live_tmp, "d.tmp.%ld", (long)getpid());
	uint64_t removed = 99;
	idd_error err;
	/* where writers may not hold the lock: only the dead writer's temporary */
	assert_int_equal(idd_dir_gc(dir, idd_keep_live_temporaries, NULL, &removed, &err), IDD_OK);
	assert_int_equal(removed, 0);
	assert_false(exists(dead_tmp));
	assert_true(exists(live_tmp));
	assert_true(exists("f.tmp.notapid"));
	assert_true(exists("a") && exists("b"));

	/* under the lock: what keep rejects, temporaries included */
	int offered = 0;
	assert_int_equal(idd_dir_gc(dir, keep_a, &offered, &removed, &err), IDD_OK);
	assert_int_equal(offered, 4); /* a, b, the two temporaries */
	assert_int_equal(removed, 1); /* b; temporaries are not counted */
	assert_true(exists("a"));
	assert_false(exists("b"));
	assert_false(exists(live_tmp));
	assert_false(exists("f.tmp.notapid"));
	/* never touched */
	assert_true(exists(".nfs000123"));
	assert_true(exists("sub"));
	assert_true(exists("sub/e"));
	assert_true(exists("fifo"));

	/* nothing left to remove: a second run removes nothing */
	assert_int_equal(idd_dir_gc(dir, keep_a, &offered, &removed, &err), IDD_OK);
	assert_int_equal(removed, 0);
	/* keep NULL: every file goes */
	assert_int_equal(idd_dir_gc(dir, NULL, NULL, &removed, &err), IDD_OK);
	assert_int_equal(removed, 1);
	assert_false(exists("a"));
	assert_true(exists(".nfs000123"));
}

static void test_gc_reports_failure(void **state)
{
	(void)state;
	idd_error err;
	/* not a directory: the walk's failure is the collector's */
	char *f = put("plain", 1);
	assert_int_equal(idd_dir_gc(f, NULL, NULL, NULL, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "plain"));
	free(f);
	if (geteuid() == 0)
		return; /* root removes files from a read-only directory */
	char *sub = idd_path_join(dir, "ro", NULL);
	assert_int_equal(mkdir(sub, 0755), 0);
	free(tu_write(sub, "junk", "j", 1));
	assert_int_equal(chmod(sub, 0555), 0);
	assert_int_not_equal(idd_dir_gc(sub, NULL, NULL, NULL, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "junk"));
	assert_int_equal(chmod(sub, 0755), 0);
	free(sub);
}

static void test_dir_bytes(void **state)
{
	(void)state;
	populate(dead_pid());
	/* a (10) + b (20): no temporaries, dotfiles, subdirectories */
	assert_int_equal(idd_dir_bytes(dir, false), 30);
	char *a = idd_path_join(dir, "a", NULL), *sub = idd_path_join(dir, "sub", NULL);
	char *second = idd_path_join(sub, "a-link", NULL);
	assert_int_equal(link(a, second), 0);
	assert_int_equal(idd_dir_bytes(dir, true), 20); /* a has two names now */
	assert_int_equal(idd_dir_bytes(dir, false), 30);
	free(a);
	free(sub);
	free(second);
	char *missing = idd_path_join(dir, "missing", NULL);
	assert_int_equal(idd_dir_bytes(missing, false), 0);
	free(missing);
}

static void *pattern(size_t len, uint64_t seed)
{
	unsigned char *p = malloc(len + 1);
	tu_fill_random(p, len, seed);
	return p;
}

static void test_stream_finish_reads_back(void **state)
{
	(void)state;
	char *p = idd_path_join(dir, "streamed", NULL);
	size_t big = (3u << 20) + 5; /* more than the writer's buffer */
	unsigned char *a = pattern(100, 1), *b = pattern(big, 2), *c = pattern(36, 3);
	idd_indexfile_out o;
	idd_error err;
	assert_int_equal(idd_indexfile_out_begin(&o, p, MAGIC, 2, &err), IDD_OK);
	assert_int_equal(idd_indexfile_out_append(&o, a, 100, &err), IDD_OK);
	assert_int_equal(idd_indexfile_out_append(&o, b, big, &err), IDD_OK);
	for (int i = 0; i < 1000; i++)
		assert_int_equal(idd_indexfile_out_append(&o, c, 36, &err), IDD_OK);
	uint64_t plen = 100 + big + 36000;
	assert_int_equal(idd_indexfile_out_payload(&o), plen);
	assert_false(exists("streamed")); /* only under its temporary name so far */
	uint64_t size = 0;
	assert_int_equal(idd_indexfile_out_finish(&o, &size, &err), IDD_OK);
	assert_int_equal(size, IDD_IF_HEADER + plen + IDD_IF_TRAILER);
	assert_int_equal(tu_file_size(p), size);
	idd_indexfile_out_abort(&o); /* harmless after finish */
	assert_true(exists("streamed"));

	void *got;
	size_t glen;
	uint32_t ver;
	assert_int_equal(idd_indexfile_read(p, MAGIC, 2, &got, &glen, &ver, &err), IDD_OK);
	assert_int_equal(glen, plen);
	assert_int_equal(ver, 2);
	assert_memory_equal(got, a, 100);
	assert_memory_equal((char *)got + 100, b, big);
	for (int i = 0; i < 1000; i++)
		assert_memory_equal((char *)got + 100 + big + 36 * (size_t)i, c, 36);
	free(got);
	assert_int_equal(idd_indexfile_verify(p, MAGIC, 2, NULL, NULL, &err), IDD_OK);
	/* nothing but the file */
	assert_int_equal(idd_dir_bytes(dir, false), size);
	free(a);
	free(b);
	free(c);
	free(p);
}

static void test_stream_abort_leaves_nothing(void **state)
{
	(void)state;
	char *p = idd_path_join(dir, "aborted", NULL);
	idd_indexfile_out o;
	idd_error err;
	assert_int_equal(idd_indexfile_out_begin(&o, p, MAGIC, 1, &err), IDD_OK);
	assert_int_equal(idd_indexfile_out_append(&o, "0123456789", 10, &err), IDD_OK);
	struct seen left = {0};
	assert_int_equal(idd_dir_for_each(dir, 0, record, record, &left, &err), IDD_OK);
	assert_int_equal(left.n, 1); /* the temporary, a live writer's */
	assert_int_equal(left.kinds[0], IDD_ENTRY_TEMP);
	assert_true(left.alive[0]);
	idd_indexfile_out_abort(&o);
	idd_indexfile_out_abort(&o); /* twice: harmless */
	memset(&left, 0, sizeof left);
	assert_int_equal(idd_dir_for_each(dir, 0, record, record, &left, &err), IDD_OK);
	assert_int_equal(left.n, 0);
	/* an existing file under the final name is left as it was */
	free(tu_write(dir, "aborted", "old", 3));
	assert_int_equal(idd_indexfile_out_begin(&o, p, MAGIC, 1, &err), IDD_OK);
	assert_int_equal(idd_indexfile_out_append(&o, "new", 3, &err), IDD_OK);
	idd_indexfile_out_abort(&o);
	assert_int_equal(tu_file_size(p), 3);
	free(p);
	/* a zeroed writer can be aborted */
	idd_indexfile_out z;
	memset(&z, 0, sizeof z);
	idd_indexfile_out_abort(&z);
}

static void test_stream_retarget(void **state)
{
	(void)state;
	char *p = idd_path_join(dir, "new", NULL), *q = idd_path_join(dir, "named", NULL);
	idd_indexfile_out o;
	idd_error err;
	assert_int_equal(idd_indexfile_out_begin(&o, p, MAGIC, 1, &err), IDD_OK);
	assert_int_equal(idd_indexfile_out_append(&o, "xyz", 3, &err), IDD_OK);
	assert_int_equal(idd_indexfile_out_retarget(&o, q, &err), IDD_OK);
	assert_int_equal(idd_indexfile_out_finish(&o, NULL, &err), IDD_OK);
	assert_false(exists("new"));
	void *got;
	size_t glen;
	assert_int_equal(idd_indexfile_read(q, MAGIC, 1, &got, &glen, NULL, &err), IDD_OK);
	assert_int_equal(glen, 3);
	assert_memory_equal(got, "xyz", 3);
	free(got);
	free(p);
	free(q);
}

static void test_stream_begin_fails_cleanly(void **state)
{
	(void)state;
	char *p = idd_path_join(dir, "no-such-dir/file", NULL);
	idd_indexfile_out o;
	idd_error err;
	assert_int_not_equal(idd_indexfile_out_begin(&o, p, MAGIC, 1, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "no-such-dir"));
	idd_indexfile_out_abort(&o);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tmp_names),
		cmocka_unit_test_setup_teardown(test_iterator, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc_reports_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dir_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_finish_reads_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_abort_leaves_nothing, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_retarget, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stream_begin_fails_cleanly, setup, teardown),
	};
	return cmocka_run_group_tests_name("indexdir", tests, NULL, NULL);
}
