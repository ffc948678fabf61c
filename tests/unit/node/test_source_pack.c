/* test_source_pack.c - the pack block source: every block of an image
 * delivered verified from its frames, transfers counted compressed, frames
 * shared by several calls fetched once, and everything that makes it
 * unusable (no view, a stale or damaged view, a damaged frame, a data file
 * gone) handled without wrong data: missing blocks stay IDD_ENOENT for the
 * next source, damaged ones IDD_ECORRUPT. */
#include "packgen.h"
#include "base/fetch.h"
#include "node/source_pack.h"

#include <unistd.h>

static char *repo, *idx;
static int warnings;
static char last_warning[2048];

static void count_warn(void *ctx, const char *msg)
{
	(void)ctx;
	warnings++;
	snprintf(last_warning, sizeof last_warning, "%s", msg);
}

static int setup(void **state)
{
	(void)state;
	repo = tu_mkdtemp();
	idx = idd_path_join(repo, IDD_INDEX_SUBDIR, NULL);
	warnings = 0;
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
#define NA 400
#define NB 200
static uint64_t ca[NA], cb[NB];

/* Two images sharing 150 blocks; a has repeats and zero blocks. */
static void make_repo(void)
{
	for (int i = 0; i < NA; i++)
		ca[i] = i % 61 == 3 ? 0 : i % 17 == 5 ? 77 : 1 + (uint64_t)i;
	for (int i = 0; i < NB; i++)
		cb[i] = i < 150 ? ca[i + 10] : 3000 + (uint64_t)i;
	pg_image(repo, "a.raw", ca, NA, BS, 0);
	pg_image(repo, "b.raw", cb, NB, BS, 0);
	pg_index(repo, BS);
	idd_pack_stats st;
	idd_error err;
	assert_int_equal(pg_pack(repo, &st, &err), IDD_OK);
}

typedef struct reqset {
	idd_block_req *r;
	unsigned char *bufs;
	uint64_t *content;
	size_t n;
} reqset;

/* One request per distinct non-zero content of the list. */
static reqset make_reqs(const uint64_t *c, size_t n)
{
	reqset s = {calloc(n, sizeof *s.r), malloc(n * BS), calloc(n, sizeof *s.content), 0};
	for (size_t i = 0; i < n; i++) {
		bool seen = !c[i];
		for (size_t q = 0; q < s.n && !seen; q++)
			seen = s.content[q] == c[i];
		if (seen)
			continue;
		s.content[s.n] = c[i];
		s.r[s.n] = (idd_block_req){.digest = pg_digest(c[i], BS), .block = i, .len = BS,
		                           .buf = s.bufs + s.n * BS, .status = IDD_ENOENT, .origin_fd = 7};
		s.n++;
	}
	return s;
}

static void free_reqs(reqset *s)
{
	free(s->r);
	free(s->bufs);
	free(s->content);
}

static void check_delivered(const reqset *s, size_t from, size_t to)
{
	unsigned char want[BS];
	for (size_t i = from; i < to; i++) {
		assert_int_equal(s->r[i].status, IDD_OK);
		assert_int_equal(s->r[i].origin_fd, -1);
		pg_block(s->content[i], want, BS);
		assert_memory_equal(s->r[i].buf, want, BS);
	}
}

typedef struct opened {
	idd_source *src;
	idd_map *map;
	idd_block_source *ps;
} opened;

static int open_pack(const char *id, opened *o, idd_error *err)
{
	memset(o, 0, sizeof *o);
	assert_int_equal(idd_source_open(repo, NULL, &o->src, err), IDD_OK);
	assert_int_equal(idd_map_load(idx, id, &o->map, err), IDD_OK);
	return idd_pack_source_open(o->src, IDD_INDEX_SUBDIR "/", o->map, count_warn, NULL, &o->ps, err);
}

static void close_pack(opened *o)
{
	idd_block_source_close(o->ps);
	idd_map_free(o->map);
	idd_source_close(o->src);
}

/* Compressed bytes of the frames holding the image's blocks (its view). */
static uint64_t view_frame_bytes(const char *id)
{
	idd_catalog *cat;
	idd_error err;
	assert_int_equal(idd_catalog_load(idx, &cat, &err), IDD_OK);
	idd_pack_image_summary sum;
	assert_int_equal(idd_pack_image_summary_get(idx, idd_catalog_find(cat, id), &sum, &err), IDD_OK);
	idd_catalog_free(cat);
	assert_true(sum.has_view);
	return sum.frame_bytes;
}

static void test_delivers_every_block(void **state)
{
	(void)state;
	make_repo();
	opened o;
	idd_error err;
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_OK);
	assert_string_equal(o.ps->ops->kind, "pack");
	assert_true(idd_pack_source_index_bytes(o.ps) > 64);
	reqset s = make_reqs(ca, NA);
	/* the last request is already served by an earlier source: untouched */
	s.r[s.n - 1].status = IDD_OK;
	memset(s.r[s.n - 1].buf, 0xAB, BS);
	/* a request for content this image does not hold: not ours */
	idd_block_req extra = {.digest = pg_digest(424242, BS), .buf = malloc(BS), .status = IDD_ENOENT};
	assert_int_equal(o.ps->ops->read(o.ps, s.r, s.n, &err), IDD_OK);
	assert_int_equal(o.ps->ops->read(o.ps, &extra, 1, &err), IDD_OK);
	assert_int_equal(extra.status, IDD_ENOENT);
	free(extra.buf);
	check_delivered(&s, 0, s.n - 1);
	assert_int_equal(s.r[s.n - 1].buf[0], 0xAB);
	assert_true(o.ps->ops->has(o.ps, &s.r[0].digest));
	idd_digest nope = pg_digest(424242, BS);
	assert_false(o.ps->ops->has(o.ps, &nope));
	idd_block_source_counters c;
	idd_block_source_counters_get(o.ps, &c);
	assert_int_equal(c.blocks, s.n - 1);
	assert_int_equal(c.damaged, 0);
	/* transferred: the compressed frames, each once, far less than raw */
	assert_int_equal(c.bytes, view_frame_bytes("a.raw"));
	assert_true(c.bytes < (s.n - 1) * BS);
	assert_true(c.requests >= 1 && c.requests <= 3);
	assert_int_equal(warnings, 0);

	/* asked again in small pieces: frames come from the decoded-frame
	 * cache, nothing more is transferred */
	for (size_t i = 0; i < s.n; i++)
		s.r[i].status = IDD_ENOENT;
	for (size_t i = 0; i < s.n; i += 7)
		assert_int_equal(o.ps->ops->read(o.ps, s.r + i, IDD_MIN(7, s.n - i), &err), IDD_OK);
	check_delivered(&s, 0, s.n);
	idd_block_source_counters c2;
	idd_block_source_counters_get(o.ps, &c2);
	assert_int_equal(c2.bytes, c.bytes);
	assert_int_equal(c2.blocks, c.blocks + s.n);
	free_reqs(&s);
	close_pack(&o);

	/* the other image, whose frames are partly shared */
	assert_int_equal(open_pack("b.raw", &o, &err), IDD_OK);
	s = make_reqs(cb, NB);
	assert_int_equal(o.ps->ops->read(o.ps, s.r, s.n, &err), IDD_OK);
	check_delivered(&s, 0, s.n);
	idd_block_source_counters_get(o.ps, &c);
	assert_int_equal(c.bytes, view_frame_bytes("b.raw"));
	free_reqs(&s);
	close_pack(&o);
}

static void test_unusable_packs(void **state)
{
	(void)state;
	make_repo();
	opened o;
	idd_error err;
	/* no view: the pack is older than the image, or there is none */
	char *views = idd_path_join(idx, IDD_PACK_VIEWS_DIR, NULL);
	char *moved = idd_path_join(repo, "views.saved", NULL);
	assert_int_equal(rename(views, moved), 0);
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_ENOENT);
	assert_non_null(strstr(err.msg, "no pack"));
	close_pack(&o);
	assert_int_equal(rename(moved, views), 0);
	/* a view of another image under this image's name */
	idd_map *ma, *mb;
	assert_int_equal(idd_map_load(idx, "a.raw", &ma, &err), IDD_OK);
	assert_int_equal(idd_map_load(idx, "b.raw", &mb, &err), IDD_OK);
	char *ra = idd_pack_view_relpath(&ma->list_key, NULL), *rb = idd_pack_view_relpath(&mb->list_key, NULL);
	char *pa = idd_path_join(idx, ra, NULL), *pb = idd_path_join(idx, rb, NULL);
	char *keep = idd_path_join(repo, "view.saved", NULL);
	assert_int_equal(rename(pa, keep), 0);
	size_t len;
	void *vb;
	assert_int_equal(idd_read_file(pb, 1 << 20, &vb, &len, &err), IDD_OK);
	free(tu_write(views, strrchr(pa, '/') + 1, vb, len));
	free(vb);
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "does not match"));
	close_pack(&o);
	/* a view declaring far more than this image's view can hold (a zstd
	 * "bomb" with a valid checksum): refused before anything is allocated */
	unsigned char bomb[IDD_IF_HEADER + 16 + IDD_IF_TRAILER] = {'I', 'D', 'D', '-', 'P', 'K', 'V', 0};
	idd_le32_put(bomb + 8, 1);
	idd_le32_put(bomb + 12, IDD_IF_ZSTD);
	idd_le64_put(bomb + 16, (uint64_t)512 << 20);
	idd_le64_put(bomb + 24, 16);
	assert_int_equal(idd_sha256(bomb, IDD_IF_HEADER + 16, bomb + IDD_IF_HEADER + 16, NULL), IDD_OK);
	free(tu_write(views, strrchr(pa, '/') + 1, bomb, sizeof bomb));
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "declared"));
	close_pack(&o);
	/* a damaged view */
	assert_int_equal(rename(keep, pa), 0);
	tu_flip_byte(pa, 50);
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_ECORRUPT);
	close_pack(&o);
	tu_flip_byte(pa, 50);
	assert_int_equal(warnings, 0); /* opening never warns: the caller decides */
	free(ra);
	free(rb);
	free(pa);
	free(pb);
	free(keep);
	idd_map_free(ma);
	idd_map_free(mb);
	free(views);
	free(moved);

	/* a damaged frame: its blocks are IDD_ECORRUPT (one warning), the others OK */
	idd_pack_index *x;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	char *rel = idd_pack_data_relpath(&x->files[0].name, NULL);
	char *data = idd_path_join(idx, rel, NULL);
	const idd_pack_frame *f0 = &x->frames[0];
	uint64_t flip = f0->off + f0->clen / 2;
	uint32_t f0_blocks = f0->nblocks;
	idd_pack_index_free(x);
	free(rel);
	tu_flip_byte(data, flip);
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_OK);
	reqset s = make_reqs(ca, NA);
	assert_int_equal(o.ps->ops->read(o.ps, s.r, s.n, &err), IDD_OK);
	size_t ok = 0, bad = 0;
	for (size_t i = 0; i < s.n; i++) {
		ok += s.r[i].status == IDD_OK;
		bad += s.r[i].status == IDD_ECORRUPT;
		if (s.r[i].status == IDD_OK) {
			unsigned char want[BS];
			pg_block(s.content[i], want, BS);
			assert_memory_equal(s.r[i].buf, want, BS);
		}
	}
	assert_true(bad > 0 && bad <= f0_blocks);
	assert_int_equal(ok + bad, s.n);
	assert_int_equal(warnings, 1);
	idd_block_source_counters c;
	idd_block_source_counters_get(o.ps, &c);
	assert_int_equal(c.damaged, bad);

	close_pack(&o);
	tu_flip_byte(data, flip);

	/* the data file vanishes after the view was read (the pack was
	 * rebuilt meanwhile): one warning, then nothing, never an error */
	warnings = 0;
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_OK);
	assert_int_equal(unlink(data), 0);
	for (size_t i = 0; i < s.n; i++)
		s.r[i].status = IDD_ENOENT;
	assert_int_equal(o.ps->ops->read(o.ps, s.r, s.n, &err), IDD_OK);
	for (size_t i = 0; i < s.n; i++)
		assert_int_equal(s.r[i].status, IDD_ENOENT);
	assert_int_equal(o.ps->ops->read(o.ps, s.r, s.n, &err), IDD_OK);
	assert_int_equal(warnings, 1);
	assert_non_null(strstr(last_warning, "not used any more"));
	assert_false(o.ps->ops->has(o.ps, &s.r[0].digest));
	close_pack(&o);
	free_reqs(&s);
	free(data);
}

/* A source that fills every block it is asked for from the contents (the
 * chain may hand it copies of the requests: found by digest). */
static int fill_read(idd_block_source *src, idd_block_req *reqs, size_t n, idd_error *err)
{
	(void)err;
	const reqset *s = src->priv;
	for (size_t i = 0; i < n; i++) {
		if (reqs[i].status != IDD_ENOENT)
			continue;
		size_t k = 0;
		while (k < s->n && memcmp(s->r[k].digest.b, reqs[i].digest.b, 32))
			k++;
		assert_true(k < s->n);
		pg_block(s->content[k], reqs[i].buf, BS);
		reqs[i].status = IDD_OK;
		reqs[i].origin_fd = -1;
		atomic_fetch_add(&src->blocks, 1);
	}
	return IDD_OK;
}
static void fill_close(idd_block_source *src) { idd_block_source_fini(src); }

static void test_chain_falls_back(void **state)
{
	(void)state;
	make_repo();
	idd_pack_index *x;
	idd_error err;
	assert_int_equal(idd_pack_index_load(idx, &x, &err), IDD_OK);
	char *rel = idd_pack_data_relpath(&x->files[0].name, NULL);
	char *data = idd_path_join(idx, rel, NULL);
	uint64_t flip = x->frames[1].off + 3;
	idd_pack_index_free(x);
	free(rel);
	tu_flip_byte(data, flip);
	opened o;
	assert_int_equal(open_pack("a.raw", &o, &err), IDD_OK);
	reqset s = make_reqs(ca, NA);
	static const struct idd_block_source_ops fill_ops = {"remote", NULL, fill_read, fill_close};
	idd_block_source fill;
	assert_int_equal(idd_block_source_init(&fill, &fill_ops, "images", BS, NULL, NULL, &err), IDD_OK);
	fill.priv = &s;
	idd_block_chain chain = {.src = {o.ps, &fill}, .n = 2};
	assert_int_equal(idd_block_chain_read(&chain, s.r, s.n, &err), IDD_OK);
	check_delivered(&s, 0, s.n);
	idd_block_source_counters cp, cf;
	idd_block_source_counters_get(o.ps, &cp);
	idd_block_source_counters_get(&fill, &cf);
	assert_true(cp.damaged > 0);
	assert_int_equal(cf.blocks, cp.damaged);
	assert_int_equal(cp.blocks + cf.blocks, s.n);
	idd_block_source_close(&fill);
	close_pack(&o);
	free_reqs(&s);
	free(data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_delivers_every_block, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unusable_packs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chain_falls_back, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
