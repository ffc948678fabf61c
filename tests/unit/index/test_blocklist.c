/* test_blocklist.c - sparse block lists: building, the version 2 format,
 * reading version 1 lists, hostile runs, and maps built from runs. */
#include "testutil.h"
#include "idxgen.h"
#include "index/map.h"

#include <stdlib.h>
#include <string.h>

static char *dir;

static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

/* content per block, 0 = zero block */
static const uint64_t pattern[] = {0, 0, 1, 2, 0, 3, 3, 0, 0, 0, 4, 1, 0};
#define NPAT (sizeof pattern / sizeof pattern[0])

static idd_image_info entry(const idd_digest *key, uint64_t nblocks, uint64_t zero)
{
	idd_image_info im = {.id = (char *)"x.raw", .nblocks = nblocks, .zero_blocks = zero,
	                     .list_key = *key};
	return im;
}

static void test_round_trip(void **state)
{
	(void)state;
	idd_digest d[NPAT];
	uint64_t zero = 0;
	for (size_t i = 0; i < NPAT; i++) {
		d[i] = ig_digest(pattern[i]);
		zero += !pattern[i];
	}
	idd_error err;
	idd_blocklist bl;
	idd_blocklist_init(&bl, 4096);
	/* appended piecewise, with a gap and zero digests inside pieces */
	assert_int_equal(idd_blocklist_append(&bl, 0, d, 4, &err), IDD_OK);
	assert_int_equal(idd_blocklist_append(&bl, 5, d + 5, 6, &err), IDD_OK);
	assert_int_equal(idd_blocklist_append(&bl, 11, d + 11, 1, &err), IDD_OK);
	assert_int_equal(idd_blocklist_append(&bl, 3, d, 1, &err), IDD_ERR); /* out of order */
	assert_int_equal(idd_blocklist_finish(&bl, NPAT + 1000, &err), IDD_OK);
	assert_int_equal(bl.ndata, NPAT - zero);
	assert_int_equal(bl.nruns, 3); /* [2,4) [5,7) [10,12) */
	assert_int_equal(bl.runs[1].block, 5);
	assert_int_equal(bl.runs[2].count, 2);
	idd_digest key;
	assert_int_equal(idd_blocklist_write(dir, &bl, &key, &err), IDD_OK);
	idd_blocklist_clear(&bl);

	idd_image_info im = entry(&key, NPAT + 1000, zero + 1000);
	idd_blocklist *got;
	assert_int_equal(idd_blocklist_open(dir, &im, &got, &err), IDD_OK);
	assert_int_equal(got->nblocks, NPAT + 1000);
	/* the stable tier's view of the same handle */
	assert_int_equal(idd_blocklist_nblocks(got), NPAT + 1000);
	assert_int_equal(idd_blocklist_block_size(got), got->block_size);
	for (size_t i = 0; i < NPAT + 1000; i++) {
		const idd_digest *g = idd_blocklist_get(got, i);
		if (i < NPAT && pattern[i])
			assert_memory_equal(g, &d[i], 32);
		else
			assert_null(g);
	}
	idd_blocklist_free(got);
	/* the dense form agrees */
	idd_digest *dense;
	assert_int_equal(idd_blocklist_load(dir, &im, &dense, &err), IDD_OK);
	assert_memory_equal(dense, d, sizeof d);
	assert_true(idd_is_zero(dense + NPAT, 1000 * sizeof *dense));
	free(dense);
	/* counts disagreeing with the catalog entry are refused */
	im.zero_blocks--;
	assert_int_not_equal(idd_blocklist_open(dir, &im, &got, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "catalog"));
}

/* Lists written by earlier versions (dense, version 1) are read as they are. */
static void test_reads_version_1(void **state)
{
	(void)state;
	idd_error err;
	size_t len = 12 + NPAT * 32;
	unsigned char *p = calloc(1, len);
	idd_le32_put(p, 4096);
	idd_le64_put(p + 4, NPAT);
	uint64_t zero = 0;
	for (size_t i = 0; i < NPAT; i++) {
		idd_digest d = ig_digest(pattern[i]);
		memcpy(p + 12 + i * 32, d.b, 32);
		zero += !pattern[i];
	}
	char *blocks = idd_path_join(dir, IDD_BLOCKS_DIR, NULL);
	assert_int_equal(idd_mkdir_p(blocks, &err), IDD_OK);
	idd_digest key;
	assert_int_equal(idd_indexfile_write_named(blocks, "IDD-BLK", 1, p, len, true, &key, &err), IDD_OK);
	idd_image_info im = entry(&key, NPAT, zero);
	idd_blocklist *bl;
	assert_int_equal(idd_blocklist_open(dir, &im, &bl, &err), IDD_OK);
	assert_int_equal(bl->ndata, NPAT - zero);
	for (size_t i = 0; i < NPAT; i++) {
		idd_digest d = ig_digest(pattern[i]);
		const idd_digest *g = idd_blocklist_get(bl, i);
		if (pattern[i])
			assert_memory_equal(g, &d, 32);
		else
			assert_null(g);
	}
	idd_blocklist_free(bl);
	free(blocks);
	free(p);
}

/* Hostile version 2 payloads inside a valid container: each refused with
 * "corrupt block list", none allocating by an unchecked count. */
static void expect_corrupt(const idd_buf *b, uint64_t nblocks, uint64_t zero, const char *why)
{
	idd_error err;
	idd_digest key;
	char *blocks = idd_path_join(dir, IDD_BLOCKS_DIR, NULL);
	assert_int_equal(idd_mkdir_p(blocks, &err), IDD_OK);
	assert_int_equal(idd_indexfile_write_named(blocks, "IDD-BLK", 2, b->data, b->len, true, &key, &err),
	                 IDD_OK);
	idd_image_info im = entry(&key, nblocks, zero);
	idd_blocklist *bl = NULL;
	int rc = idd_blocklist_open(dir, &im, &bl, &err);
	if (rc == IDD_OK)
		fail_msg("accepted: %s", why);
	if (getenv("IDD_TEST_VERBOSE"))
		print_message("%s: %s\n", why, err.msg);
	if (!strstr(err.msg, "corrupt") && !strstr(err.msg, "catalog"))
		fail_msg("%s: unexpected message: %s", why, err.msg);
	free(blocks);
}

static void put_header(idd_buf *b, uint64_t nblocks, uint64_t ndata, uint64_t nruns)
{
	idd_buf_put_u32(b, 4096);
	idd_buf_put_u64(b, nblocks);
	idd_buf_put_u64(b, ndata);
	idd_buf_put_u64(b, nruns);
}

static void test_hostile_runs(void **state)
{
	(void)state;
	idd_digest one = ig_digest(1), two = ig_digest(2), zero = {{0}};
	struct {
		const char *why;
		uint64_t nblocks, ndata, nruns;
		uint64_t runs[6];
		int nrv;
		const idd_digest *d[3];
		int nd;
	} cases[] = {
		{"huge run count", 10, 1, (uint64_t)1 << 60, {0, 1}, 2, {&one}, 1},
		{"huge digest count", 10, (uint64_t)1 << 40, 1, {0, 1}, 2, {&one}, 1},
		{"empty run", 10, 1, 1, {0, 0}, 2, {&one}, 1},
		{"touching runs", 10, 2, 2, {0, 1, 0, 1}, 4, {&one, &two}, 2},
		{"run past the end", 10, 2, 1, {9, 2}, 2, {&one, &two}, 2},
		{"gap overflowing", 10, 1, 1, {UINT64_MAX, 1}, 2, {&one}, 1},
		{"runs disagree with digests", 10, 2, 1, {0, 1}, 2, {&one, &two}, 2},
		{"zero digest", 10, 1, 1, {3, 1}, 2, {&zero}, 1},
		{"trailing bytes", 10, 1, 1, {3, 1}, 2, {&one, &two}, 2},
	};
	for (size_t c = 0; c < IDD_ARRAY_LEN(cases); c++) {
		idd_buf b = {0};
		put_header(&b, cases[c].nblocks, cases[c].ndata, cases[c].nruns);
		for (int i = 0; i < cases[c].nrv; i++)
			idd_buf_put_varint(&b, cases[c].runs[i]);
		for (int i = 0; i < cases[c].nd; i++)
			idd_buf_put(&b, cases[c].d[i]->b, 32);
		expect_corrupt(&b, cases[c].nblocks, cases[c].nblocks - IDD_MIN(cases[c].ndata, cases[c].nblocks),
		               cases[c].why);
		idd_buf_free(&b);
	}
}

/* A map built from runs equals one built from the dense array; a 2^34-block
 * list of a few runs builds its map without touching per-block memory. */
static void test_map_from_runs(void **state)
{
	(void)state;
	idd_digest d[NPAT];
	for (size_t i = 0; i < NPAT; i++)
		d[i] = ig_digest(pattern[i]);
	idd_error err;
	idd_blocklist bl;
	idd_blocklist_init(&bl, 4096);
	assert_int_equal(idd_blocklist_append(&bl, 0, d, NPAT, &err), IDD_OK);
	idd_map *a, *b;
	assert_int_equal(idd_map_build(d, NPAT, 4096, NPAT * 4096 - 5, &a, &err), IDD_OK);
	assert_int_equal(idd_map_build_list(&bl, NPAT * 4096 - 5, &b, &err), IDD_OK);
	void *fa, *fb;
	size_t la, lb;
	assert_int_equal(idd_map_encode(a, &fa, &la, &err), IDD_OK);
	assert_int_equal(idd_map_encode(b, &fb, &lb, &err), IDD_OK);
	assert_int_equal(la, lb);
	assert_memory_equal(fa, fb, la);
	free(fa);
	free(fb);
	idd_map_free(a);
	idd_map_free(b);
	idd_blocklist_clear(&bl);

	const uint64_t huge = (uint64_t)1 << 34; /* 64 TiB of 4 KiB blocks */
	idd_blocklist_init(&bl, 4096);
	assert_int_equal(idd_blocklist_append(&bl, 7, d + 2, 2, &err), IDD_OK);
	assert_int_equal(idd_blocklist_append(&bl, huge - 3, d + 2, 3, &err), IDD_OK);
	assert_int_equal(idd_blocklist_finish(&bl, huge, &err), IDD_OK);
	assert_int_equal(idd_map_build_list(&bl, huge * 4096, &b, &err), IDD_OK);
	assert_int_equal(b->ndistinct, 2);
	assert_true(b->nruns <= 5);
	assert_int_equal(idd_map_ref(b, 8), 2);
	assert_int_equal(idd_map_ref(b, huge / 2), 0);
	assert_int_equal(idd_map_ref(b, huge - 2), 2);
	assert_int_equal(idd_map_ref(b, huge - 1), 0); /* a zero digest appended is a zero block */
	idd_map_free(b);
	idd_blocklist_clear(&bl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reads_version_1, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_runs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_from_runs, setup, teardown),
	};
	return cmocka_run_group_tests_name("blocklist", tests, NULL, NULL);
}
