/* test_qcow2.c - the qcow2 reader against qemu-img's own images and raw
 * conversions, and against malformed files. */
#include "imgtest.h"

#include <pthread.h>

#define DISK (6u << 20) /* 6 MiB: crosses L2 tables at small cluster sizes */

static char *dir;
static char *raw;

static int setup(void **state)
{
	(void)state;
	dir = tu_mkdtemp();
	raw = it_make_raw(dir, "disk.raw", DISK, 7);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	free(dir);
	free(raw);
	return 0;
}

/* qemu-img convert raw -> qcow2 with OPTS, then our reader must give the raw bytes back. */
static void roundtrip(const char *name, const char *opts)
{
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 %s disk.raw %s", dir, opts, name);
	char *p = idd_path_join(dir, name, NULL);
	it_check_image(dir, p, raw, "qcow2");
	free(p);
}

static void test_probe(void **state)
{
	(void)state;
	assert_true(idd_format_qcow2.probe((const unsigned char *)"QFI\xfb\0\0\0\3", 8));
	assert_false(idd_format_qcow2.probe((const unsigned char *)"QFI\xfa\0\0\0\3", 8));
	assert_false(idd_format_qcow2.probe((const unsigned char *)"QFI", 3));
}

static void test_plain(void **state) { (void)state; roundtrip("plain.qcow2", ""); }
static void test_zlib(void **state) { (void)state; roundtrip("zlib.qcow2", "-c"); }
static void test_zstd(void **state)
{
	(void)state;
	roundtrip("zstd.qcow2", "-c -o compression_type=zstd");
}
static void test_cluster_512(void **state) { (void)state; roundtrip("c512.qcow2", "-o cluster_size=512"); }
static void test_cluster_512_compressed(void **state)
{
	(void)state;
	roundtrip("c512c.qcow2", "-c -o cluster_size=512");
}
static void test_cluster_4k(void **state) { (void)state; roundtrip("c4k.qcow2", "-o cluster_size=4096"); }
static void test_cluster_2m(void **state)
{
	(void)state;
	roundtrip("c2m.qcow2", "-o cluster_size=2M");
	roundtrip("c2mc.qcow2", "-c -o cluster_size=2M");
}
static void test_v2(void **state)
{
	(void)state;
	roundtrip("v2.qcow2", "-o compat=0.10");
	roundtrip("v2c.qcow2", "-c -o compat=0.10");
}
static void test_odd_size(void **state)
{
	(void)state;
	/* A virtual size that is not a multiple of the cluster size. */
	char *odd = it_make_raw(dir, "odd.raw", 1000448, 3); /* sectors, not clusters */
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 -c odd.raw odd.qcow2", dir);
	char *p = idd_path_join(dir, "odd.qcow2", NULL);
	it_check_image(dir, p, odd, "qcow2");
	free(p);
	free(odd);
	/* The last, partial cluster compressed (a text pattern): its extent
	 * starts at the cluster and stops at the disk end, not past it. */
	odd = it_make_raw(dir, "oddc.raw", 1000448, 4);
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 -c oddc.raw oddc.qcow2", dir);
	p = idd_path_join(dir, "oddc.qcow2", NULL);
	it_check_image(dir, p, odd, "qcow2");
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	idd_extent ext;
	assert_int_equal(idd_image_extent(img, img->size - 1, &ext, &err), 0);
	assert_int_equal(ext.kind, IDD_EXT_COMPRESSED);
	assert_int_equal(ext.voff, img->size / 65536 * 65536);
	assert_int_equal(ext.voff + ext.vlen, img->size);
	idd_image_close(img);
	free(p);
	free(odd);
}

/* Overlays: data written at several levels, zero clusters hiding the
 * backing file's data, clusters read through to the base. */
static void test_backing_chain(void **state)
{
	(void)state;
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 disk.raw base.qcow2 && "
	      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 mid.qcow2 && "
	      "qemu-io -f qcow2 -c 'write -P 0xab 1M 200k' -c 'write -z 3M 128k' mid.qcow2 >/dev/null && "
	      "mkdir -p sub && qemu-img create -q -f qcow2 -b ../mid.qcow2 -F qcow2 sub/top.qcow2 && "
	      "qemu-io -f qcow2 -c 'write -P 0xcd 1100k 64k' -c 'write -z 64k 64k' sub/top.qcow2 >/dev/null && "
	      "qemu-img convert -O raw sub/top.qcow2 top.raw", dir);
	char *top = idd_path_join(dir, "sub/top.qcow2", NULL);
	char *top_raw = idd_path_join(dir, "top.raw", NULL);
	it_check_image(dir, top, top_raw, "qcow2");
	/* Extents of clusters the top image does not hold name the base's file. */
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, top, &img, &err), 0);
	idd_extent ext;
	assert_int_equal(idd_image_extent(img, 5u << 20, &ext, &err), 0);
	assert_int_not_equal(ext.kind, IDD_EXT_ZERO);
	assert_non_null(ext.file);
	assert_non_null(strstr(ext.file->name, "base.qcow2"));
	assert_int_equal(idd_image_extent(img, 3u << 20, &ext, &err), 0);
	assert_int_equal(ext.kind, IDD_EXT_ZERO); /* zero cluster in mid */
	idd_image_close(img);
	free(top);
	free(top_raw);
}

/* A larger overlay over a smaller raw base: past the base, zeros. */
static void test_backing_raw_smaller(void **state)
{
	(void)state;
	it_sh("cd %s && head -c 1000000 disk.raw > small.raw && "
	      "qemu-img create -q -f qcow2 -b small.raw -F raw over.qcow2 3M && "
	      "qemu-io -f qcow2 -c 'write -P 0x11 2M 4k' over.qcow2 >/dev/null && "
	      "qemu-img convert -O raw over.qcow2 over.raw", dir);
	char *p = idd_path_join(dir, "over.qcow2", NULL), *r = idd_path_join(dir, "over.raw", NULL);
	it_check_image(dir, p, r, "qcow2");
	free(p);
	free(r);
}

/* 4 KiB overlay clusters over a compressed 64 KiB base cluster: the base's
 * extent keeps its unit start and is cut where the overlay's own cluster
 * begins (the documented prefix case); every piece still decodes right. */
static void test_overlay_over_compressed(void **state)
{
	(void)state;
	/* The 64 KiB cluster at 1 MiB of disk.raw (seed 7) is zeros then text: compresses. */
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 -c disk.raw cbase.qcow2 && "
	      "qemu-img create -q -f qcow2 -o cluster_size=4k -b cbase.qcow2 -F qcow2 cover.qcow2 && "
	      "qemu-io -f qcow2 -c 'write -P 0x5e 1032k 4k' cover.qcow2 >/dev/null && "
	      "qemu-img convert -O raw cover.qcow2 cover.raw", dir);
	char *p = idd_path_join(dir, "cover.qcow2", NULL), *r = idd_path_join(dir, "cover.raw", NULL);
	it_check_image(dir, p, r, "qcow2");
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	idd_extent a, b;
	assert_int_equal(idd_image_extent(img, 1028u << 10, &a, &err), 0);
	assert_int_equal(a.kind, IDD_EXT_COMPRESSED);
	assert_int_equal(a.voff, 1024u << 10);
	assert_int_equal(a.vlen, 8u << 10); /* cut at the overlay's cluster at 1032k */
	assert_int_equal(idd_image_extent(img, 1040u << 10, &b, &err), 0);
	assert_int_equal(b.kind, IDD_EXT_COMPRESSED);
	assert_int_equal(b.voff, 1024u << 10); /* the same unit, from its start */
	assert_int_equal(b.file_off, a.file_off);
	assert_int_equal(b.vlen, 64u << 10);
	idd_image_close(img);
	free(p);
	free(r);
}

static void test_extended_l2(void **state)
{
	(void)state;
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 disk.raw xbase.qcow2 && "
	      "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b xbase.qcow2 -F qcow2 "
	      "xl2.qcow2 && qemu-io -f qcow2 -c 'write -P 0x77 4k 4k' -c 'write -z 200k 8k' "
	      "-c 'write -P 0x78 1M 70k' xl2.qcow2 >/dev/null && qemu-img convert -O raw xl2.qcow2 xl2.raw",
	      dir);
	char *p = idd_path_join(dir, "xl2.qcow2", NULL), *r = idd_path_join(dir, "xl2.raw", NULL);
	it_check_image(dir, p, r, "qcow2");
	free(p);
	free(r);
}

/* Scan reads from several threads at once through one image. */
struct reader_arg {
	idd_image *img;
	const unsigned char *raw;
	int id;
	int bad;
};

static void *reader(void *v)
{
	struct reader_arg *a = v;
	unsigned char *buf = malloc(256 * 1024);
	idd_error err;
	for (int round = 0; round < 40; round++) {
		uint64_t off = ((uint64_t)(round * 7 + a->id * 13) * 131072) % (DISK - 256 * 1024);
		if (idd_image_read(a->img, off, buf, 256 * 1024, &err) ||
		    memcmp(buf, a->raw + off, 256 * 1024) != 0)
			a->bad++;
	}
	free(buf);
	return NULL;
}

static void test_threads(void **state)
{
	(void)state;
	/* 512-byte clusters: many L2 tables, so the small cache churns. */
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 -c -o cluster_size=512 disk.raw thr.qcow2", dir);
	char *p = idd_path_join(dir, "thr.qcow2", NULL);
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	size_t rl;
	unsigned char *rawb = it_slurp(raw, &rl);
	pthread_t t[4];
	struct reader_arg a[4];
	for (int i = 0; i < 4; i++) {
		a[i] = (struct reader_arg){img, rawb, i, 0};
		assert_int_equal(pthread_create(&t[i], NULL, reader, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(a[i].bad, 0);
	}
	idd_image_close(img);
	free(rawb);
	free(p);
}

/* ---- malformed images ---- */

static char *fresh(const char *name, const char *opts)
{
	it_sh("cd %s && rm -f %s && qemu-img convert -f raw -O qcow2 %s disk.raw %s", dir, name, opts, name);
	return idd_path_join(dir, name, NULL);
}

static void test_truncated_header(void **state)
{
	(void)state;
	char *p = fresh("trunc.qcow2", "");
	tu_truncate(p, 50);
	it_expect_open_error(dir, p, "truncated qcow2 header");
	tu_truncate(p, 80); /* v3 needs 104 bytes */
	it_expect_open_error(dir, p, "truncated qcow2 v3 header");
	free(p);
}

static void test_l1_past_eof(void **state)
{
	(void)state;
	char *p = fresh("l1.qcow2", "");
	it_put_be64(p, 40, (uint64_t)1 << 40);
	it_expect_open_error(dir, p, "L1 table");
	it_expect_open_error(dir, p, "outside the file");
	free(p);
}

static void test_l2_past_eof(void **state)
{
	(void)state;
	char *p = fresh("l2.qcow2", "");
	uint64_t l1 = it_get_be64(p, 40);
	it_put_be64(p, l1, ((uint64_t)1 << 40) | (1ull << 63));
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	unsigned char buf[4096];
	assert_int_not_equal(idd_image_read(img, 0, buf, sizeof buf, &err), 0);
	assert_non_null(strstr(err.msg, "L2 table"));
	assert_non_null(strstr(err.msg, "l2.qcow2"));
	idd_image_close(img);
	free(p);
}

static void test_huge_sizes(void **state)
{
	(void)state;
	char *p = fresh("huge.qcow2", "");
	it_put_be64(p, 24, (uint64_t)1 << 62); /* virtual size: L1 far too small */
	it_expect_open_error(dir, p, "L1 table has");
	it_put_be64(p, 24, UINT64_MAX);
	it_expect_open_error(dir, p, "too large");
	free(p);
	p = fresh("huge2.qcow2", "");
	it_put_be32(p, 36, 0xffffffffu); /* l1_size */
	it_expect_open_error(dir, p, "L1 table");
	it_put_be32(p, 36, 1);
	it_put_be32(p, 20, 31); /* cluster_bits */
	it_expect_open_error(dir, p, "cluster_bits");
	free(p);
	p = fresh("hdr.qcow2", "");
	it_put_be32(p, 100, 1u << 30); /* header_length */
	it_expect_open_error(dir, p, "header length");
	free(p);
	p = fresh("feat.qcow2", "");
	it_put_be64(p, 72, 1ull << 40);
	it_expect_open_error(dir, p, "unknown incompatible features");
	it_put_be64(p, 72, 1ull << 2);
	it_expect_open_error(dir, p, "external data file");
	free(p);
	p = fresh("ver.qcow2", "");
	it_put_be32(p, 4, 4);
	it_expect_open_error(dir, p, "unsupported qcow2 version 4");
	free(p);
}

/* First L2 entry of the image that is a compressed cluster: its offset in the file. */
static uint64_t first_compressed_entry(const char *p)
{
	uint64_t l1 = it_get_be64(p, 40);
	uint64_t l2 = it_get_be64(p, l1) & 0x00fffffffffffe00ull;
	for (int i = 0; i < 8192; i++) {
		uint64_t e = it_get_be64(p, l2 + 8 * (uint64_t)i);
		if (e & (1ull << 62))
			return l2 + 8 * (uint64_t)i;
	}
	fail_msg("no compressed cluster in %s", p);
	return 0;
}

static void test_compressed_overflow(void **state)
{
	(void)state;
	char *p = fresh("cov.qcow2", "-c");
	uint64_t at = first_compressed_entry(p);
	uint64_t e = it_get_be64(p, at);
	/* cluster_bits 16: offset in bits 0..53; point it past the end. */
	uint64_t off_mask = (1ull << 54) - 1;
	it_put_be64(p, at, (e & ~off_mask) | (tu_file_size(p) + 4096));
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	unsigned char *buf = malloc(DISK);
	assert_int_not_equal(idd_image_read(img, 0, buf, DISK, &err), 0);
	assert_non_null(strstr(err.msg, "past the end of the file"));
	idd_image_close(img);
	free(p);

	/* Cut the file inside the last compressed cluster: its data overruns
	 * the file, and the read fails cleanly. */
	p = fresh("cut.qcow2", "-c");
	tu_truncate(p, tu_file_size(p) - 30000);
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	int rc = idd_image_read(img, 0, buf, DISK, &err);
	assert_int_not_equal(rc, 0);
	assert_non_null(strstr(err.msg, "cut.qcow2"));
	idd_image_close(img);
	free(buf);
	free(p);
}

static void test_cyclic_backing(void **state)
{
	(void)state;
	it_sh("cd %s && qemu-img create -q -f qcow2 cyc-a.qcow2 1M && "
	      "qemu-img create -q -f qcow2 -b cyc-a.qcow2 -F qcow2 cyc-b.qcow2 && "
	      "qemu-img rebase -u -f qcow2 -b cyc-b.qcow2 -F qcow2 cyc-a.qcow2", dir);
	char *p = idd_path_join(dir, "cyc-a.qcow2", NULL);
	it_expect_open_error(dir, p, "a cycle?");
	free(p);
	/* An image naming itself. */
	it_sh("cd %s && qemu-img create -q -f qcow2 self.qcow2 1M && "
	      "qemu-img rebase -u -f qcow2 -b self.qcow2 -F qcow2 self.qcow2", dir);
	p = idd_path_join(dir, "self.qcow2", NULL);
	it_expect_open_error(dir, p, "a cycle?");
	free(p);
}

static void test_backing_outside_repo(void **state)
{
	(void)state;
	it_sh("cd %s && mkdir -p inner && qemu-img convert -f raw -O qcow2 disk.raw outside.qcow2 && "
	      "qemu-img create -q -f qcow2 -b ../outside.qcow2 -F qcow2 inner/esc.qcow2", dir);
	char *repo = idd_path_join(dir, "inner", NULL), *p = idd_path_join(dir, "inner/esc.qcow2", NULL);
	it_expect_open_error(repo, p, "outside the repository");
	free(p);
	it_sh("cd %s && qemu-img create -q -u -f qcow2 -b missing.qcow2 -F qcow2 inner/miss.qcow2 1M",
	      dir);
	p = idd_path_join(dir, "inner/miss.qcow2", NULL);
	it_expect_open_error(repo, p, "missing.qcow2");
	free(p);
	free(repo);
}

static void test_backing_format_mismatch(void **state)
{
	(void)state;
	/* Says raw, but the backing file is a qcow2: never guess. */
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 disk.raw realq.qcow2 && "
	      "qemu-img create -q -f qcow2 -b realq.qcow2 -F raw -o size=6M mism.qcow2", dir);
	char *p = idd_path_join(dir, "mism.qcow2", NULL);
	it_expect_open_error(dir, p, "the image says raw");
	free(p);
}

static void test_encrypted(void **state)
{
	(void)state;
	/* crypt_method 1 (AES) in an otherwise plain header. */
	char *p = fresh("aes.qcow2", "");
	it_put_be32(p, 32, 1);
	it_expect_open_error(dir, p, "encrypted qcow2 images are not supported");
	free(p);
	/* A real LUKS image; qemu-img's key-derivation benchmark can fail on a
	 * busy machine, so only a created image is checked. */
	{
		char cmd[1024];
		snprintf(cmd, sizeof cmd, "cd %s && qemu-img create -q --object secret,id=sec0,data=123456 "
		         "-f qcow2 -o encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10 "
		         "enc.qcow2 1M 2>/dev/null", dir);
		if (system(cmd) == 0) {
			p = idd_path_join(dir, "enc.qcow2", NULL);
			it_expect_open_error(dir, p, "encrypted qcow2 images are not supported");
			free(p);
		}
	}
}

/* Random corruption of header and tables never crashes and never reads
 * outside the file (ASan checks the latter). */
static void test_corrupt_bytes(void **state)
{
	(void)state;
	char *p = fresh("fuzz.qcow2", "-c -o cluster_size=4096");
	it_corrupt_rounds(dir, p, 32768, 12345);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_probe),
		cmocka_unit_test(test_plain),
		cmocka_unit_test(test_zlib),
		cmocka_unit_test(test_zstd),
		cmocka_unit_test(test_cluster_512),
		cmocka_unit_test(test_cluster_512_compressed),
		cmocka_unit_test(test_cluster_4k),
		cmocka_unit_test(test_cluster_2m),
		cmocka_unit_test(test_v2),
		cmocka_unit_test(test_odd_size),
		cmocka_unit_test(test_backing_chain),
		cmocka_unit_test(test_backing_raw_smaller),
		cmocka_unit_test(test_overlay_over_compressed),
		cmocka_unit_test(test_extended_l2),
		cmocka_unit_test(test_threads),
		cmocka_unit_test(test_truncated_header),
		cmocka_unit_test(test_l1_past_eof),
		cmocka_unit_test(test_l2_past_eof),
		cmocka_unit_test(test_huge_sizes),
		cmocka_unit_test(test_compressed_overflow),
		cmocka_unit_test(test_cyclic_backing),
		cmocka_unit_test(test_backing_outside_repo),
		cmocka_unit_test(test_backing_format_mismatch),
		cmocka_unit_test(test_encrypted),
		cmocka_unit_test(test_corrupt_bytes),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
