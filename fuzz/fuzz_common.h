/* fuzz_common.h - helpers for the libFuzzer targets: an in-memory idd_file,
 * and a valid index-file container around arbitrary payload bytes (so the
 * fuzzer reaches the payload parsers instead of dying at the checksum). */
#ifndef IDD_FUZZ_COMMON_H
#define IDD_FUZZ_COMMON_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "base/file.h"
#include "formats/image.h"
#include "formats/archive.h"
#include "index/repo.h"
#include "index/indexfile.h"
#include "index/catalog.h"

#include <stdlib.h>
#include <string.h>

struct fz_mem {
	const unsigned char *p;
};

static inline int fz_mem_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	struct fz_mem *m = f->priv;
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > f->size)
		return idd_fail(err, "%s: read past the end", f->name);
	memcpy(buf, m->p + off, len);
	return IDD_OK;
}

static inline void fz_mem_close(idd_file *f) { free(f->priv); }

static const struct idd_file_ops fz_mem_ops = {fz_mem_pread, NULL, fz_mem_close};

static inline idd_file *fz_mem_file(const char *name, const void *p, size_t len)
{
	idd_file *f = calloc(1, sizeof *f);
	struct fz_mem *m = calloc(1, sizeof *m);
	if (!f || !m)
		abort();
	m->p = p;
	f->ops = &fz_mem_ops;
	f->name = strdup(name);
	f->size = len;
	f->fd = -1;
	f->priv = m;
	return f;
}

/* Walk the image's extents and read part of it; errors are expected. */
static inline void fz_exercise_image(idd_image *img)
{
	idd_error err;
	uint64_t voff = 0, budget = 8u << 20;
	unsigned char *buf = malloc(1u << 20);
	if (!buf)
		abort();
	for (int steps = 0; steps < 4096 && voff < img->size; steps++) {
		idd_extent ext;
		if (idd_image_extent(img, voff, &ext, &err))
			break;
		uint64_t n = IDD_MIN(ext.voff + ext.vlen - voff, (uint64_t)(1u << 20));
		if (ext.kind != IDD_EXT_ZERO && budget >= n) {
			budget -= n;
			idd_image_read(img, voff, buf, (size_t)n, &err);
		}
		voff = ext.voff + ext.vlen;
	}
	free(buf);
}

/* A complete index file around STORED bytes: header (flags, declared
 * payload length raw_len), the stored bytes, a correct SHA-256 trailer. */
static inline unsigned char *fz_container(const char magic[8], uint32_t version, uint32_t flags,
                                          uint64_t raw_len, const void *stored, size_t len,
                                          size_t *out_len)
{
	unsigned char *f = malloc(IDD_IF_HEADER + len + IDD_IF_TRAILER);
	if (!f)
		abort();
	memcpy(f, magic, 8);
	idd_le32_put(f + 8, version);
	idd_le32_put(f + 12, flags);
	idd_le64_put(f + 16, raw_len);
	idd_le64_put(f + 24, len);
	if (len)
		memcpy(f + IDD_IF_HEADER, stored, len);
	if (idd_sha256(f, IDD_IF_HEADER + len, f + IDD_IF_HEADER + len, NULL))
		abort();
	*out_len = IDD_IF_HEADER + len + IDD_IF_TRAILER;
	return f;
}

/* A complete index file: header, uncompressed payload, SHA-256 trailer. */
static inline unsigned char *fz_wrap(const char magic[8], uint32_t version, const void *payload, size_t len,
                              size_t *out_len)
{
	return fz_container(magic, version, 0, len, payload, len, out_len);
}

#endif
