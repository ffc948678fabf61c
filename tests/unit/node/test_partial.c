/* test_partial.c - the presence journal: records read back in order, a
 * torn or damaged record ends the journal and is cut off on reopen (so
 * later records are not hidden), another image's or another map's journal
 * starts over, a version 1 journal is read but not resumed, the check of a
 * cache image against its map, and OUT.part's refusals (symlink,
 * non-regular file) and resume. */
#include "testutil.h"
#include "node/outpart.h"
#include "node/partial.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
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

/* An image of 16 blocks: block i holds pattern seed + i, except that block
 * 1 is zero and block 12 repeats block 3; and its map. */
#define NBLK 16
static unsigned char *make_image(uint64_t seed, idd_map **m)
{
	unsigned char *img = calloc(NBLK, BS);
	idd_digest d[NBLK];
	idd_hasher *h = idd_hasher_new(NULL);
	for (int i = 0; i < NBLK; i++) {
		if (i == 1)
			continue;
		tu_fill_random(img + i * BS, BS, seed + (uint64_t)(i == 12 ? 3 : i));
	}
	for (int i = 0; i < NBLK; i++) {
		if (i == 1)
			memset(&d[i], 0, sizeof d[i]);
		else
			idd_hasher_digest(h, img + i * BS, BS, &d[i], NULL);
	}
	idd_hasher_free(h);
	idd_error err;
	assert_int_equal(idd_map_build(d, NBLK, BS, NBLK * BS, m, &err), IDD_OK);
	return img;
}

static void add_block(idd_partial *p, const unsigned char *img, const idd_map *m, uint64_t b)
{
	idd_error err;
	uint32_t ref = idd_map_ref(m, b);
	assert_int_not_equal(ref, 0);
	assert_int_equal(idd_partial_write(p, b, img + b * BS, BS, &err), IDD_OK);
	assert_int_equal(idd_partial_note(p, b, &m->digests[ref - 1], &err), IDD_OK);
}

static int sum_copies(void *ctx, const idd_partial_record *r)
{
	*(uint64_t *)ctx += r->copies;
	return IDD_OK;
}

static void test_journal(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *base = idd_path_join(dir, "x.raw", NULL);
	idd_map *m;
	unsigned char *img = make_image(100, &m);
	idd_partial *p;
	idd_error err;
	assert_int_equal(idd_partial_open(base, "x.raw", m, &p, &err), IDD_OK);
	add_block(p, img, m, 3);
	add_block(p, img, m, 7);
	size_t n;
	assert_int_equal(idd_partial_flush(p, &n, &err), IDD_OK);
	assert_int_equal(n, 2);
	add_block(p, img, m, 9);
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
	assert_int_equal(h.version, 2);
	assert_int_equal(h.block_size, BS);
	assert_int_equal(h.image_size, NBLK * BS);
	assert_int_equal(h.data_blocks, NBLK - 1);
	assert_int_equal(off, IDD_PARTIAL_HEADER + 3 * IDD_PARTIAL_RECORD);
	/* block 3's content is also block 12's: its record covers two blocks */
	uint64_t copies = 0;
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, sum_copies, &copies, &err), IDD_OK);
	assert_int_equal(copies, 4);

	/* a damaged second record ends the journal there ... */
	tu_flip_byte(journal, IDD_PARTIAL_HEADER + IDD_PARTIAL_RECORD + 20);
	memset(v, 0, sizeof v);
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 1);
	/* ... and a reopen cuts it off, so new records are found after it */
	assert_int_equal(idd_partial_open(base, "x.raw", m, &p, &err), IDD_OK);
	add_block(p, img, m, 11);
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
	assert_int_equal(idd_partial_open(base, "y.raw", m, &p, &err), IDD_OK);
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
	free(img);
	idd_map_free(m);
	tu_rmtree(dir);
	free(dir);
}

/* A partial filled for one map is not taken for another map of the same
 * image (changed in place, same size): its journal starts over, and
 * idd_partial_load gives its records to the map they were written for only. */
static void test_other_map(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *base = idd_path_join(dir, "x.raw", NULL);
	idd_map *m1, *m2;
	unsigned char *img1 = make_image(100, &m1);
	unsigned char *img2 = make_image(200, &m2);
	idd_partial *p;
	idd_error err;
	assert_int_equal(idd_partial_open(base, "x.raw", m1, &p, &err), IDD_OK);
	add_block(p, img1, m1, 5);
	add_block(p, img1, m1, 6);
	size_t n;
	assert_int_equal(idd_partial_flush(p, &n, &err), IDD_OK);
	idd_partial_close(p);
	uint64_t v[16] = {0};
	assert_int_equal(idd_partial_load(base, "x.raw", m1, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 2);
	memset(v, 0, sizeof v);
	assert_int_equal(idd_partial_load(base, "x.raw", m2, collect, v, &err), IDD_ENOENT);
	assert_int_equal(v[0], 0);
	assert_int_equal(idd_partial_load(base, "z.raw", m1, collect, v, &err), IDD_ENOENT);
	/* opened for the new map: the journal starts over */
	assert_int_equal(idd_partial_open(base, "x.raw", m2, &p, &err), IDD_OK);
	idd_partial_close(p);
	assert_int_equal(idd_partial_load(base, "x.raw", m2, collect, v, &err), IDD_OK);
	assert_int_equal(v[0], 0);
	assert_int_equal(idd_partial_load(base, "x.raw", m1, collect, v, &err), IDD_ENOENT);
	free(base);
	free(img1);
	free(img2);
	idd_map_free(m1);
	idd_map_free(m2);
	tu_rmtree(dir);
	free(dir);
}

/* A version 1 journal (48-byte records, no map in its header) is still read
 * (cache ls, the cache's lookups), but never resumed: nothing says which map
 * it was filled for. */
static void put_check8(unsigned char *b, size_t n)
{
	unsigned char sum[32];
	assert_int_equal(idd_sha256(b, n, sum, NULL), IDD_OK);
	memcpy(b + n, sum, 8);
}

static void test_version1_journal(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *base = idd_path_join(dir, "x.raw", NULL);
	char *journal = idd_asprintf(NULL, "%s%s", base, IDD_PARTIAL_JOURNAL_SUFFIX);
	idd_map *m;
	unsigned char *img = make_image(100, &m);
	unsigned char j[IDD_PARTIAL_HEADER + 2 * IDD_PARTIAL_RECORD_V1] = {0};
	memcpy(j, "IDD-PRS", 8);
	idd_le32_put(j + 8, 1);
	idd_le32_put(j + 12, BS);
	idd_le64_put(j + 16, NBLK * BS);
	idd_le64_put(j + 24, NBLK - 1);
	assert_int_equal(idd_sha256("x.raw", 5, j + 32, NULL), IDD_OK); /* 32 bytes, 24 kept */
	put_check8(j, 56);
	for (int i = 0; i < 2; i++) {
		unsigned char *r = j + IDD_PARTIAL_HEADER + i * IDD_PARTIAL_RECORD_V1;
		idd_le64_put(r, (uint64_t)(3 + i));
		memcpy(r + 8, m->digests[idd_map_ref(m, (uint64_t)(3 + i)) - 1].b, 32);
		put_check8(r, 40);
	}
	free(tu_write(dir, "x.raw" IDD_PARTIAL_JOURNAL_SUFFIX, j, sizeof j));
	uint64_t v[16] = {0}, off = 0, copies = 0;
	idd_partial_header h;
	idd_error err;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(h.version, 1);
	assert_int_equal(v[0], 2);
	assert_int_equal(v[2], 4);
	off = 0;
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, sum_copies, &copies, &err), IDD_OK);
	assert_int_equal(copies, 2);
	memset(v, 0, sizeof v);
	assert_int_equal(idd_partial_load(base, "x.raw", m, collect, v, &err), IDD_ENOENT);
	idd_partial *p;
	assert_int_equal(idd_partial_open(base, "x.raw", m, &p, &err), IDD_OK);
	idd_partial_close(p);
	off = 0;
	memset(v, 0, sizeof v);
	assert_int_equal(idd_partial_journal_read(journal, &h, &off, collect, v, &err), IDD_OK);
	assert_int_equal(h.version, 2);
	assert_int_equal(v[0], 0);
	free(journal);
	free(base);
	free(img);
	idd_map_free(m);
	tu_rmtree(dir);
	free(dir);
}

static int list_bad(void *ctx, uint64_t block)
{
	uint64_t *v = ctx;
	v[v[0]++ + 1] = block;
	return IDD_OK;
}

/* idd_image_check: a flipped byte, a block never written (a hole) and a
 * truncated tail are bad blocks; data where the map says zero is removed. */
static void test_image_check(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	idd_map *m;
	unsigned char *img = make_image(300, &m);
	char *path = tu_write(dir, "img", img, NBLK * BS);
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	uint64_t v[NBLK + 1] = {0};
	idd_error err;
	assert_int_equal(idd_image_check(fd, path, m, list_bad, v, &err), IDD_OK);
	assert_int_equal(v[0], 0);
	tu_flip_byte(path, 5 * BS + 17);
	unsigned char junk[BS];
	tu_fill_random(junk, BS, 9);
	assert_int_equal(pwrite(fd, junk, 100, 1 * BS + 5), 100); /* the zero block */
	assert_int_equal(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 8 * BS, BS), 0);
	assert_int_equal(ftruncate(fd, 14 * BS + 1), 0);
	assert_int_equal(idd_image_check(fd, path, m, list_bad, v, &err), IDD_OK);
	assert_int_equal(v[0], 4);
	assert_int_equal(v[1], 5);
	assert_int_equal(v[2], 8);
	assert_int_equal(v[3], 14);
	assert_int_equal(v[4], 15);
	unsigned char back[BS];
	assert_int_equal(pread(fd, back, BS, 1 * BS), BS);
	assert_true(idd_is_zero(back, BS));
	close(fd);
	free(path);
	free(img);
	idd_map_free(m);
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
	idd_map *m;
	unsigned char *img = make_image(900, &m);
	assert_int_equal(idd_partial_open(base, "img", m, &p, &err), IDD_OK);
	for (uint64_t b = 2; b < 10; b++)
		add_block(p, img, m, b);
	/* room for 10 more bytes of journal: the 8 records are cut short */
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
	idd_map_free(m);
	free(img);
	tu_rmtree(dir);
	free(base);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_journal),
	    cmocka_unit_test(test_other_map),
	    cmocka_unit_test(test_version1_journal),
	    cmocka_unit_test(test_image_check),
	    cmocka_unit_test(test_outpart),
	    cmocka_unit_test(test_short_append_says_why),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
