/* test_map.c - block maps: round trip, hostile input rejected, the
 * incremental map run, the block table. */
#include "idxgen.h"
#include "index/map.h"
#include "index/blocktable.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *dir;
static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

/* zero run, new run, a repeat, a copy of an earlier sequence, more new */
static const uint64_t sample[] = {0, 0, 0, 1, 2, 3, 4, 5, 9, 9, 9, 9, 2, 3, 4, 0, 6, 7, 1, 8, 0};
#define NSAMPLE (sizeof sample / sizeof sample[0])

static idd_map *sample_map(void)
{
	idd_digest d[NSAMPLE];
	for (size_t i = 0; i < NSAMPLE; i++)
		d[i] = ig_digest(sample[i]);
	idd_map *m;
	idd_error err;
	/* last block partial: image size not a multiple of the block size */
	assert_int_equal(idd_map_build(d, NSAMPLE, 4096, (NSAMPLE - 1) * 4096 + 100, &m, &err), IDD_OK);
	return m;
}

static void test_build_and_round_trip(void **state)
{
	(void)state;
	idd_map *m = sample_map();
	assert_int_equal(m->nblocks, NSAMPLE);
	assert_int_equal(m->ndistinct, 9); /* 1,2,3,4,5,9,6,7,8 */
	for (size_t i = 0; i < NSAMPLE; i++) {
		if (!sample[i])
			assert_int_equal(idd_map_ref(m, i), 0);
		else
			assert_memory_equal(m->digests[idd_map_ref(m, i) - 1].b, ig_digest(sample[i]).b, 32);
	}
	m->list_key = ig_digest(77);
	m->id = strdup("some/image.raw");
	void *file;
	size_t len;
	idd_error err;
	assert_int_equal(idd_map_encode(m, &file, &len, &err), IDD_OK);
	idd_map *p;
	assert_int_equal(idd_map_parse("t.map", file, len, &p, &err), IDD_OK);
	assert_int_equal(p->nblocks, m->nblocks);
	assert_int_equal(p->image_size, m->image_size);
	assert_int_equal(p->ndistinct, m->ndistinct);
	for (uint64_t bi = 0; bi < m->nblocks; bi++)
		assert_int_equal(idd_map_ref(p, bi), idd_map_ref(m, bi));
	assert_memory_equal(p->digests, m->digests, m->ndistinct * 32);
	assert_memory_equal(p->list_key.b, m->list_key.b, 32);
	assert_string_equal(p->id, "some/image.raw");
	idd_map_free(p);

	/* every truncation is refused with a message, never a crash */
	for (size_t cut = 0; cut < len; cut++) {
		assert_int_not_equal(idd_map_parse("t.map", file, cut, &p, &err), IDD_OK);
		assert_non_null(strstr(err.msg, "t.map"));
	}
	/* every single-byte corruption is refused */
	unsigned char *c = malloc(len);
	for (size_t off = 0; off < len; off++) {
		memcpy(c, file, len);
		c[off] ^= 0x40;
		assert_int_not_equal(idd_map_parse("t.map", c, len, &p, &err), IDD_OK);
	}
	free(c);
	free(file);

	/* save/load through the index directory */
	uint64_t bytes;
	assert_int_equal(idd_map_save(dir, "x.raw", m, &bytes, &err), IDD_OK);
	char *rel = idd_map_relpath("x.raw", &err);
	assert_non_null(rel);
	assert_int_equal(strncmp(rel, "maps/", 5), 0);
	assert_int_equal(strlen(rel), 5 + 64 + 4);
	char *path = idd_path_join(dir, rel, &err);
	assert_int_equal(tu_file_size(path), bytes);
	assert_int_equal(idd_map_load(dir, "x.raw", &p, &err), IDD_OK);
	for (uint64_t bi = 0; bi < m->nblocks; bi++)
		assert_int_equal(idd_map_ref(p, bi), idd_map_ref(m, bi));
	idd_map_free(p);
	assert_int_not_equal(idd_map_load(dir, "nope.raw", &p, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "no block map"));
	free(rel);
	free(path);
	idd_map_free(m);
}

/* Wrap a hand-made payload in a valid container (version ver). */
static void *container(const idd_buf *b, uint32_t ver, size_t *len)
{
	char *p = idd_path_join(dir, "hand.map", NULL);
	static const char magic[8] = {'I', 'D', 'D', '-', 'M', 'A', 'P', 0};
	idd_error err;
	assert_int_equal(idd_indexfile_write(p, magic, ver, b->data, b->len, true, &err), IDD_OK);
	void *data;
	assert_int_equal(idd_read_file(p, 1 << 30, &data, len, &err), IDD_OK);
	free(p);
	return data;
}

static void header(idd_buf *b, uint64_t image_size, uint64_t nblocks, uint64_t ndistinct)
{
	idd_buf_put_u32(b, 4096);
	idd_buf_put_u64(b, image_size);
	idd_buf_put_u64(b, nblocks);
	idd_buf_put_u64(b, ndistinct);
	idd_buf_put(b, ig_digest(5).b, 32);
	idd_buf_put_str(b, "img");
}

static void expect_bad(idd_buf *b, uint32_t ver, const char *needle)
{
	size_t len;
	void *f = container(b, ver, &len);
	idd_map *m = NULL;
	idd_error err = {{0}, 0};
	assert_int_not_equal(idd_map_parse("hand.map", f, len, &m, &err), IDD_OK);
	assert_null(m);
	if (!strstr(err.msg, needle))
		fail_msg("expected '%s' in '%s'", needle, err.msg);
	free(f);
	idd_buf_free(b);
}

static void test_hostile_maps(void **state)
{
	(void)state;
	idd_buf b = {0};
	/* a valid hand-made map first: 3 blocks, 1 new, 1 repeat, 1 zero */
	header(&b, 3 * 4096, 3, 1);
	idd_buf_put(&b, ig_digest(1).b, 32);
	idd_buf_put_varint(&b, 1 << 2 | 1);
	idd_buf_put_varint(&b, 1 << 2 | 3);
	idd_buf_put_varint(&b, 1);
	idd_buf_put_varint(&b, 1 << 2 | 0);
	size_t len;
	void *f = container(&b, 1, &len);
	idd_map *m;
	idd_error err;
	assert_int_equal(idd_map_parse("hand.map", f, len, &m, &err), IDD_OK);
	assert_int_equal(idd_map_ref(m, 0), 1);
	assert_int_equal(idd_map_ref(m, 1), 1);
	assert_int_equal(idd_map_ref(m, 2), 0);
	idd_map_free(m);
	free(f);
	/* newer version */
	expect_bad(&b, 2, "newer");
	b = (idd_buf){0};
	/* claims more blocks than its runs describe */
	header(&b, 1000000ull * 4096, 1000000, 1);
	idd_buf_put(&b, ig_digest(1).b, 32);
	idd_buf_put_varint(&b, 1 << 2 | 1);
	expect_bad(&b, 1, "runs cover fewer blocks");
	/* claims a block count absurd for any map */
	header(&b, (1ull << 40) * 4096, 1ull << 40, 0);
	idd_buf_put_varint(&b, (1ull << 40) << 2 | 0);
	expect_bad(&b, 1, "more than");
	/* block count that does not match the image size */
	header(&b, 4096, 2, 0);
	idd_buf_put_varint(&b, 2 << 2 | 0);
	expect_bad(&b, 1, "image size");
	/* reference past the digests introduced so far */
	header(&b, 2 * 4096, 2, 1);
	idd_buf_put(&b, ig_digest(1).b, 32);
	idd_buf_put_varint(&b, 1 << 2 | 1);
	idd_buf_put_varint(&b, 1 << 2 | 3);
	idd_buf_put_varint(&b, 2);
	expect_bad(&b, 1, "reference past");
	/* copy run running past the table */
	header(&b, 3 * 4096, 3, 1);
	idd_buf_put(&b, ig_digest(1).b, 32);
	idd_buf_put_varint(&b, 1 << 2 | 1);
	idd_buf_put_varint(&b, 2 << 2 | 2);
	idd_buf_put_varint(&b, 1);
	expect_bad(&b, 1, "reference past");
	/* new blocks past the digest table */
	header(&b, 2 * 4096, 2, 1);
	idd_buf_put(&b, ig_digest(1).b, 32);
	idd_buf_put_varint(&b, 2 << 2 | 1);
	expect_bad(&b, 1, "past the digest table");
	/* digest table claims more entries than the file holds */
	header(&b, 2 * 4096, 2, 2);
	idd_buf_put(&b, ig_digest(1).b, 32);
	expect_bad(&b, 1, "digest table larger");
	/* unused table entry */
	header(&b, 1 * 4096, 1, 1);
	idd_buf_put(&b, ig_digest(1).b, 32);
	idd_buf_put_varint(&b, 1 << 2 | 0);
	expect_bad(&b, 1, "no block uses");
	/* truncated varint */
	header(&b, 1 * 4096, 1, 0);
	idd_buf_put_u8(&b, 0x80);
	expect_bad(&b, 1, "truncated run");
	/* a zero digest in the table */
	header(&b, 1 * 4096, 1, 1);
	idd_buf_put(&b, ig_digest(0).b, 32);
	idd_buf_put_varint(&b, 1 << 2 | 1);
	expect_bad(&b, 1, "zero digest");
	/* wrong magic */
	idd_map *mm;
	assert_int_not_equal(idd_map_parse("x", "IDD-CAT\0xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 70, &mm, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "magic"));
}

static int64_t mtime_of(const char *p)
{
	struct stat st;
	assert_int_equal(stat(p, &st), 0);
	return (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
}

static void test_map_run_incremental(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "repo/.imgdedup", NULL);
	char *repo = idd_path_join(dir, "repo", NULL);
	uint64_t a[64], b[64], c[40];
	for (int i = 0; i < 64; i++) {
		a[i] = i < 8 ? 0 : 100 + (uint64_t)i;
		b[i] = i < 40 ? a[i] : 500 + (uint64_t)(i % 5); /* internal duplicates */
	}
	for (int i = 0; i < 40; i++)
		c[i] = 900 + (uint64_t)i;
	ig_image imgs[] = {{"a.raw", a, 64}, {"b.raw", b, 64}, {"c.raw", c, 40}};
	ig_write_index(idx, 4096, imgs, 3, 1);
	idd_map_opts o = {.repo = repo};
	idd_map_stats st;
	idd_error err;
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.images, 3);
	assert_int_equal(st.written, 3);
	assert_int_equal(st.removed, 0);
	assert_true(st.blocktable_rebuilt);
	/* distinct: a 56, b 32 shared with a + 5, c 40 -> 56 + 5 + 40 */
	assert_int_equal(st.blocktable_entries, 101);
	uint64_t bytes1 = st.map_bytes;
	/* every map decodes to its block list */
	for (int i = 0; i < 3; i++) {
		idd_map *m;
		assert_int_equal(idd_map_load(idx, imgs[i].id, &m, &err), IDD_OK);
		assert_int_equal(m->nblocks, imgs[i].nblocks);
		for (uint64_t k = 0; k < m->nblocks; k++) {
			idd_digest want = ig_digest(imgs[i].content[k]);
			if (imgs[i].content[k] == 0)
				assert_int_equal(idd_map_ref(m, k), 0);
			else
				assert_memory_equal(m->digests[idd_map_ref(m, k) - 1].b, want.b, 32);
		}
		idd_map_free(m);
	}
	/* the block table: how many images hold each digest */
	idd_blocktable *bt;
	assert_int_equal(idd_blocktable_open(idx, &bt, &err), IDD_OK);
	assert_int_equal(bt->nimages, 3);
	assert_int_equal(bt->entries, 101);
	for (int i = 0; i < 3; i++) {
		for (uint64_t k = 0; k < imgs[i].nblocks; k++) {
			uint64_t v = imgs[i].content[k];
			if (!v)
				continue;
			idd_digest d = ig_digest(v);
			int64_t holders;
			assert_int_equal(idd_blocktable_count(bt, &d, &holders, &err), IDD_OK);
			/* a's blocks 8..39 are b's too */
			bool shared = v >= 108 && v < 140;
			assert_int_equal(holders, shared ? 2 : 1);
		}
	}
	idd_digest absent = ig_digest(77777);
	int64_t c0;
	assert_int_equal(idd_blocktable_count(bt, &absent, &c0, &err), IDD_OK);
	assert_int_equal(c0, 0);
	idd_blocktable_free(bt);
	/* info's summary */
	idd_image_summary sum;
	assert_int_equal(idd_image_summary_get(idx, "b.raw", &sum, &err), IDD_OK);
	assert_int_equal(sum.blocks, 64);
	assert_int_equal(sum.zero_blocks, 8);
	assert_int_equal(sum.distinct_blocks, 37);
	assert_int_equal(sum.internal_duplicates, 64 - 8 - 37);
	assert_true(sum.has_map);
	assert_true(sum.has_blocktable);
	assert_int_equal(sum.exclusive_blocks, 5);

	/* unchanged index: nothing written */
	char *mp = idd_path_join(idx, "maps/index", NULL);
	char *bp = idd_path_join(idx, "blocktable/index", NULL);
	int64_t t1 = mtime_of(mp), t2 = mtime_of(bp);
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.written, 0);
	assert_int_equal(st.unchanged, 3);
	assert_false(st.blocktable_rebuilt);
	assert_int_equal(st.map_bytes, bytes1);
	assert_true(mtime_of(mp) == t1 && mtime_of(bp) == t2);

	/* c changes, a is removed: one map written, one deleted */
	c[3] = 4242;
	ig_image imgs2[] = {{"b.raw", b, 64}, {"c.raw", c, 40}};
	ig_write_index(idx, 4096, imgs2, 2, 2);
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.images, 2);
	assert_int_equal(st.written, 1);
	assert_int_equal(st.unchanged, 1);
	assert_int_equal(st.removed, 1);
	assert_true(st.blocktable_rebuilt);
	assert_int_equal(st.blocktable_entries, 37 + 40);
	idd_map *m;
	assert_int_not_equal(idd_map_load(idx, "a.raw", &m, &err), IDD_OK);

	/* a named image that is not indexed */
	const char *names[] = {"zzz.raw"};
	o.images = names;
	o.n_images = 1;
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_ENOENT);
	assert_non_null(strstr(err.msg, "zzz.raw"));
	/* locked index with no_wait */
	int fd;
	assert_int_equal(idd_lock(idx, false, &fd, &err), IDD_OK);
	o.n_images = 0;
	o.no_wait = true;
	if (fork() == 0) { /* flock is per open file: test from another process */
		idd_error e2;
		_exit(idd_map_run(&o, &st, &e2) == IDD_EBUSY && strstr(e2.msg, "locked") ? 0 : 1);
	}
	int status;
	wait(&status);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	idd_unlock(fd);
	free(mp);
	free(bp);
	free(idx);
	free(repo);
}

static void test_size_goal(void **state)
{
	(void)state;
	/* 20000 blocks: long runs of new content, zeros, some repeats */
	enum { N = 20000 };
	idd_digest *d = calloc(N, sizeof *d);
	uint64_t distinct = 0;
	for (int i = 0; i < N; i++) {
		uint64_t content = (i % 1000) < 100 ? 0 : (i % 3000 > 2900 ? 7 : 10 + (uint64_t)i);
		d[i] = ig_digest(content);
	}
	idd_map *m;
	idd_error err;
	assert_int_equal(idd_map_build(d, N, 4096, (uint64_t)N * 4096, &m, &err), IDD_OK);
	distinct = m->ndistinct;
	void *f;
	size_t len;
	assert_int_equal(idd_map_encode(m, &f, &len, &err), IDD_OK);
	assert_true(len <= 1.05 * 32 * distinct + 4096);
	free(f);
	idd_map_free(m);
	free(d);
}

/* A damaged, swapped or lost map (or block table shard) is noticed by the
 * next run, reported, counted as repaired and rebuilt. */
static int map_warnings;
static char map_last_warning[2048];
static void map_warn(void *ctx, const char *msg)
{
	(void)ctx;
	map_warnings++;
	snprintf(map_last_warning, sizeof map_last_warning, "%s", msg);
}

static void test_map_run_repairs(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "repo/.imgdedup", NULL);
	char *repo = idd_path_join(dir, "repo", NULL);
	uint64_t a[32], b[32];
	for (int i = 0; i < 32; i++) {
		a[i] = 100 + (uint64_t)i;
		b[i] = 300 + (uint64_t)i;
	}
	ig_image imgs[] = {{"a.raw", a, 32}, {"b.raw", b, 32}};
	ig_write_index(idx, 4096, imgs, 2, 1);
	idd_map_opts o = {.repo = repo, .warn = map_warn};
	idd_map_stats st;
	idd_error err;
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.written, 2);
	char *ra = idd_map_relpath("a.raw", NULL), *rb = idd_map_relpath("b.raw", NULL);
	char *pa = idd_path_join(idx, ra, NULL), *pb = idd_path_join(idx, rb, NULL);
	/* one flipped byte */
	tu_flip_byte(pa, tu_file_size(pa) - 40);
	map_warnings = 0;
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.repaired, 1);
	assert_int_equal(st.written, 1);
	assert_int_equal(st.unchanged, 1);
	assert_int_equal(map_warnings, 1);
	idd_map *m;
	assert_int_equal(idd_map_load(idx, "a.raw", &m, &err), IDD_OK);
	idd_map_free(m);
	/* nothing wrong: nothing repaired */
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.repaired, 0);
	assert_int_equal(st.written, 0);
	/* the two maps swapped: valid files of the same size, of another image */
	assert_int_equal(tu_file_size(pa), tu_file_size(pb));
	char *cmd = idd_asprintf(NULL, "cp %s %s.x && cp %s %s && mv %s.x %s", pa, pa, pb, pa, pa, pb);
	assert_int_equal(system(cmd), 0);
	free(cmd);
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.repaired, 2);
	assert_int_equal(st.written, 2);
	assert_non_null(strstr(map_last_warning, "the map of another image"));
	/* a lost map */
	assert_int_equal(unlink(pb), 0);
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.repaired, 1);
	assert_int_equal(st.written, 1);
	/* a damaged block table run */
	char *shard = tu_first_file(idx, "blocktable", "run-");
	assert_non_null(shard);
	tu_flip_byte(shard, 40);
	assert_int_equal(idd_map_run(&o, &st, &err), IDD_OK);
	assert_int_equal(st.repaired, 1);
	assert_true(st.blocktable_rebuilt);
	idd_blocktable *bt;
	assert_int_equal(idd_blocktable_open(idx, &bt, &err), IDD_OK);
	assert_int_equal(bt->entries, 64);
	idd_blocktable_free(bt);
	free(shard);
	free(ra);
	free(rb);
	free(pa);
	free(pb);
	free(idx);
	free(repo);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_build_and_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_maps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_run_incremental, setup, teardown),
		cmocka_unit_test_setup_teardown(test_size_goal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_run_repairs, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
