/* test_image.c - formats/image: the format table (detection by content,
 * never by name; raw for anything else), raw extents over holes, the
 * generic reader across extents of every kind, and backing files resolved
 * only through the caller's hook. */
#include "imgtest.h"

#include <zlib.h>
#include <zstd.h>

static char *dir;

static int setup(void **state)
{
	(void)state;
	dir = tu_mkdtemp();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	tu_rmtree(dir);
	free(dir);
	return 0;
}

static idd_image *open_path(const char *name, idd_backing_open_fn bo, void *ctx)
{
	char *p = idd_path_join(dir, name, NULL);
	idd_file *f;
	idd_image *img = NULL;
	idd_error err;
	if (idd_file_open_local(p, &f, &err) || idd_image_open(f, true, bo, ctx, &img, &err))
		fail_msg("open %s: %s", name, err.msg);
	free(p);
	return img;
}

static void test_table(void **state)
{
	(void)state;
	size_t n;
	const idd_image_format *const *t = idd_image_formats(&n);
	assert_int_equal(n, 3);
	assert_ptr_equal(t[0], &idd_format_qcow2);
	assert_ptr_equal(t[1], &idd_format_vmdk);
	assert_ptr_equal(t[n - 1], &idd_format_raw); /* the fallback bids last */
	for (size_t i = 0; i < n; i++) {
		assert_non_null(t[i]->name);
		assert_non_null(t[i]->probe);
		assert_non_null(t[i]->open);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(t[i]->name, t[j]->name);
	}
}

static void test_detect_heads(void **state)
{
	(void)state;
	static const struct {
		const char *head;
		size_t len;
		const char *format;
	} cases[] = {
		{"QFI\xfb\0\0\0\3", 8, "qcow2"},
		{"QFI\xfb", 4, "raw"}, /* too short to be a qcow2 header */
		{"KDMV\1\0\0\0", 8, "vmdk"},
		{"COWD\1\0\0\0", 8, "vmdk"}, /* recognised, refused when opened */
		{"# Disk DescriptorFile\nversion=1\n", 32, "vmdk"},
		{"\x1f\x8b\x08\0\0\0\0\0", 8, "raw"}, /* archives are not image formats */
		{"", 0, "raw"},
	};
	for (size_t i = 0; i < IDD_ARRAY_LEN(cases); i++) {
		const idd_image_format *f =
			idd_image_format_detect((const unsigned char *)cases[i].head, cases[i].len);
		assert_non_null(f);
		if (strcmp(f->name, cases[i].format) != 0)
			fail_msg("case %zu: detected %s, want %s", i, f->name, cases[i].format);
	}
	unsigned char random[4096];
	tu_fill_random(random, sizeof random, 77);
	random[0] = 0; /* no accidental magic */
	assert_ptr_equal(idd_image_format_detect(random, sizeof random), &idd_format_raw);
	assert_int_equal(idd_format_raw.probe(random, sizeof random), IDD_BID_ANYTHING);
	assert_int_equal(idd_format_qcow2.probe((const unsigned char *)"QFI\xfb\0\0\0\3", 8),
	                 IDD_BID_MAGIC);
	assert_int_equal(idd_format_qcow2.probe(random, sizeof random), 0);
}

/* Names say nothing: a qcow2 called .raw is a qcow2, raw bytes called
 * .qcow2 are raw, a VMDK called .img is a VMDK. */
static void test_detect_by_content(void **state)
{
	(void)state;
	char *raw = it_make_raw(dir, "src.bin", 1u << 20, 3);
	it_sh("cd %s && qemu-img convert -f raw -O qcow2 src.bin looks.raw && "
	      "cp src.bin looks.qcow2 && "
	      "qemu-img convert -f raw -O vmdk -o subformat=streamOptimized src.bin looks.img", dir);
	static const struct {
		const char *name, *format;
	} cases[] = {{"looks.raw", "qcow2"}, {"looks.qcow2", "raw"}, {"looks.img", "vmdk"}};
	for (size_t i = 0; i < IDD_ARRAY_LEN(cases); i++) {
		idd_image *img = open_path(cases[i].name, NULL, NULL);
		char *p = idd_path_join(dir, cases[i].name, NULL);
		it_check_opened(img, p, raw, cases[i].format); /* bytes equal, closes img */
		free(p);
	}
	free(raw);
}

/* Raw: the file is the disk; holes are zero extents, the rest data. */
static void test_raw_fallback_and_extents(void **state)
{
	(void)state;
	const size_t size = 2u << 20;
	unsigned char *content = calloc(1, size);
	assert_non_null(content);
	tu_fill_random(content + 4096, 8192, 5);
	tu_fill_random(content + (1u << 20), 4096, 6);
	char *p = idd_path_join(dir, "sparse.raw", NULL);
	int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, content + 4096, 8192, 4096), 8192);
	assert_int_equal(pwrite(fd, content + (1u << 20), 4096, 1u << 20), 4096);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	bool holes = lseek(fd, 0, SEEK_DATA) == 4096;
	close(fd);

	idd_image *img = open_path("sparse.raw", NULL, NULL);
	assert_string_equal(img->format, "raw");
	assert_int_equal(img->size, size);
	assert_int_equal(img->depth, 0);
	idd_error err;
	idd_extent ext;
	if (holes) {
		assert_int_equal(idd_image_extent(img, 0, &ext, &err), 0);
		assert_int_equal(ext.kind, IDD_EXT_ZERO);
		assert_int_equal(ext.voff, 0);
		assert_int_equal(ext.vlen, 4096);
		assert_int_equal(idd_image_extent(img, 5000, &ext, &err), 0);
		assert_int_equal(ext.kind, IDD_EXT_DATA);
		assert_int_equal(ext.voff, 5000);
		assert_int_equal(ext.file_off, 5000);
		assert_int_equal(ext.vlen, 12288 - 5000);
		assert_int_equal(idd_image_extent(img, (1u << 20) + 4096, &ext, &err), 0);
		assert_int_equal(ext.kind, IDD_EXT_ZERO);
		assert_int_equal(ext.voff + ext.vlen, size); /* the tail hole, to the end */
	}
	assert_int_not_equal(idd_image_extent(img, size, &ext, &err), 0);
	assert_non_null(strstr(err.msg, "past the end"));
	char *want = tu_write(dir, "sparse.want", content, size);
	it_check_opened(img, p, want, "raw"); /* extents and reads give the bytes */
	free(want);
	free(p);
	free(content);

	/* An empty file is an empty raw disk. */
	char *e = tu_write(dir, "empty.img", "", 0);
	img = open_path("empty.img", NULL, NULL);
	assert_string_equal(img->format, "raw");
	assert_int_equal(img->size, 0);
	idd_image_close(img);
	free(e);
}

/* ---- the generic reader, through a hand-made format ----
 * The virtual disk (64 KiB) is built from stored pieces of every kind:
 *   [0, 4K) data   [4K, 12K) zero   [12K, 28K) zlib   [28K, 32K) data
 *   [32K, 48K) zstd   [48K, 52K) deflate   [52K, 64K) zero
 * and the format's extent() hands them out one at a time. */
#define VDISK (64u << 10)
struct piece {
	uint64_t voff, vlen;
	enum idd_extent_kind kind;
	enum idd_codec codec;
	uint64_t file_off, file_len;
};
struct fake {
	struct piece p[8];
	size_t n;
	bool stall; /* return an extent that does not contain voff */
};

static int fake_extent(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err)
{
	struct fake *fk = img->priv;
	memset(ext, 0, sizeof *ext);
	for (size_t i = 0; i < fk->n; i++) {
		const struct piece *pc = &fk->p[i];
		if (voff >= pc->voff && voff < pc->voff + pc->vlen) {
			ext->voff = pc->voff;
			ext->vlen = pc->vlen;
			ext->kind = pc->kind;
			ext->codec = pc->codec;
			ext->file_off = pc->file_off;
			ext->file_len = pc->file_len;
			if (fk->stall)
				ext->voff = voff + 1;
			return IDD_OK;
		}
	}
	return idd_fail(err, "no piece at %llu", (unsigned long long)voff);
}

static const struct idd_image_ops fake_ops = {fake_extent, NULL, NULL};

static size_t deflate_into(const unsigned char *in, size_t n, unsigned char *out, size_t cap,
                           int window_bits)
{
	z_stream zs;
	memset(&zs, 0, sizeof zs);
	assert_int_equal(deflateInit2(&zs, 6, Z_DEFLATED, window_bits, 8, Z_DEFAULT_STRATEGY), Z_OK);
	zs.next_in = (unsigned char *)in;
	zs.avail_in = (uInt)n;
	zs.next_out = out;
	zs.avail_out = (uInt)cap;
	assert_int_equal(deflate(&zs, Z_FINISH), Z_STREAM_END);
	size_t len = cap - zs.avail_out;
	deflateEnd(&zs);
	return len;
}

/* Builds the stored file and the expected disk; returns the image. */
static idd_image *fake_image(unsigned char *disk, struct fake *fk)
{
	memset(disk, 0, VDISK);
	for (uint64_t off = 0; off < VDISK; off += 4096)
		if (off < 4096 || (off >= 12288 && off < 52u << 10)) {
			for (size_t k = 0; k < 4096; k++) /* compressible, not trivial */
				disk[off + k] = (unsigned char)("extent pieces "[k % 14] + off / 4096);
			tu_fill_random(disk + off, 64, off);
		}
	unsigned char *stored = calloc(1, 4 * VDISK);
	assert_non_null(stored);
	size_t pos = 0;
	memset(fk, 0, sizeof *fk);
	/* data */
	memcpy(stored + pos, disk, 4096);
	fk->p[fk->n++] = (struct piece){0, 4096, IDD_EXT_DATA, IDD_CODEC_NONE, pos, 4096};
	pos += 4096 + 100; /* stored pieces need not be adjacent */
	fk->p[fk->n++] = (struct piece){4096, 8192, IDD_EXT_ZERO, IDD_CODEC_NONE, 0, 0};
	size_t z = deflate_into(disk + 12288, 16384, stored + pos, VDISK, 15);
	fk->p[fk->n++] = (struct piece){12288, 16384, IDD_EXT_COMPRESSED, IDD_CODEC_ZLIB, pos, z};
	pos += z;
	memcpy(stored + pos, disk + 28672, 4096);
	fk->p[fk->n++] = (struct piece){28672, 4096, IDD_EXT_DATA, IDD_CODEC_NONE, pos, 4096};
	pos += 4096;
	size_t zs = ZSTD_compress(stored + pos, VDISK, disk + 32768, 16384, 3);
	assert_false(ZSTD_isError(zs));
	fk->p[fk->n++] = (struct piece){32768, 16384, IDD_EXT_COMPRESSED, IDD_CODEC_ZSTD, pos, zs + 7};
	pos += zs + 7; /* sector-style padding after the frame is ignored */
	z = deflate_into(disk + 49152, 4096, stored + pos, VDISK, -15);
	fk->p[fk->n++] = (struct piece){49152, 4096, IDD_EXT_COMPRESSED, IDD_CODEC_DEFLATE, pos, z};
	pos += z;
	fk->p[fk->n++] = (struct piece){53248, VDISK - 53248, IDD_EXT_ZERO, IDD_CODEC_NONE, 0, 0};
	char *p = tu_write(dir, "fake.stored", stored, pos);
	free(stored);
	idd_file *f;
	idd_error err;
	assert_int_equal(idd_file_open_local(p, &f, &err), 0);
	free(p);
	idd_image *img = calloc(1, sizeof *img);
	assert_non_null(img);
	img->ops = &fake_ops;
	img->file = f;
	img->owns_file = true;
	img->size = VDISK;
	img->format = "fake";
	img->priv = fk;
	return img;
}

static void test_read_across_extents(void **state)
{
	(void)state;
	unsigned char *disk = malloc(VDISK), *buf = malloc(VDISK);
	assert_non_null(disk);
	assert_non_null(buf);
	struct fake fk;
	idd_image *img = fake_image(disk, &fk);
	idd_error err;
	assert_int_equal(idd_image_read(img, 0, buf, VDISK, &err), 0);
	assert_memory_equal(buf, disk, VDISK);
	/* Every start and length that crosses boundaries between kinds. */
	static const uint64_t starts[] = {0, 1, 4095, 4096, 12000, 12289, 28671, 32767, 49000, 53247};
	static const size_t lens[] = {1, 2, 4097, 9000, 20000};
	for (size_t i = 0; i < IDD_ARRAY_LEN(starts); i++)
		for (size_t j = 0; j < IDD_ARRAY_LEN(lens); j++) {
			size_t n = (size_t)IDD_MIN((uint64_t)lens[j], VDISK - starts[i]);
			memset(buf, 0xee, n);
			if (idd_image_read(img, starts[i], buf, n, &err))
				fail_msg("read %zu at %llu: %s", n, (unsigned long long)starts[i], err.msg);
			assert_memory_equal(buf, disk + starts[i], n);
		}
	/* Reads past the disk are refused. */
	assert_int_not_equal(idd_image_read(img, VDISK - 10, buf, 11, &err), 0);
	assert_non_null(strstr(err.msg, "past the end"));
	assert_int_not_equal(idd_image_read(img, UINT64_MAX, buf, 2, &err), 0);

	/* A damaged compressed piece fails the read and names the file. */
	fk.p[2].file_len = 10;
	assert_int_not_equal(idd_image_read(img, 12288, buf, 100, &err), 0);
	assert_non_null(strstr(err.msg, "fake.stored"));
	/* A format that makes no progress is caught, not looped on. */
	fk.p[2].file_len = 1;
	fk.stall = true;
	assert_int_not_equal(idd_image_read(img, 0, buf, 100, &err), 0);
	assert_non_null(strstr(err.msg, "bad extent"));
	idd_image_close(img); /* fake_ops has no close: priv is on the stack */
	free(disk);
	free(buf);
}

/* ---- backing files: only through the caller's hook ---- */

struct hook_log {
	int calls;
	char names[IDD_MAX_BACKING_DEPTH + 2][64];
	const char *always; /* if set: open this file whatever the name */
	bool refuse;
};

static int hook(void *ctx, const char *name, idd_file **out, idd_error *err)
{
	struct hook_log *h = ctx;
	if (h->calls < (int)IDD_ARRAY_LEN(h->names))
		snprintf(h->names[h->calls], sizeof h->names[0], "%s", name);
	h->calls++;
	if (h->refuse)
		return idd_fail(err, "'%s' refused by the hook", name);
	char *p = idd_path_join(dir, h->always ? h->always : name, err);
	int rc = p ? idd_file_open_local(p, out, err) : IDD_ERR;
	free(p);
	return rc;
}

static void test_backing_hook(void **state)
{
	(void)state;
	char *base = it_make_raw(dir, "bk-base.raw", 1u << 20, 11);
	free(base);
	it_sh("cd %s && qemu-img create -q -f qcow2 -b bk-base.raw -F raw bk-mid.qcow2 && "
	      "qemu-io -f qcow2 -c 'write -P 0x5a 64k 64k' bk-mid.qcow2 >/dev/null && "
	      "qemu-img create -q -f qcow2 -b bk-mid.qcow2 -F qcow2 bk-top.qcow2 && "
	      "qemu-io -f qcow2 -c 'write -P 0xa5 96k 8k' bk-top.qcow2 >/dev/null && "
	      "qemu-img convert -O raw bk-top.qcow2 bk-top.want", dir);
	/* Called once per level, top down, with the names the images hold. */
	struct hook_log h = {0};
	idd_image *img = open_path("bk-top.qcow2", hook, &h);
	assert_int_equal(h.calls, 2);
	assert_string_equal(h.names[0], "bk-mid.qcow2");
	assert_string_equal(h.names[1], "bk-base.raw");
	char *p = idd_path_join(dir, "bk-top.qcow2", NULL), *want = idd_path_join(dir, "bk-top.want", NULL);
	it_check_opened(img, p, want, "qcow2");
	free(p);
	free(want);

	/* No hook: refused, naming the image and the backing name. */
	char *top = idd_path_join(dir, "bk-top.qcow2", NULL);
	idd_file *f;
	idd_error err;
	assert_int_equal(idd_file_open_local(top, &f, &err), 0);
	assert_int_not_equal(idd_image_open(f, true, NULL, NULL, &img, &err), 0);
	assert_non_null(strstr(err.msg, "bk-top.qcow2"));
	assert_non_null(strstr(err.msg, "'bk-mid.qcow2'"));
	assert_non_null(strstr(err.msg, "cannot be resolved"));

	/* The hook says no: its reason, behind the image that asked. */
	struct hook_log no = {.refuse = true};
	assert_int_equal(idd_file_open_local(top, &f, &err), 0);
	assert_int_not_equal(idd_image_open(f, true, hook, &no, &img, &err), 0);
	assert_int_equal(no.calls, 1);
	assert_non_null(strstr(err.msg, "bk-top.qcow2: backing file: 'bk-mid.qcow2' refused by the hook"));

	/* A hook that always hands back the same qcow2: a cycle, stopped after
	 * IDD_MAX_BACKING_DEPTH levels. */
	struct hook_log cyc = {.always = "bk-top.qcow2"};
	assert_int_equal(idd_file_open_local(top, &f, &err), 0);
	assert_int_not_equal(idd_image_open(f, true, hook, &cyc, &img, &err), 0);
	assert_int_equal(cyc.calls, IDD_MAX_BACKING_DEPTH);
	assert_non_null(strstr(err.msg, "a cycle?"));

	/* The image says its backing file is a qcow2; a raw one is refused. */
	struct hook_log wrong = {.always = "bk-base.raw"};
	assert_int_equal(idd_file_open_local(top, &f, &err), 0);
	assert_int_not_equal(idd_image_open(f, true, hook, &wrong, &img, &err), 0);
	assert_non_null(strstr(err.msg, "is raw but the image says qcow2"));
	free(top);

	/* The helper itself: depth counts down the chain, the format check is
	 * optional. */
	struct hook_log direct = {0};
	img = open_path("bk-base.raw", hook, &direct);
	idd_image *b;
	assert_int_equal(idd_image_open_backing(img, "bk-mid.qcow2", NULL, &b, &err), 0);
	assert_int_equal(direct.calls, 2); /* bk-mid.qcow2, then its own backing file */
	assert_int_equal(b->depth, 1);
	assert_string_equal(b->format, "qcow2");
	idd_image_close(b);
	img->depth = IDD_MAX_BACKING_DEPTH;
	assert_int_not_equal(idd_image_open_backing(img, "bk-mid.qcow2", "", &b, &err), 0);
	assert_int_equal(direct.calls, 2); /* refused before asking */
	idd_image_close(img);
}

static void test_name_matches(void **state)
{
	(void)state;
	assert_true(idd_image_name_matches("a.raw"));
	assert_true(idd_image_name_matches("dir/a.img"));
	assert_true(idd_image_name_matches("a.qcow2"));
	assert_true(idd_image_name_matches("a.qcow"));
	assert_false(idd_image_name_matches(".raw")); /* a suffix alone names nothing */
	assert_false(idd_image_name_matches("a.vmdk")); /* VMDKs count inside archives only */
	assert_false(idd_image_name_matches("a.ova"));
	assert_false(idd_image_name_matches("a.raw.txt"));
	assert_false(idd_image_name_matches(""));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_table),
		cmocka_unit_test(test_detect_heads),
		cmocka_unit_test(test_detect_by_content),
		cmocka_unit_test(test_raw_fallback_and_extents),
		cmocka_unit_test(test_read_across_extents),
		cmocka_unit_test(test_backing_hook),
		cmocka_unit_test(test_name_matches),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
