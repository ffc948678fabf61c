/* test_evict.c - the order in which cache gc removes files (evict.c):
 * without sharing the value policy is LRU; with a family of images sharing
 * content, a sibling whose contents are held elsewhere goes before an older
 * image of its own, and the last copy of shared content is kept longest; a
 * file in use is never chosen (even when the budget cannot be met); the
 * budget is met with as few files as the order allows; the LRU policy
 * ignores sharing; gc itself follows the order on a real cache. */
#include "testutil.h"
#include "imgdedup.h"
#include "node/cache.h"
#include "node/evict.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS 4096u

/* keys lo..hi-1 */
static uint64_t *range(uint64_t lo, uint64_t hi)
{
	uint64_t *k = calloc(hi - lo + 1, sizeof *k);
	for (uint64_t i = lo; i < hi; i++)
		k[i - lo] = i;
	return k;
}

static idd_evict_item item(int64_t t, uint64_t *keys, size_t n)
{
	return (idd_evict_item){.last_read = t, .disk_bytes = n * BS, .block_size = BS, .keys = keys,
	                        .nkeys = n, .removable = true};
}

static size_t choose(const idd_evict_item *it, size_t n, uint64_t max, enum idd_evict_policy p,
                     size_t *order)
{
	size_t no;
	idd_error err;
	assert_int_equal(idd_evict_choose(it, n, max, p, order, &no, &err), IDD_OK);
	return no;
}

static void test_no_sharing_is_lru(void **state)
{
	(void)state;
	uint64_t *k[4] = {range(0, 10), range(100, 110), range(200, 210), range(300, 310)};
	/* read at 40, 10, 30, 20: LRU order 1, 3, 2, 0 */
	idd_evict_item it[4] = {item(40, k[0], 10), item(10, k[1], 10), item(30, k[2], 10),
	                        item(20, k[3], 10)};
	size_t order[4];
	/* nothing to do under the budget */
	assert_int_equal(choose(it, 4, 40 * BS, IDD_EVICT_VALUE, order), 0);
	assert_int_equal(choose(it, 4, 40 * BS - 1, IDD_EVICT_VALUE, order), 1);
	assert_int_equal(order[0], 1);
	assert_int_equal(choose(it, 4, 0, IDD_EVICT_VALUE, order), 4);
	size_t want[4] = {1, 3, 2, 0};
	for (int i = 0; i < 4; i++)
		assert_int_equal(order[i], want[i]);
	assert_int_equal(choose(it, 4, 0, IDD_EVICT_LRU, order), 4);
	for (int i = 0; i < 4; i++)
		assert_int_equal(order[i], want[i]);
	/* enough removed to meet the budget, no more */
	assert_int_equal(choose(it, 4, 20 * BS, IDD_EVICT_VALUE, order), 2);
	for (int i = 0; i < 4; i++)
		free(k[i]);
}

static void test_family(void **state)
{
	(void)state;
	/* A (read first) holds 100 contents of its own; B and D (read later)
	 * share 90 of their 100 */
	uint64_t *ka = range(1000, 1100);
	uint64_t *kb = range(0, 100);
	uint64_t *kd = range(10, 110);
	idd_evict_item it[3] = {item(1, ka, 100), item(2, kb, 100), item(3, kd, 100)};
	size_t order[3];
	/* LRU drops A; by value B goes first (only 10 contents are its alone) */
	assert_int_equal(choose(it, 3, 250 * BS, IDD_EVICT_LRU, order), 1);
	assert_int_equal(order[0], 0);
	assert_int_equal(choose(it, 3, 250 * BS, IDD_EVICT_VALUE, order), 1);
	assert_int_equal(order[0], 1);
	/* then A: D now holds the last copy of what B and D shared, worth both */
	assert_int_equal(choose(it, 3, 0, IDD_EVICT_VALUE, order), 3);
	assert_int_equal(order[1], 0);
	assert_int_equal(order[2], 2);
	/* a content shared by k images is worth more: with the 90 shared
	 * contents held by a third, even older sibling E as well, D's last copy
	 * outlives an A read after all of them */
	uint64_t *ke = range(10, 100);
	idd_evict_item it2[4] = {item(5, ka, 100), item(2, kb, 100), item(3, kd, 100),
	                         item(1, ke, 90)};
	size_t order2[4];
	assert_int_equal(choose(it2, 4, 100 * BS, IDD_EVICT_VALUE, order2), 3);
	/* E and B hold nothing of their own beyond 10 contents: they go first */
	assert_true((order2[0] == 3 && order2[1] == 1) || (order2[0] == 1 && order2[1] == 3));
	/* then D (the last copy of the shared 90, worth p_E + p_B + p_D each) is
	 * kept over A (100 contents worth p_A alone, A being the most recent):
	 * p_A = 1, p_D = 1/2, p_B = 1/3, p_E = 1/4; D's cost per byte
	 * 90 * (1/2 + 1/3 + 1/4) / 100 + 10/100 * 1/2 = 1.025 > A's 1 */
	assert_int_equal(order2[2], 0);
	free(ka);
	free(kb);
	free(kd);
	free(ke);
}

static void test_in_use_never_chosen(void **state)
{
	(void)state;
	uint64_t *k[3] = {range(0, 10), range(100, 110), range(200, 210)};
	idd_evict_item it[3] = {item(1, k[0], 10), item(2, k[1], 10), item(3, k[2], 10)};
	it[0].removable = false; /* the oldest, cheapest: in use */
	size_t order[3];
	for (int p = 0; p < 2; p++) {
		/* the budget cannot be met: everything else goes, the in-use file stays */
		assert_int_equal(choose(it, 3, 0, p ? IDD_EVICT_LRU : IDD_EVICT_VALUE, order), 2);
		assert_int_equal(order[0], 1);
		assert_int_equal(order[1], 2);
	}
	/* an in-use file's contents are kept: a sibling sharing all of them
	 * costs nothing to remove */
	uint64_t *dup = range(0, 10);
	idd_evict_item it2[3] = {item(1, k[0], 10), item(9, dup, 10), item(5, k[2], 10)};
	it2[0].removable = false;
	assert_int_equal(choose(it2, 3, 25 * BS, IDD_EVICT_VALUE, order), 1);
	assert_int_equal(order[0], 1);
	free(dup);
	for (int i = 0; i < 3; i++)
		free(k[i]);
}

static void test_ties_and_empty(void **state)
{
	(void)state;
	idd_evict_item none[1] = {{0}};
	size_t order[3];
	assert_int_equal(choose(none, 0, 0, IDD_EVICT_VALUE, order), 0);
	/* equal reads, equal contents: listed order */
	uint64_t *a = range(0, 4), *b = range(0, 4), *c = range(0, 4);
	idd_evict_item it[3] = {item(7, a, 4), item(7, b, 4), item(7, c, 4)};
	assert_int_equal(choose(it, 3, 0, IDD_EVICT_VALUE, order), 3);
	assert_int_equal(order[0], 0);
	assert_int_equal(order[1], 1);
	assert_int_equal(order[2], 2);
	free(a);
	free(b);
	free(c);
	/* the key of a digest is its first 8 bytes, never UINT64_MAX */
	unsigned char d[32];
	memset(d, 0xff, sizeof d);
	assert_true(idd_evict_key(d) != UINT64_MAX);
	memset(d, 0, sizeof d);
	d[0] = 5;
	assert_int_equal(idd_evict_key(d), 5);
}

static void quiet(void *ctx, const char *msg) { (void)ctx; (void)msg; }

/* An image of n blocks: block i holds pattern seeds[i]. */
static void cache_image(idd_cache *c, const char *dir, const char *name, const uint64_t *seeds,
                        size_t n, char **path_out)
{
	unsigned char *img = malloc(n * BS);
	idd_digest *dg = calloc(n, sizeof *dg);
	idd_hasher *h = idd_hasher_new(NULL);
	for (size_t i = 0; i < n; i++) {
		tu_fill_random(img + i * BS, BS, seeds[i]);
		idd_error e;
		assert_int_equal(idd_hasher_digest(h, img + i * BS, BS, &dg[i], &e), IDD_OK);
	}
	idd_map *m;
	idd_error err;
	assert_int_equal(idd_map_build(dg, n, BS, n * BS, &m, &err), IDD_OK);
	char *p = tu_write(dir, name, img, n * BS);
	*path_out = realpath(p, NULL);
	free(p);
	assert_int_equal(idd_cache_register(c, *path_out, m, &err), IDD_OK);
	idd_map_free(m);
	idd_hasher_free(h);
	free(dg);
	free(img);
}

static void test_gc_follows_value(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *imgdir = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	assert_int_equal(idd_mkdir_p(imgdir, NULL), IDD_OK);
	idd_cache *c;
	idd_error err;
	assert_int_equal(idd_cache_open(dir, quiet, NULL, &c, &err), IDD_OK);
	uint64_t sa[20], sb[20], sd[20];
	for (int i = 0; i < 20; i++) {
		sa[i] = 1000 + (uint64_t)i;
		sb[i] = 1 + (uint64_t)i;
		sd[i] = i < 18 ? 1 + (uint64_t)i : 500 + (uint64_t)i;
	}
	char *pa, *pb, *pd;
	cache_image(c, imgdir, "a.raw", sa, 20, &pa);
	usleep(2000);
	cache_image(c, imgdir, "b.raw", sb, 20, &pb);
	usleep(2000);
	cache_image(c, imgdir, "d.raw", sd, 20, &pd);
	idd_cache_close(c);
	idd_cache_image *v;
	size_t n;
	assert_int_equal(idd_cache_list(dir, &v, &n, quiet, NULL, &err), IDD_OK);
	assert_int_equal(n, 3);
	uint64_t total = v[0].disk_bytes + v[1].disk_bytes + v[2].disk_bytes;
	idd_cache_list_free(v, n);
	/* one must go: LRU would take a.raw, value takes b.raw (d holds 18 of its 20) */
	idd_cache_gc_stats st;
	assert_int_equal(idd_cache_gc(dir, total - 1, &st, quiet, NULL, &err), IDD_OK);
	assert_int_equal(st.images_removed, 1);
	assert_true(st.bytes_after <= total - 1);
	assert_int_equal(access(pa, F_OK), 0);
	assert_int_not_equal(access(pb, F_OK), 0);
	assert_int_equal(access(pd, F_OK), 0);
	/* the LRU policy on the same cache takes a.raw */
	assert_int_equal(idd_cache_gc_policy(dir, st.bytes_after - 1, IDD_GC_LRU, &st, quiet, NULL, &err),
	                 IDD_OK);
	assert_int_equal(st.images_removed, 1);
	assert_int_not_equal(access(pa, F_OK), 0);
	assert_int_equal(access(pd, F_OK), 0);
	free(pa);
	free(pb);
	free(pd);
	free(imgdir);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_sharing_is_lru),
		cmocka_unit_test(test_family),
		cmocka_unit_test(test_in_use_never_chosen),
		cmocka_unit_test(test_ties_and_empty),
		cmocka_unit_test(test_gc_follows_value),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
