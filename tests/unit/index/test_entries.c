/* test_entries.c - per-image catalog entries: the file round trip, hostile
 * files refused (truncated, wrong magic, newer, flipped, another image's,
 * huge counts), and keeping them in line with the catalog (written once,
 * nothing on an unchanged run, only what changed, a lost entry rewritten,
 * an index without entries upgraded, strays removed, a killed run's
 * entries all checked by the next). */
#include "testutil.h"
#include "index/entries.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char ENT[8] = {'I', 'D', 'D', '-', 'E', 'N', 'T', 0};
static const char ENI[8] = {'I', 'D', 'D', '-', 'E', 'N', 'I', 0};

static char *dir;

static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state) { (void)state; tu_rmtree(dir); free(dir); return 0; }

static idd_file_ident backing[2] = {
	{.path = (char *)"base.qcow2", .dev = 7, .ino = 8, .size = 9, .mtime_ns = -5, .ctime_ns = 6},
	{.path = (char *)"base0.qcow2", .dev = 1, .ino = 2, .size = 3, .mtime_ns = 4, .ctime_ns = 5},
};

static idd_image_info sample(const char *id, uint64_t seed)
{
	idd_image_info im = {.id = (char *)id, .file = (char *)id, .member = (char *)"",
	                     .format = (char *)"qcow2", .container = (char *)"", .dev = 1, .ino = seed,
	                     .file_size = 12345, .mtime_ns = INT64_MIN, .ctime_ns = 99,
	                     .virtual_size = 10 * 4096 + 17, .nblocks = 11, .zero_blocks = 3,
	                     .distinct_blocks = 7, .scanned_at = 1700000000, .nbacking = 2,
	                     .backing = backing};
	tu_fill_random(im.list_key.b, 32, seed);
	return im;
}

/* A whole entry file around an arbitrary payload (the container right). */
static void *container(const char magic[8], uint32_t version, const idd_buf *payload, size_t *len)
{
	char *p = idd_path_join(dir, "crafted", NULL);
	idd_error err;
	assert_int_equal(idd_indexfile_write(p, magic, version, payload->data ? payload->data : (void *)"",
	                                     payload->len, false, &err), IDD_OK);
	void *file;
	assert_int_equal(idd_read_file(p, 1 << 24, &file, len, &err), IDD_OK);
	unlink(p);
	free(p);
	return file;
}

static void *entry_file(const char *id, uint64_t seed, size_t *len)
{
	idd_image_info im = sample(id, seed);
	idd_buf b = {0};
	idd_entry_payload(4096, &im, &b);
	void *f = container(ENT, 1, &b, len);
	idd_buf_free(&b);
	return f;
}

static int parse(const void *file, size_t len, const char *id, idd_image_info *im, idd_error *err)
{
	uint32_t bs;
	int rc = idd_entry_parse_file("e", file, len, id, &bs, im, err);
	if (!rc) {
		assert_int_equal(bs, 4096);
		idd_image_info_free(im);
	}
	return rc;
}

static void test_round_trip(void **state)
{
	(void)state;
	size_t len;
	void *f = entry_file("sub/a.qcow2", 3, &len);
	idd_image_info got;
	uint32_t bs;
	idd_error err;
	assert_int_equal(idd_entry_parse_file("e", f, len, "sub/a.qcow2", &bs, &got, &err), IDD_OK);
	assert_int_equal(bs, 4096);
	idd_image_info want = sample("sub/a.qcow2", 3);
	idd_buf a = {0}, b = {0};
	idd_entry_payload(4096, &want, &a);
	idd_entry_payload(bs, &got, &b);
	assert_int_equal(a.len, b.len);
	assert_memory_equal(a.data, b.data, a.len);
	assert_string_equal(got.format, "qcow2");
	assert_int_equal(got.nbacking, 2);
	assert_string_equal(got.backing[1].path, "base0.qcow2");
	assert_int_equal(got.mtime_ns, INT64_MIN);
	idd_buf_free(&a);
	idd_buf_free(&b);
	idd_image_info_free(&got);
	char *rel = idd_entry_relpath("sub/a.qcow2", &err);
	/* printf %s sub/a.qcow2 | sha256sum */
	assert_string_equal(rel, "entries/dab50140041ed6e77ae93ae6a15731c966e50d97e4b31f333cb2a8b8440e5214");
	free(rel);
	free(f);
}

static void test_hostile_files(void **state)
{
	(void)state;
	size_t len;
	unsigned char *f = entry_file("a.raw", 1, &len);
	idd_image_info im;
	idd_error err;
	/* every truncation */
	for (size_t n = 0; n < len; n++)
		assert_int_not_equal(parse(f, n, "a.raw", &im, &err), IDD_OK);
	/* every flipped byte: the checksum, the magic or the header catch it */
	for (size_t i = 0; i < len; i++) {
		f[i] ^= 0x20;
		assert_int_not_equal(parse(f, len, "a.raw", &im, &err), IDD_OK);
		f[i] ^= 0x20;
	}
	assert_int_equal(parse(f, len, "a.raw", &im, &err), IDD_OK);
	/* another image's entry under this name */
	assert_int_equal(parse(f, len, "b.raw", &im, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "catalog entry of another image ('a.raw')"));
	free(f);
	/* the wrong kind of file, and a newer version */
	idd_buf b = {0};
	idd_image_info s = sample("a.raw", 1);
	idd_entry_payload(4096, &s, &b);
	f = container((const char[8]){'I', 'D', 'D', '-', 'C', 'A', 'T', 0}, 1, &b, &len);
	assert_int_not_equal(parse(f, len, "a.raw", &im, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "not an imgdedup catalog entry file (bad magic)"));
	free(f);
	f = container(ENT, 2, &b, &len);
	assert_int_not_equal(parse(f, len, "a.raw", &im, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "newer than this imgdedup supports"));
	free(f);
	/* trailing bytes after the record */
	idd_buf_put_u8(&b, 0);
	f = container(ENT, 1, &b, &len);
	assert_int_equal(parse(f, len, "a.raw", &im, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "trailing bytes"));
	free(f);
	idd_buf_free(&b);
}

/* Payloads saying hostile things in a well-formed container. */
static void test_hostile_payloads(void **state)
{
	(void)state;
	struct {
		uint32_t bs, flags;
		uint64_t str_len;   /* the id's declared length */
		uint64_t nbacking;
		uint64_t nblocks;
		const char *why;
	} cases[] = {
		{3000, 0, 5, 0, 11, "block size"},
		{4096, 4, 5, 0, 11, "unknown flags"},
		{4096, 0, (uint64_t)1 << 62, 0, 11, "inconsistent record"},
		{4096, 0, 5, 17, 11, "inconsistent record"},                  /* over the depth limit */
		{4096, 0, 5, 16, 11, "inconsistent record"},                  /* 16 declared, none there */
		{4096, 0, 5, (uint64_t)1 << 60, 11, "inconsistent record"},
		{4096, 0, 5, 0, (uint64_t)1 << 50, "inconsistent record"},    /* blocks != size */
	};
	for (size_t c = 0; c < IDD_ARRAY_LEN(cases); c++) {
		idd_buf b = {0};
		idd_buf_put_u32(&b, cases[c].bs);
		idd_buf_put_u32(&b, cases[c].flags);
		idd_buf_put_varint(&b, cases[c].str_len);
		idd_buf_put(&b, "a.raw", 5);
		for (int k = 0; k < 4; k++)
			idd_buf_put_str(&b, k == 0 ? "a.raw" : k == 2 ? "raw" : "");
		idd_buf_put_u8(&b, 0);
		uint64_t u[] = {0, 0, 1, 2, 4096, 0, 0, 4096, cases[c].nblocks, 0, 1, 0};
		for (size_t k = 0; k < IDD_ARRAY_LEN(u); k++)
			idd_buf_put_u64(&b, u[k]);
		unsigned char key[32] = {1};
		idd_buf_put(&b, key, 32);
		idd_buf_put_varint(&b, cases[c].nbacking);
		size_t len;
		void *f = container(ENT, 1, &b, &len);
		idd_image_info im;
		idd_error err;
		assert_int_equal(parse(f, len, "a.raw", &im, &err), IDD_ECORRUPT);
		assert_non_null(strstr(err.msg, cases[c].why));
		free(f);
		idd_buf_free(&b);
	}
}

static void test_entries_index(void **state)
{
	(void)state;
	idd_buf b = {0};
	idd_buf_put_u32(&b, 4096);
	idd_buf_put_u32(&b, IDD_ENTRIES_DIRTY);
	idd_buf_put_u64(&b, 7);
	idd_buf_put_u64(&b, 3);
	size_t len;
	unsigned char *f = container(ENI, 1, &b, &len);
	idd_entries_index x;
	idd_error err;
	assert_int_equal(idd_entries_index_parse_file("i", f, len, &x, &err), IDD_OK);
	assert_int_equal(x.generation, 7);
	assert_int_equal(x.count, 3);
	assert_int_equal(x.flags, IDD_ENTRIES_DIRTY);
	for (size_t n = 0; n < len; n++)
		assert_int_not_equal(idd_entries_index_parse_file("i", f, n, &x, &err), IDD_OK);
	free(f);
	/* unknown flags, a bad block size, trailing bytes */
	for (int c = 0; c < 3; c++) {
		idd_buf h = {0};
		idd_buf_put_u32(&h, c == 1 ? 100 : 4096);
		idd_buf_put_u32(&h, c == 0 ? 2 : 0);
		idd_buf_put_u64(&h, 7);
		idd_buf_put_u64(&h, 3);
		if (c == 2)
			idd_buf_put_u8(&h, 0);
		f = container(ENI, 1, &h, &len);
		assert_int_equal(idd_entries_index_parse_file("i", f, len, &x, &err), IDD_ECORRUPT);
		free(f);
		idd_buf_free(&h);
	}
	idd_buf_free(&b);
}

/* ---- keeping entries in line with the catalog ---- */

static const char *const ids[] = {"a.raw", "b.raw", "c/d.raw", "e.raw"};

static idd_catalog make_cat(size_t n, uint64_t gen, uint64_t seed_of_b, idd_image_info *v)
{
	for (size_t i = 0; i < n; i++)
		v[i] = sample(ids[i], i == 1 ? seed_of_b : i + 1);
	return (idd_catalog){.block_size = 4096, .generation = gen, .count = n, .images = v};
}

static char *entry_path(const char *id)
{
	char *rel = idd_entry_relpath(id, NULL);
	char *p = idd_path_join(dir, rel, NULL);
	free(rel);
	return p;
}

static void sync_entries(const idd_catalog *old, const idd_catalog *cat, idd_entries_sync *sy)
{
	idd_error err;
	if (idd_entries_prepare(dir, old, cat, sy, &err) || idd_entries_commit(dir, old, cat, sy, &err))
		fail_msg("sync: %s", err.msg);
}

static struct stat stat_of(const char *rel)
{
	char *p = idd_path_join(dir, rel, NULL);
	struct stat st;
	assert_int_equal(lstat(p, &st), 0);
	free(p);
	return st;
}

static void check_entries(const idd_catalog *cat)
{
	uint64_t problems = 0;
	idd_entries_verify(dir, cat, NULL, NULL, &problems);
	assert_int_equal(problems, 0);
	for (size_t i = 0; i < cat->count; i++) {
		char *p = entry_path(cat->images[i].id);
		void *f;
		size_t len;
		idd_image_info im;
		idd_error err;
		assert_int_equal(idd_read_file(p, 1 << 20, &f, &len, &err), IDD_OK);
		assert_int_equal(parse(f, len, cat->images[i].id, &im, &err), IDD_OK);
		free(f);
		free(p);
	}
}

static void test_sync(void **state)
{
	(void)state;
	idd_image_info v1[4], v2[4], v3[4];
	idd_catalog c1 = make_cat(3, 1, 2, v1);
	idd_entries_sync sy;
	/* a new index: every entry, then entries/index */
	sync_entries(NULL, &c1, &sy);
	assert_true(sy.full);
	assert_int_equal(sy.written, 3);
	check_entries(&c1);
	struct stat before = stat_of(IDD_ENTRIES_INDEX_FILE);
	/* unchanged: nothing written, entries/index left as it is */
	sync_entries(&c1, &c1, &sy);
	assert_false(sy.full);
	assert_int_equal(sy.written + sy.removed, 0);
	struct stat after = stat_of(IDD_ENTRIES_INDEX_FILE);
	assert_int_equal(before.st_ino, after.st_ino);
	assert_int_equal(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
	/* b changed, c/d removed, e added: only those */
	idd_catalog c2 = make_cat(4, 2, 77, v2);
	c2.images[2] = c2.images[3];
	c2.count = 3;
	char *pa = entry_path("a.raw");
	struct stat sa0, sa1;
	assert_int_equal(lstat(pa, &sa0), 0);
	sync_entries(&c1, &c2, &sy);
	assert_false(sy.full);
	assert_int_equal(sy.written, 2);
	assert_int_equal(sy.removed, 1);
	assert_int_equal(lstat(pa, &sa1), 0);
	assert_int_equal(sa0.st_ino, sa1.st_ino); /* a.raw's entry untouched */
	check_entries(&c2);
	char *pcd = entry_path("c/d.raw");
	assert_int_not_equal(access(pcd, F_OK), 0);
	/* a lost entry is rewritten by the next run (a stat finds it gone) */
	unlink(pa);
	sync_entries(&c2, &c2, &sy);
	assert_false(sy.full);
	assert_int_equal(sy.written, 1);
	check_entries(&c2);
	/* a run killed after writing entries (entries/index marked dirty, the
	 * catalog not written): the next run checks every entry */
	idd_catalog c3 = make_cat(3, 3, 555, v3);
	idd_error err;
	assert_int_equal(idd_entries_prepare(dir, &c2, &c3, &sy, &err), IDD_OK);
	assert_true(sy.marked);
	uint64_t problems = 0;
	idd_entries_verify(dir, &c2, NULL, NULL, &problems);
	assert_int_equal(problems, 0); /* dirty: nothing claimed, nothing to report */
	sync_entries(&c2, &c2, &sy);
	assert_true(sy.full);
	assert_int_equal(sy.written, 1); /* b.raw back as c2 has it */
	check_entries(&c2);
	/* an index without entries (older version): upgraded, strays removed */
	char *edir = idd_path_join(dir, IDD_ENTRIES_DIR, NULL);
	tu_rmtree(edir);
	assert_int_equal(idd_mkdir_p(edir, &err), IDD_OK);
	free(tu_write(dir, "entries/" "0000000000000000000000000000000000000000000000000000000000000000",
	              "x", 1));
	free(tu_write(dir, "entries/keep.tmp.1", "x", 1));
	sync_entries(&c2, &c2, &sy);
	assert_true(sy.full);
	assert_int_equal(sy.written, 3);
	assert_int_equal(sy.removed, 1);
	check_entries(&c2);
	char *tmp = idd_path_join(edir, "keep.tmp.1", NULL);
	assert_int_equal(access(tmp, F_OK), 0); /* not an entry name: left to the temporaries' cleanup */
	/* a damaged entry is reported by verify */
	tu_flip_byte(pa, 40);
	problems = 0;
	idd_entries_verify(dir, &c2, NULL, NULL, &problems);
	assert_int_equal(problems, 1);
	free(tmp);
	free(edir);
	free(pcd);
	free(pa);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_files, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_payloads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_entries_index, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
