/* test_deploy.c - deploy from a local source: exact output, each distinct
 * missing block fetched once, the cache used, resume of an interrupted run,
 * damage in the source or the map refused, paths escaping the source. */
#include "testutil.h"
#include "index/map.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BS 4096u
#define NB 96

static char *root, *repo, *cache;
static unsigned char *img_a, *img_b;

static void quiet(void *ctx, const char *msg) { (void)ctx; (void)msg; }

/* A: blocks from a pool of 30 patterns (repeats), every 6th zero, and a
 * 1000-byte tail.  B: A with 10 blocks replaced by new content. */
static void build_images(void)
{
	img_a = calloc(NB * BS + 1000, 1);
	for (size_t i = 0; i < NB; i++)
		if (i % 6)
			tu_fill_random(img_a + i * BS, BS, 500 + i % 30);
	tu_fill_random(img_a + NB * BS, 1000, 9);
	img_b = malloc(NB * BS);
	memcpy(img_b, img_a, NB * BS);
	for (size_t i = 40; i < 50; i++)
		tu_fill_random(img_b + i * BS, BS, 9000 + i);
}

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp();
	repo = idd_path_join(root, "repo", NULL);
	cache = idd_path_join(root, "cache", NULL);
	char *sub = idd_path_join(repo, "sub", NULL);
	idd_mkdir_p(sub, NULL);
	build_images();
	free(tu_write(repo, "a.raw", img_a, NB * BS + 1000));
	free(tu_write(sub, "b.raw", img_b, NB * BS));
	free(sub);
	idd_error err;
	idd_scan_opts so = {.repo = repo, .warn = quiet};
	idd_scan_stats ss;
	if (idd_scan(&so, &ss, &err)) {
		fprintf(stderr, "scan: %s\n", err.msg);
		return -1;
	}
	idd_map_opts mo = {.repo = repo, .warn = quiet};
	idd_map_stats ms;
	if (idd_map_run(&mo, &ms, &err)) {
		fprintf(stderr, "map: %s\n", err.msg);
		return -1;
	}
	return 0;
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

static char *read_all(const char *path, size_t *len)
{
	void *d;
	assert_int_equal(idd_read_file(path, 1 << 30, &d, len, NULL), IDD_OK);
	return d;
}

static int deploy(const char *image, const char *out, bool force, idd_deploy_stats *st, idd_error *err)
{
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                     .image = image, .out = out, .force = force};
	return idd_deploy(&o, st, err);
}

static void test_fresh_then_cached(void **state)
{
	(void)state;
	idd_deploy_stats st;
	idd_error err;
	assert_int_equal(deploy("a.raw", NULL, false, &st, &err), IDD_OK);
	size_t len;
	char *out = read_all(st.out_path, &len);
	assert_int_equal(len, NB * BS + 1000);
	assert_memory_equal(out, img_a, len);
	free(out);
	assert_int_equal(st.bytes_total, NB * BS + 1000);
	assert_int_equal(st.bytes_zero, (NB / 6) * BS);
	assert_int_equal(st.bytes_fetched, tu_missing_bytes(img_a, NB * BS + 1000, 0, UINT64_MAX, NULL, 0));
	assert_int_equal(st.bytes_fetched, 25 * BS + 1000); /* 25 patterns (i % 6 != 0) + the tail */
	assert_int_equal(st.bytes_zero + st.bytes_from_cache + st.bytes_fetched, st.bytes_total);
	/* holes for zero blocks */
	struct stat sb;
	assert_int_equal(stat(st.out_path, &sb), 0);
	assert_true((uint64_t)sb.st_blocks * 512 < st.bytes_total);

	char *outb = idd_path_join(root, "b.out", NULL);
	assert_int_equal(deploy("sub/b.raw", outb, false, &st, &err), IDD_OK);
	out = read_all(outb, &len);
	assert_int_equal(len, NB * BS);
	assert_memory_equal(out, img_b, len);
	free(out);
	assert_int_equal(st.bytes_fetched, tu_missing_bytes(img_b, NB * BS, 0, UINT64_MAX, img_a, NB * BS + 1000));
	assert_int_equal(st.bytes_fetched, 10 * BS);
	/* OUT exists: kept unless force */
	assert_true(deploy("sub/b.raw", outb, false, &st, &err) < 0);
	assert_non_null(strstr(err.msg, "force"));
	assert_int_equal(deploy("sub/b.raw", outb, true, &st, &err), IDD_OK);
	assert_int_equal(st.bytes_fetched, 0); /* b itself is cached now */
	free(outb);
}

static void test_resume(void **state)
{
	(void)state;
	/* an interrupted OUT.part: first half right, a wrong block, data where
	 * a zero block belongs */
	char *out = idd_path_join(root, "resume.out", NULL);
	char *part = idd_asprintf(NULL, "%s.part", out);
	unsigned char *p = calloc(NB, BS);
	memcpy(p, img_b, NB / 2 * BS);
	tu_fill_random(p + 7 * BS, BS, 1);   /* wrong content in block 7 */
	tu_fill_random(p + 12 * BS, BS, 2);  /* block 12 should be zero */
	int fd = open(part, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, p, NB * BS), (ssize_t)(NB * BS));
	close(fd);
	/* a cache that knows nothing: the resumed part is the only local data */
	char *empty = idd_path_join(root, "cache-empty", NULL);
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = empty, .warn = quiet},
	                     .image = "sub/b.raw", .out = out};
	idd_deploy_stats st;
	idd_error err;
	assert_int_equal(idd_deploy(&o, &st, &err), IDD_OK);
	size_t len;
	char *got = read_all(out, &len);
	assert_int_equal(len, NB * BS);
	assert_memory_equal(got, img_b, len);
	free(got);
	assert_int_not_equal(access(part, F_OK), 0);
	/* blocks 0..47 minus zero blocks minus block 7 were reused (b's blocks
	 * 40..49 are new, so block 42 is not zero there) */
	uint64_t expect = 0;
	for (size_t i = 0; i < NB / 2; i++)
		if ((i % 6 || (i >= 40 && i < 50)) && i != 7)
			expect += BS;
	assert_int_equal(st.bytes_resumed, expect);
	assert_true(st.bytes_fetched < tu_missing_bytes(img_b, NB * BS, 0, UINT64_MAX, NULL, 0));
	free(p);
	free(out);
	free(part);
	free(empty);
}

static void test_refusals(void **state)
{
	(void)state;
	idd_deploy_stats st;
	idd_error err;
	assert_true(deploy("../etc/passwd", NULL, false, &st, &err) < 0);
	assert_non_null(strstr(err.msg, "refused"));
	assert_true(deploy("/etc/passwd", NULL, false, &st, &err) < 0);
	assert_true(deploy("nope.raw", NULL, false, &st, &err) < 0);
	assert_non_null(strstr(err.msg, "nope.raw"));
	/* a map that does not fit the catalog (wrong size) is refused */
	char *ix = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	idd_map *m;
	assert_int_equal(idd_map_load(ix, "sub/b.raw", &m, &err), IDD_OK);
	idd_map *bad;
	idd_digest *blocks = calloc(m->nblocks + 1, sizeof *blocks);
	memset(blocks[0].b, 1, IDD_DIGEST_SIZE);
	assert_int_equal(idd_map_build(blocks, m->nblocks + 1, BS, (m->nblocks + 1) * BS, &bad, &err), IDD_OK);
	uint64_t wrote;
	char *mrel = idd_map_relpath("sub/b.raw", NULL);
	char *mpath = idd_path_join(ix, mrel, NULL);
	size_t olen;
	char *orig = read_all(mpath, &olen);
	assert_int_equal(idd_map_save(ix, "sub/b.raw", bad, &wrote, &err), IDD_OK);
	char *o2 = idd_path_join(root, "bad.out", NULL);
	assert_true(deploy("sub/b.raw", o2, false, &st, &err) < 0);
	assert_non_null(strstr(err.msg, "does not match"));
	assert_int_not_equal(access(o2, F_OK), 0);
	/* a truncated map: a clear error, no output */
	assert_int_equal(idd_write_file_atomic(mpath, orig, olen - 9, &err), IDD_OK);
	assert_true(deploy("sub/b.raw", o2, false, &st, &err) < 0);
	assert_int_not_equal(access(o2, F_OK), 0);
	assert_int_equal(idd_write_file_atomic(mpath, orig, olen, &err), IDD_OK);
	/* a damaged source block: fails naming image and offset, leaves nothing */
	char *src = idd_path_join(repo, "sub/b.raw", NULL);
	tu_flip_byte(src, 45 * BS + 3);
	char *empty = idd_path_join(root, "cache-empty2", NULL);
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = empty, .warn = quiet},
	                     .image = "sub/b.raw", .out = o2};
	assert_true(idd_deploy(&o, &st, &err) < 0);
	assert_non_null(strstr(err.msg, "sub/b.raw"));
	char off[64];
	snprintf(off, sizeof off, "offset %u", 45 * BS);
	assert_non_null(strstr(err.msg, off));
	assert_int_not_equal(access(o2, F_OK), 0);
	char *o2part = idd_asprintf(NULL, "%s.part", o2);
	assert_int_not_equal(access(o2part, F_OK), 0);
	tu_flip_byte(src, 45 * BS + 3);
	assert_int_equal(idd_deploy(&o, &st, &err), IDD_OK);
	free(o2part);
	free(src);
	free(empty);
	free(orig);
	free(mrel);
	free(mpath);
	free(o2);
	free(blocks);
	idd_map_free(bad);
	idd_map_free(m);
	free(ix);
}

/* Warnings collected for assertions. */
static char warnings[8192];
static void collect(void *ctx, const char *msg)
{
	(void)ctx;
	size_t n = strlen(warnings);
	snprintf(warnings + n, sizeof warnings - n, "%s\n", msg);
}

static char *copy_of(const char *dir, const char *name, const unsigned char *data, size_t len)
{
	char *d = idd_path_join(root, dir, NULL);
	idd_mkdir_p(d, NULL);
	char *p = tu_write(d, name, data, len);
	free(d);
	return p;
}

/* A fully cached image: every block comes from the cache, verified on
 * several threads (and on one), nothing is fetched, OUT is exact. */
static void test_fully_cached(void **state)
{
	(void)state;
	char *c = idd_path_join(root, "cache-full", NULL);
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = c, .warn = quiet},
	                     .image = "a.raw"};
	idd_deploy_stats st;
	idd_error err;
	assert_int_equal(idd_deploy(&o, &st, &err), IDD_OK);
	for (int jobs = 1; jobs <= 3; jobs++) {
		char *out = idd_asprintf(NULL, "%s/full-%d.out", root, jobs);
		o.out = out;
		o.jobs = jobs;
		assert_int_equal(idd_deploy(&o, &st, &err), IDD_OK);
		assert_int_equal(st.bytes_fetched, 0);
		assert_int_equal(st.cache_damaged, 0);
		assert_int_equal(st.bytes_zero, (NB / 6) * BS);
		assert_int_equal(st.bytes_from_cache, st.bytes_total - st.bytes_zero);
		size_t len;
		char *got = read_all(out, &len);
		assert_int_equal(len, NB * BS + 1000);
		assert_memory_equal(got, img_a, len);
		free(got);
		free(out);
	}
	free(c);
}

/* A cache file changed behind imgdedup's back, read by parallel verifiers:
 * the damage is caught, warned about once, refetched; OUT is exact. */
static void test_tampered_cache_parallel(void **state)
{
	(void)state;
	char *c = idd_path_join(root, "cache-tamper", NULL);
	idd_deploy_opts o = {.node = {.source = repo, .cache_dir = c, .warn = quiet},
	                     .image = "a.raw"};
	idd_deploy_stats st;
	idd_error err;
	assert_int_equal(idd_deploy(&o, &st, &err), IDD_OK);
	tu_flip_byte(st.out_path, 25 * BS + 100);   /* one block, in the middle */
	char *out = idd_path_join(root, "tamper.out", NULL);
	o.out = out;
	o.jobs = 2;
	o.node.warn = collect;
	warnings[0] = 0;
	assert_int_equal(idd_deploy(&o, &st, &err), IDD_OK);
	assert_int_equal(st.cache_damaged, 1);
	assert_true(st.bytes_fetched >= BS);
	assert_int_equal(st.bytes_zero + st.bytes_from_cache + st.bytes_fetched, st.bytes_total);
	assert_non_null(strstr(warnings, "does not match the cache index"));
	size_t len;
	char *got = read_all(out, &len);
	assert_int_equal(len, NB * BS + 1000);
	assert_memory_equal(got, img_a, len);
	free(got);
	free(out);
	free(c);
}

static int deploy_seeded(const char *seed, const char *cdir, const char *out, idd_deploy_stats *st)
{
	const char *seeds[] = {seed};
	char *c = idd_path_join(root, cdir, NULL);
	char *o = idd_path_join(root, out, NULL);
	idd_deploy_opts opts = {.node = {.source = repo, .cache_dir = c, .warn = collect},
	                        .image = "sub/b.raw", .out = o, .seeds = seeds, .n_seeds = 1};
	idd_error err;
	warnings[0] = 0;
	int rc = idd_deploy(&opts, st, &err);
	if (rc)
		fprintf(stderr, "deploy: %s\n", err.msg);
	size_t len;
	char *got = read_all(o, &len);
	assert_int_equal(len, NB * BS);
	assert_memory_equal(got, img_b, len);
	free(got);
	free(c);
	free(o);
	return rc;
}

/* --seed through the seed's map: the repository's own file (same identity),
 * a copy found by name, a stranger hashed, a copy that lies. */
static void test_seed_map(void **state)
{
	(void)state;
	idd_deploy_stats st;
	size_t alen = NB * BS + 1000;
	/* the repository's a.raw itself: its map, no hashing, only b's 10 new blocks fetched */
	char *ra = idd_path_join(repo, "a.raw", NULL);
	assert_int_equal(deploy_seeded(ra, "cache-s1", "s1.out", &st), IDD_OK);
	assert_int_equal(st.seeds_mapped, 1);
	assert_int_equal(st.bytes_fetched, 10 * BS);
	assert_true(st.bytes_seed > 0);
	free(ra);
	/* a copy elsewhere with the same name: map after a spot check */
	char *ca = copy_of("seeds1", "a.raw", img_a, alen);
	assert_int_equal(deploy_seeded(ca, "cache-s2", "s2.out", &st), IDD_OK);
	assert_int_equal(st.seeds_mapped, 1);
	assert_int_equal(st.bytes_fetched, 10 * BS);
	/* the same bytes under an unknown name: hashed, same result */
	char *oa = copy_of("seeds1", "other.raw", img_a, alen);
	assert_int_equal(deploy_seeded(oa, "cache-s3", "s3.out", &st), IDD_OK);
	assert_int_equal(st.seeds_mapped, 0);
	assert_int_equal(st.bytes_fetched, 10 * BS);
	/* named a.raw, but its first half is other data: the spot check fails,
	 * it is hashed, and what it still holds is used (its second half has
	 * every pattern, at other offsets than the map would say) */
	unsigned char *half = malloc(alen);
	memcpy(half, img_a, alen);
	for (size_t i = 0; i < NB / 2; i++)
		half[i * BS] ^= 0x5a;
	char *ha = copy_of("seeds2", "a.raw", half, alen);
	assert_int_equal(deploy_seeded(ha, "cache-s4", "s4.out", &st), IDD_OK);
	assert_int_equal(st.seeds_mapped, 0);
	assert_true(st.bytes_seed > 0);
	assert_int_equal(st.bytes_fetched, 10 * BS);
	/* named a.raw, one block (2, not among the spot checks) changed: the
	 * map is believed, the block fails verification when read and is fetched */
	memcpy(half, img_a, alen);
	half[2 * BS + 7] ^= 1;
	char *la = copy_of("seeds3", "a.raw", half, alen);
	assert_int_equal(deploy_seeded(la, "cache-s5", "s5.out", &st), IDD_OK);
	assert_int_equal(st.seeds_mapped, 1);
	assert_int_equal(st.bytes_fetched, 11 * BS);
	assert_non_null(strstr(warnings, "seed"));
	free(half);
	free(ca);
	free(oa);
	free(ha);
	free(la);
}

/* A seed named as another node's cache names the image (images/sub%2Fb.raw)
 * is found through that image's entry: its map is used although the
 * catalog cannot be read (damaged here), so deploy never needed it. */
static void test_seed_by_cache_name(void **state)
{
	(void)state;
	char *cat = idd_path_join(repo, IDD_INDEX_SUBDIR "/" IDD_CATALOG_FILE, NULL);
	size_t clen;
	char *saved = read_all(cat, &clen);
	tu_flip_byte(cat, 40);
	char *sb = copy_of("seeds-cache", "sub%2Fb.raw", img_b, NB * BS);
	idd_deploy_stats st;
	assert_int_equal(deploy_seeded(sb, "cache-s6", "s6.out", &st), IDD_OK);
	assert_int_equal(st.seeds_mapped, 1);
	assert_int_equal(st.bytes_fetched, 0);
	idd_error err;
	assert_int_equal(idd_write_file_atomic(cat, saved, clen, &err), IDD_OK);
	free(saved);
	free(sb);
	free(cat);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fresh_then_cached),
		cmocka_unit_test(test_resume),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_fully_cached),
		cmocka_unit_test(test_tampered_cache_parallel),
		cmocka_unit_test(test_seed_map),
		cmocka_unit_test(test_seed_by_cache_name),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
