/* test_pack.c - the pack: every block retrievable by its own byte range,
 * frames grouped by the images holding their blocks, views agreeing with
 * the index, incremental runs (nothing written when unchanged, only new
 * blocks added, dropped blocks, compaction), images changed behind the
 * index, leftovers of killed runs, the lock, hostile files and frames. */
#include "packgen.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

static char *repo, *idx;
static int setup(void **state)
{
	(void)state;
	repo = tu_mkdtemp();
	idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	return 0;
}
static int teardown(void **state)
{
	(void)state;
	tu_rmtree(repo);
	free(repo);
	free(idx);
	return 0;
}

#define BS 4096u
#define NA 300
#define NB 260
#define NC 90

/* a: zeros and contents 1..; b shares a's first 100 blocks and has its own;
 * c: its own blocks, some of b's, a partial last block. */
static uint64_t ca[NA], cb[NB], cc[NC];
/* c's last block: cut to 1000 bytes in the image, zero padded in the pack */
#define TAILC 9999u
#define TAILLEN 1000u
static void expected_block(uint64_t v, unsigned char *buf)
{
	pg_block(v, buf, BS);
	if (v == TAILC)
		memset(buf + TAILLEN, 0, BS - TAILLEN);
}
static idd_digest expected_digest(uint64_t v)
{
	unsigned char b[BS];
	expected_block(v, b);
	idd_digest d;
	assert_int_equal(idd_sha256(b, BS, d.b, NULL), IDD_OK);
	return d;
}
static void make_contents(void)
{
	for (int i = 0; i < NA; i++)
		ca[i] = i % 50 == 7 ? 0 : 1 + (uint64_t)i;
	for (int i = 0; i < NB; i++)
		cb[i] = i < 100 ? ca[i] : i % 9 == 0 ? 1000 : 1000 + (uint64_t)i; /* repeats */
	for (int i = 0; i < NC; i++)
		cc[i] = i < 30 ? 5000 + (uint64_t)i : cb[150 + i];
	cc[NC - 1] = TAILC;
}

/* The images (by index 0..2) holding content v. */
static unsigned holders(uint64_t v)
{
	unsigned m = 0;
	for (int i = 0; i < NA; i++)
		m |= ca[i] == v ? 1 : 0;
	for (int i = 0; i < NB; i++)
		m |= cb[i] == v ? 2 : 0;
	for (int i = 0; i < NC; i++)
		m |= cc[i] == v ? 4 : 0;
	return m;
}

static size_t distinct_of(const uint64_t *const *lists, const size_t *ns, size_t nl, uint64_t *out)
{
	size_t n = 0;
	for (size_t l = 0; l < nl; l++)
		for (size_t i = 0; i < ns[l]; i++) {
			uint64_t v = lists[l][i];
			bool seen = !v;
			for (size_t q = 0; q < n && !seen; q++)
				seen = out[q] == v;
			if (!seen)
				out[n++] = v;
		}
	return n;
}

static void *read_rel(const char *rel, size_t *len)
{
	char *p = idd_path_join(idx, rel, NULL);
	void *data;
	idd_error err;
	if (idd_read_file(p, (size_t)1 << 34, &data, len, &err))
		fail_msg("%s", err.msg);
	free(p);
	return data;
}

/* Decode the block at loc (frame read from its data file) into out. */
static void read_loc(const idd_pack_index *x, const idd_pack_loc *loc, unsigned char *out)
{
	char *rel = idd_pack_data_relpath(&x->files[loc->file].name, NULL);
	size_t len;
	unsigned char *file = read_rel(rel, &len);
	assert_int_equal(len, x->files[loc->file].size);
	unsigned char *raw = malloc((size_t)loc->nblocks * x->block_size);
	ZSTD_DCtx *d = ZSTD_createDCtx();
	idd_error err;
	assert_int_equal(idd_pack_frame_decode(d, rel, file + loc->off, (size_t)loc->clen, loc->nblocks,
	                                       x->block_size, raw, &err), IDD_OK);
	memcpy(out, raw + (size_t)loc->slot * x->block_size, x->block_size);
	ZSTD_freeDCtx(d);
	free(raw);
	free(file);
	free(rel);
}

/* Every listed content is in the pack, at a frame that decodes to it. */
static void check_contents(const uint64_t *v, size_t n)
{
	idd_pack_index *x;
	idd_error err;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	unsigned char want[BS], got[BS];
	for (size_t i = 0; i < n; i++) {
		idd_digest d = expected_digest(v[i]);
		idd_pack_loc loc;
		assert_true(idd_pack_lookup(x, &d, &loc));
		read_loc(x, &loc, got);
		expected_block(v[i], want);
		assert_memory_equal(got, want, BS);
	}
	idd_pack_index_free(x);
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Names, inodes and mtimes of everything under pack/. */
static char *snapshot(void)
{
	idd_buf b = {0};
	const char *subs[] = {"pack", "pack/data", "pack/views", "pack/runs", "pack/lists"};
	for (size_t s = 0; s < 5; s++) {
		char *dir = idd_path_join(idx, subs[s], NULL);
		DIR *d = opendir(dir);
		if (!d) { /* an older pack has no runs or lists */
			free(dir);
			continue;
		}
		struct dirent *de;
		char **names = NULL;
		size_t nn = 0;
		while ((de = readdir(d))) {
			if (de->d_name[0] == '.')
				continue;
			names = realloc(names, (nn + 1) * sizeof *names);
			names[nn++] = strdup(de->d_name);
		}
		closedir(d);
		qsort(names, nn, sizeof *names, cmp_name);
		for (size_t i = 0; i < nn; i++) {
			char *p = idd_path_join(dir, names[i], NULL);
			struct stat st;
			assert_int_equal(stat(p, &st), 0);
			if (!S_ISREG(st.st_mode)) {
				free(p);
				free(names[i]);
				continue;
			}
			char line[512];
			snprintf(line, sizeof line, "%s/%s %lu %lld.%09ld %lld\n", subs[s], names[i],
			         (unsigned long)st.st_ino, (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec,
			         (long long)st.st_size);
			idd_buf_put(&b, line, strlen(line));
			free(p);
			free(names[i]);
		}
		free(names);
		free(dir);
	}
	idd_buf_put_u8(&b, 0);
	return (char *)b.data;
}

/* Files in SUB (with the given ending, when not NULL). */
static size_t count_ending(const char *sub, const char *ending)
{
	char *dir = idd_path_join(idx, sub, NULL);
	DIR *d = opendir(dir);
	assert_non_null(d);
	struct dirent *de;
	size_t n = 0;
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name), e = ending ? strlen(ending) : 0;
		n += de->d_name[0] != '.' && l >= e && (!ending || !strcmp(de->d_name + l - e, ending));
	}
	closedir(d);
	free(dir);
	return n;
}
static size_t count_files(const char *sub)
{
	return count_ending(sub, !strcmp(sub, "pack/data") ? IDD_PACK_DATA_SUFFIX : NULL);
}

static void verify_ok(bool deep)
{
	idd_verify_opts vo = {.repo = repo, .deep = deep};
	uint64_t problems = 0;
	idd_error err;
	assert_int_equal(idd_verify(&vo, &problems, &err), IDD_OK);
	assert_int_equal(problems, 0);
}

static void test_build_layout_rerun(void **state)
{
	(void)state;
	make_contents();
	pg_image(repo, "a.raw", ca, NA, BS, 0);
	pg_image(repo, "b.raw", cb, NB, BS, 0);
	pg_image(repo, "c.raw", cc, NC, BS, TAILLEN);
	pg_index(repo, BS);
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	uint64_t all[NA + NB + NC];
	const uint64_t *lists[] = {ca, cb, cc};
	size_t ns[] = {NA, NB, NC};
	size_t n = distinct_of(lists, ns, 3, all);
	assert_int_equal(st.blocks, n);
	assert_int_equal(st.added, n);
	assert_int_equal(st.removed, 0);
	assert_int_equal(st.failed, 0);
	assert_int_equal(st.raw_bytes, (uint64_t)n * BS);
	assert_int_equal(st.views_written, 3);
	assert_true(st.changed && st.committed && !st.compacted);
	assert_true(st.pack_bytes < st.raw_bytes);
	check_contents(all, n);

	/* frames hold blocks of one image set each, never more than 256 KiB */
	idd_pack_index *x;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	assert_int_equal(x->nfiles, 1);
	assert_int_equal(x->frame_blocks, IDD_PACK_FRAME_BYTES / BS);
	unsigned *set_of_slot = calloc(x->nslots, sizeof *set_of_slot);
	for (size_t i = 0; i < n; i++) {
		idd_digest d = expected_digest(all[i]);
		idd_pack_loc loc;
		assert_true(idd_pack_lookup(x, &d, &loc));
		set_of_slot[x->frames[loc.frame].first + loc.slot] = holders(all[i]);
	}
	for (size_t f = 0; f < x->nframes; f++) {
		assert_true(x->frames[f].nblocks <= x->frame_blocks);
		for (uint32_t s = 1; s < x->frames[f].nblocks; s++)
			assert_int_equal(set_of_slot[x->frames[f].first + s], set_of_slot[x->frames[f].first]);
	}
	free(set_of_slot);
	/* each view agrees with the index for every digest of its image's map */
	const char *ids[] = {"a.raw", "b.raw", "c.raw"};
	for (int i = 0; i < 3; i++) {
		idd_map *m;
		assert_int_equal(idd_map_load(idx, ids[i], &m, &err), IDD_OK);
		char *rel = idd_pack_view_relpath(&m->list_key, NULL);
		size_t len;
		void *file = read_rel(rel, &len);
		idd_pack_view *v;
		assert_int_equal(idd_pack_view_parse(rel, file, len, 0, &v, &err), IDD_OK);
		assert_int_equal(v->ndistinct, m->ndistinct);
		assert_int_equal(v->packed, m->ndistinct);
		for (uint64_t k = 0; k < m->ndistinct; k++) {
			idd_pack_loc a, b;
			assert_true(idd_pack_view_find(v, k, &a));
			assert_true(idd_pack_lookup(x, &m->digests[k], &b));
			assert_memory_equal(v->files[a.file].name.b, x->files[b.file].name.b, 32);
			assert_true(a.off == b.off && a.clen == b.clen && a.slot == b.slot && a.nblocks == b.nblocks);
		}
		assert_false(idd_pack_view_find(v, m->ndistinct, &(idd_pack_loc){0}));
		idd_pack_view_free(v);
		free(file);
		free(rel);
		idd_map_free(m);
	}
	idd_digest absent = pg_digest(999999, BS);
	assert_false(idd_pack_lookup(x, &absent, &(idd_pack_loc){0}));
	idd_pack_index_free(x);
	verify_ok(true);

	/* info's summary */
	idd_catalog *cat;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	idd_pack_image_summary sum;
	assert_int_equal(idd_pack_image_summary_get(idx, idd_catalog_find(cat, "b.raw"), &sum, &err), IDD_OK);
	assert_true(sum.has_pack && sum.has_view);
	assert_int_equal(sum.blocks, sum.distinct);
	assert_true(sum.frames > 0 && sum.frame_bytes > 0);
	idd_catalog_free(cat);

	/* unchanged index: nothing written */
	char *before = snapshot();
	uint64_t bytes = st.pack_bytes;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	char *after = snapshot();
	assert_string_equal(before, after);
	assert_false(st.changed);
	assert_true(st.committed);
	assert_int_equal(st.added, 0);
	assert_int_equal(st.blocks, n);
	assert_int_equal(st.pack_bytes, bytes);
	free(before);
	free(after);
}

static void test_incremental_and_compaction(void **state)
{
	(void)state;
	make_contents();
	pg_image(repo, "a.raw", ca, NA, BS, 0);
	pg_image(repo, "b.raw", cb, NB, BS, 0);
	pg_index(repo, BS);
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	uint64_t n0 = st.blocks;
	char *before = snapshot();

	/* a new image: only its new blocks are packed, into one new file; the
	 * old data file and the other views are untouched */
	uint64_t cd[40];
	for (int i = 0; i < 40; i++)
		cd[i] = i < 25 ? 7000 + (uint64_t)i : ca[i];
	pg_image(repo, "d.raw", cd, 40, BS, 0);
	pg_index(repo, BS);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_int_equal(st.added, 25);
	assert_int_equal(st.removed, 0);
	assert_int_equal(st.blocks, n0 + 25);
	assert_int_equal(st.views_written, 1);
	assert_false(st.compacted);
	/* only d's map was read: once for its new blocks, once for its view */
	assert_int_equal(st.maps_read, 2);
	assert_int_equal(st.lists_read, 0);
	assert_int_equal(st.runs, 2);
	assert_int_equal(count_files("pack/lists"), 3);
	assert_int_equal(count_files("pack/data"), 2);
	char *after = snapshot();
	/* every line of before except pack/index is still there */
	for (char *line = before, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		*nl = 0;
		if (strncmp(line, "pack/index ", 11))
			assert_non_null(strstr(after, line));
		*nl = '\n';
	}
	free(before);
	free(after);
	check_contents(cd, 40);
	verify_ok(true);

	/* d removed: its 25 blocks dropped from the index, below the
	 * compaction threshold the data stays */
	char *p = idd_path_join(repo, "d.raw", NULL);
	unlink(p);
	free(p);
	pg_index(repo, BS);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_int_equal(st.removed, 25);
	assert_int_equal(st.added, 0);
	assert_int_equal(st.blocks, n0);
	assert_false(st.compacted);
	/* no map read; d's list read back from the pack's copy (scan deleted
	 * blocks/), which goes with its view */
	assert_int_equal(st.maps_read, 0);
	assert_int_equal(st.lists_read, 1);
	assert_int_equal(st.views_written, 0);
	assert_int_equal(count_files("pack/lists"), 2);
	assert_int_equal(count_files("pack/data"), 2);
	assert_int_equal(count_files("pack/views"), 2);
	idd_pack_index *x;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	idd_digest gone = pg_digest(7000, BS);
	assert_false(idd_pack_lookup(x, &gone, &(idd_pack_loc){0}));
	idd_pack_index_free(x);
	verify_ok(true);

	/* b removed: most of the pack is garbage, everything is rewritten */
	p = idd_path_join(repo, "b.raw", NULL);
	unlink(p);
	free(p);
	pg_index(repo, BS);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_true(st.compacted);
	assert_int_equal(st.added, 0);
	uint64_t left[NA];
	const uint64_t *lists[] = {ca};
	size_t ns[] = {NA};
	size_t n = distinct_of(lists, ns, 1, left);
	assert_int_equal(st.blocks, n);
	assert_int_equal(st.removed, n0 - n);
	assert_int_equal(count_files("pack/data"), 1);
	assert_int_equal(count_files("pack/views"), 1);
	check_contents(left, n);
	verify_ok(true);
}

static void test_changed_image_and_leftovers(void **state)
{
	(void)state;
	make_contents();
	pg_image(repo, "a.raw", ca, NA, BS, 0);
	pg_image(repo, "c.raw", cc, NC, BS, TAILLEN);
	pg_index(repo, BS);
	/* a.raw changes after the scan: its changed blocks fail, the rest is packed */
	char *pa = idd_path_join(repo, "a.raw", NULL);
	tu_flip_byte(pa, 10 * BS + 5);
	tu_flip_byte(pa, 11 * BS + 5);
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "2 blocks"));
	assert_int_equal(st.failed, 2);
	assert_true(st.committed);
	uint64_t all[NA + NC];
	const uint64_t *lists[] = {ca, cc};
	size_t ns[] = {NA, NC};
	size_t n = distinct_of(lists, ns, 2, all);
	assert_int_equal(st.blocks, n - 2);
	idd_catalog *cat;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	idd_pack_image_summary sum;
	assert_int_equal(idd_pack_image_summary_get(idx, idd_catalog_find(cat, "a.raw"), &sum, &err), IDD_OK);
	assert_int_equal(sum.blocks, sum.distinct - 2);
	idd_catalog_free(cat);
	verify_ok(false);

	/* the changes undone: the next run packs the two blocks */
	tu_flip_byte(pa, 10 * BS + 5);
	tu_flip_byte(pa, 11 * BS + 5);
	free(pa);
	/* leftovers of killed runs: temporaries, an orphan data file, a view
	 * no image has */
	char *junk[] = {idd_path_join(idx, "pack/data/new.tmp.99999", NULL),
	                idd_path_join(idx, "pack/data/0000000000000000000000000000000000000000000000000000000000000000.zpk", NULL),
	                idd_path_join(idx, "pack/views/1111111111111111111111111111111111111111111111111111111111111111", NULL),
	                idd_path_join(idx, "pack/views/x.tmp.42", NULL)};
	for (int i = 0; i < 4; i++) {
		char *slash = strrchr(junk[i], '/');
		*slash = 0;
		free(tu_write(junk[i], slash + 1, "junk", 4));
		*slash = '/';
	}
	char *dotfile = tu_write(idx, "pack/data/.nfs0000000001", "nfs", 3);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_int_equal(st.added, 2);
	assert_int_equal(st.blocks, n);
	assert_int_equal(st.failed, 0);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(access(junk[i], F_OK), -1);
		free(junk[i]);
	}
	/* a dotfile is not the pack's (an NFS client's silly rename): kept */
	assert_int_equal(access(dotfile, F_OK), 0);
	free(dotfile);
	check_contents(all, n);
	verify_ok(true);

	/* damage found by verify: a data byte (deep only), a truncated file,
	 * a damaged view, a damaged index */
	idd_pack_index *x;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	char *rel = idd_pack_data_relpath(&x->files[0].name, NULL);
	char *data = idd_path_join(idx, rel, NULL);
	uint64_t mid = x->frames[x->nframes / 2].off + x->frames[x->nframes / 2].clen / 2;
	idd_pack_index_free(x);
	free(rel);
	tu_flip_byte(data, mid);
	verify_ok(false);
	idd_verify_opts vo = {.repo = repo, .deep = true};
	uint64_t problems = 0;
	assert_int_equal(idd_verify(&vo, &problems, &err), IDD_ERR);
	assert_int_equal(problems, 1);
	tu_flip_byte(data, mid);
	verify_ok(true);
	uint64_t size = tu_file_size(data);
	tu_truncate(data, size - 1);
	vo.deep = false;
	assert_int_equal(idd_verify(&vo, &problems, &err), IDD_ERR);
	assert_int_equal(problems, 1);
	/* the next pack run notices and rebuilds */
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_int_equal(st.blocks, n);
	verify_ok(true);
	free(data);
	char *pi = idd_path_join(idx, IDD_PACK_INDEX_FILE, NULL);
	tu_flip_byte(pi, 40);
	assert_int_equal(idd_verify(&vo, &problems, &err), IDD_ERR);
	assert_int_equal(problems, 1);
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_ECORRUPT);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK); /* rebuilt, with a warning */
	assert_int_equal(st.blocks, n);
	verify_ok(true);
	free(pi);
}

static void test_lock_and_block_sizes(void **state)
{
	(void)state;
	make_contents();
	pg_image(repo, "a.raw", ca, 120, BS, 0);
	pg_index(repo, 512);
	int fd;
	idd_error err;
	assert_int_equal(idd_lock(idx, false, &fd, &err), IDD_OK);
	idd_pack_opts o = {.repo = repo, .no_wait = true};
	idd_pack_stats st;
	assert_int_equal(idd_pack_run(&o, &st, &err), IDD_EBUSY);
	assert_false(st.committed);
	idd_unlock(fd);
	assert_int_equal(idd_pack_run(&o, &st, &err), IDD_OK);
	idd_pack_index *x;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	assert_int_equal(x->block_size, 512);
	assert_int_equal(x->frame_blocks, IDD_PACK_FRAME_BYTES / 512);
	idd_pack_index_free(x);
	verify_ok(true);
	/* no index at all */
	char *empty = idd_path_join(repo, "nothing", NULL);
	assert_int_equal(idd_mkdir_p(empty, &err), IDD_OK);
	idd_pack_opts o2 = {.repo = empty};
	assert_int_equal(idd_pack_run(&o2, &st, &err), IDD_ENOENT);
	assert_non_null(strstr(err.msg, "scan"));
	free(empty);
}


/* ---- what a run reads and writes ---- */

static const char PKI[8] = {'I', 'D', 'D', '-', 'P', 'K', 'I', 0};

static int cmp_digest_t(const void *a, const void *b) { return memcmp(a, b, 32); }

static int warnings;
static char last_warning[1200];
static void count_warn(void *ctx, const char *msg)
{
	(void)ctx;
	warnings++;
	snprintf(last_warning, sizeof last_warning, "%s", msg);
}

static int pack_warned(idd_pack_stats *st, idd_error *err)
{
	idd_pack_opts o = {.repo = repo, .jobs = 2, .warn = count_warn};
	return idd_pack_run(&o, st, err);
}

static void rm_image(const char *name)
{
	char *p = idd_path_join(repo, name, NULL);
	assert_int_equal(unlink(p), 0);
	free(p);
}

/* Every live digest of the pack, sorted. */
static size_t live_digests(idd_digest **out)
{
	idd_pack_index *x;
	idd_error err;
	assert_int_equal(idd_pack_index_open(idx, &x, &err), IDD_OK);
	idd_pack_iter it;
	assert_int_equal(idd_pack_iter_init(&it, x, &err), IDD_OK);
	size_t n = 0, cap = 16;
	idd_digest *v = malloc(cap * sizeof *v);
	const unsigned char *d;
	uint64_t ord;
	while (idd_pack_iter_next(&it, &d, &ord) > 0) {
		if (n == cap)
			v = realloc(v, (cap *= 2) * sizeof *v);
		memcpy(v[n].b, d, 32);
		if (n)
			assert_true(memcmp(v[n - 1].b, v[n].b, 32) < 0);
		n++;
	}
	assert_int_equal(n, x->nentries);
	idd_pack_iter_free(&it);
	idd_pack_index_free(x);
	*out = v;
	return n;
}

/* The pack holds exactly the distinct contents of these images. */
static void check_exact(const uint64_t *const *lists, const size_t *ns, size_t nl)
{
	size_t total = 0;
	for (size_t l = 0; l < nl; l++)
		total += ns[l];
	uint64_t *all = malloc((total + 1) * sizeof *all);
	size_t n = distinct_of(lists, ns, nl, all);
	idd_digest *live;
	assert_int_equal(live_digests(&live), n);
	for (size_t i = 0; i < n; i++) {
		idd_digest d = expected_digest(all[i]);
		assert_non_null(bsearch(&d, live, n, sizeof *live, cmp_digest_t));
	}
	check_contents(all, n);
	free(live);
	free(all);
}

/* Frames never mix blocks held by different sets of the given images. */
static void check_frames_by_holders(const uint64_t *const *lists, const size_t *ns, size_t nl,
                                    const uint64_t *v, size_t n)
{
	idd_pack_index *x;
	idd_error err;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	unsigned *set_of_slot = calloc(x->nslots + 1, sizeof *set_of_slot);
	for (size_t i = 0; i < n; i++) {
		unsigned m = 0;
		for (size_t l = 0; l < nl; l++)
			for (size_t k = 0; k < ns[l]; k++)
				m |= lists[l][k] == v[i] ? 1u << l : 0;
		idd_digest d = expected_digest(v[i]);
		idd_pack_loc loc;
		assert_true(idd_pack_lookup(x, &d, &loc));
		set_of_slot[x->frames[loc.frame].first + loc.slot] = m;
	}
	for (size_t f = 0; f < x->nframes; f++)
		for (uint32_t q = 1; q < x->frames[f].nblocks; q++) {
			unsigned a = set_of_slot[x->frames[f].first], b = set_of_slot[x->frames[f].first + q];
			assert_true(!a || !b || a == b);
		}
	free(set_of_slot);
	idd_pack_index_free(x);
}

/* Blocks added in one run by several images are grouped by the set of
 * those images holding them; with a sort budget of a few records every
 * sort spills, runs are merged as they come, and the pack stays exact
 * through additions and removals; packed afresh it holds the same. */
static void test_runs_merge_and_signatures(void **state)
{
	(void)state;
	size_t saved = idd_pack_sort_budget;
	idd_pack_sort_budget = 1; /* a few records */
	static uint64_t im[6][60];
	for (int i = 0; i < 6; i++)
		for (int k = 0; k < 60; k++)
			im[i][k] = k < 20 ? 1 + (uint64_t)k                       /* everyone's */
			           : k < 40 ? 100 + (uint64_t)(i / 2) * 100 + (uint64_t)k /* pairs' */
			                    : 1000 + (uint64_t)i * 100 + (uint64_t)k;     /* own */
	const uint64_t *lists[6];
	size_t ns[6];
	char name[32];
	idd_pack_stats st;
	idd_error err;
	uint64_t merged = 0;
	for (int i = 0; i < 6; i++) {
		lists[i] = im[i];
		ns[i] = 60;
		snprintf(name, sizeof name, "i%d.raw", i);
		pg_image(repo, name, im[i], 60, BS, 0);
		if (i % 2 == 0)
			continue; /* pairs arrive together */
		pg_index(repo, BS);
		assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
		assert_int_equal(st.maps_read, 4); /* the pair's maps, twice each */
		assert_int_equal(st.added, i == 1 ? 80 : 60);
		merged += st.runs_merged;
		assert_true(st.runs <= 2);
		check_exact(lists, ns, (size_t)i + 1);
		/* the pair's new blocks: those both hold apart from those one holds */
		uint64_t fresh[40];
		for (int k = 0; k < 20; k++) {
			fresh[k] = im[i][20 + k];
			fresh[20 + k] = im[i - 1][40 + k];
		}
		check_frames_by_holders(lists + i - 1, ns + i - 1, 2, fresh, 40);
		verify_ok(true);
	}
	assert_true(merged > 0);
	/* two images go: their own blocks leave, the shared ones stay */
	rm_image("i2.raw");
	rm_image("i5.raw");
	pg_index(repo, BS);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_int_equal(st.removed, 40);
	assert_int_equal(st.maps_read, 0);
	assert_int_equal(st.lists_read, 2);
	assert_false(st.compacted);
	const uint64_t *left[] = {im[0], im[1], im[3], im[4]};
	check_exact(left, ns, 4);
	verify_ok(true);
	/* the same blocks when packed afresh */
	idd_digest *inc, *fresh;
	size_t ninc = live_digests(&inc);
	char *pdir = idd_path_join(idx, IDD_PACK_DIR, NULL);
	tu_rmtree(pdir);
	free(pdir);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_int_equal(live_digests(&fresh), ninc);
	assert_memory_equal(inc, fresh, ninc * sizeof *inc);
	assert_int_equal(st.runs, 1);
	free(inc);
	free(fresh);
	verify_ok(true);
	idd_pack_sort_budget = saved;
}

/* A lost copy of a gone list: every packed block is checked against the
 * block table instead (a warning), with the same result.  A damaged run:
 * verify names it, pack rebuilds. */
static void test_lost_list_and_damaged_run(void **state)
{
	(void)state;
	make_contents();
	pg_image(repo, "a.raw", ca, NA, BS, 0);
	pg_image(repo, "b.raw", cb, NB, BS, 0);
	pg_image(repo, "c.raw", cc, NC, BS, TAILLEN);
	pg_index(repo, BS);
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	idd_catalog *cat;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	char *rel = idd_pack_list_relpath(&idd_catalog_find(cat, "c.raw")->list_key, NULL);
	char *kept = idd_path_join(idx, rel, NULL);
	free(rel);
	idd_catalog_free(cat);
	assert_int_equal(unlink(kept), 0);
	uint64_t n0 = st.blocks;
	/* c's own blocks: 30 and the tail */
	rm_image("c.raw");
	pg_index(repo, BS);
	warnings = 0;
	assert_int_equal(pack_warned(&st, &err), IDD_OK);
	assert_int_equal(warnings, 1);
	assert_non_null(strstr(last_warning, "checking every packed block"));
	assert_int_equal(st.removed, 31);
	assert_int_equal(st.blocks, n0 - 31);
	const uint64_t *lists[] = {ca, cb};
	size_t ns[] = {NA, NB};
	check_exact(lists, ns, 2);
	verify_ok(true);
	free(kept);

	/* a run damaged behind the pack's back */
	idd_pack_index *x;
	assert_int_equal(idd_pack_index_open(idx, &x, &err), IDD_OK);
	char *run = idd_pack_run_path(idx, x->runs[x->nruns - 1].seq, NULL);
	idd_pack_index_free(x);
	tu_flip_byte(run, IDD_IF_HEADER + 3);
	idd_verify_opts vo = {.repo = repo};
	uint64_t problems = 0;
	assert_int_equal(idd_verify(&vo, &problems, &err), IDD_ERR);
	assert_int_equal(problems, 1);
	warnings = 0;
	assert_int_equal(pack_warned(&st, &err), IDD_OK);
	assert_true(warnings >= 1);
	assert_true(st.compacted);
	check_exact(lists, ns, 2);
	verify_ok(true);
	free(run);
}

/* A reader (verify) that read the manifest just before a pack run merged
 * and deleted the runs it names reads the new manifest. */
static int pack_races;
static void race_pack(void *ctx, const char *index_dir)
{
	(void)ctx;
	(void)index_dir;
	if (!pack_races)
		return;
	pack_races = 0;
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_true(st.runs_merged > 0);
}

static void test_reader_races_a_merge(void **state)
{
	(void)state;
	make_contents();
	pg_image(repo, "a.raw", ca, 100, BS, 0);
	pg_index(repo, BS);
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	pg_image(repo, "b.raw", cb + 100, 40, BS, 0); /* 40 new blocks: a run of its own */
	pg_index(repo, BS);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_int_equal(st.runs, 2);
	pg_image(repo, "c.raw", cb + 150, 100, BS, 0); /* enough to merge the runs away */
	pg_index(repo, BS);
	idd_pack_index_read_hook = race_pack;
	pack_races = 1;
	idd_verify_opts vo = {.repo = repo, .deep = true, .warn = count_warn};
	uint64_t problems = 99;
	int vrc = idd_verify(&vo, &problems, &err);
	if (vrc)
		fail_msg("%s", last_warning);
	idd_pack_index_read_hook = NULL;
	assert_int_equal(pack_races, 0);
	assert_int_equal(problems, 0);
}

/* The pack index of an older imgdedup (one file: frames, every entry,
 * views), written here from the current pack by its documented layout. */
static void write_v1(bool incomplete)
{
	idd_pack_index *x;
	idd_error err;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	idd_catalog *cat;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	idd_digest key;
	assert_int_equal(idd_catalog_key(cat, &key, &err), IDD_OK);
	idd_catalog_free(cat);
	idd_buf b = {0};
	idd_buf_put_u32(&b, x->block_size);
	idd_buf_put_u32(&b, x->frame_blocks);
	idd_buf_put_u32(&b, x->level);
	idd_buf_put_u32(&b, incomplete ? IDD_PACK_INCOMPLETE : 0);
	idd_buf_put(&b, key.b, 32);
	idd_buf_put_u64(&b, x->nfiles);
	for (size_t i = 0; i < x->nfiles; i++) {
		idd_buf_put(&b, x->files[i].name.b, 32);
		idd_buf_put_u64(&b, x->files[i].size);
		idd_buf_put_u64(&b, x->files[i].nframes);
	}
	idd_buf_put_u64(&b, x->nframes);
	for (size_t i = 0; i < x->nframes; i++) {
		idd_buf_put_varint(&b, x->frames[i].clen);
		idd_buf_put_varint(&b, x->frames[i].nblocks);
	}
	idd_buf_put_u64(&b, x->nentries);
	idd_pack_iter it;
	assert_int_equal(idd_pack_iter_init(&it, x, &err), IDD_OK);
	const unsigned char *d;
	uint64_t ord;
	while (idd_pack_iter_next(&it, &d, &ord) > 0) {
		idd_buf_put(&b, d, 32);
		idd_buf_put_u64(&b, ord);
	}
	idd_pack_iter_free(&it);
	idd_buf_put_u64(&b, x->nlists);
	for (size_t i = 0; i < x->nlists; i++)
		idd_buf_put(&b, x->lists[i].list_key.b, 32);
	for (size_t i = 0; i < x->nfiles; i++) {
		char *rel = idd_pack_ft_relpath(&x->files[i].name, NULL);
		char *p = idd_path_join(idx, rel, NULL);
		assert_int_equal(unlink(p), 0);
		free(p);
		free(rel);
	}
	idd_pack_index_free(x);
	const char *gone[] = {"pack/runs", "pack/lists"};
	for (int i = 0; i < 2; i++) {
		char *p = idd_path_join(idx, gone[i], NULL);
		tu_rmtree(p);
		free(p);
	}
	char *p = idd_path_join(idx, IDD_PACK_INDEX_FILE, NULL);
	assert_int_equal(idd_indexfile_write(p, PKI, 1, b.data, b.len, true, &err), IDD_OK);
	free(p);
	idd_buf_free(&b);
}

/* Lines of snapshot() under pack/data (.zpk) and pack/views. */
static char *data_and_views(void)
{
	char *all = snapshot(), *out = calloc(strlen(all) + 1, 1);
	for (char *line = all, *nl; *line; line = nl + 1) {
		nl = strchr(line, '\n');
		*nl = 0;
		if (!strncmp(line, "pack/views/", 11) || (!strncmp(line, "pack/data/", 10) && strstr(line, ".zpk ")))
			strcat(strcat(out, line), "\n");
	}
	free(all);
	return out;
}

static void test_upgrade_in_place(void **state)
{
	(void)state;
	make_contents();
	pg_image(repo, "a.raw", ca, NA, BS, 0);
	pg_image(repo, "b.raw", cb, NB, BS, 0);
	pg_image(repo, "c.raw", cc, NC, BS, TAILLEN);
	pg_index(repo, BS);
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	uint64_t n = st.blocks;
	write_v1(false);
	idd_pack_index *x;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	assert_int_equal(x->version, 1);
	idd_pack_index_free(x);
	verify_ok(true); /* an older pack is no damage */
	/* the same catalog: converted, nothing read, no block or view rewritten */
	char *before = data_and_views();
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	char *after = data_and_views();
	assert_string_equal(before, after);
	free(before);
	free(after);
	assert_true(st.upgraded && st.changed && !st.compacted);
	assert_int_equal(st.maps_read + st.lists_read + st.views_written + st.added + st.removed, 0);
	assert_int_equal(st.blocks, n);
	assert_int_equal(st.runs, 1);
	assert_int_equal(count_files("pack/lists"), 3);
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	assert_int_equal(x->version, 2);
	idd_pack_index_free(x);
	const uint64_t *lists[] = {ca, cb, cc};
	size_t ns[] = {NA, NB, NC};
	check_exact(lists, ns, 3);
	verify_ok(true);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_false(st.changed);

	/* an older pack of a catalog that changed since: c went before the
	 * upgrade; its own blocks are found through the block table */
	write_v1(false);
	rm_image("c.raw");
	pg_index(repo, BS);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_true(st.upgraded);
	assert_int_equal(st.removed, 31);
	assert_int_equal(st.maps_read, 0);
	check_exact(lists, ns, 2);
	verify_ok(true);

	/* an older pack that said some blocks were missing: every list is gone
	 * through again, nothing is added */
	write_v1(true);
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
	assert_true(st.upgraded);
	assert_int_equal(st.maps_read, 4);
	assert_int_equal(st.views_written, 2);
	assert_int_equal(st.added, 0);
	check_exact(lists, ns, 2);
	verify_ok(true);
}

/* ---- hostile input ---- */

static unsigned char *wrap(const char magic[8], const idd_buf *b, size_t *len)
{
	unsigned char *f = malloc(IDD_IF_HEADER + b->len + IDD_IF_TRAILER);
	memcpy(f, magic, 8);
	idd_le32_put(f + 8, 1);
	idd_le32_put(f + 12, 0);
	idd_le64_put(f + 16, b->len);
	idd_le64_put(f + 24, b->len);
	memcpy(f + IDD_IF_HEADER, b->data, b->len);
	assert_int_equal(idd_sha256(f, IDD_IF_HEADER + b->len, f + IDD_IF_HEADER + b->len, NULL), IDD_OK);
	*len = IDD_IF_HEADER + b->len + IDD_IF_TRAILER;
	return f;
}

static const char PKV[8] = {'I', 'D', 'D', '-', 'P', 'K', 'V', 0};

/* An index payload: one file of `size` bytes, frames (clen, nblocks),
 * entries (digest seed, ordinal). */
static void index_payload(idd_buf *b, uint64_t size, const uint64_t (*fr)[2], size_t nf,
                          const uint64_t (*en)[2], size_t ne)
{
	idd_buf_put_u32(b, 4096);
	idd_buf_put_u32(b, 64);
	idd_buf_put_u32(b, 9);
	idd_buf_put_u32(b, 0);
	idd_buf_put(b, (unsigned char[32]){1}, 32);
	idd_buf_put_u64(b, 1);
	idd_buf_put(b, (unsigned char[32]){2}, 32);
	idd_buf_put_u64(b, size);
	idd_buf_put_u64(b, nf);
	idd_buf_put_u64(b, nf);
	for (size_t i = 0; i < nf; i++) {
		idd_buf_put_varint(b, fr[i][0]);
		idd_buf_put_varint(b, fr[i][1]);
	}
	idd_buf_put_u64(b, ne);
	for (size_t i = 0; i < ne; i++) {
		unsigned char d[32] = {0};
		idd_le64_put(d + 24, en[i][0]); /* big digits last: memcmp order = seed order */
		d[0] = 1;
		idd_buf_put(b, d, 32);
		idd_buf_put_u64(b, en[i][1]);
	}
	idd_buf_put_u64(b, 0);
}

static int parse_index(idd_buf *b)
{
	size_t len;
	unsigned char *f = wrap(PKI, b, &len);
	idd_pack_index *x = NULL;
	idd_error err;
	int rc = idd_pack_index_parse("t", f, len, &x, &err);
	idd_pack_index_free(x);
	free(f);
	idd_buf_free(b);
	return rc;
}

static void test_hostile_index_and_views(void **state)
{
	(void)state;
	const uint64_t fr[2][2] = {{100, 3}, {50, 2}};
	const uint64_t en[3][2] = {{1, 0}, {2, 4}, {3, 2}};
	idd_buf b = {0};
	index_payload(&b, 32 + 150, fr, 2, en, 3);
	assert_int_equal(parse_index(&b), IDD_OK);
	index_payload(&b, 32 + 151, fr, 2, en, 3); /* frames do not fill the file */
	assert_int_equal(parse_index(&b), IDD_ECORRUPT);
	index_payload(&b, 32 + 149, fr, 2, en, 3); /* past its end */
	assert_int_equal(parse_index(&b), IDD_ECORRUPT);
	const uint64_t bad_ord[1][2] = {{1, 5}}; /* ordinal past the frames */
	index_payload(&b, 32 + 150, fr, 2, bad_ord, 1);
	assert_int_equal(parse_index(&b), IDD_ECORRUPT);
	const uint64_t unsorted[2][2] = {{2, 0}, {1, 1}};
	index_payload(&b, 32 + 150, fr, 2, unsorted, 2);
	assert_int_equal(parse_index(&b), IDD_ECORRUPT);
	const uint64_t big[1][2] = {{100, 65}}; /* more blocks than a frame holds */
	index_payload(&b, 32 + 100, big, 1, NULL, 0);
	assert_int_equal(parse_index(&b), IDD_ECORRUPT);
	/* counts far beyond the payload are refused before allocating */
	idd_buf_put_u32(&b, 4096);
	idd_buf_put_u32(&b, 64);
	idd_buf_put_u32(&b, 9);
	idd_buf_put_u32(&b, 0);
	idd_buf_put(&b, (unsigned char[32]){1}, 32);
	idd_buf_put_u64(&b, UINT64_MAX / 2);
	assert_int_equal(parse_index(&b), IDD_ECORRUPT);
	/* truncated at every length */
	index_payload(&b, 32 + 150, fr, 2, en, 3);
	for (size_t cut = 0; cut < b.len; cut++) {
		idd_buf t = {0};
		idd_buf_put(&t, b.data, cut);
		if (!cut)
			idd_buf_put_u8(&t, 0), t.len = 0; /* allocate */
		assert_int_equal(parse_index(&t), IDD_ECORRUPT);
	}
	idd_buf_free(&b);

	/* views */
	for (int variant = 0; variant < 6; variant++) {
		idd_buf v = {0};
		idd_buf_put(&v, (unsigned char[32]){3}, 32);
		idd_buf_put_u32(&v, variant == 1 ? 3000 : 4096);
		idd_buf_put_u32(&v, 0);
		idd_buf_put_u64(&v, 3); /* ndistinct */
		idd_buf_put_u64(&v, 1);
		idd_buf_put(&v, (unsigned char[32]){2}, 32);
		idd_buf_put_u64(&v, 32 + 150);
		idd_buf_put_u64(&v, 2);
		/* file, gap, clen, nblocks */
		uint64_t f2[2][4] = {{0, 0, 100, 3}, {0, variant == 2 ? 1 : 0, 50, 2}};
		for (int i = 0; i < 2; i++)
			for (int k = 0; k < 4; k++)
				idd_buf_put_varint(&v, f2[i][k]);
		/* slots 4, absent, 0 (zigzag deltas +1) */
		uint64_t codes[3] = {(4u << 1) + 1, 0, variant == 3 ? (40u << 1) + 1 : ((5u << 1) - 1) + 1};
		for (int i = 0; i < 3; i++)
			idd_buf_put_varint(&v, codes[i]);
		if (variant == 4)
			idd_buf_put_u8(&v, 0); /* trailing */
		if (variant == 5)
			v.len -= 1; /* truncated */
		size_t len;
		unsigned char *f = wrap(PKV, &v, &len);
		idd_pack_view *pv = NULL;
		idd_error err;
		int rc = idd_pack_view_parse("v", f, len, 0, &pv, &err);
		if (variant == 0) {
			assert_int_equal(rc, IDD_OK);
			assert_int_equal(pv->packed, 2);
			idd_pack_loc loc;
			assert_true(idd_pack_view_find(pv, 0, &loc));
			assert_true(loc.frame == 1 && loc.slot == 1 && loc.off == 32 + 100 && loc.clen == 50);
			assert_false(idd_pack_view_find(pv, 1, &loc));
			assert_true(idd_pack_view_find(pv, 2, &loc));
			assert_true(loc.frame == 0 && loc.slot == 0 && loc.off == 32);
		} else {
			assert_int_equal(rc, IDD_ECORRUPT);
		}
		idd_pack_view_free(pv);
		free(f);
		idd_buf_free(&v);
	}
}

static void test_hostile_frames(void **state)
{
	(void)state;
	const uint32_t bs = 4096;
	unsigned char raw[3 * 4096], out[3 * 4096];
	for (int i = 0; i < 3; i++)
		pg_block(1 + (uint64_t)i, raw + i * bs, bs);
	size_t cap = ZSTD_compressBound(sizeof raw) * 2 + 64;
	unsigned char *z = malloc(cap);
	size_t zl = ZSTD_compress(z, cap, raw, sizeof raw, 9);
	assert_false(ZSTD_isError(zl));
	ZSTD_DCtx *d = ZSTD_createDCtx();
	idd_error err;
	assert_int_equal(idd_pack_frame_decode(d, "f", z, zl, 3, bs, out, &err), IDD_OK);
	assert_memory_equal(out, raw, sizeof raw);
	/* wrong block count, truncated, trailing bytes, two frames */
	assert_int_equal(idd_pack_frame_decode(d, "f", z, zl, 2, bs, out, &err), IDD_ECORRUPT);
	assert_int_equal(idd_pack_frame_decode(d, "f", z, zl - 1, 3, bs, out, &err), IDD_ECORRUPT);
	memcpy(z + zl, z, zl);
	assert_int_equal(idd_pack_frame_decode(d, "f", z, zl + 1, 3, bs, out, &err), IDD_ECORRUPT);
	assert_int_equal(idd_pack_frame_decode(d, "f", z, 2 * zl, 3, bs, out, &err), IDD_ECORRUPT);
	/* a frame declaring 64 GiB (a bomb), one with no declared size */
	unsigned char bomb[32];
	size_t n = 0;
	idd_le32_put(bomb, 0xFD2FB528u);
	n += 4;
	bomb[n++] = 0xc0;     /* 8-byte content size, no checksum, no dictionary */
	bomb[n++] = 10u << 3; /* window */
	idd_le64_put(bomb + n, (uint64_t)64 << 30);
	n += 8;
	bomb[n++] = 0x03; /* last block, RLE, size 0 */
	bomb[n++] = 0;
	bomb[n++] = 0;
	bomb[n++] = 0;
	assert_int_equal(idd_pack_frame_decode(d, "bomb", bomb, n, 3, bs, out, &err), IDD_ECORRUPT);
	ZSTD_CCtx *c = ZSTD_createCCtx();
	ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 0);
	size_t sl;
	ZSTD_outBuffer ob = {z, cap, 0};
	ZSTD_inBuffer ib = {raw, sizeof raw, 0};
	sl = ZSTD_compressStream2(c, &ob, &ib, ZSTD_e_end);
	assert_int_equal(sl, 0);
	assert_int_equal(idd_pack_frame_decode(d, "nosize", z, ob.pos, 3, bs, out, &err), IDD_ECORRUPT);
	/* a frame that needs a dictionary: the valid frame with a dictionary
	 * id added to its header */
	zl = ZSTD_compress(z, cap, raw, sizeof raw, 9);
	unsigned char *dz = malloc(zl + 1);
	size_t pos = 5 + ((z[4] & 0x20) ? 0 : 1); /* after the window descriptor */
	memcpy(dz, z, pos);
	dz[pos] = 77;
	memcpy(dz + pos + 1, z + pos, zl - pos);
	dz[4] |= 1;
	assert_int_equal(ZSTD_getDictID_fromFrame(dz, zl + 1), 77);
	assert_int_equal(idd_pack_frame_decode(d, "dict", dz, zl + 1, 3, bs, out, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "dictionary"));
	free(dz);
	/* a skippable frame */
	unsigned char skip[16] = {0};
	idd_le32_put(skip, IDD_PACK_SKIPPABLE_MAGIC);
	idd_le32_put(skip + 4, 8);
	assert_int_equal(idd_pack_frame_decode(d, "skip", skip, 16, 3, bs, out, &err), IDD_ECORRUPT);
	/* garbage at any length */
	for (size_t len = 0; len < 64; len++) {
		unsigned char g[64];
		tu_fill_random(g, sizeof g, len);
		assert_int_equal(idd_pack_frame_decode(d, "g", g, len, 1, bs, out, &err), IDD_ECORRUPT);
	}
	ZSTD_freeCCtx(c);
	ZSTD_freeDCtx(d);
	free(z);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_build_layout_rerun, setup, teardown),
		cmocka_unit_test_setup_teardown(test_incremental_and_compaction, setup, teardown),
		cmocka_unit_test_setup_teardown(test_changed_image_and_leftovers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock_and_block_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_runs_merge_and_signatures, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lost_list_and_damaged_run, setup, teardown),
		cmocka_unit_test_setup_teardown(test_upgrade_in_place, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reader_races_a_merge, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_index_and_views, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_frames, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
