/* test_cache.c - the node cache: index round trip, exact lookups, verified
 * reads, damage degrading to a warning, LRU garbage collection. */
#include "testutil.h"
#include "node/partial.h"
#include "node/cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BS 4096u

static int nwarn;
static char last_warn[2048];
static void warn_cb(void *ctx, const char *msg)
{
	(void)ctx;
	nwarn++;
	snprintf(last_warn, sizeof last_warn, "%s", msg);
}

/* An image of n blocks: block i holds pattern i % distinct, every 5th zero. */
static unsigned char *make_image(size_t n, unsigned distinct, uint64_t seed, idd_map **m)
{
	unsigned char *img = calloc(n, BS);
	idd_digest *d = calloc(n, sizeof *d);
	idd_hasher *h = idd_hasher_new(NULL);
	for (size_t i = 0; i < n; i++) {
		if (i % 5 == 0)
			continue;
		tu_fill_random(img + i * BS, BS, seed + i % distinct);
		assert_int_equal(idd_hasher_digest(h, img + i * BS, BS, &d[i], NULL), IDD_OK);
	}
	assert_int_equal(idd_map_build(d, n, BS, (uint64_t)n * BS, m, NULL), IDD_OK);
	idd_hasher_free(h);
	free(d);
	return img;
}

static void test_register_lookup_verify(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	idd_map *m;
	unsigned char *img = make_image(64, 20, 100, &m);
	char *imgdir = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	assert_int_equal(idd_mkdir_p(imgdir, NULL), IDD_OK);
	char *path = tu_write(imgdir, "a.raw", img, 64 * BS);
	idd_cache *c;
	idd_error err;
	nwarn = 0;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(c->count, 0);
	char *real = realpath(path, NULL);
	assert_int_equal(idd_cache_register(c, real, m, &err), IDD_OK);
	idd_cache_close(c);

	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(c->count, 1);
	assert_true(c->e[0].owned);
	assert_string_equal(c->e[0].path, "images/a.raw");
	assert_int_equal(c->e[0].n, m->ndistinct);
	assert_int_equal(idd_cache_prepare(c, BS, &err), IDD_OK);
	idd_hasher *h = idd_hasher_new(NULL);
	unsigned char buf[BS];
	for (uint64_t k = 0; k < m->ndistinct; k++) {
		size_t e;
		uint64_t blk;
		assert_true(idd_cache_find(c, &m->digests[k], &e, &blk));
		assert_int_equal(e, 0);
		assert_int_equal(idd_map_ref(m, blk), k + 1); /* the block really holds it */
		assert_int_equal(pread(c->e[e].fd, buf, BS, (off_t)(blk * BS)), BS);
		assert_memory_equal(buf, img + blk * BS, BS);
	}
	/* exact lookups: an unknown digest and the zero digest are absent */
	idd_digest other, zero;
	memset(&zero, 0, sizeof zero);
	memset(&other, 0x77, sizeof other);
	size_t e;
	uint64_t blk;
	assert_false(idd_cache_find(c, &other, &e, &blk));
	assert_false(idd_cache_find(c, &zero, &e, &blk));
	/* another block size: nothing */
	assert_int_equal(idd_cache_prepare(c, 2 * BS, &err), IDD_OK);
	assert_false(idd_cache_find(c, &m->digests[0], &e, &blk));
	assert_int_equal(idd_cache_prepare(c, BS, &err), IDD_OK);
	idd_cache_close(c);
	idd_hasher_free(h);
	idd_map_free(m);
	free(img);
	free(real);
	free(path);
	free(imgdir);
	tu_rmtree(dir);
	free(dir);
}

static void test_damaged_index(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	idd_map *m;
	unsigned char *img = make_image(16, 16, 7, &m);
	char *path = tu_write(dir, "ext.raw", img, 16 * BS);
	idd_cache *c;
	idd_error err;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	char *real = realpath(path, NULL);
	assert_int_equal(idd_cache_register(c, real, m, &err), IDD_OK);
	idd_cache_close(c);
	char *ix = idd_path_join(dir, IDD_CACHE_INDEX, NULL);
	/* flipped byte, then truncation: each a warning and an empty cache */
	tu_flip_byte(ix, 40);
	nwarn = 0;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(c->count, 0);
	assert_true(nwarn >= 1);
	assert_non_null(strstr(last_warn, "index"));
	/* registering again rebuilds a good index */
	assert_int_equal(idd_cache_register(c, real, m, &err), IDD_OK);
	idd_cache_close(c);
	tu_truncate(ix, tu_file_size(ix) - 3);
	nwarn = 0;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(c->count, 0);
	assert_true(nwarn >= 1);
	idd_cache_close(c);

	/* hostile payloads are refused by the parser itself */
	idd_cache pc = {0};
	unsigned char p1[] = {0xff, 0xff, 0xff, 0x7f}; /* absurd count */
	assert_int_equal(idd_cache_index_parse("x", p1, sizeof p1, &pc, &err), IDD_ERR);
	free(pc.e);
	memset(&pc, 0, sizeof pc);
	idd_buf b = {0};
	idd_buf_put_u32(&b, 1);
	idd_buf_put_str(&b, "images/../../etc/passwd"); /* owned path escaping the cache */
	idd_buf_put_u8(&b, 1);
	idd_buf_put_u32(&b, BS);
	idd_buf_put_u64(&b, BS);
	idd_buf_put_u64(&b, 0);
	idd_buf_put_u64(&b, 0);
	for (int i = 0; i < 40; i++)
		idd_buf_put_u8(&b, 0);
	assert_int_equal(idd_cache_index_parse("x", b.data, b.len, &pc, &err), IDD_ERR);
	for (size_t i = 0; i < pc.count; i++) {
		free(pc.e[i].path);
		free(pc.e[i].abs);
		free(pc.e[i].digests);
		free(pc.e[i].blocks);
	}
	free(pc.e);
	idd_buf_free(&b);
	/* a block index past the image's size */
	memset(&pc, 0, sizeof pc);
	idd_buf b2 = {0};
	idd_buf_put_u32(&b2, 1);
	idd_buf_put_str(&b2, "/abs/x.raw");
	idd_buf_put_u8(&b2, 0);
	idd_buf_put_u32(&b2, BS);
	idd_buf_put_u64(&b2, 2 * BS);
	idd_buf_put_u64(&b2, 0);
	idd_buf_put_u64(&b2, 1);
	idd_buf_put_varint(&b2, 5);
	for (int i = 0; i < 32; i++)
		idd_buf_put_u8(&b2, 1);
	assert_int_equal(idd_cache_index_parse("x", b2.data, b2.len, &pc, &err), IDD_ERR);
	for (size_t i = 0; i < pc.count; i++) {
		free(pc.e[i].path);
		free(pc.e[i].abs);
		free(pc.e[i].digests);
		free(pc.e[i].blocks);
	}
	free(pc.e);
	idd_buf_free(&b2);
	idd_map_free(m);
	free(img);
	free(ix);
	free(real);
	free(path);
	tu_rmtree(dir);
	free(dir);
}

static void test_gc(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *imgdir = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	assert_int_equal(idd_mkdir_p(imgdir, NULL), IDD_OK);
	idd_map *m[3];
	char *paths[3];
	idd_cache *c;
	idd_error err;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	for (int i = 0; i < 3; i++) {
		unsigned char *img = make_image(32, 32, 1000 * (uint64_t)(i + 1), &m[i]);
		char name[32];
		snprintf(name, sizeof name, "i%d.raw", i);
		char *p = tu_write(imgdir, name, img, 32 * BS);
		paths[i] = realpath(p, NULL);
		free(p);
		free(img);
		assert_int_equal(idd_cache_register(c, paths[i], m[i], &err), IDD_OK);
		usleep(2000); /* distinct last_used stamps */
	}
	/* re-registering image 0 makes it the most recent */
	assert_int_equal(idd_cache_register(c, paths[0], m[0], &err), IDD_OK);
	idd_cache_close(c);
	idd_cache_image *v;
	size_t n;
	assert_int_equal(idd_cache_list(dir, &v, &n, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(n, 3);
	assert_string_equal(v[0].path, paths[1]); /* least recently used first */
	assert_string_equal(v[2].path, paths[0]);
	uint64_t one = v[0].disk_bytes;
	assert_true(one > 0);
	idd_cache_list_free(v, n);
	idd_cache_gc_stats st;
	assert_int_equal(idd_cache_gc(dir, one, &st, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(st.images_before, 3);
	assert_int_equal(st.images_removed, 2);
	assert_true(st.bytes_after <= one);
	assert_int_not_equal(access(paths[1], F_OK), 0);
	assert_int_not_equal(access(paths[2], F_OK), 0);
	assert_int_equal(access(paths[0], F_OK), 0);
	assert_int_equal(idd_cache_list(dir, &v, &n, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(n, 1);
	assert_string_equal(v[0].path, paths[0]);
	idd_cache_list_free(v, n);
	/* a vanished image leaves the index at the next gc, whatever the size */
	unlink(paths[0]);
	assert_int_equal(idd_cache_gc(dir, UINT64_MAX, &st, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(st.images_removed, 1);
	assert_int_equal(idd_cache_list(dir, &v, &n, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(n, 0);
	idd_cache_list_free(v, n);
	/* not a directory: a clear error */
	assert_int_equal(idd_cache_gc("/nonexistent/cache", 0, &st, NULL, NULL, &err), IDD_ENOENT);
	assert_int_equal(err.code, IDD_ENOENT);
	assert_non_null(strstr(err.msg, "/nonexistent/cache"));
	for (int i = 0; i < 3; i++) {
		idd_map_free(m[i]);
		free(paths[i]);
	}
	free(imgdir);
	tu_rmtree(dir);
	free(dir);
}


static bool keep_path(void *ctx, const char *path)
{
	return !strcmp(ctx, path);
}

/* serve's --cache-max: files lent to a gc run by the same process can be
 * removed (the others stay), and are then closed, their contents read from
 * the files still held; a file of the same name registered later is used. */
static void test_lend_to_gc(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *imgdir = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	assert_int_equal(idd_mkdir_p(imgdir, NULL), IDD_OK);
	idd_map *m;
	unsigned char *img = make_image(32, 32, 4242, &m);
	char *pa = tu_write(imgdir, "a.raw", img, 32 * BS);
	char *pb = tu_write(imgdir, "b.raw", img, 32 * BS); /* the same contents */
	char *ra = realpath(pa, NULL), *rb = realpath(pb, NULL);
	idd_cache *c, *other;
	idd_error err;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(idd_cache_register(c, ra, m, &err), IDD_OK);
	assert_int_equal(idd_cache_register(c, rb, m, &err), IDD_OK);
	idd_cache_close(c);
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(idd_cache_prepare(c, BS, &err), IDD_OK);
	size_t e;
	uint64_t blk;
	assert_true(idd_cache_find(c, &m->digests[0], &e, &blk));
	assert_int_equal(e, 0); /* read from a.raw */
	/* the cheap size is at least what gc counts */
	idd_cache_image *v;
	size_t nv;
	assert_int_equal(idd_cache_list(dir, &v, &nv, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(nv, 2);
	assert_true(idd_cache_disk_upper(c) >= v[0].disk_bytes + v[1].disk_bytes);
	assert_true(v[0].disk_bytes > 0);
	idd_cache_list_free(v, nv);
	/* held: a gc removes neither */
	idd_cache_gc_stats st;
	nwarn = 0;
	assert_int_equal(idd_cache_gc(dir, 0, &st, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(st.images_removed, 0);
	assert_int_equal(access(ra, F_OK), 0);
	/* lent but b.raw: a gc removes a.raw */
	idd_cache_lend_to_gc(c, keep_path, rb);
	assert_int_equal(idd_cache_gc(dir, 0, &st, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(st.images_removed, 1);
	assert_int_not_equal(access(ra, F_OK), 0);
	assert_int_equal(access(rb, F_OK), 0);
	size_t closed;
	assert_int_equal(idd_cache_take_back(c, &closed, &err), IDD_OK);
	assert_int_equal(closed, 1);
	assert_int_equal(c->e[0].fd, -1);
	assert_true(idd_cache_disk_upper(c) > 0);
	for (uint64_t k = 0; k < m->ndistinct; k++) {
		assert_true(idd_cache_find(c, &m->digests[k], &e, &blk));
		assert_int_equal(e, 1); /* now from b.raw */
	}
	idd_block_req req = {.digest = m->digests[0]};
	unsigned char buf[BS];
	req.buf = buf;
	uint64_t got;
	assert_int_equal(idd_cache_read_blocks(c, &req, 1, &got, &err), IDD_OK);
	assert_int_equal(req.status, IDD_OK);
	assert_int_equal(got, BS);
	/* b.raw is held again */
	assert_int_equal(idd_cache_gc(dir, 0, &st, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(st.images_removed, 0);
	/* a.raw deployed again (another process): picked up under its old name */
	free(tu_write(imgdir, "a.raw", img, 32 * BS));
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &other, &err), IDD_OK);
	assert_int_equal(idd_cache_register(other, ra, m, &err), IDD_OK);
	idd_cache_close(other);
	assert_int_equal(idd_cache_refresh(c, &err), IDD_OK);
	bool seen = false;
	for (size_t i = 0; i < c->count; i++)
		seen |= !c->e[i].evicted && c->e[i].fd >= 0 && !strcmp(c->e[i].abs, ra);
	assert_true(seen);
	idd_cache_close(c);
	idd_map_free(m);
	free(img);
	free(pa);
	free(pb);
	free(ra);
	free(rb);
	free(imgdir);
	tu_rmtree(dir);
	free(dir);
}

/* The documented way back from a cache name to the id (docs/deploy.md):
 * NULL for a hashed name, which says only the id's start. */
static char *decode_name(const char *name)
{
	if (strstr(name, "%="))
		return NULL;
	size_t n = strlen(name);
	if (n > 5 && !strcmp(name + n - 5, "%.raw"))
		n -= 5;
	char *id = calloc(n + 1, 1), *w = id;
	for (size_t i = 0; i < n; i++) {
		if (name[i] != '%') {
			*w++ = name[i];
			continue;
		}
		const char *esc = name + i + 1;
		*w++ = !strncmp(esc, "2F", 2) ? '/' : !strncmp(esc, "25", 2) ? '%' : '.';
		assert_true(!strncmp(esc, "2F", 2) || !strncmp(esc, "25", 2) || !strncmp(esc, "2E", 2));
		i += 2;
	}
	return id;
}

static void test_default_out(void **state)
{
	(void)state;
	char *p = idd_cache_default_out("/c", "dir/x.qcow2", NULL);
	assert_string_equal(p, "/c/images/dir%2Fx.qcow2%.raw");
	free(p);
	p = idd_cache_default_out("/c", "y.raw", NULL);
	assert_string_equal(p, "/c/images/y.raw");
	free(p);
	p = idd_cache_old_out("/c", "dir/x.qcow2", NULL);
	assert_string_equal(p, "/c/images/dir%2Fx.qcow2.raw");
	free(p);
	/* two ids never share a name, and every name leads back to its id */
	char longa[300], longb[300];
	memset(longa, 'd', 200);
	longa[200] = '/';
	memset(longa + 201, 'x', 66);
	strcpy(longa + 267, ".raw"); /* 271 characters */
	strcpy(longb, longa);
	longb[250] = 'y';
	const char *ids[] = {"sub/a.img", "sub__a.img", "sub%2Fa.img", "base.qcow2", "base.qcow2.raw",
	                     "base.qcow2%.raw", ".hidden.raw", "%2Ehidden.raw", "a.img.raw", "a.img",
	                     "x%", "x%.raw", longa, longb};
	size_t n = sizeof ids / sizeof ids[0];
	char *names[sizeof ids / sizeof ids[0]];
	for (size_t i = 0; i < n; i++) {
		names[i] = idd_cache_default_out("/c", ids[i], NULL);
		assert_non_null(names[i]);
		const char *name = names[i] + strlen("/c/images/");
		assert_true(strlen(name) + strlen(".partial") <= 255);
		assert_true(name[0] != '.');
		char *back = decode_name(name);
		if (strlen(ids[i]) < 200)
			assert_string_equal(back, ids[i]);
		else
			assert_null(back); /* hashed */
		free(back);
		for (size_t k = 0; k < i; k++)
			assert_string_not_equal(names[i], names[k]);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
}

/* A damaged index is rebuilt from the images in CACHE/images: they stay
 * usable as sources and gc can still remove them. */
static void test_rebuild_index(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	idd_map *m;
	unsigned char *img = make_image(16, 16, 9, &m);
	char *imgs = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	idd_mkdir_p(imgs, NULL);
	char *path = tu_write(imgs, "x.raw", img, 16 * BS);
	idd_cache *c;
	idd_error err;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(idd_cache_register(c, path, m, &err), IDD_OK);
	idd_cache_close(c);
	char *ix = idd_path_join(dir, IDD_CACHE_INDEX, NULL);
	tu_truncate(ix, 10);
	nwarn = 0;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(c->count, 1);
	assert_true(nwarn >= 1);
	assert_int_equal(idd_cache_prepare(c, BS, &err), IDD_OK);
	size_t e;
	uint64_t b;
	assert_true(idd_cache_find(c, &m->digests[3], &e, &b));
	idd_cache_close(c);
	idd_cache_gc_stats gs;
	assert_int_equal(idd_cache_gc(dir, 0, &gs, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(gs.images_removed, 1);
	assert_int_equal(access(path, F_OK), -1);
	free(ix);
	free(path);
	free(imgs);
	free(img);
	idd_map_free(m);
	tu_rmtree(dir);
	free(dir);
}

/* Partial images are listed with how much is present, kept by gc while an
 * export has them open, removed (data and journal) once closed. */
static void test_partial_images(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *imgs = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	idd_mkdir_p(imgs, NULL);
	char *base = idd_path_join(imgs, "p.raw", NULL);
	idd_partial *p;
	idd_error err;
	idd_map *m;
	/* 6 data blocks: 1, 4 and 7 hold one content, 3 and 6 another, 2 a third */
	unsigned char *img = make_image(8, 3, 5, &m);
	assert_int_equal(idd_partial_open(base, "p.raw", m, &p, &err), IDD_OK);
	idd_digest d = m->digests[idd_map_ref(m, 2) - 1];
	assert_int_equal(idd_partial_write(p, 2, img + 2 * BS, BS, &err), IDD_OK);
	assert_int_equal(idd_partial_note(p, 2, &d, &err), IDD_OK);
	size_t flushed;
	assert_int_equal(idd_partial_flush(p, &flushed, &err), IDD_OK);
	assert_int_equal(flushed, 1);
	idd_cache_image *v;
	size_t n;
	assert_int_equal(idd_cache_list(dir, &v, &n, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(n, 1);
	assert_true(v[0].partial);
	assert_int_equal(v[0].present_blocks, 1);
	assert_int_equal(v[0].data_blocks, 6);
	assert_int_equal(v[0].blocks, 1);
	idd_cache_list_free(v, n);
	/* a content the image holds three times: three blocks present, even
	 * when two of its copies were journaled */
	for (uint64_t b = 1; b <= 4; b += 3) {
		idd_digest d4 = m->digests[idd_map_ref(m, b) - 1];
		assert_int_equal(idd_partial_write(p, b, img + b * BS, BS, &err), IDD_OK);
		assert_int_equal(idd_partial_note(p, b, &d4, &err), IDD_OK);
	}
	assert_int_equal(idd_partial_flush(p, &flushed, &err), IDD_OK);
	assert_int_equal(idd_cache_list(dir, &v, &n, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(n, 1);
	assert_int_equal(v[0].present_blocks, 4);
	assert_int_equal(v[0].data_blocks, 6);
	assert_int_equal(v[0].blocks, 2);
	assert_true(v[0].in_use);
	idd_cache_list_free(v, n);
	/* the cache finds the block through the journal */
	idd_cache *c;
	assert_int_equal(idd_cache_open(dir, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(idd_cache_prepare(c, BS, &err), IDD_OK);
	size_t e;
	uint64_t b;
	assert_true(idd_cache_find(c, &d, &e, &b));
	assert_int_equal(b, 2);
	idd_cache_close(c);
	idd_cache_gc_stats gs;
	assert_int_equal(idd_cache_gc(dir, 0, &gs, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(gs.images_removed, 0); /* in use */
	idd_partial_close(p);
	assert_int_equal(idd_cache_gc(dir, 0, &gs, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(gs.images_removed, 1);
	char *data = idd_asprintf(NULL, "%s%s", base, IDD_PARTIAL_DATA_SUFFIX);
	char *journal = idd_asprintf(NULL, "%s%s", base, IDD_PARTIAL_JOURNAL_SUFFIX);
	assert_int_equal(access(data, F_OK), -1);
	assert_int_equal(access(journal, F_OK), -1);
	free(data);
	free(journal);
	idd_map_free(m);
	free(img);
	free(base);
	free(imgs);
	tu_rmtree(dir);
	free(dir);
}

/* An image cached under the name of older versions moves to its own name,
 * index entry included, only when the index registers it with exactly the
 * image's map. */
static void test_migrate_name(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *real = realpath(dir, NULL);
	idd_map *m, *other;
	unsigned char *img = make_image(16, 16, 40, &m);
	unsigned char *img2 = make_image(16, 16, 80, &other);
	char *imgs = idd_path_join(real, IDD_CACHE_IMAGES, NULL);
	idd_mkdir_p(imgs, NULL);
	char *old = idd_cache_old_out(real, "x.qcow2", NULL);
	char *now = idd_cache_default_out(real, "x.qcow2", NULL);
	free(tu_write(imgs, "x.qcow2.raw", img, 16 * BS));
	idd_cache *c;
	idd_error err;
	assert_int_equal(idd_cache_open(real, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(idd_cache_register(c, old, m, &err), IDD_OK);
	idd_cache_close(c);
	/* another map: not this image's file, left alone */
	assert_int_equal(idd_cache_migrate_name(real, NULL, "x.qcow2", other, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(access(old, F_OK), 0);
	assert_int_equal(access(now, F_OK), -1);
	assert_int_equal(idd_cache_migrate_name(real, NULL, "x.qcow2", m, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(access(old, F_OK), -1);
	assert_int_equal(access(now, F_OK), 0);
	assert_int_equal(idd_cache_open(real, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(c->count, 1);
	assert_string_equal(c->e[0].abs, now);
	assert_true(idd_cache_entry_holds(&c->e[0], m));
	assert_false(idd_cache_entry_holds(&c->e[0], other));
	idd_cache_close(c);
	free(old);
	free(now);
	free(imgs);
	free(img);
	free(img2);
	idd_map_free(m);
	idd_map_free(other);
	free(real);
	tu_rmtree(dir);
	free(dir);
}

/* A block whose content is new and repeated at once (A A B C C 0 D D): the
 * map holds its first occurrence in a run of one digest repeated.  Such an
 * image is registered, adopted and recognised like any other. */
static void test_register_repeat_at_first_occurrence(void **state)
{
	(void)state;
	static const int pattern[] = {1, 1, 2, 3, 3, 0, 4, 4};
	const size_t n = sizeof pattern / sizeof *pattern;
	char *dir = tu_mkdtemp();
	char *real = realpath(dir, NULL);
	unsigned char *img = calloc(n, BS);
	idd_digest *d = calloc(n, sizeof *d);
	idd_hasher *h = idd_hasher_new(NULL);
	for (size_t i = 0; i < n; i++) {
		if (!pattern[i])
			continue;
		tu_fill_random(img + i * BS, BS, 500 + (uint64_t)pattern[i]);
		assert_int_equal(idd_hasher_digest(h, img + i * BS, BS, &d[i], NULL), IDD_OK);
	}
	idd_map *m;
	assert_int_equal(idd_map_build(d, n, BS, (uint64_t)n * BS, &m, NULL), IDD_OK);
	assert_int_equal(m->ndistinct, 4);
	char *imgs = idd_path_join(real, IDD_CACHE_IMAGES, NULL);
	assert_int_equal(idd_mkdir_p(imgs, NULL), IDD_OK);
	char *path = tu_write(imgs, "rep.raw", img, n * BS);
	char *path2 = tu_write(imgs, "rep2.raw", img, n * BS);
	idd_cache *c;
	idd_error err;
	assert_int_equal(idd_cache_open(real, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(idd_cache_register(c, path, m, &err), IDD_OK);
	idd_cache_close(c);
	assert_int_equal(idd_cache_open(real, warn_cb, NULL, &c, &err), IDD_OK);
	assert_int_equal(c->count, 1);
	assert_true(idd_cache_entry_holds(&c->e[0], m));
	assert_int_equal(idd_cache_prepare(c, BS, &err), IDD_OK);
	static const uint64_t first[] = {0, 2, 3, 6};
	for (uint64_t k = 0; k < m->ndistinct; k++) {
		size_t e;
		uint64_t blk;
		assert_true(idd_cache_find(c, &m->digests[k], &e, &blk));
		assert_int_equal(blk, first[k]);
	}
	assert_int_equal(idd_cache_adopt(c, path2, m, &err), IDD_OK);
	idd_cache_close(c);
	idd_hasher_free(h);
	idd_map_free(m);
	free(d);
	free(img);
	free(path);
	free(path2);
	free(imgs);
	free(real);
	tu_rmtree(dir);
	free(dir);
}

/* Another process's exclusive lock on a cache file (gc probing whether it
 * is in use, an instant) let go of after a moment. */
static void *release_after_a_moment(void *arg)
{
	struct timespec ts = {0, 50 * 1000000};
	nanosleep(&ts, NULL);
	close(*(int *)arg);
	return NULL;
}

/* A serve opening its partial image at the instant a gc probes that file
 * still gets its shared lock, so a later gc keeps the file (it used to go
 * unlocked for good, and the next gc removed the partial in use). */
static void test_gc_keeps_partial_opened_during_probe(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *imgs = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	idd_mkdir_p(imgs, NULL);
	char *base = idd_path_join(imgs, "q.raw", NULL);
	char *data = idd_asprintf(NULL, "%s%s", base, IDD_PARTIAL_DATA_SUFFIX);
	idd_map *m;
	unsigned char *img = make_image(8, 8, 7, &m);
	int probe = open(data, O_RDWR | O_CREAT, 0644);
	assert_true(probe >= 0);
	assert_int_equal(flock(probe, LOCK_EX | LOCK_NB), 0);
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, release_after_a_moment, &probe), 0);
	idd_partial *p;
	idd_error err;
	assert_int_equal(idd_partial_open(base, "q.raw", m, &p, &err), IDD_OK);
	pthread_join(t, NULL);
	idd_digest d = m->digests[idd_map_ref(m, 1) - 1];
	assert_int_equal(idd_partial_write(p, 1, img + BS, BS, &err), IDD_OK);
	assert_int_equal(idd_partial_note(p, 1, &d, &err), IDD_OK);
	size_t flushed;
	assert_int_equal(idd_partial_flush(p, &flushed, &err), IDD_OK);
	idd_cache_gc_stats st;
	nwarn = 0;
	assert_int_equal(idd_cache_gc(dir, 0, &st, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(st.images_removed, 0);
	assert_int_equal(access(data, F_OK), 0);
	assert_true(strstr(last_warn, "in use; kept") != NULL);
	idd_partial_close(p);
	/* closed: the next gc removes it */
	assert_int_equal(idd_cache_gc(dir, 0, &st, warn_cb, NULL, &err), IDD_OK);
	assert_int_equal(st.images_removed, 1);
	assert_int_equal(access(data, F_OK), -1);
	idd_map_free(m);
	free(img);
	free(data);
	free(base);
	free(imgs);
	tu_rmtree(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_register_lookup_verify),
		cmocka_unit_test(test_damaged_index),
		cmocka_unit_test(test_gc),
		cmocka_unit_test(test_lend_to_gc),
		cmocka_unit_test(test_default_out),
		cmocka_unit_test(test_rebuild_index),
		cmocka_unit_test(test_partial_images),
		cmocka_unit_test(test_migrate_name),
		cmocka_unit_test(test_register_repeat_at_first_occurrence),
		cmocka_unit_test(test_gc_keeps_partial_opened_during_probe),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
