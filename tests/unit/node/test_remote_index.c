/* test_remote_index.c - a node's view of a repository's index: one image's
 * record comes from its entry without the catalog being read, a missing
 * entry of an index with entries is "no image" without the catalog, an
 * index without entries falls back to the catalog, and an entry that is
 * another image's, or of another block size, is refused. */
#include "testutil.h"
#include "index/entries.h"
#include "index/map.h"
#include "node/remote_index.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *root, *repo, *idx;

static void quiet(void *ctx, const char *msg) { (void)ctx; (void)msg; }

static int setup(void **state)
{
	(void)state;
	root = tu_mkdtemp();
	repo = idd_path_join(root, "repo", NULL);
	idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	char *sub = idd_path_join(repo, "sub", NULL);
	idd_mkdir_p(sub, NULL);
	unsigned char img[5 * 4096];
	tu_fill_random(img, sizeof img, 1);
	free(tu_write(repo, "a.raw", img, sizeof img));
	tu_fill_random(img, sizeof img, 2);
	free(tu_write(sub, "b.raw", img, sizeof img - 100));
	free(sub);
	idd_error err;
	idd_scan_opts so = {.repo = repo, .warn = quiet};
	idd_scan_stats ss;
	idd_map_opts mo = {.repo = repo, .warn = quiet};
	idd_map_stats ms;
	if (idd_scan(&so, &ss, &err) || idd_map_run(&mo, &ms, &err)) {
		fprintf(stderr, "index: %s\n", err.msg);
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
	free(idx);
	return 0;
}

static char *index_file(const char *rel)
{
	return idd_path_join(idx, rel, NULL);
}

static char *entry_of(const char *id)
{
	char *rel = idd_entry_relpath(id, NULL);
	char *p = index_file(rel);
	free(rel);
	return p;
}

static void copy_file(const char *from, const char *to)
{
	void *d;
	size_t n;
	idd_error err;
	assert_int_equal(idd_read_file(from, 1 << 20, &d, &n, &err), IDD_OK);
	assert_int_equal(idd_write_file_atomic(to, d, n, &err), IDD_OK);
	free(d);
}

/* Damage the catalog: any lookup that reads it fails, naming it. */
static void spoil_catalog(void)
{
	char *cat = index_file(IDD_CATALOG_FILE);
	char *saved = idd_path_join(root, "catalog.saved", NULL);
	copy_file(cat, saved);
	tu_flip_byte(cat, 40);
	free(cat);
	free(saved);
}

static void restore_catalog(void)
{
	char *cat = index_file(IDD_CATALOG_FILE);
	char *saved = idd_path_join(root, "catalog.saved", NULL);
	copy_file(saved, cat);
	free(cat);
	free(saved);
}

static idd_remote_index *open_ri(void)
{
	idd_fetch_opts fo = {.warn = quiet};
	idd_remote_index *ri;
	idd_error err;
	assert_int_equal(idd_remote_index_open(repo, NULL, &fo, &ri, &err), IDD_OK);
	return ri;
}

static void test_entry_without_catalog(void **state)
{
	(void)state;
	spoil_catalog();
	idd_remote_index *ri = open_ri();
	assert_int_equal(idd_remote_index_block_size(ri), 0); /* nothing fetched yet */
	const idd_image_info *in;
	idd_error err;
	assert_int_equal(idd_remote_index_image(ri, "sub/b.raw", &in, &err), IDD_OK);
	assert_string_equal(in->file, "sub/b.raw");
	assert_int_equal(in->virtual_size, 5 * 4096 - 100);
	assert_int_equal(idd_remote_index_block_size(ri), 4096);
	idd_map *m;
	assert_int_equal(idd_remote_index_map(ri, in, &m, &err), IDD_OK);
	assert_int_equal(m->nblocks, 5);
	idd_map_free(m);
	/* asked again: the same record, nothing fetched */
	uint64_t bytes = idd_remote_index_bytes(ri);
	const idd_image_info *again;
	assert_int_equal(idd_remote_index_image(ri, "sub/b.raw", &again, &err), IDD_OK);
	assert_ptr_equal(in, again);
	assert_int_equal(idd_remote_index_bytes(ri), bytes);
	/* not there: said so from entries/index, the catalog still unread */
	assert_int_equal(idd_remote_index_image(ri, "nope.raw", &in, &err), IDD_ENOENT);
	assert_non_null(strstr(err.msg, "no image 'nope.raw'"));
	assert_int_equal(idd_remote_index_image(ri, "../x.raw", &in, &err), IDD_EPERM);
	idd_remote_index_close(ri);
	restore_catalog();
}

static void test_index_without_entries(void **state)
{
	(void)state;
	char *edir = index_file(IDD_ENTRIES_DIR);
	tu_rmtree(edir);
	free(edir);
	idd_remote_index *ri = open_ri();
	const idd_image_info *in;
	idd_error err;
	assert_int_equal(idd_remote_index_image(ri, "a.raw", &in, &err), IDD_OK);
	assert_non_null(ri->cat); /* from the catalog */
	assert_int_equal(idd_remote_index_image(ri, "nope.raw", &in, &err), IDD_ENOENT);
	idd_remote_index_close(ri);
	/* the catalog is then what is read: damaged, it is what fails */
	spoil_catalog();
	ri = open_ri();
	assert_int_not_equal(idd_remote_index_image(ri, "a.raw", &in, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "catalog: checksum mismatch"));
	idd_remote_index_close(ri);
	restore_catalog();
	/* a damaged entries/index is not believed: the catalog answers */
	char *ei = index_file(IDD_ENTRIES_INDEX_FILE);
	edir = index_file(IDD_ENTRIES_DIR);
	idd_mkdir_p(edir, NULL);
	free(tu_write(edir, "index", "junk", 4));
	ri = open_ri();
	assert_int_equal(idd_remote_index_image(ri, "a.raw", &in, &err), IDD_OK);
	idd_remote_index_close(ri);
	free(edir);
	free(ei);
}

static void test_hostile_entries(void **state)
{
	(void)state;
	char *ea = entry_of("a.raw"), *eb = entry_of("sub/b.raw");
	char *saved = idd_path_join(root, "a.saved", NULL);
	copy_file(ea, saved);
	/* b's entry under a's name */
	copy_file(eb, ea);
	idd_remote_index *ri = open_ri();
	const idd_image_info *in;
	idd_error err;
	assert_int_equal(idd_remote_index_image(ri, "a.raw", &in, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "catalog entry of another image ('sub/b.raw')"));
	idd_remote_index_close(ri);
	/* truncated */
	copy_file(saved, ea);
	tu_truncate(ea, tu_file_size(ea) - 1);
	ri = open_ri();
	assert_int_not_equal(idd_remote_index_image(ri, "a.raw", &in, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "truncated"));
	idd_remote_index_close(ri);
	/* an entry of another block size than the images looked up before */
	idd_image_info rec;
	uint32_t bs;
	void *f;
	size_t len;
	copy_file(saved, ea);
	assert_int_equal(idd_read_file(ea, 1 << 20, &f, &len, &err), IDD_OK);
	assert_int_equal(idd_entry_parse_file(ea, f, len, "a.raw", &bs, &rec, &err), IDD_OK);
	free(f);
	rec.virtual_size = 5 * 4096;
	rec.nblocks = 10;
	rec.zero_blocks = 0;
	rec.distinct_blocks = 5;
	idd_buf b = {0};
	idd_entry_payload(2048, &rec, &b);
	assert_int_equal(idd_indexfile_write(ea, (const char[8]){'I', 'D', 'D', '-', 'E', 'N', 'T', 0}, 1,
	                                     b.data, b.len, false, &err), IDD_OK);
	idd_buf_free(&b);
	idd_image_info_free(&rec);
	ri = open_ri();
	assert_int_equal(idd_remote_index_image(ri, "sub/b.raw", &in, &err), IDD_OK);
	assert_int_equal(idd_remote_index_image(ri, "a.raw", &in, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "2048-byte blocks, the index's other files say 4096"));
	idd_remote_index_close(ri);
	copy_file(saved, ea);
	free(saved);
	free(ea);
	free(eb);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_entry_without_catalog, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_without_entries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_entries, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
