/* test_partial.c - the presence journal: records read back in order, a
 * torn or damaged record ends the journal and is cut off on reopen (so
 * later records are not hidden), another image's journal starts over, and
 * OUT.part's refusals (symlink, non-regular file) and resume. */
#include "testutil.h"
#include "node/outpart.h"
#include "node/partial.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#define BS 4096u

static int collect(void *ctx, const idd_partial_record *r)
{
	uint64_t *v = ctx;
	v[v[0]++ + 1] = r->block;
	return IDD_OK;
}

static void add_block(idd_partial *p, uint64_t b, uint64_t seed)
{
	unsigned char blk[BS];
	tu_fill_random(blk, BS, seed);
	idd_digest d;
	idd_hasher *h = idd_hasher_new(NULL);
	idd_hasher_digest(h, blk, BS, &d, NULL);
	idd_hasher_free(h);
	idd_error err;
	assert_int_equal(idd_partial_write(p, b, blk, BS, &err), IDD_OK);
	assert_int_equal(idd_partial_note(p, b, &d, &err), IDD_OK);
}

static void test_journal(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *base = idd_path_join(dir, "x.raw", NULL);
	idd_partial *p;
	idd_error err;
	assert_int_equal(idd_partial_open(base, "x.raw", BS, 16 * BS, 10, &p, &err), IDD_OK);
	add_block(p, 3, 1);
	add_block(p, 7, 2);
	size_t n;
	assert_int_equal(idd_partial_flush(p, &n, &err), IDD_OK);
	assert_int_equal(n, 2);
	add_block(p, 9, 3);
	assert_int_equal(idd_partial_flush(p, &n, &err), IDD_OK);
	idd_partial_close(p);

	uint64_t v[16] = {0}, off = 0;
	idd_partial_header h;
	assert_int_equal(idd_partial_journal_read(base, &h, &off, collect, v, &err), IDD_ENOENT);
	char *journal = idd_asprintf(NULL, "%s%s", base, IDD_PARTIAL_JOURNAL_SUFFIX);
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 3);
	assert_int_equal(v[1], 3);
	assert_int_equal(v[2], 7);
	assert_int_equal(v[3], 9);
	assert_int_equal(h.block_size, BS);
	assert_int_equal(h.image_size, 16 * BS);
	assert_int_equal(h.data_blocks, 10);
	assert_int_equal(off, IDD_PARTIAL_HEADER + 3 * IDD_PARTIAL_RECORD);

	/* a damaged second record ends the journal there ... */
	tu_flip_byte(journal, IDD_PARTIAL_HEADER + IDD_PARTIAL_RECORD + 20);
	memset(v, 0, sizeof v);
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 1);
	/* ... and a reopen cuts it off, so new records are found after it */
	assert_int_equal(idd_partial_open(base, "x.raw", BS, 16 * BS, 10, &p, &err), IDD_OK);
	add_block(p, 11, 4);
	assert_int_equal(idd_partial_flush(p, &n, &err), IDD_OK);
	idd_partial_close(p);
	memset(v, 0, sizeof v);
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 2);
	assert_int_equal(v[2], 11);

	/* a torn append (half a record) is ignored */
	int fd = open(journal, O_WRONLY | O_APPEND);
	assert_int_equal(write(fd, "torn record", 11), 11);
	close(fd);
	memset(v, 0, sizeof v);
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 2);

	/* another image at this name starts over */
	assert_int_equal(idd_partial_open(base, "y.raw", BS, 16 * BS, 10, &p, &err), IDD_OK);
	idd_partial_close(p);
	memset(v, 0, sizeof v);
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 0);

	/* a damaged header is refused by name */
	tu_flip_byte(journal, 3);
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, journal));
	free(journal);
	free(base);
	tu_rmtree(dir);
	free(dir);
}

static void on_valid(void *ctx, uint64_t block, uint32_t ref)
{
	uint64_t *n = ctx;
	(void)block;
	(void)ref;
	(*n)++;
}

static void test_outpart(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *out = idd_path_join(dir, "o.raw", NULL);
	char *part = idd_asprintf(NULL, "%s.part", out);
	char *victim = tu_write(dir, "victim", "keep", 4);
	idd_outpart p;
	idd_error err;
	/* a symlink at OUT.part: refused, its target untouched */
	assert_int_equal(symlink(victim, part), 0);
	assert_int_equal(idd_outpart_open(&p, out, 8 * BS, BS, &err), IDD_EPERM);
	assert_non_null(strstr(err.msg, "symbolic link"));
	idd_outpart_close(&p, false);
	assert_int_equal(tu_file_size(victim), 4);
	unlink(part);
	/* a FIFO: refused without hanging */
	assert_int_equal(mkfifo(part, 0600), 0);
	assert_int_equal(idd_outpart_open(&p, out, 8 * BS, BS, &err), IDD_EPERM);
	idd_outpart_close(&p, false);
	unlink(part);
	/* resume: blocks written before are found again */
	unsigned char img[4 * BS];
	tu_fill_random(img, sizeof img, 77);
	memset(img + BS, 0, BS);
	idd_digest d[4];
	idd_hasher *h = idd_hasher_new(NULL);
	for (int i = 0; i < 4; i++)
		idd_hasher_digest(h, img + i * BS, BS, &d[i], NULL);
	memset(&d[1], 0, sizeof d[1]);
	idd_map *m;
	assert_int_equal(idd_map_build(d, 4, BS, 4 * BS, &m, &err), IDD_OK);
	assert_int_equal(idd_outpart_open(&p, out, 4 * BS, BS, &err), IDD_OK);
	assert_int_equal(idd_outpart_write(&p, img, BS, 0, &err), IDD_OK);
	assert_int_equal(idd_outpart_write(&p, img + 3 * BS, BS, 3 * BS, &err), IDD_OK);
	idd_outpart_close(&p, false);
	assert_int_equal(idd_outpart_open(&p, out, 4 * BS, BS, &err), IDD_OK);
	uint64_t nvalid = 0, bytes = 0;
	assert_int_equal(idd_outpart_resume(&p, m, on_valid, &nvalid, &bytes, &err), IDD_OK);
	assert_int_equal(nvalid, 2);
	assert_int_equal(bytes, 2 * BS);
	/* removed on a permanent failure */
	idd_outpart_close(&p, true);
	assert_int_equal(access(part, F_OK), -1);
	idd_map_free(m);
	idd_hasher_free(h);
	free(out);
	free(part);
	free(victim);
	tu_rmtree(dir);
	free(dir);
}

/* An append that only partly fits says why (here a file size limit:
 * EFBIG), not "Success" from a short write's untouched errno. */
static void test_short_append_says_why(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *base = idd_path_join(dir, "img", NULL);
	idd_partial *p;
	idd_error err;
	assert_int_equal(idd_partial_open(base, "img", BS, 64 * BS, 64, &p, &err), IDD_OK);
	for (uint64_t b = 0; b < 8; b++)
		add_block(p, b, 900 + b);
	/* room for 10 more bytes of journal: the 8 records (384 bytes) are cut short */
	struct rlimit old;
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	struct rlimit lim = {IDD_PARTIAL_HEADER + 10, old.rlim_max};
	void (*old_sig)(int) = signal(SIGXFSZ, SIG_IGN);
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	size_t n = 0;
	int rc = idd_partial_flush(p, &n, &err);
	setrlimit(RLIMIT_FSIZE, &old);
	signal(SIGXFSZ, old_sig);
	assert_int_not_equal(rc, IDD_OK);
	assert_int_equal(n, 0);
	assert_null(strstr(err.msg, "Success"));
	assert_non_null(strstr(err.msg, strerror(EFBIG)));
	idd_partial_close(p);
	tu_rmtree(dir);
	free(base);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_journal),
	    cmocka_unit_test(test_outpart),
	    cmocka_unit_test(test_short_append_says_why),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
