/* test_scan.c - scan and the catalog: edge-case images, incremental runs,
 * renames, removals, the lock, and damaged index files. */
#include "testutil.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *repo;

static int setup(void **state) { (void)state; repo = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(repo); free(repo); return 0; }

static int scan(idd_scan_stats *st, idd_error *err)
{
	idd_scan_opts o = {.repo = repo, .jobs = 2};
	return idd_scan(&o, st, err);
}

static idd_catalog *load(void)
{
	char *idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	idd_catalog *cat = NULL;
	idd_error err;
	if (idd_catalog_load(idx, &cat, &err))
		fail_msg("%s", err.msg);
	free(idx);
	return cat;
}

/* The stored digests of id must equal a direct hash of the file. */
static void check_digests(const char *id, const unsigned char *data, uint64_t len)
{
	idd_catalog *cat = load();
	const idd_image_info *im = idd_catalog_find(cat, id);
	assert_non_null(im);
	uint64_t nb = (len + 4095) / 4096;
	assert_int_equal(im->nblocks, nb);
	assert_int_equal(im->virtual_size, len);
	char *idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	idd_digest *d;
	idd_error err;
	assert_int_equal(idd_blocklist_load(idx, im, &d, &err), IDD_OK);
	idd_hasher *h = idd_hasher_new(&err);
	uint64_t zero = 0;
	for (uint64_t b = 0; b < nb; b++) {
		unsigned char blk[4096] = {0};
		memcpy(blk, data + b * 4096, (size_t)IDD_MIN((uint64_t)4096, len - b * 4096));
		idd_digest want = {{0}};
		if (!idd_is_zero(blk, sizeof blk))
			assert_int_equal(idd_hasher_digest(h, blk, sizeof blk, &want, &err), IDD_OK);
		else
			zero++;
		assert_memory_equal(d[b].b, want.b, 32);
	}
	assert_int_equal(im->zero_blocks, zero);
	idd_hasher_free(h);
	free(d);
	free(idx);
	idd_catalog_free(cat);
}

static void test_edge_case_images(void **state)
{
	(void)state;
	size_t n = 5 * 4096 + 123; /* not a multiple of the block size */
	unsigned char *odd = malloc(n);
	tu_fill_random(odd, n, 3);
	memset(odd + 4096, 0, 4096); /* a zero block in the middle */
	free(tu_write(repo, "odd.raw", odd, n));
	free(tu_write(repo, "empty.img", "", 0));
	unsigned char *zeros = calloc(1, 1 << 20);
	free(tu_write(repo, "zero.raw", zeros, 1 << 20));
	free(tu_write(repo, "notes.txt", "not an image", 12)); /* ignored: name */
	/* 8 GiB sparse image with 2 data blocks: found by SEEK_DATA, not read */
	char *sp = idd_path_join(repo, "sparse.raw", NULL);
	int fd = open(sp, O_CREAT | O_WRONLY, 0644);
	assert_true(fd >= 0);
	unsigned char blk[4096];
	tu_fill_random(blk, sizeof blk, 9);
	assert_int_equal(pwrite(fd, blk, sizeof blk, (off_t)3 << 30), (ssize_t)sizeof blk);
	assert_int_equal(pwrite(fd, blk, 10, ((off_t)8 << 30) - 10), 10);
	close(fd);
	free(sp);

	idd_scan_stats st;
	idd_error err;
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.images, 4);
	assert_int_equal(st.scanned, 4);
	check_digests("odd.raw", odd, n);
	check_digests("zero.raw", zeros, 1 << 20);
	idd_catalog *cat = load();
	const idd_image_info *e = idd_catalog_find(cat, "empty.img");
	assert_non_null(e);
	assert_int_equal(e->nblocks, 0);
	const idd_image_info *s = idd_catalog_find(cat, "sparse.raw");
	assert_int_equal(s->nblocks, (uint64_t)2 << 20);
	assert_int_equal(s->zero_blocks, ((uint64_t)2 << 20) - 2);
	assert_int_equal(s->distinct_blocks, 2);
	assert_int_equal(cat->block_size, 4096);
	/* unique over all: odd's 5 data blocks + sparse's 2 */
	assert_int_equal(cat->unique_blocks, 5 + 2);
	idd_catalog_free(cat);
	/* only data was hashed: odd 5 blocks, sparse 2 */
	assert_int_equal(st.bytes_hashed, 7 * 4096);
	free(odd);
	free(zeros);
}

static void test_incremental_rename_remove(void **state)
{
	(void)state;
	unsigned char buf[40960];
	tu_fill_random(buf, sizeof buf, 1);
	free(tu_write(repo, "a.raw", buf, sizeof buf));
	tu_fill_random(buf, sizeof buf, 2);
	free(tu_write(repo, "b.raw", buf, sizeof buf));
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 2);
	idd_catalog *c1 = load();
	uint64_t gen1 = c1->generation;
	idd_catalog_free(c1);

	/* unchanged: nothing read, catalog not rewritten */
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 0);
	assert_int_equal(st.unchanged, 2);
	assert_int_equal(st.bytes_hashed, 0);
	idd_catalog *c2 = load();
	assert_int_equal(c2->generation, gen1);
	idd_catalog_free(c2);

	/* rename + move into a subdirectory: recognised, not re-hashed */
	char *sub = idd_path_join(repo, "sub", NULL);
	assert_int_equal(mkdir(sub, 0755), 0);
	char *from = idd_path_join(repo, "a.raw", NULL), *to = idd_path_join(sub, "moved.img", NULL);
	assert_int_equal(rename(from, to), 0);
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 0);
	assert_int_equal(st.renamed, 1);
	assert_int_equal(st.removed, 0);
	assert_int_equal(st.bytes_hashed, 0);
	tu_fill_random(buf, sizeof buf, 1);
	check_digests("sub/moved.img", buf, sizeof buf);

	/* modified: re-read; removed: leaves the index */
	tu_fill_random(buf, sizeof buf, 5);
	free(tu_write(sub, "moved.img", buf, sizeof buf));
	char *b = idd_path_join(repo, "b.raw", NULL);
	assert_int_equal(unlink(b), 0);
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 1);
	assert_int_equal(st.removed, 1);
	assert_int_equal(st.images, 1);
	check_digests("sub/moved.img", buf, sizeof buf);
	/* the removed image's block list was garbage-collected */
	char *cmd = idd_asprintf(NULL, "test $(ls %s/.imgdedup/blocks | wc -l) -eq 1", repo);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	free(b);
	free(from);
	free(to);
	free(sub);
}

static void test_lock_no_wait(void **state)
{
	(void)state;
	free(tu_write(repo, "a.raw", "x", 1));
	char *idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	idd_error err;
	assert_int_equal(idd_mkdir_p(idx, &err), IDD_OK);
	int fd;
	assert_int_equal(idd_lock(idx, false, &fd, &err), IDD_OK);
	idd_scan_opts o = {.repo = repo, .no_wait = true};
	idd_scan_stats st;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_EBUSY);
	assert_non_null(strstr(err.msg, "locked"));
	idd_unlock(fd);
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	free(idx);
}

static void test_damaged_catalog_is_reported(void **state)
{
	(void)state;
	free(tu_write(repo, "a.raw", "data", 4));
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(scan(&st, &err), IDD_OK);
	char *cat = idd_asprintf(NULL, "%s/%s/catalog", repo, IDD_INDEX_SUBDIR);
	tu_flip_byte(cat, tu_file_size(cat) - 40);
	assert_int_equal(scan(&st, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "catalog"));
	/* verify names the damaged file */
	idd_verify_opts vo = {.repo = repo};
	uint64_t problems;
	assert_int_equal(idd_verify(&vo, &problems, &err), IDD_ERR);
	assert_int_equal(problems, 1);
	free(cat);
}

static void test_block_size_fixed_per_index(void **state)
{
	(void)state;
	unsigned char buf[3000];
	tu_fill_random(buf, sizeof buf, 4);
	free(tu_write(repo, "a.raw", buf, sizeof buf));
	idd_scan_opts o = {.repo = repo, .block_size = 1024};
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	assert_int_equal(st.blocks, 3);
	o.block_size = 4096;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "1024"));
	o.block_size = 0; /* the index's own */
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	assert_int_equal(st.blocks, 3);
}

/* Enough distinct blocks to make the counting set grow several times:
 * counts must survive rehashing. */
static void test_many_distinct_blocks(void **state)
{
	(void)state;
	const size_t nb = 150000, bs = 512;
	unsigned char *buf = malloc(nb * bs);
	tu_fill_random(buf, nb * bs, 77);
	memcpy(buf + 10 * bs, buf, bs); /* one internal duplicate */
	free(tu_write(repo, "a.raw", buf, nb * bs));
	free(tu_write(repo, "b.raw", buf, nb * bs / 2)); /* half of a again */
	idd_scan_opts o = {.repo = repo, .block_size = 512, .jobs = 2};
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	assert_int_equal(st.unique_blocks, nb - 1);
	idd_catalog *cat = load();
	assert_int_equal(idd_catalog_find(cat, "a.raw")->distinct_blocks, nb - 1);
	assert_int_equal(idd_catalog_find(cat, "b.raw")->distinct_blocks, nb / 2 - 1);
	idd_catalog_free(cat);
	free(buf);
}

/* A mistyped REPO is an error, and is not created. */
static void test_missing_repo(void **state)
{
	(void)state;
	char *typo = idd_path_join(repo, "no-such-dir", NULL);
	idd_scan_opts o = {.repo = typo};
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_ENOENT);
	assert_int_equal(err.code, IDD_ENOENT);
	assert_non_null(strstr(err.msg, "no-such-dir"));
	assert_false(st.committed);
	assert_int_not_equal(access(typo, F_OK), 0);
	free(typo);
}

/* A damaged, swapped or deleted block list is noticed by the next run,
 * reported, and rebuilt by reading the image again in that same run. */
static int warnings;
static void count_warn(void *ctx, const char *msg) { (void)ctx; (void)msg; warnings++; }

static void test_damaged_block_list_heals(void **state)
{
	(void)state;
	unsigned char buf[20000];
	tu_fill_random(buf, sizeof buf, 11);
	free(tu_write(repo, "a.raw", buf, sizeof buf));
	tu_fill_random(buf, sizeof buf, 12);
	free(tu_write(repo, "b.raw", buf, sizeof buf));
	idd_scan_opts o = {.repo = repo, .warn = count_warn};
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	idd_catalog *cat = load();
	char *idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	char *alist = idd_blocks_path(idx, &idd_catalog_find(cat, "a.raw")->list_key, NULL);
	char *blist = idd_blocks_path(idx, &idd_catalog_find(cat, "b.raw")->list_key, NULL);
	idd_catalog_free(cat);
	/* nothing changed in the repository: still, the damage is found */
	tu_flip_byte(alist, 40);
	warnings = 0;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	assert_int_equal(warnings, 1);
	assert_int_equal(st.repaired, 1);
	assert_int_equal(st.scanned, 1);
	assert_int_equal(st.unchanged, 1);
	assert_int_equal(st.images, 2);
	tu_fill_random(buf, sizeof buf, 11);
	check_digests("a.raw", buf, sizeof buf);
	/* the next run finds everything intact */
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	assert_int_equal(st.repaired, 0);
	assert_int_equal(st.scanned, 0);
	/* b's list swapped for a's: a valid file under the wrong name */
	char *cmd = idd_asprintf(NULL, "cp %s %s", alist, blist);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	warnings = 0;
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	assert_int_equal(st.repaired, 1);
	assert_int_equal(warnings, 1);
	tu_fill_random(buf, sizeof buf, 12);
	check_digests("b.raw", buf, sizeof buf);
	/* a deleted list: the unchanged image is read again in the same run */
	assert_int_equal(unlink(alist), 0);
	assert_int_equal(idd_scan(&o, &st, &err), IDD_OK);
	assert_int_equal(st.scanned, 1);
	assert_int_equal(st.repaired, 1);
	tu_fill_random(buf, sizeof buf, 11);
	check_digests("a.raw", buf, sizeof buf);
	free(alist);
	free(blist);
	free(idx);
}

/* A list in the dense format of imgdedup 0.1 is read, and rewritten in the
 * current format by the next run without reading the image. */
static void test_dense_list_upgraded(void **state)
{
	(void)state;
	unsigned char buf[5 * 4096];
	tu_fill_random(buf, sizeof buf, 31);
	memset(buf + 4096, 0, 4096);
	free(tu_write(repo, "a.raw", buf, sizeof buf));
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(scan(&st, &err), IDD_OK);
	idd_catalog *cat = load();
	char *idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	idd_image_info *im = &cat->images[0];
	idd_digest *d;
	assert_int_equal(idd_blocklist_load(idx, im, &d, &err), IDD_OK);
	/* rewrite it as version 1 and point the catalog at it */
	size_t len = 12 + 5 * 32;
	unsigned char *p = malloc(len);
	idd_le32_put(p, 4096);
	idd_le64_put(p + 4, 5);
	memcpy(p + 12, d, 5 * 32);
	char *blocks = idd_path_join(idx, IDD_BLOCKS_DIR, NULL);
	idd_digest v1key;
	assert_int_equal(idd_indexfile_write_named(blocks, "IDD-BLK", 1, p, len, true, &v1key, &err), IDD_OK);
	idd_digest v2key = im->list_key;
	im->list_key = v1key;
	assert_int_equal(idd_catalog_save(idx, cat, &err), IDD_OK);
	idd_catalog_free(cat);
	char *v2path = idd_blocks_path(idx, &v2key, NULL);
	assert_int_equal(unlink(v2path), 0);
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 0);
	assert_int_equal(st.bytes_hashed, 0);
	cat = load();
	assert_memory_equal(cat->images[0].list_key.b, v2key.b, 32); /* the same v2 list again */
	idd_catalog_free(cat);
	assert_int_equal(access(v2path, F_OK), 0);
	char *v1path = idd_blocks_path(idx, &v1key, NULL);
	assert_int_not_equal(access(v1path, F_OK), 0); /* collected */
	check_digests("a.raw", buf, sizeof buf);
	free(v1path);
	free(v2path);
	free(blocks);
	free(p);
	free(d);
	free(idx);
}

/* A checkpoint leaves the repository's distinct count unknown; the next
 * run, even with nothing changed, counts it. */
static void test_unknown_unique_is_recounted(void **state)
{
	(void)state;
	unsigned char buf[16384];
	tu_fill_random(buf, sizeof buf, 21);
	free(tu_write(repo, "a.raw", buf, sizeof buf));
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.unique_blocks, 4);
	idd_catalog *cat = load();
	cat->unique_blocks = IDD_UNIQUE_UNKNOWN;
	char *idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	assert_int_equal(idd_catalog_save(idx, cat, &err), IDD_OK);
	idd_catalog_free(cat);
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 0);
	assert_int_equal(st.unique_blocks, 4);
	cat = load();
	assert_int_equal(cat->unique_blocks, 4);
	idd_catalog_free(cat);
	free(idx);
}

/* A file written just before the run (within the timestamp granularity of
 * its start) could be written again in the same timestamp tick after it
 * was read, keeping its identity: its entry records the mtime as unknown
 * and the next run reads it again; an older file is trusted. */
static void test_racily_clean_read_again(void **state)
{
	(void)state;
	unsigned char buf[8192];
	tu_fill_random(buf, sizeof buf, 41);
	free(tu_write(repo, "old.raw", buf, sizeof buf)); /* aged ten seconds */
	char *fresh = idd_path_join(repo, "fresh.raw", NULL);
	FILE *f = fopen(fresh, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, 4096, f), 4096);
	assert_int_equal(fclose(f), 0);
	idd_scan_stats st;
	idd_error err;
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 2);
	idd_catalog *cat = load();
	assert_int_equal(idd_catalog_find(cat, "fresh.raw")->mtime_ns, IDD_MTIME_UNKNOWN);
	assert_int_not_equal(idd_catalog_find(cat, "old.raw")->mtime_ns, IDD_MTIME_UNKNOWN);
	idd_catalog_free(cat);
	/* next run: the racy one is read again, the old one is not */
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 1);
	assert_int_equal(st.unchanged, 1);
	assert_int_equal(st.bytes_hashed, 4096);
	/* once its mtime is old enough, it is trusted like any other */
	tu_age(fresh);
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 1); /* its identity changed (mtime, ctime) */
	assert_int_equal(scan(&st, &err), IDD_OK);
	assert_int_equal(st.scanned, 0);
	assert_int_equal(st.unchanged, 2);
	check_digests("fresh.raw", buf, 4096);
	free(fresh);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_edge_case_images, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incremental_rename_remove, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_no_wait, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damaged_catalog_is_reported, setup, teardown),
		cmocka_unit_test_setup_teardown(test_block_size_fixed_per_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_distinct_blocks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_repo, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damaged_block_list_heals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dense_list_upgraded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_racily_clean_read_again, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_unique_is_recounted, setup, teardown),
	};
	return cmocka_run_group_tests_name("scan", tests, NULL, NULL);
}
