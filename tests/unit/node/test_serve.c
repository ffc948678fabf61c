/* test_serve.c - on-demand reads: exact bytes, zero blocks free, each
 * distinct missing block fetched once, what was fetched found again by a
 * restarted server and by a sibling image, a damaged source block an error
 * for that block only, --fill leaving a complete cached image, extents. */
#include "testutil.h"
#include "index/map.h"
#include "node/profile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BS 4096u
#define NB 128

static char *root, *repo, *cache;
static unsigned char *img_a, *img_b;

static void quiet(void *ctx, const char *msg) { (void)ctx; (void)msg; }

/* A: pool of 40 patterns (repeats), every 5th block zero, a 1000-byte tail.
 * B: A with 12 blocks replaced. */
static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp();
	repo = idd_path_join(root, "repo", NULL);
	cache = idd_path_join(root, "cache", NULL);
	tu_pair_spec spec = {.nb = NB, .pool = 40, .zero_every = 5, .seed = 700, .tail = 1000,
	                     .tail_seed = 11, .changed = 60, .nchanged = 12, .changed_seed = 7000};
	return tu_pair_repo(repo, &spec, &img_a, &img_b);
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(root);
	free(root);
	free(repo);
	free(cache);
	free(img_a);
	free(img_b);
	return 0;
}

static idd_server *open_server(bool fill, uint64_t readahead)
{
	idd_serve_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                    .fill = fill, .readahead = readahead};
	idd_server *s = NULL;
	idd_error err;
	if (idd_server_open(&o, &s, &err))
		fail_msg("server: %s", err.msg);
	return s;
}

static void read_all_check(idd_export *e, const unsigned char *want, uint64_t size, uint32_t chunk)
{
	unsigned char *buf = malloc(chunk);
	idd_error err;
	for (uint64_t off = 0; off < size; off += chunk) {
		uint64_t n = IDD_MIN((uint64_t)chunk, size - off);
		if (idd_export_read(e, buf, n, off, &err))
			fail_msg("read at %llu: %s", (unsigned long long)off, err.msg);
		assert_memory_equal(buf, want + off, n);
	}
	free(buf);
}

static void test_cold_warm_sibling(void **state)
{
	(void)state;
	tu_rmtree(cache);
	uint64_t size_a = NB * BS + 1000;
	/* cold: a small read fetches only its blocks (no readahead) */
	idd_server *s = open_server(false, 4096 / 2);
	idd_export *e;
	idd_error err;
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	assert_int_equal(idd_export_size(e), size_a);
	assert_int_equal(idd_export_block_size(e), BS);
	unsigned char buf[3 * BS];
	assert_int_equal(idd_export_read(e, buf, 3 * BS - 100, 10 * BS + 50, &err), IDD_OK);
	assert_memory_equal(buf, img_a + 10 * BS + 50, 3 * BS - 100);
	idd_serve_stats st;
	idd_server_stats(s, &st);
	assert_int_equal(st.bytes_fetched, tu_missing_bytes(img_a, size_a, 10, 13, NULL, 0));
	/* then the whole image, odd-sized reads: exact, each distinct block once */
	read_all_check(e, img_a, size_a, 3 * BS + 7);
	idd_server_stats(s, &st);
	assert_int_equal(st.bytes_fetched, tu_missing_bytes(img_a, size_a, 0, NB + 1, NULL, 0));
	assert_true(st.bytes_zero > 0);
	assert_int_equal(st.read_errors, 0);
	idd_export_close(e);
	idd_server_close(s);

	/* a restarted server finds what was fetched: nothing fetched */
	s = open_server(false, 0);
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	read_all_check(e, img_a, size_a, 64 * 1024);
	idd_server_stats(s, &st);
	assert_int_equal(st.bytes_fetched, 0);
	/* the sibling: only its own blocks are fetched */
	idd_export *eb;
	assert_int_equal(idd_export_open(s, "b.raw", &eb, &err), IDD_OK);
	read_all_check(eb, img_b, NB * BS, 5 * BS);
	idd_server_stats(s, &st);
	assert_int_equal(st.bytes_fetched, 12 * BS);
	idd_export_close(eb);
	idd_export_close(e);
	idd_server_close(s);

	/* cache ls shows two partial images */
	idd_cache_image *v;
	size_t n;
	assert_int_equal(idd_cache_list(cache, &v, &n, quiet, NULL, &err), IDD_OK);
	assert_int_equal(n, 2);
	for (size_t i = 0; i < n; i++) {
		assert_true(v[i].partial);
		assert_false(v[i].in_use); /* the servers are closed */
		assert_true(v[i].present_blocks > 0 && v[i].present_blocks <= v[i].data_blocks);
		/* a.raw was read in full: every data block of it is there, the
		 * repeated ones included (b.raw's partial holds only its own 12) */
		if (strstr(v[i].path, "/a.raw"))
			assert_int_equal(v[i].present_blocks, v[i].data_blocks);
		else
			assert_int_equal(v[i].present_blocks, 12);
	}
	idd_cache_list_free(v, n);
}

/* idd_server_checkpoint, while the server is open (a process about to end
 * without closing it): the fetched blocks are in the cache's journal, the
 * record file holds the reads so far. */
static void test_checkpoint(void **state)
{
	(void)state;
	tu_rmtree(cache);
	char *rec = idd_path_join(root, "boot.rec", NULL);
	unlink(rec);
	idd_serve_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                    .record = rec};
	idd_server *s = NULL;
	idd_error err;
	assert_int_equal(idd_server_open(&o, &s, &err), IDD_OK);
	assert_int_equal(idd_server_start(s, &err), IDD_OK);
	idd_export *e;
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	unsigned char buf[3 * BS];
	/* blocks 10 (zero: never recorded, nothing to fetch), 11 and 12 */
	assert_int_equal(idd_export_read(e, buf, 3 * BS, 10 * BS, &err), IDD_OK);
	assert_memory_equal(buf, img_a + 10 * BS, 3 * BS);
	struct stat st;
	assert_int_not_equal(stat(rec, &st), 0);
	assert_int_equal(idd_server_checkpoint(s, &err), IDD_OK);

	idd_profile pf;
	assert_int_equal(idd_profile_load(rec, &pf, &err), IDD_OK);
	assert_int_equal(pf.n, 2);
	assert_string_equal(pf.ids[0], "a.raw");
	assert_int_equal(pf.blocks[0], 11);
	assert_int_equal(pf.blocks[1], 12);
	idd_profile_free(&pf);
	idd_cache_image *v;
	size_t n;
	assert_int_equal(idd_cache_list(cache, &v, &n, quiet, NULL, &err), IDD_OK);
	assert_int_equal(n, 1);
	assert_true(v[0].partial);
	assert_true(v[0].in_use);
	assert_true(v[0].present_blocks >= 2);
	idd_cache_list_free(v, n);
	idd_export_close(e);
	idd_server_close(s);
	free(rec);
}

static int count_extent(void *ctx, uint64_t off, uint64_t len, bool zero)
{
	uint64_t *v = ctx;
	(void)off;
	v[zero] += len;
	return 0;
}

static void test_extents(void **state)
{
	(void)state;
	idd_server *s = open_server(false, 0);
	idd_export *e;
	idd_error err;
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	uint64_t v[2] = {0, 0};
	assert_int_equal(idd_export_extents(e, 0, idd_export_size(e), count_extent, v, &err), IDD_OK);
	assert_int_equal(v[0] + v[1], idd_export_size(e));
	uint64_t zero = 0;
	for (size_t i = 0; i < NB; i++)
		zero += (i % 5 == 0) * BS;
	assert_int_equal(v[1], zero);
	idd_export_close(e);
	idd_server_close(s);
}

static void test_damaged_source_block(void **state)
{
	(void)state;
	tu_rmtree(cache);
	char *path = idd_path_join(repo, "b.raw", NULL);
	tu_flip_byte(path, 65 * BS + 3); /* one of b's own blocks */
	idd_server *s = open_server(false, 0);
	idd_export *e;
	idd_error err;
	assert_int_equal(idd_export_open(s, "b.raw", &e, &err), IDD_OK);
	unsigned char buf[BS];
	assert_int_not_equal(idd_export_read(e, buf, BS, 65 * BS, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "offset"));
	/* the other blocks are fine */
	assert_int_equal(idd_export_read(e, buf, BS, 64 * BS, &err), IDD_OK);
	assert_memory_equal(buf, img_b + 64 * BS, BS);
	idd_serve_stats st;
	idd_server_stats(s, &st);
	assert_int_equal(st.read_errors, 1);
	idd_export_close(e);
	idd_server_close(s);
	tu_flip_byte(path, 65 * BS + 3);
	free(path);
}

static void test_tampered_cache(void **state)
{
	(void)state;
	tu_rmtree(cache);
	idd_server *s = open_server(false, 0);
	idd_export *e;
	idd_error err;
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	read_all_check(e, img_a, NB * BS + 1000, 16 * BS);
	idd_export_close(e);
	idd_server_close(s);
	char *part = idd_path_join(cache, "images/a.raw.partial", NULL);
	tu_flip_byte(part, 3 * BS + 1);
	free(part);
	s = open_server(false, 0);
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	read_all_check(e, img_a, NB * BS + 1000, 16 * BS);
	idd_serve_stats st;
	idd_server_stats(s, &st);
	assert_true(st.cache_damaged >= 1);
	assert_true(st.bytes_fetched > 0);
	idd_export_close(e);
	idd_server_close(s);
}

static void test_fill(void **state)
{
	(void)state;
	tu_rmtree(cache);
	idd_server *s = open_server(true, 0);
	idd_export *e;
	idd_error err;
	assert_int_equal(idd_export_open(s, "b.raw", &e, &err), IDD_OK);
	assert_int_equal(idd_server_start(s, &err), IDD_OK);
	idd_serve_stats st;
	for (int i = 0; i < 500; i++) {
		idd_server_stats(s, &st);
		if (st.exports_complete)
			break;
		usleep(10000);
	}
	assert_int_equal(st.exports_complete, 1);
	read_all_check(e, img_b, NB * BS, 8 * BS);
	idd_export_close(e);
	idd_server_close(s);
	char *full = idd_path_join(cache, "images/b.raw", NULL);
	size_t len;
	void *data;
	assert_int_equal(idd_read_file(full, 1 << 30, &data, &len, NULL), IDD_OK);
	assert_int_equal(len, NB * BS);
	assert_memory_equal(data, img_b, len);
	free(data);
	free(full);
	/* a deploy of it now copies everything from the cache */
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                     .image = "b.raw"};
	char *out = idd_path_join(root, "b.out", NULL);
	o.out = out;
	idd_deploy_stats ds;
	assert_int_equal(idd_deploy(&o, &ds, &err), IDD_OK);
	assert_int_equal(ds.bytes_fetched, 0);
	free(out);
}

static void wait_complete(idd_server *s)
{
	idd_serve_stats st;
	for (int i = 0; i < 1000; i++) {
		idd_server_stats(s, &st);
		if (st.exports_complete)
			break;
		usleep(10000);
	}
	assert_int_equal(st.exports_complete, 1);
}

static void assert_file_is(const char *rel, const unsigned char *want, size_t size)
{
	char *full = idd_path_join(cache, rel, NULL);
	size_t len;
	void *data;
	assert_int_equal(idd_read_file(full, 1 << 30, &data, &len, NULL), IDD_OK);
	assert_int_equal(len, size);
	assert_memory_equal(data, want, len);
	free(data);
	free(full);
}

/* --fill does not take the journal's word: blocks of the partial changed
 * behind its back are found when it finishes, and fetched again. */
static void test_fill_checks_partial(void **state)
{
	(void)state;
	tu_rmtree(cache);
	uint64_t size_a = NB * BS + 1000;
	idd_server *s = open_server(false, 0);
	idd_export *e;
	idd_error err;
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	read_all_check(e, img_a, size_a, 16 * BS);
	idd_export_close(e);
	idd_server_close(s);
	char *part = idd_path_join(cache, "images/a.raw.partial", NULL);
	tu_flip_byte(part, 3 * BS + 1);
	tu_flip_byte(part, 41 * BS + 100);
	tu_flip_byte(part, NB * BS + 999); /* the short last block */
	free(part);
	s = open_server(true, 0);
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	assert_int_equal(idd_server_start(s, &err), IDD_OK);
	wait_complete(s);
	idd_serve_stats st;
	idd_server_stats(s, &st);
	assert_true(st.bytes_fetched > 0);
	idd_export_close(e);
	idd_server_close(s);
	assert_file_is("images/a.raw", img_a, size_a);
}

/* A complete cached image damaged behind serve's back: a read of a damaged
 * block fetches that block only, and the whole image is checked and
 * repaired in place behind it. */
static void test_repair_complete(void **state)
{
	(void)state;
	tu_rmtree(cache);
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                     .image = "b.raw"};
	idd_deploy_stats ds;
	idd_error err;
	assert_int_equal(idd_deploy(&o, &ds, &err), IDD_OK);
	char *full = idd_path_join(cache, "images/b.raw", NULL);
	tu_flip_byte(full, 61 * BS + 5);
	tu_flip_byte(full, 66 * BS + 7);
	tu_flip_byte(full, 2 * BS + 9);
	free(full);
	idd_server *s = open_server(false, 0);
	idd_export *e;
	assert_int_equal(idd_export_open(s, "b.raw", &e, &err), IDD_OK);
	assert_int_equal(idd_server_start(s, &err), IDD_OK);
	unsigned char buf[BS];
	assert_int_equal(idd_export_read(e, buf, BS, 61 * BS, &err), IDD_OK);
	assert_memory_equal(buf, img_b + 61 * BS, BS);
	idd_serve_stats st;
	for (int i = 0; i < 1000; i++) {
		idd_server_stats(s, &st);
		if (st.blocks_filled >= 3)
			break;
		usleep(10000);
	}
	assert_int_equal(st.blocks_filled, 3);
	assert_int_equal(st.bytes_fetched, 3 * BS);
	idd_export_close(e);
	idd_server_close(s);
	assert_file_is("images/b.raw", img_b, NB * BS);
	char *part = idd_path_join(cache, "images/b.raw.partial", NULL);
	assert_int_equal(access(part, F_OK), -1); /* nothing went into a partial image */
	free(part);
	/* the next run reads it all locally */
	s = open_server(false, 0);
	assert_int_equal(idd_export_open(s, "b.raw", &e, &err), IDD_OK);
	read_all_check(e, img_b, NB * BS, 8 * BS);
	idd_server_stats(s, &st);
	assert_int_equal(st.bytes_fetched, 0);
	assert_int_equal(st.cache_damaged, 0);
	idd_export_close(e);
	idd_server_close(s);
}

static int join_id(void *ctx, const char *id)
{
	char *l = ctx;
	size_t n = strlen(l);
	snprintf(l + n, 256 - n, "%s%s", n ? " " : "", id);
	return 0;
}

static int warnings;
static char last_warning[512];

static void count_warning(void *ctx, const char *msg)
{
	(void)ctx;
	warnings++;
	snprintf(last_warning, sizeof last_warning, "%s", msg);
}

static idd_server *open_all(long refresh_s)
{
	idd_serve_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = count_warning},
	                    .all = true, .refresh_s = refresh_s};
	idd_server *s = NULL;
	idd_error err;
	if (idd_server_open(&o, &s, &err))
		fail_msg("server: %s", err.msg);
	return s;
}

static void republish(void)
{
	assert_int_equal(tu_index_repo(repo), 0);
}

/* --all: the catalog's ids, names outside it refused whatever their form,
 * an image published while serving found (at once with IDD_REFRESH_ALWAYS,
 * not before the interval otherwise) and read exact. */
static void test_all(void **state)
{
	(void)state;
	idd_server *s = open_all(IDD_REFRESH_ALWAYS);
	idd_server *slow = open_all(3600);
	idd_error err;
	char ids[256] = "";
	assert_int_equal(idd_server_list_images(s, join_id, ids, &err), 0);
	assert_string_equal(ids, "a.raw b.raw");
	assert_int_equal(idd_server_find_image(s, "b.raw", &err), IDD_OK);
	char longname[5000];
	memset(longname, 'a', sizeof longname - 1);
	longname[sizeof longname - 1] = 0;
	const char *bad[] = {"", "..", "../repo/a.raw", "/etc/passwd", "./a.raw", "a.raw/", ".imgdedup/catalog",
	                     longname};
	for (size_t i = 0; i < IDD_ARRAY_LEN(bad); i++) {
		assert_int_equal(idd_server_find_image(s, bad[i], &err), IDD_ENOENT);
		assert_true(strlen(err.msg) < 400);
	}
	unsigned char img[5 * BS];
	tu_fill_random(img, sizeof img, 99);
	char *c = tu_write(repo, "c.raw", img, sizeof img);
	republish();
	assert_int_equal(idd_server_find_image(s, "c.raw", &err), IDD_OK);
	assert_int_equal(idd_server_find_image(slow, "c.raw", &err), IDD_ENOENT);
	ids[0] = 0;
	assert_int_equal(idd_server_list_images(slow, join_id, ids, &err), 0);
	assert_string_equal(ids, "a.raw b.raw");
	idd_export *e;
	assert_int_equal(idd_export_open(s, "c.raw", &e, &err), IDD_OK);
	read_all_check(e, img, sizeof img, 3 * BS);
	idd_export_close(e);
	/* changed under the same id: served as first opened, with a warning */
	warnings = 0;
	unsigned char img2[5 * BS];
	tu_fill_random(img2, sizeof img2, 98);
	free(tu_write(repo, "c.raw", img2, sizeof img2));
	republish();
	idd_export *again;
	assert_int_equal(idd_server_find_image(s, "c.raw", &err), IDD_OK); /* re-reads the catalog */
	assert_int_equal(idd_export_open(s, "c.raw", &again, &err), IDD_OK);
	assert_ptr_equal(again, e);
	assert_int_equal(warnings, 1);
	assert_non_null(strstr(last_warning, "c.raw changed in the repository"));
	assert_int_equal(idd_export_open(s, "c.raw", &again, &err), IDD_OK);
	assert_int_equal(warnings, 1); /* once */
	read_all_check(e, img, sizeof img, 5 * BS); /* what the cache holds of it */
	/* removed from the catalog: refused, the export opened before reads on */
	unlink(c);
	free(c);
	republish();
	assert_int_equal(idd_server_find_image(s, "c.raw", &err), IDD_ENOENT);
	read_all_check(e, img, sizeof img, 2 * BS);
	idd_server_close(slow);
	idd_server_close(s);
	/* without --all nothing is listed or found */
	s = open_server(false, 0);
	assert_int_not_equal(idd_server_list_images(s, join_id, ids, &err), 0);
	assert_int_equal(idd_server_find_image(s, "a.raw", &err), IDD_ENOENT);
	idd_server_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_cold_warm_sibling),
	    cmocka_unit_test(test_extents),
	    cmocka_unit_test(test_checkpoint),
	    cmocka_unit_test(test_damaged_source_block),
	    cmocka_unit_test(test_tampered_cache),
	    cmocka_unit_test(test_fill),
	    cmocka_unit_test(test_fill_checks_partial),
	    cmocka_unit_test(test_repair_complete),
	    cmocka_unit_test(test_all),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
