/* test_blocktable.c - the block table follows a changing catalog by reading
 * only the changed lists, and always agrees with a count from scratch. */
#include "testutil.h"
#include "idxgen.h"
#include "index/blocktable.h"
#include "index/catalog.h"
#include "index/indexfile.h"

#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

static char *dir;
static int setup(void **state) { (void)state; dir = tu_mkdtemp(); return 0; }
static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	free(dir);
	idd_blocktable_buffer_entries = (size_t)8 << 20;
	return 0;
}

#define POOL 400
#define NB 120
#define MAXIMG 16

struct repo {
	char ids[MAXIMG][16];
	uint64_t content[MAXIMG][NB];
	bool present[MAXIMG];
};

static uint64_t rnd_state = 12345;
static uint64_t rnd(void)
{
	rnd_state = rnd_state * 6364136223846793005ull + 1442695040888963407ull;
	return rnd_state >> 33;
}

static void fill_image(struct repo *r, int i)
{
	snprintf(r->ids[i], sizeof r->ids[i], "img%02d.raw", i);
	for (int k = 0; k < NB; k++) /* zero blocks, repeats inside and across images */
		r->content[i][k] = rnd() % 7 == 0 ? 0 : 1 + rnd() % POOL;
	r->present[i] = true;
}

static void write_repo(const char *idx, const struct repo *r)
{
	ig_image v[MAXIMG];
	size_t n = 0;
	for (int i = 0; i < MAXIMG; i++)
		if (r->present[i])
			v[n++] = (ig_image){r->ids[i], r->content[i], NB};
	ig_write_index(idx, 4096, v, n, 1);
}

/* Every pooled digest's count equals the number of present images holding
 * it, and the distinct total matches. */
static void check_counts(const char *idx, const struct repo *r)
{
	idd_blocktable *bt;
	idd_error err;
	assert_int_equal(idd_blocktable_open(idx, &bt, &err), IDD_OK);
	uint64_t distinct = 0;
	for (uint64_t v = 1; v <= POOL; v++) {
		int64_t want = 0;
		for (int i = 0; i < MAXIMG; i++) {
			if (!r->present[i])
				continue;
			bool has = false;
			for (int k = 0; k < NB && !has; k++)
				has = r->content[i][k] == v;
			want += has;
		}
		distinct += want > 0;
		idd_digest d = ig_digest(v);
		int64_t got;
		assert_int_equal(idd_blocktable_count(bt, &d, &got, &err), IDD_OK);
		assert_int_equal(got, want);
	}
	assert_int_equal(bt->entries, distinct);
	idd_blocktable_free(bt);
}

static idd_bt_update_stats update(const char *idx)
{
	idd_catalog *cat;
	idd_error err;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	bool dropped[MAXIMG + 1];
	idd_bt_update_stats st;
	assert_int_equal(idd_blocktable_update(idx, NULL, cat, dropped, false, &st, NULL, NULL, &err), IDD_OK);
	for (size_t i = 0; i < cat->count; i++)
		assert_false(dropped[i]);
	idd_catalog_free(cat);
	return st;
}

static size_t count_runs(const char *idx)
{
	char *cmd = idd_asprintf(NULL, "ls %s/blocktable | grep -c '^run-' > %s/n", idx, dir);
	assert_int_equal(system(cmd) >= 0, 1);
	free(cmd);
	char *p = idd_path_join(dir, "n", NULL);
	FILE *f = fopen(p, "r");
	assert_non_null(f);
	unsigned n = 0;
	assert_int_equal(fscanf(f, "%u", &n), 1);
	fclose(f);
	free(p);
	return n;
}

static void test_follows_changes(void **state)
{
	(void)state;
	/* a tiny buffer: every update writes several runs and merges them */
	idd_blocktable_buffer_entries = 37;
	char *idx = idd_path_join(dir, "idx", NULL);
	struct repo r = {0};
	for (int i = 0; i < 8; i++)
		fill_image(&r, i);
	write_repo(idx, &r);
	idd_bt_update_stats st = update(idx);
	assert_true(st.rebuilt);
	assert_int_equal(st.lists_read, 8);
	check_counts(idx, &r);

	/* nothing changed: nothing read, nothing written */
	st = update(idx);
	assert_int_equal(st.lists_read, 0);
	assert_int_equal(st.runs_written, 0);

	/* one image added: its list alone is read */
	fill_image(&r, 8);
	write_repo(idx, &r);
	st = update(idx);
	assert_false(st.rebuilt);
	assert_int_equal(st.lists_read, 1);
	check_counts(idx, &r);

	/* one changed (old list taken away, new one added), one removed */
	r.content[3][5] = 1 + (r.content[3][5] % POOL);
	r.content[3][6] = 0;
	r.present[1] = false;
	write_repo(idx, &r);
	st = update(idx);
	assert_false(st.rebuilt);
	assert_int_equal(st.lists_read, 3);
	check_counts(idx, &r);

	/* many small changes in a row: runs stay few (merged by size) */
	for (int step = 0; step < 20; step++) {
		int i = (int)(rnd() % MAXIMG);
		if (r.present[i] && rnd() % 3 == 0)
			r.present[i] = false;
		else
			fill_image(&r, i);
		write_repo(idx, &r);
		update(idx);
		check_counts(idx, &r);
	}
	assert_true(count_runs(idx) <= 8);

	/* counted from scratch: the same figures */
	idd_blocktable *inc;
	idd_error err;
	assert_int_equal(idd_blocktable_open(idx, &inc, &err), IDD_OK);
	uint64_t entries = inc->entries;
	idd_blocktable_free(inc);
	char *bt = idd_path_join(idx, "blocktable", NULL);
	tu_rmtree(bt);
	st = update(idx);
	assert_true(st.rebuilt);
	assert_false(st.repaired);
	assert_int_equal(st.entries, entries);
	check_counts(idx, &r);
	free(bt);
	free(idx);
}

static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

static void test_leftovers_and_damage(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	struct repo r = {0};
	for (int i = 0; i < 4; i++)
		fill_image(&r, i);
	write_repo(idx, &r);
	/* the table of an older imgdedup (sharded, version 1): replaced
	 * without a warning, its shards removed */
	char *btdir = idd_path_join(idx, "blocktable", NULL);
	idd_error err;
	assert_int_equal(idd_mkdir_p(btdir, &err), IDD_OK);
	char *oldidx = idd_path_join(btdir, "index", NULL);
	static const char bti[8] = {'I', 'D', 'D', '-', 'B', 'T', 'I', 0};
	assert_int_equal(idd_indexfile_write(oldidx, bti, 1, "x", 1, true, &err), IDD_OK);
	char *shard = idd_path_join(btdir, "00", NULL);
	put_file(shard, "old shard");
	idd_bt_update_stats st = update(idx);
	assert_true(st.rebuilt);
	assert_false(st.repaired);
	assert_int_equal(access(shard, F_OK), -1);
	check_counts(idx, &r);

	/* a run and a temporary a killed run left: removed by the next update */
	char *orphan = idd_path_join(btdir, "run-00000000000000ff", NULL);
	char *tmp = idd_path_join(btdir, "run-0000000000000100.tmp.99999", NULL);
	put_file(orphan, "orphan");
	put_file(tmp, "partial");
	fill_image(&r, 5);
	write_repo(idx, &r);
	update(idx);
	assert_int_equal(access(orphan, F_OK), -1);
	assert_int_equal(access(tmp, F_OK), -1);
	check_counts(idx, &r);

	/* a damaged run: noticed (its file changed), counted afresh */
	char *run = tu_first_file(idx, "blocktable", "run-");
	assert_non_null(run);
	tu_flip_byte(run, 40);
	fill_image(&r, 6);
	write_repo(idx, &r);
	st = update(idx);
	assert_true(st.rebuilt);
	assert_true(st.repaired);
	check_counts(idx, &r);

	/* a removed image whose old list is gone: cannot be taken away, so
	 * everything is counted afresh, still exact */
	idd_catalog *cat;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	const idd_image_info *im = idd_catalog_find(cat, r.ids[2]);
	assert_non_null(im);
	char *list = idd_blocks_path(idx, &im->list_key, &err);
	idd_catalog_free(cat);
	r.present[2] = false;
	write_repo(idx, &r);
	assert_int_equal(unlink(list), 0);
	st = update(idx);
	assert_true(st.rebuilt);
	check_counts(idx, &r);

	/* a damaged manifest */
	tu_flip_byte(oldidx, 40);
	st = update(idx);
	assert_true(st.rebuilt);
	assert_true(st.repaired);
	check_counts(idx, &r);
	free(list);
	free(run);
	free(orphan);
	free(tmp);
	free(shard);
	free(oldidx);
	free(btdir);
	free(idx);
}

static void age(const char *path)
{
	struct timespec t[2];
	clock_gettime(CLOCK_REALTIME, &t[0]);
	t[0].tv_sec -= 60;
	t[1] = t[0];
	assert_int_equal(utimensat(AT_FDCWD, path, t, 0), 0);
}

static void test_list_trust(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	struct repo r = {0};
	fill_image(&r, 0);
	fill_image(&r, 1);
	write_repo(idx, &r);
	idd_catalog *cat;
	idd_error err;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	char *l0 = idd_blocks_path(idx, &cat->images[0].list_key, &err);
	char *l1 = idd_blocks_path(idx, &cat->images[1].list_key, &err);
	age(l0);
	age(l1);
	idd_bt_update_stats st;
	assert_int_equal(idd_blocktable_update(idx, NULL, cat, NULL, true, &st, NULL, NULL, &err), IDD_OK);
	idd_blocktable *bt;
	assert_int_equal(idd_blocktable_open(idx, &bt, &err), IDD_OK);
	assert_true(idd_blocktable_list_trusted(bt, idx, &cat->images[0]));
	assert_true(idd_blocktable_list_trusted(bt, idx, &cat->images[1]));
	/* a list written to (its mtime moves) is no longer trusted */
	tu_flip_byte(l1, 50);
	assert_false(idd_blocktable_list_trusted(bt, idx, &cat->images[1]));
	/* nor one the table did not count, nor one modified just before the
	 * table was written (within the timestamp granularity) */
	idd_image_info other = cat->images[0];
	other.id = (char *)"other.raw";
	assert_false(idd_blocktable_list_trusted(bt, idx, &other));
	idd_blocktable_free(bt);
	tu_rmtree(idx);
	write_repo(idx, &r);
	idd_catalog_free(cat);
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	assert_int_equal(idd_blocktable_update(idx, NULL, cat, NULL, true, &st, NULL, NULL, &err), IDD_OK);
	assert_int_equal(idd_blocktable_open(idx, &bt, &err), IDD_OK);
	assert_false(idd_blocktable_list_trusted(bt, idx, &cat->images[0]));
	idd_blocktable_free(bt);
	idd_catalog_free(cat);
	free(l0);
	free(l1);
	free(idx);
}

/* An index of n images of nb unique blocks each, written directly. */
/* An update given the table the caller checked the lists against keeps
 * the records of the lists found as recorded and takes a fresh identity
 * for the others, so that every list is trusted by the next run. */
static void test_update_from_checked_table(void **state)
{
	(void)state;
	char *idx = idd_path_join(dir, "idx", NULL);
	struct repo r = {0};
	fill_image(&r, 0);
	fill_image(&r, 1);
	write_repo(idx, &r);
	idd_catalog *cat;
	idd_error err;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	char *l0 = idd_blocks_path(idx, &cat->images[0].list_key, &err);
	char *l1 = idd_blocks_path(idx, &cat->images[1].list_key, &err);
	age(l0);
	age(l1);
	idd_bt_update_stats st;
	assert_int_equal(idd_blocktable_update(idx, NULL, cat, NULL, true, &st, NULL, NULL, &err), IDD_OK);
	idd_blocktable *bt;
	assert_int_equal(idd_blocktable_open(idx, &bt, &err), IDD_OK);
	/* l1 is rewritten with the same bytes: a new inode, checked by reading */
	char *tmp = idd_path_join(dir, "copy", NULL);
	void *data;
	size_t len;
	assert_int_equal(idd_read_file(l1, 1 << 20, &data, &len, &err), IDD_OK);
	FILE *f = fopen(tmp, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
	assert_int_equal(rename(tmp, l1), 0);
	age(l1);
	assert_true(idd_blocktable_list_trusted(bt, idx, &cat->images[0]));
	assert_false(idd_blocktable_list_trusted(bt, idx, &cat->images[1]));
	assert_int_equal(idd_blocktable_update(idx, bt, cat, NULL, true, &st, NULL, NULL, &err), IDD_OK);
	assert_int_equal(st.lists_read, 0);
	idd_blocktable_free(bt);
	assert_int_equal(idd_blocktable_open(idx, &bt, &err), IDD_OK);
	assert_true(idd_blocktable_list_trusted(bt, idx, &cat->images[0]));
	assert_true(idd_blocktable_list_trusted(bt, idx, &cat->images[1]));
	idd_blocktable_free(bt);
	check_counts(idx, &r);
	free(data);
	free(tmp);
	free(l0);
	free(l1);
	idd_catalog_free(cat);
	free(idx);
}

static void write_big(const char *idx, size_t n, uint64_t nb)
{
	idd_error err;
	assert_int_equal(idd_mkdir_p(idx, &err), IDD_OK);
	idd_catalog cat = {.block_size = 4096, .generation = 1, .count = n};
	cat.images = calloc(n, sizeof *cat.images);
	idd_digest *d = calloc(nb, sizeof *d);
	assert_non_null(cat.images);
	assert_non_null(d);
	char (*ids)[32] = calloc(n, sizeof *ids);
	assert_non_null(ids);
	for (size_t i = 0; i < n; i++) {
		for (uint64_t k = 0; k < nb; k++)
			d[k] = ig_digest(1 + i * nb + k);
		idd_image_info *im = &cat.images[i];
		assert_int_equal(idd_blocklist_save(idx, 4096, d, nb, &im->list_key, &err), IDD_OK);
		snprintf(ids[i], sizeof ids[i], "m%05zu.raw", i);
		im->id = im->file = ids[i];
		im->member = im->container = (char *)"";
		im->format = (char *)"raw";
		im->nblocks = nb;
		im->distinct_blocks = nb;
		im->virtual_size = im->file_size = nb * 4096;
	}
	assert_int_equal(idd_catalog_save(idx, &cat, &err), IDD_OK);
	free(ids);
	free(d);
	free(cat.images);
}

/* Peak RSS (KiB) of a child that updates the table of idx. */
static long update_rss(const char *idx)
{
	pid_t pid = fork();
	if (pid == 0) {
		idd_catalog *cat;
		idd_error err;
		idd_bt_update_stats st;
		int rc = idd_catalog_load(idx, &cat, &err) ||
		         idd_blocktable_update(idx, NULL, cat, NULL, false, &st, NULL, NULL, &err);
		_exit(rc ? 1 : 0);
	}
	int status;
	struct rusage ru;
	assert_int_equal(wait4(pid, &status, 0, &ru), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	return ru.ru_maxrss;
}

/* Memory follows the buffer, not the table: counting a table 8x as large
 * (the runs searched and merged through mmap) costs about the same peak. */
#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

static void test_memory_bound(void **state)
{
	(void)state;
#ifdef UNDER_ASAN
	skip(); /* the sanitizer's quarantine and shadow make RSS mean nothing */
#endif
	idd_blocktable_buffer_entries = 4096;
	char *small = idd_path_join(dir, "small", NULL);
	char *large = idd_path_join(dir, "large", NULL);
	write_big(small, 8, 4096);   /* 32 Ki digests: 1.2 MB of runs */
	write_big(large, 64, 4096);  /* 256 Ki digests: 9.4 MB of runs */
	long rs = update_rss(small), rl = update_rss(large);
	print_message("peak RSS: %ld KiB (small), %ld KiB (large)\n", rs, rl);
	/* the table of large is 8 MB larger; its update may not grow by more
	 * than a quarter of that */
	assert_true(rl - rs < 2048);
	idd_blocktable *bt;
	idd_error err;
	assert_int_equal(idd_blocktable_open(large, &bt, &err), IDD_OK);
	assert_int_equal(bt->entries, 64 * 4096);
	idd_blocktable_free(bt);
	free(small);
	free(large);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_follows_changes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_leftovers_and_damage, setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_trust, setup, teardown),
		cmocka_unit_test_setup_teardown(test_update_from_checked_table, setup, teardown),
		cmocka_unit_test_setup_teardown(test_memory_bound, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
