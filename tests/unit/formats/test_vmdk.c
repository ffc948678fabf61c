/* test_vmdk.c - the VMDK reader against qemu-img's streamOptimized and
 * monolithicSparse images, a footer-style stream, and refused subformats. */
#include "imgtest.h"

#define DISK (5u << 20)

static char *dir;
static char *raw;

static int setup(void **state)
{
	(void)state;
	dir = tu_mkdtemp();
	raw = it_make_raw(dir, "disk.raw", DISK, 11);
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

static char *convert(const char *name, const char *subformat)
{
	it_sh("cd %s && rm -f %s && qemu-img convert -f raw -O vmdk -o subformat=%s disk.raw %s", dir, name,
	      subformat, name);
	return idd_path_join(dir, name, NULL);
}

static void test_probe(void **state)
{
	(void)state;
	assert_true(idd_format_vmdk.probe((const unsigned char *)"KDMV\3\0\0\0", 8));
	assert_true(idd_format_vmdk.probe((const unsigned char *)"# Disk DescriptorFile\n", 22));
	assert_false(idd_format_vmdk.probe((const unsigned char *)"QFI\xfb", 4));
}

static void test_stream_optimized(void **state)
{
	(void)state;
	char *p = convert("s.vmdk", "streamOptimized");
	it_check_image(dir, p, raw, "vmdk");
	/* Grains are compressed extents, unallocated grains zero extents. */
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	idd_extent ext;
	assert_int_equal(idd_image_extent(img, 0, &ext, &err), 0);
	assert_int_equal(ext.kind, IDD_EXT_COMPRESSED);
	assert_int_equal(ext.codec, IDD_CODEC_ZLIB);
	assert_int_equal(ext.file_off % 512, 12); /* right after the grain marker */
	assert_int_equal(idd_image_extent(img, 200 * 1024, &ext, &err), 0);
	assert_int_equal(ext.kind, IDD_EXT_ZERO);
	idd_image_close(img);
	free(p);
}

static void test_odd_capacity(void **state)
{
	(void)state;
	char *odd = it_make_raw(dir, "odd.raw", 777 * 1024, 5);
	it_sh("cd %s && qemu-img convert -f raw -O vmdk -o subformat=streamOptimized odd.raw odd.vmdk", dir);
	char *p = idd_path_join(dir, "odd.vmdk", NULL);
	it_check_image(dir, p, odd, "vmdk");
	free(p);
	free(odd);
}

static void test_monolithic_sparse(void **state)
{
	(void)state;
	char *p = convert("m.vmdk", "monolithicSparse");
	it_check_image(dir, p, raw, "vmdk");
	free(p);
}

/* VMware writes the grain directory at the end and the real header in a
 * footer; rebuild qemu's file that way. */
static void test_footer(void **state)
{
	(void)state;
	char *p = convert("f.vmdk", "streamOptimized");
	unsigned char hdr[512], marker[512] = {0};
	it_pread(p, 0, hdr, 512);
	uint64_t size = tu_file_size(p);
	unsigned char eos[512] = {0};
	marker[0] = 1;    /* val: one sector of metadata follows */
	marker[12] = 3;   /* type: footer */
	it_pwrite(p, size, marker, 512);
	it_pwrite(p, size + 512, hdr, 512);
	it_pwrite(p, size + 1024, eos, 512);
	unsigned char at_end[8];
	memset(at_end, 0xff, 8);
	it_pwrite(p, 56, at_end, 8);
	it_check_image(dir, p, raw, "vmdk");
	/* A footer that also says "at the end" is refused. */
	it_pwrite(p, size + 512 + 56, at_end, 8);
	it_expect_open_error(dir, p, "footer has no grain directory");
	free(p);
}

static void test_refused_subformats(void **state)
{
	(void)state;
	char *p = convert("flat.vmdk", "monolithicFlat");
	it_expect_open_error(dir, p, "monolithicFlat");
	free(p);
	p = convert("split.vmdk", "twoGbMaxExtentSparse");
	it_expect_open_error(dir, p, "twoGbMaxExtentSparse");
	free(p);
	/* A sparse extent whose embedded descriptor names another type. */
	p = convert("st.vmdk", "streamOptimized");
	unsigned char desc[1024];
	it_pread(p, 512, desc, sizeof desc);
	char *t = memmem(desc, sizeof desc, "streamOptimized", 15);
	assert_non_null(t);
	memcpy(t, "vmfsSparseXXXXX", 15);
	it_pwrite(p, 512, desc, sizeof desc);
	it_expect_open_error(dir, p, "vmfsSparseXXXXX");
	free(p);
	p = convert("delta.vmdk", "streamOptimized");
	it_pread(p, 512, desc, sizeof desc);
	t = memmem(desc, sizeof desc, "parentCID", 9);
	assert_non_null(t);
	memcpy(t, "parentFileNameHint=\"x\"\n", 23);
	it_pwrite(p, 512, desc, sizeof desc);
	it_expect_open_error(dir, p, "delta disk");
	free(p);
	unsigned char cowd[512] = "COWD";
	p = tu_write(dir, "cowd.vmdk", cowd, sizeof cowd);
	it_expect_open_error(dir, p, "vmfsSparse");
	free(p);
}

static void test_malformed(void **state)
{
	(void)state;
	char *p = convert("bad.vmdk", "streamOptimized");
	size_t len;
	unsigned char *orig = it_slurp(p, &len);
	unsigned char b8[8];

	tu_truncate(p, 300);
	it_expect_open_error(dir, p, "truncated VMDK header");

	it_pwrite(p, 0, orig, len);
	idd_le64_put(b8, (uint64_t)1 << 40); /* gdOffset far past the end */
	it_pwrite(p, 56, b8, 8);
	it_expect_open_error(dir, p, "grain directory");

	it_pwrite(p, 0, orig, len);
	idd_le64_put(b8, (uint64_t)1 << 60); /* capacity: overflows bytes */
	it_pwrite(p, 12, b8, 8);
	it_expect_open_error(dir, p, "too large");

	it_pwrite(p, 0, orig, len);
	idd_le64_put(b8, 3); /* grain size not a power of two */
	it_pwrite(p, 20, b8, 8);
	it_expect_open_error(dir, p, "grain size");

	it_pwrite(p, 0, orig, len);
	idd_le64_put(b8, (uint64_t)1 << 40); /* huge capacity: a 64 MiB GD, outside the file */
	it_pwrite(p, 12, b8, 8);
	it_expect_open_error(dir, p, "grain directory");

	/* A grain's data damaged: the read fails, naming the file. */
	it_pwrite(p, 0, orig, len);
	idd_image *img;
	idd_error err;
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	idd_extent ext;
	assert_int_equal(idd_image_extent(img, 0, &ext, &err), 0);
	unsigned char junk[64];
	memset(junk, 0xee, sizeof junk);
	it_pwrite(p, ext.file_off, junk, sizeof junk);
	unsigned char *buf = malloc(65536);
	assert_int_not_equal(idd_image_read(img, 0, buf, 65536, &err), 0);
	assert_non_null(strstr(err.msg, "bad.vmdk"));
	free(buf);
	idd_image_close(img);
	free(orig);
	free(p);
}

/* A hand-built monolithicSparse header: 4 KiB grains, gtes entries per
 * table, ngd directory entries at sector gd_sec pointing at gt_secs. */
static char *hostile(const char *name, uint32_t gtes, uint64_t gd_sec, const uint32_t *gt_secs, uint32_t ngd,
                     size_t file_size)
{
	unsigned char *buf = calloc(1, file_size);
	assert_non_null(buf);
	idd_le32_put(buf, 0x564d444bu);
	idd_le32_put(buf + 4, 1);                                 /* version */
	idd_le64_put(buf + 12, (uint64_t)ngd * gtes * 8);         /* capacity (sectors) */
	idd_le64_put(buf + 20, 8);                                /* grain: 8 sectors */
	idd_le32_put(buf + 44, gtes);
	idd_le64_put(buf + 56, gd_sec);
	for (uint32_t i = 0; i < ngd; i++)
		idd_le32_put(buf + gd_sec * 512 + 4 * i, gt_secs[i]);
	char *p = tu_write(dir, name, buf, file_size);
	free(buf);
	return p;
}

/* Grain tables must not overlap: one of 65536 entries (256 KiB) at every
 * sector would cost 512 MiB of reads per MiB of file. */
static void test_overlapping_grain_tables(void **state)
{
	(void)state;
	enum { NGD = 999 };
	uint32_t secs[NGD];
	for (uint32_t i = 0; i < NGD; i++)
		secs[i] = 16 + i;
	char *p = hostile("gt-every-sector.vmdk", 65536, 1, secs, NGD, 2u << 20);
	idd_image *img;
	idd_error err;
	assert_int_not_equal(it_open(dir, p, &img, &err), 0);
	assert_non_null(strstr(err.msg, "gt-every-sector.vmdk"));
	assert_non_null(strstr(err.msg, "overlaps another grain table"));
	free(p);

	/* Two tables one sector short of disjoint (gtes 256: 1 KiB = 2 sectors). */
	uint32_t close_secs[2] = {20, 21};
	p = hostile("gt-close.vmdk", 256, 1, close_secs, 2, 64 * 1024);
	it_expect_open_error(dir, p, "overlaps another grain table");
	free(p);
	/* The same tables two sectors apart are fine (all grains unallocated). */
	uint32_t apart_secs[2] = {20, 22};
	p = hostile("gt-apart.vmdk", 256, 1, apart_secs, 2, 64 * 1024);
	assert_int_equal(it_open(dir, p, &img, &err), 0);
	assert_int_equal(img->size, 2ull * 256 * 4096);
	idd_image_close(img);
	free(p);

	/* A shared table (the old check) is still refused. */
	uint32_t same_secs[2] = {20, 20};
	p = hostile("gt-shared.vmdk", 256, 1, same_secs, 2, 64 * 1024);
	it_expect_open_error(dir, p, "overlaps another grain table");
	free(p);

	/* A table overlapping the grain directory. */
	uint32_t one_sec[1] = {30};
	p = hostile("gt-on-gd.vmdk", 65536, 31, one_sec, 1, 1u << 20);
	it_expect_open_error(dir, p, "overlaps the grain directory");
	free(p);
}

static void test_corrupt_bytes(void **state)
{
	(void)state;
	char *p = convert("fz.vmdk", "streamOptimized");
	it_corrupt_rounds(dir, p, 20000, 999);
	free(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_probe),
		cmocka_unit_test(test_stream_optimized),
		cmocka_unit_test(test_odd_capacity),
		cmocka_unit_test(test_monolithic_sparse),
		cmocka_unit_test(test_footer),
		cmocka_unit_test(test_refused_subformats),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_overlapping_grain_tables),
		cmocka_unit_test(test_corrupt_bytes),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
