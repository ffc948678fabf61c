/* imgtest.h - helpers shared by the image-format unit tests (qcow2, VMDK,
 * archives): build images with qemu-img, compare what our readers return
 * with the raw bytes, and check the extents tell the truth. */
#ifndef IDD_IMGTEST_H
#define IDD_IMGTEST_H

#include "testutil.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Run a shell command; the test fails if it does. */
static inline void IDD_PRINTF(1, 2) it_sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof cmd, fmt, ap);
	va_end(ap);
	int rc = system(cmd);
	if (rc != 0)
		fail_msg("command failed (%d): %s", rc, cmd);
}

/* A raw disk of size bytes mixing random data, zero runs and repeated
 * text, so every kind of cluster (data, unallocated, compressible) occurs. */
static inline char *it_make_raw(const char *dir, const char *name, size_t size, uint64_t seed)
{
	unsigned char *buf = calloc(1, size ? size : 1);
	assert_non_null(buf);
	for (size_t off = 0, i = 0; off < size; off += 96 * 1024, i++) {
		size_t n = IDD_MIN((size_t)96 * 1024, size - off);
		switch ((i + seed) % 4) {
		case 0: tu_fill_random(buf + off, n, seed * 1000 + i); break;
		case 1: break; /* zeros */
		case 2:
			for (size_t k = 0; k < n; k++)
				buf[off + k] = (unsigned char)("imgdedup test pattern "[k % 22]);
			break;
		case 3: tu_fill_random(buf + off, n / 3, seed * 1000 + i); break; /* partly zero */
		}
	}
	char *p = tu_write(dir, name, buf, size);
	free(buf);
	return p;
}

static inline unsigned char *it_slurp(const char *path, size_t *len)
{
	void *data;
	size_t n;
	idd_error err;
	if (idd_read_file(path, (size_t)1 << 31, &data, &n, &err))
		fail_msg("%s", err.msg);
	*len = n;
	return data;
}

/* Open PATH as an image with backing files resolved inside repo. */
static inline int it_open(const char *repo, const char *path, idd_image **img, idd_error *err)
{
	idd_repo_entry e = {0};
	e.path = (char *)path;
	return idd_repo_open_image(repo, &e, img, err);
}

/* Every extent: contiguous, and its stored bytes decode to the raw bytes. */
static inline void it_check_extents(idd_image *img, const unsigned char *raw, size_t raw_len)
{
	idd_error err;
	uint64_t voff = 0;
	unsigned char *tmp = malloc(64u << 20);
	assert_non_null(tmp);
	while (voff < img->size) {
		idd_extent ext;
		if (idd_image_extent(img, voff, &ext, &err))
			fail_msg("extent at %llu: %s", (unsigned long long)voff, err.msg);
		assert_true(ext.voff <= voff && ext.voff + ext.vlen > voff);
		idd_file *src = ext.file ? ext.file : img->file;
		uint64_t skip = voff - ext.voff, n = ext.vlen - skip;
		if (ext.kind == IDD_EXT_ZERO) {
			assert_true(idd_is_zero(raw + voff, (size_t)n));
		} else if (ext.kind == IDD_EXT_DATA) {
			assert_int_equal(ext.file_len, ext.vlen);
			assert_true(ext.vlen <= (64u << 20));
			if (idd_file_pread(src, tmp, (size_t)n, ext.file_off + skip, &err))
				fail_msg("%s", err.msg);
			assert_memory_equal(tmp, raw + voff, (size_t)n);
		} else {
			assert_true(ext.file_len > 0 && ext.file_off + ext.file_len <= src->size);
			unsigned char *stored = malloc((size_t)ext.file_len);
			unsigned char *plain = malloc((size_t)ext.vlen);
			assert_non_null(stored);
			assert_non_null(plain);
			if (idd_file_pread(src, stored, (size_t)ext.file_len, ext.file_off, &err) ||
			    idd_extent_decode(&ext, stored, (size_t)ext.file_len, plain, &err))
				fail_msg("compressed extent at %llu: %s", (unsigned long long)ext.voff, err.msg);
			assert_memory_equal(plain + skip, raw + voff, (size_t)n);
			free(stored);
			free(plain);
		}
		voff += n;
	}
	assert_int_equal(voff, raw_len);
	free(tmp);
}

/* The image's virtual disk equals the raw file, read whole, in odd pieces,
 * and extent by extent. */
static inline void it_check_opened(idd_image *img, const char *path, const char *raw_path,
                                   const char *format)
{
	idd_error err;
	assert_string_equal(img->format, format);
	size_t raw_len;
	unsigned char *raw = it_slurp(raw_path, &raw_len);
	assert_int_equal(img->size, raw_len);
	unsigned char *buf = malloc(raw_len ? raw_len : 1);
	assert_non_null(buf);
	if (idd_image_read(img, 0, buf, raw_len, &err))
		fail_msg("read %s: %s", path, err.msg);
	assert_memory_equal(buf, raw, raw_len);
	/* Misaligned pieces cross cluster and table boundaries. */
	memset(buf, 0x5a, raw_len);
	for (size_t off = 0; off < raw_len;) {
		size_t n = IDD_MIN(raw_len - off, (size_t)77777);
		if (idd_image_read(img, off, buf + off, n, &err))
			fail_msg("read %s at %zu: %s", path, off, err.msg);
		off += n;
	}
	assert_memory_equal(buf, raw, raw_len);
	it_check_extents(img, raw, raw_len);
	free(buf);
	free(raw);
	idd_image_close(img);
}

static inline void it_check_image(const char *repo, const char *path, const char *raw_path,
                                  const char *format)
{
	idd_image *img;
	idd_error err;
	if (it_open(repo, path, &img, &err))
		fail_msg("open %s: %s", path, err.msg);
	it_check_opened(img, path, raw_path, format);
}

/* Opening must fail and the message must contain want. */
static inline void it_expect_open_error(const char *repo, const char *path, const char *want)
{
	idd_image *img;
	idd_error err = {{0}, 0};
	int rc = it_open(repo, path, &img, &err);
	if (rc == 0) {
		idd_image_close(img);
		fail_msg("%s opened, expected an error containing '%s'", path, want);
	}
	if (!strstr(err.msg, want))
		fail_msg("%s: error '%s' does not contain '%s'", path, err.msg, want);
}

static inline void it_pwrite(const char *path, uint64_t off, const void *p, size_t n)
{
	int fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, p, n, (off_t)off), (ssize_t)n);
	close(fd);
}

static inline void it_pread(const char *path, uint64_t off, void *p, size_t n)
{
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, p, n, (off_t)off), (ssize_t)n);
	close(fd);
}

static inline void it_put_be64(const char *path, uint64_t off, uint64_t v)
{
	unsigned char b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (unsigned char)(v >> (56 - 8 * i));
	it_pwrite(path, off, b, 8);
}

static inline void it_put_be32(const char *path, uint64_t off, uint32_t v)
{
	unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
	                      (unsigned char)v};
	it_pwrite(path, off, b, 4);
}

static inline uint64_t it_get_be64(const char *path, uint64_t off)
{
	unsigned char b[8];
	it_pread(path, off, b, 8);
	return idd_be64(b);
}


/* Flip 4 random bytes in the first `span` bytes of the image at path, 300
 * times from a fresh copy, and open and read each result: a corrupt image
 * may be refused but must never crash or read outside the file (ASan). */
static inline void it_corrupt_rounds(const char *repo, const char *path, size_t span, uint64_t seed)
{
	size_t len;
	unsigned char *orig = it_slurp(path, &len);
	unsigned char *buf = malloc(1u << 20);
	assert_non_null(buf);
	uint64_t x = seed;
	for (int round = 0; round < 300; round++) {
		it_pwrite(path, 0, orig, len);
		for (int k = 0; k < 4; k++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			uint64_t off = (x >> 20) % IDD_MIN(len, span);
			unsigned char c = (unsigned char)(x >> 8);
			it_pwrite(path, off, &c, 1);
		}
		idd_image *img;
		idd_error err;
		if (it_open(repo, path, &img, &err) == 0) {
			for (uint64_t off = 0; off < img->size && off < (8u << 20); off += 1u << 20)
				idd_image_read(img, off, buf, (size_t)IDD_MIN(1u << 20, img->size - off), &err);
			idd_image_close(img);
		}
	}
	free(buf);
	free(orig);
}

#endif
