/* test_estimate.c - the deploy plan (plan.c) and cache estimate
 * (estimate.c) from a local source: blocks sorted by origin, first copies
 * and repeats, what a local source holds; the estimate equals the bytes a
 * deploy then fetches (empty cache, sibling cached, with a pack), seconds
 * from the bandwidth, no cache directory created, bad ids refused; the
 * boot's missing bytes from a published profile, own or borrowed. */
#include "testutil.h"
#include "imgdedup.h"
#include "index/map.h"
#include "node/plan.h"
#include "node/remote_index.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BS 4096u
#define NB 96

static char *root, *repo;
static unsigned char *img_a, *img_b;

static void quiet(void *ctx, const char *msg) { (void)ctx; (void)msg; }

/* A: blocks from a pool of 30 patterns (repeats), every 6th zero, and a
 * 1000-byte tail.  B: A with 10 blocks replaced by new content. */
static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp();
	repo = idd_path_join(root, "repo", NULL);
	tu_pair_spec spec = {.nb = NB, .pool = 30, .zero_every = 6, .seed = 500, .tail = 1000,
	                     .tail_seed = 9, .changed = 40, .nchanged = 10, .changed_seed = 9000};
	return tu_pair_repo(repo, &spec, &img_a, &img_b);
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(root);
	free(root);
	free(repo);
	free(img_a);
	free(img_b);
	return 0;
}

/* A local source holding the digests of blocks whose first copy is at an
 * even block of image a. */
static const idd_map *held_map;
static bool even_has(idd_block_source *s, const idd_digest *d)
{
	(void)s;
	for (uint64_t b = 0; b < held_map->nblocks; b += 2) {
		uint32_t k = idd_map_ref(held_map, b);
		if (k && !memcmp(held_map->digests[k - 1].b, d->b, IDD_DIGEST_SIZE))
			return true;
	}
	return false;
}

static void test_plan_sort(void **state)
{
	(void)state;
	idd_error err;
	idd_remote_index *ri;
	const idd_image_info *info;
	idd_map *m;
	assert_int_equal(idd_remote_index_open(repo, NULL, &(idd_fetch_opts){0}, &ri, &err), IDD_OK);
	assert_int_equal(idd_remote_index_image(ri, "a.raw", &info, &err), IDD_OK);
	assert_int_equal(idd_remote_index_map(ri, info, &m, &err), IDD_OK);

	/* nothing held: every first copy is fetched, in ascending order */
	idd_plan p;
	assert_int_equal(idd_plan_init(&p, m, &err), IDD_OK);
	idd_blist local = {0}, fetch = {0}, repeat = {0};
	idd_plan_settled st;
	assert_int_equal(idd_plan_sort(&p, &local, &fetch, &repeat, &st, &err), IDD_OK);
	assert_int_equal(st.bytes_zero, (NB / 6) * BS);
	assert_int_equal(st.bytes_valid, 0);
	assert_int_equal(local.n, 0);
	assert_int_equal(fetch.n, m->ndistinct);
	assert_int_equal(fetch.n, 26); /* 25 patterns among non-zero blocks, and the tail */
	assert_int_equal(fetch.n + repeat.n + NB / 6, m->nblocks);
	for (size_t i = 1; i < fetch.n; i++)
		assert_true(fetch.v[i - 1] < fetch.v[i]);
	/* a repeat's content has its first copy earlier */
	for (size_t i = 0; i < repeat.n; i++) {
		uint32_t k = idd_map_ref(m, repeat.v[i]);
		assert_true(p.pos[k] < repeat.v[i]);
	}
	idd_blist_free(&fetch);
	idd_blist_free(&repeat);
	idd_plan_free(&p);

	/* a local source holding some digests, a block already in OUT */
	struct idd_block_source_ops ops = {"test", even_has, NULL, NULL};
	idd_block_source src = {.ops = &ops};
	held_map = m;
	assert_int_equal(idd_plan_init(&p, m, &err), IDD_OK);
	idd_plan_have(&p, 1, idd_map_ref(m, 1));
	idd_plan_locate(&p, &src);
	assert_int_equal(idd_plan_sort(&p, &local, &fetch, NULL, &st, &err), IDD_OK);
	assert_int_equal(st.bytes_valid, BS);
	assert_int_equal(idd_plan_count_fetch(&p), fetch.n);
	assert_int_equal(local.n + fetch.n + 1, m->ndistinct);
	for (size_t i = 0; i < local.n; i++)
		assert_true(even_has(&src, &m->digests[idd_map_ref(m, local.v[i]) - 1]));
	for (size_t i = 0; i < fetch.n; i++)
		assert_false(even_has(&src, &m->digests[idd_map_ref(m, fetch.v[i]) - 1]));
	assert_true(local.n > 0 && fetch.n > 0);
	idd_blist_free(&local);
	idd_blist_free(&fetch);
	idd_plan_free(&p);
	idd_map_free(m);
	idd_remote_index_close(ri);
}

static uint64_t deployed(const char *cache, const char *id)
{
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                     .image = id};
	idd_deploy_stats st;
	idd_error err;
	assert_int_equal(idd_deploy(&o, &st, &err), IDD_OK);
	return st.bytes_fetched;
}

static void estimate(const char *cache, uint64_t bandwidth, idd_image_estimate **v)
{
	static const char *const ids[] = {"a.raw", "b.raw"};
	idd_estimate_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                       .images = ids, .n_images = 2, .bandwidth = bandwidth};
	idd_error err;
	int rc = idd_cache_estimate(&o, v, &err);
	if (rc)
		fprintf(stderr, "estimate: %s\n", err.msg);
	assert_int_equal(rc, IDD_OK);
	assert_string_equal((*v)[0].image, "a.raw");
	assert_string_equal((*v)[1].image, "b.raw");
	assert_false((*v)[0].has_boot);
}

static void run_estimates(const char *name, bool packed)
{
	char *cache = idd_path_join(root, name, NULL);
	idd_image_estimate *v;
	estimate(cache, 1 << 20, &v);
	assert_int_not_equal(access(cache, F_OK), 0); /* not created */
	uint64_t want_a = tu_missing_bytes(img_a, NB * BS + 1000, 0, UINT64_MAX, NULL, 0);
	if (!packed)
		assert_int_equal(v[0].bytes_missing, want_a);
	assert_int_equal(v[0].from_pack, packed);
	assert_true(v[0].has_seconds);
	assert_true(v[0].seconds > (double)v[0].bytes_missing / (1 << 20) - 1e-9 &&
	            v[0].seconds < (double)v[0].bytes_missing / (1 << 20) + 1e-9);
	assert_int_equal(v[0].bytes_total, NB * BS + 1000);
	assert_int_equal(v[0].bytes_zero, (NB / 6) * BS);
	uint64_t est_a = v[0].bytes_missing;
	idd_cache_estimate_free(v);
	assert_int_equal(deployed(cache, "a.raw"), est_a);

	/* a is cached now: b lacks its 10 new blocks */
	estimate(cache, 0, &v);
	assert_int_equal(v[0].bytes_missing, 0);
	assert_false(v[1].has_seconds);
	if (!packed)
		assert_int_equal(v[1].bytes_missing,
		                 tu_missing_bytes(img_b, NB * BS, 0, UINT64_MAX, img_a, NB * BS + 1000));
	uint64_t est_b = v[1].bytes_missing;
	assert_true(est_b > 0);
	idd_cache_estimate_free(v);
	assert_int_equal(deployed(cache, "b.raw"), est_b);
	estimate(cache, 0, &v);
	assert_int_equal(v[0].bytes_missing + v[1].bytes_missing, 0);
	idd_cache_estimate_free(v);
	free(cache);
}

static void test_estimate_equals_deploy(void **state)
{
	(void)state;
	run_estimates("cache-nopack", false);
	idd_pack_opts po = {.repo = repo, .warn = quiet};
	idd_pack_stats ps;
	idd_error err;
	assert_int_equal(idd_pack_run(&po, &ps, &err), IDD_OK);
	run_estimates("cache-pack", true);
}

static void test_estimate_refusals(void **state)
{
	(void)state;
	char *cache = idd_path_join(root, "cache-refusals", NULL);
	idd_image_estimate *v = NULL;
	idd_error err;
	const char *bad[] = {"../etc/passwd"};
	idd_estimate_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                       .images = bad, .n_images = 1};
	assert_true(idd_cache_estimate(&o, &v, &err) < 0);
	assert_non_null(strstr(err.msg, "refused"));
	const char *nope[] = {"a.raw", "nope.raw"};
	o.images = nope;
	o.n_images = 2;
	assert_true(idd_cache_estimate(&o, &v, &err) < 0);
	assert_non_null(strstr(err.msg, "nope.raw"));
	assert_null(v);
	o.n_images = 0;
	assert_true(idd_cache_estimate(&o, &v, &err) < 0);
	free(cache);
}

/* b.raw's boot (blocks 1-5, shared with a.raw, and 40-49, its own) is
 * published: b lacks its 15 blocks, a.raw (never booted) borrows the 5 it
 * holds; with a cached, b lacks its own 10 and a nothing. */
static void test_estimate_boot(void **state)
{
	(void)state;
	char *cache = idd_path_join(root, "cache-boot", NULL);
	char *prof = idd_path_join(root, "b.profile", NULL);
	FILE *f = fopen(prof, "w");
	assert_non_null(f);
	fprintf(f, "# recorded\n");
	for (int b = 40; b < 50; b++)
		fprintf(f, "b.raw\t%d\n", b);
	for (int b = 1; b <= 5; b++)
		fprintf(f, "b.raw\t%d\n", b);
	assert_int_equal(fclose(f), 0);
	idd_profile_publish_opts po = {.repo = repo, .file = prof, .image = "b.raw"};
	uint64_t nd;
	idd_error err;
	assert_int_equal(idd_profile_publish(&po, &nd, &err), IDD_OK);
	assert_int_equal(nd, 15);
	static const char *const ids[] = {"a.raw", "b.raw"};
	idd_estimate_opts o = {.node = {.source = repo, .cache_dir = cache, .no_pack = true, .warn = quiet},
	                       .images = ids, .n_images = 2};
	idd_image_estimate *v;
	assert_int_equal(idd_cache_estimate(&o, &v, &err), IDD_OK);
	assert_true(v[0].has_boot && v[1].has_boot);
	assert_int_equal(v[1].boot_bytes_missing, 15 * BS);
	assert_int_equal(v[0].boot_bytes_missing, 5 * BS);
	idd_cache_estimate_free(v);
	deployed(cache, "a.raw");
	assert_int_equal(idd_cache_estimate(&o, &v, &err), IDD_OK);
	assert_int_equal(v[1].boot_bytes_missing, 10 * BS);
	assert_true(v[0].has_boot);
	assert_int_equal(v[0].boot_bytes_missing, 0);
	idd_cache_estimate_free(v);
	/* unpublished: no profile applies again */
	assert_int_equal(idd_profile_unpublish(&po, &err), IDD_OK);
	assert_int_equal(idd_cache_estimate(&o, &v, &err), IDD_OK);
	assert_false(v[0].has_boot || v[1].has_boot);
	idd_cache_estimate_free(v);
	free(prof);
	free(cache);
}

/* The JSON that cache estimate --json and serve's /estimate send: every
 * key in its place, null for what is unknown, ids escaped. */
static void test_estimate_json(void **state)
{
	(void)state;
	idd_image_estimate v[2] = {
		{.image = "a \"q\"\\\n\x01.raw", .bytes_total = 8192, .bytes_zero = 4096,
		 .bytes_missing = 4096, .from_pack = true, .has_boot = true, .boot_bytes_missing = 12,
		 .has_seconds = true, .seconds = 0.25},
		{.image = "b.raw", .bytes_total = 1, .bytes_missing = 0},
	};
	char *text;
	size_t len;
	idd_error err = {{0}, 0};
	assert_int_equal(idd_cache_estimate_json(v, 2, &text, &len, &err), IDD_OK);
	const char *want =
		"{\"images\":[{\"image\":\"a \\\"q\\\"\\\\\\n\\u0001.raw\",\"bytes_missing\":4096,"
		"\"boot_bytes_missing\":12,\"seconds\":0.250000,\"bytes_total\":8192,\"bytes_zero\":4096,"
		"\"from_pack\":true},{\"image\":\"b.raw\",\"bytes_missing\":0,\"boot_bytes_missing\":null,"
		"\"seconds\":null,\"bytes_total\":1,\"bytes_zero\":0,\"from_pack\":false}]}\n";
	assert_string_equal(text, want);
	assert_int_equal(len, strlen(want));
	free(text);
	assert_int_equal(idd_cache_estimate_json(v, 0, &text, &len, &err), IDD_OK);
	assert_string_equal(text, "{\"images\":[]}\n");
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plan_sort),
		cmocka_unit_test(test_estimate_equals_deploy),
		cmocka_unit_test(test_estimate_refusals),
		cmocka_unit_test(test_estimate_boot),
		cmocka_unit_test(test_estimate_json),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
