/* image.h - virtual disks over byte sources: raw, qcow2, VMDK (image.c,
 * qcow2.c, vmdk.c). */
#ifndef IDD_FORMATS_IMAGE_H
#define IDD_FORMATS_IMAGE_H

#include "base/file.h"

/* ---- images (image.c, qcow2.c, vmdk.c) ----
 * An image presents its virtual disk.  Formats describe the disk as extents
 * so callers can skip zeros and fetch exactly the stored bytes they need. */
enum idd_extent_kind {
	IDD_EXT_ZERO,       /* reads as zeros; nothing stored */
	IDD_EXT_DATA,       /* stored verbatim at file_off */
	IDD_EXT_COMPRESSED  /* a compressed unit: decompress file range -> vlen bytes */
};
enum idd_codec { IDD_CODEC_NONE, IDD_CODEC_DEFLATE, IDD_CODEC_ZSTD, IDD_CODEC_ZLIB };

typedef struct idd_extent {
	uint64_t voff, vlen;         /* virtual range covered */
	enum idd_extent_kind kind;
	uint64_t file_off, file_len; /* stored bytes (DATA: file_len == vlen) */
	enum idd_codec codec;
	idd_file *file;              /* which file holds it (backing chains); NULL: the image's own */
} idd_extent;

typedef struct idd_image idd_image;
struct idd_image_ops {
	const char *format;
	/* The extent containing voff (voff < size).  Formats may return extents
	 * shorter than the whole run; callers loop. */
	int (*extent)(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err);
	/* Optional fast path for reading virtual bytes (NULL: generic). */
	int (*read)(idd_image *img, uint64_t voff, void *buf, size_t len, idd_error *err);
	void (*close)(idd_image *img);
};
struct idd_image {
	const struct idd_image_ops *ops;
	idd_file *file;      /* the container bytes */
	bool owns_file;
	uint64_t size;       /* virtual size */
	const char *format;
	void *priv;
};

/* Detect the format from content and open the image over f.  Takes ownership
 * of f when owns_file.  backing_open resolves backing files (may be NULL:
 * backing files refused). */
typedef int (*idd_backing_open_fn)(void *ctx, const char *name, idd_file **out, idd_error *err);
int idd_image_open(idd_file *f, bool owns_file, idd_backing_open_fn backing_open, void *backing_ctx,
                   idd_image **out, idd_error *err);
void idd_image_close(idd_image *img);
/* A COMPRESSED extent always starts at its unit's start (ext->voff <= voff);
 * its vlen may be shorter than the unit's decompressed size (disk end, or a
 * qcow2 overlay's own clusters taking over): decode vlen bytes for that
 * prefix.  Same file + file_off: same unit.  See qcow2_extent. */
int idd_image_extent(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err);
/* Read virtual bytes [voff, voff+len); zero-fills holes, decompresses. */
int idd_image_read(idd_image *img, uint64_t voff, void *buf, size_t len, idd_error *err);
/* Decode one stored extent (read from its file) into out (ext->vlen bytes). */
int idd_extent_decode(const idd_extent *ext, const void *stored, size_t stored_len, void *out,
                      idd_error *err);

/* Does NAME end like a disk image (.raw .img .qcow2 .qcow)?  Names choose
 * which files are looked at; the format always comes from the content. */
bool idd_image_name_matches(const char *name);

/* Largest compressed unit decoded in one piece (qcow2 clusters are <= 2 MiB,
 * VMDK grains <= 1 MiB at any sane grain size). */
#define IDD_MAX_COMPRESSED_UNIT ((uint64_t)64 << 20)

/* Format backends register here (image.c asks each in turn). */
typedef int (*idd_format_probe_fn)(const unsigned char *head, size_t len);
typedef int (*idd_format_open_fn)(idd_image *img, idd_backing_open_fn bo, void *bctx, idd_error *err);
int idd_qcow2_probe(const unsigned char *head, size_t len);
int idd_qcow2_open(idd_image *img, idd_backing_open_fn bo, void *bctx, idd_error *err);
int idd_vmdk_probe(const unsigned char *head, size_t len);
int idd_vmdk_open(idd_image *img, idd_backing_open_fn bo, void *bctx, idd_error *err);

#endif
