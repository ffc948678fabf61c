/* image.h - virtual disks over byte sources: the format table, raw, and
 * reading through extents (image.c); the qcow2 and VMDK backends (qcow2.c,
 * vmdk.c) plug in as entries of the table. */
#ifndef IDD_FORMATS_IMAGE_H
#define IDD_FORMATS_IMAGE_H

#include "base/file.h"

/* ---- images ----
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

/* Backing files are resolved by the caller, never by the formats: the hook
 * opens the file a backing name refers to (its own rules: confined to a
 * repository, fetched from a remote source, ...).  A chain is opened top
 * down on the calling thread, one call per level: the first call resolves
 * the name found in the image being opened, each further call the name
 * found in the file the previous call returned.  So a hook can keep in its
 * ctx what resolving the next name needs (the directory of the file it
 * returned last) and record the chain as it goes.  The library stops a
 * chain deeper than IDD_MAX_BACKING_DEPTH (a cycle) before asking. */
typedef int (*idd_backing_open_fn)(void *ctx, const char *name, idd_file **out, idd_error *err);
#define IDD_MAX_BACKING_DEPTH 16

typedef struct idd_image idd_image;
struct idd_image_ops {
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
	const char *format;  /* the format's name ("raw", "qcow2", "vmdk") */
	void *priv;
	int depth;           /* 0: the image opened; n: the n-th backing file below it */
	idd_backing_open_fn backing_open; /* the caller's hook; NULL: backing files refused */
	void *backing_ctx;
};

/* Detect the format from content (idd_image_formats) and open the image over
 * f.  Takes ownership of f when owns_file (also on failure).  backing_open
 * resolves backing files (NULL: an image with a backing file is refused). */
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

/* ---- the format table ----
 * Each format is a bidder, as in libarchive: probe looks at the first bytes
 * of a file and bids how sure it is that they are its own (0: not mine).
 * idd_image_open asks every format of idd_image_formats and opens the file
 * with the highest bidder, the earlier of equal bids.  raw bids
 * IDD_BID_ANYTHING for any bytes, so whatever no other format recognises is
 * raw.  A new format is one more entry in the table (image.c). */
#define IDD_PROBE_BYTES 4096    /* bytes given to probe (fewer for a shorter file) */
#define IDD_BID_MAGIC 100       /* the format's magic number or signature is there */
#define IDD_BID_ANYTHING 1      /* raw: any bytes are a raw disk */

typedef struct idd_image_format {
	const char *name;
	int (*probe)(const unsigned char *head, size_t len);
	/* Open img over img->file: set img->ops, img->size, img->priv.
	 * img->file, img->format and the backing hook are set already; on
	 * failure nothing is left allocated.  Backing files are opened with
	 * idd_image_open_backing only. */
	int (*open)(idd_image *img, idd_error *err);
} idd_image_format;

extern const idd_image_format idd_format_raw, idd_format_qcow2, idd_format_vmdk;
/* The table, in bidding order; *n receives its length. */
const idd_image_format *const *idd_image_formats(size_t *n);
/* The format that wins for these first bytes (raw at least, never NULL). */
const idd_image_format *idd_image_format_detect(const unsigned char *head, size_t len);

/* For format backends: open the backing image NAME of img through the hook
 * img was opened with, detecting its format as idd_image_open does.  format
 * is what img says the backing file is (NULL or "": anything); another
 * format is refused.  Refused too without a hook and deeper than
 * IDD_MAX_BACKING_DEPTH levels. */
int idd_image_open_backing(idd_image *img, const char *name, const char *format, idd_image **out,
                           idd_error *err);

#endif
