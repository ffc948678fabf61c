/* test_remote_index.c - a node's view of a repository's index: one image's
 * record comes from its entry without the catalog being read, a missing
 * entry of an index with entries is "no image" without the catalog, an
 * index without entries falls back to the catalog, an entry that is
 * another image's, or of another block size, is refused, and the catalog
 * is read again when (and only when) it changed. */
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
	return tu_index_repo(repo);
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

/* scan and map the repository again (an image added or removed) */
static void republish(void)
{
	assert_int_equal(tu_index_repo(repo), 0);
}

struct id_list {
	char text[256];
};

static int add_id(void *ctx, const char *id)
{
	struct id_list *l = ctx;
	size_t n = strlen(l->text);
	snprintf(l->text + n, sizeof l->text - n, "%s%s", n ? " " : "", id);
	return 0;
}

static int stop_at_first(void *ctx, const char *id)
{
	(void)id;
	++*(int *)ctx;
	return 7;
}

static void assert_ids(idd_remote_index *ri, const char *want)
{
	struct id_list l = {""};
	assert_int_equal(idd_remote_index_catalog_ids(ri, add_id, &l), 0);
	assert_string_equal(l.text, want);
}

/* serve --all: the catalog is read again only when it changed, records and
 * catalogs handed out before stay valid, and a failed re-read keeps the
 * catalog read before. */
static void test_catalog_refresh(void **state)
{
	(void)state;
	idd_remote_index *ri = open_ri();
	idd_error err;
	bool changed = false;
	assert_false(idd_remote_index_catalog_has(ri, "a.raw")); /* nothing read yet */
	assert_ids(ri, "");
	assert_int_equal(idd_remote_index_catalog_refresh(ri, &changed, &err), IDD_OK);
	assert_true(changed);
	assert_ids(ri, "a.raw sub/b.raw");
	int calls = 0;
	assert_int_equal(idd_remote_index_catalog_ids(ri, stop_at_first, &calls), 7);
	assert_int_equal(calls, 1);
	uint64_t bytes = idd_remote_index_bytes(ri);
	assert_int_equal(idd_remote_index_catalog_refresh(ri, &changed, &err), IDD_OK);
	assert_false(changed);
	assert_int_equal(idd_remote_index_bytes(ri), bytes); /* a stat, nothing fetched */
	assert_true(idd_remote_index_catalog_has(ri, "sub/b.raw"));
	assert_false(idd_remote_index_catalog_has(ri, "sub"));
	assert_false(idd_remote_index_catalog_has(ri, ""));
	assert_false(idd_remote_index_catalog_has(ri, "../a.raw"));
	/* handed out before the catalog changes */
	const idd_catalog *lent;
	assert_int_equal(idd_remote_index_catalog(ri, &lent, &err), IDD_OK);
	const idd_image_info *a;
	assert_int_equal(idd_remote_index_image(ri, "a.raw", &a, &err), IDD_OK);
	unsigned char img[3 * 4096];
	tu_fill_random(img, sizeof img, 3);
	char *c = tu_write(repo, "c.raw", img, sizeof img);
	republish();
	assert_int_equal(idd_remote_index_catalog_refresh(ri, &changed, &err), IDD_OK);
	assert_true(changed);
	assert_ids(ri, "a.raw c.raw sub/b.raw");
	assert_int_equal(lent->count, 2);
	assert_string_equal(lent->images[1].id, "sub/b.raw");
	assert_string_equal(a->id, "a.raw");
	const idd_image_info *in;
	assert_int_equal(idd_remote_index_image(ri, "c.raw", &in, &err), IDD_OK);
	assert_int_equal(in->virtual_size, sizeof img);
	/* damaged: the re-read fails, the catalog read before answers */
	spoil_catalog();
	assert_int_not_equal(idd_remote_index_catalog_refresh(ri, &changed, &err), IDD_OK);
	assert_false(changed);
	assert_non_null(strstr(err.msg, "catalog"));
	assert_true(idd_remote_index_catalog_has(ri, "c.raw"));
	restore_catalog();
	/* removed */
	unlink(c);
	free(c);
	republish();
	assert_int_equal(idd_remote_index_catalog_refresh(ri, &changed, &err), IDD_OK);
	assert_true(changed);
	assert_ids(ri, "a.raw sub/b.raw");
	idd_remote_index_close(ri);
}

/* An index without entries: records come from the catalog, and stay valid
 * when it is replaced; an image added since is found in the new one. */
static void test_catalog_refresh_without_entries(void **state)
{
	(void)state;
	char *edir = index_file(IDD_ENTRIES_DIR);
	tu_rmtree(edir);
	idd_remote_index *ri = open_ri();
	idd_error err;
	const idd_image_info *a, *in;
	assert_int_equal(idd_remote_index_image(ri, "a.raw", &a, &err), IDD_OK);
	unsigned char img[2 * 4096];
	tu_fill_random(img, sizeof img, 4);
	char *d = tu_write(repo, "d.raw", img, sizeof img);
	republish();
	tu_rmtree(edir);
	assert_int_equal(idd_remote_index_image(ri, "d.raw", &in, &err), IDD_ENOENT);
	assert_int_equal(idd_remote_index_catalog_refresh(ri, NULL, &err), IDD_OK);
	assert_int_equal(idd_remote_index_image(ri, "d.raw", &in, &err), IDD_OK);
	assert_int_equal(in->virtual_size, sizeof img);
	assert_string_equal(a->file, "a.raw");
	idd_remote_index_close(ri);
	unlink(d);
	free(d);
	free(edir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_entry_without_catalog, setup, teardown),
		cmocka_unit_test_setup_teardown(test_index_without_entries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_entries, setup, teardown),
		cmocka_unit_test_setup_teardown(test_catalog_refresh, setup, teardown),
		cmocka_unit_test_setup_teardown(test_catalog_refresh_without_entries, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
