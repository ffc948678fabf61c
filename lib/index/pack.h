/* pack.h - the pack: a zstd-compressed copy of every distinct non-zero
 * block of the repository, kept beside the index (INDEX/pack/), so that
 * deploy and serve transfer fewer bytes while the images stay as they are.
 * Layout byte by byte, and the measurements that chose it: docs/formats.md
 * ("Pack").
 *
 *   pack/index              the pack index (container, magic IDD-PKI): data
 *                           files, frames, every packed digest sorted
 *   pack/data/<hex>.zpk     data files: a header (a zstd skippable frame),
 *                           then zstd frames back to back, each holding up
 *                           to 256 KiB of whole blocks
 *   pack/views/<hex>        one view per block list (named by its list_key):
 *                           where each distinct digest of the image sits,
 *                           in the image's map order, and the frames holding
 *                           them; what a remote node fetches
 *
 * Producer: pack_build.c (`imgdedup pack`).  Consumers: the pack block
 * source (node/source_pack.c), verify, info. */
#ifndef IDD_INDEX_PACK_H
#define IDD_INDEX_PACK_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"

#include <zstd.h>

#define IDD_PACK_DIR "pack"
#define IDD_PACK_INDEX_FILE "pack/index"
#define IDD_PACK_VIEWS_DIR "pack/views"
#define IDD_PACK_DATA_DIR "pack/data"
#define IDD_PACK_DATA_SUFFIX ".zpk"

/* Raw bytes of whole blocks a frame holds at most (one block when blocks
 * are larger).  Measured on the corpus: 64 KiB frames 14.92 MB, 256 KiB
 * 14.49 MB, 1 MiB 13.85 MB for the same deploy; 256 KiB keeps what a
 * single on-demand read pulls in small. */
#define IDD_PACK_FRAME_BYTES (256u << 10)
/* zstd level of the frames (default; `pack --level` chooses another): 9
 * packs the corpus in ~16 s on two cores; 15 makes frames 6% smaller in
 * 5x the time, 19 7% smaller in 9x (docs/formats.md). */
#define IDD_PACK_LEVEL 9
/* Data file header: a zstd skippable frame (magic, length 24) holding
 * "IDD-PKD\0", u32 version, u32 block_size, u32 frame_blocks, u32 0. */
#define IDD_PACK_DATA_HEADER 32
#define IDD_PACK_SKIPPABLE_MAGIC 0x184D2A5Bu
/* Index and view payloads are refused above this (a bound before
 * allocating; the corpus index is 5 MB, a view a few KiB). */
#define IDD_PACK_MAX_INDEX ((uint64_t)16 << 30)
#define IDD_PACK_MAX_VIEW ((uint64_t)1 << 30)

typedef struct idd_pack_file {
	idd_digest name;  /* SHA-256 of the file's content: pack/data/<hex>.zpk */
	uint64_t size;    /* bytes */
	uint64_t nframes; /* frames it holds (index only) */
} idd_pack_file;

typedef struct idd_pack_frame {
	uint32_t file;    /* index into the file list */
	uint32_t nblocks; /* whole blocks it decodes to (>= 1) */
	uint64_t off;     /* byte offset in its data file */
	uint64_t clen;    /* compressed length: the frame is [off, off + clen) */
	uint64_t first;   /* ordinal of its first block (index: in the pack;
	                     view: in the view) */
} idd_pack_frame;

/* Where one block is: frame (file, offset, length, blocks) and its slot. */
typedef struct idd_pack_loc {
	uint64_t frame;   /* index into the frame list it came from */
	uint32_t file;
	uint32_t nblocks;
	uint64_t off, clen;
	uint32_t slot;    /* block within the frame, < nblocks */
} idd_pack_loc;

#define IDD_PACK_ENTRY 40 /* digest[32], u64 ordinal */
/* Some blocks of the catalog could not be packed (unreadable, changed
 * since the scan): the next run tries them again even if nothing changed. */
#define IDD_PACK_INCOMPLETE 1u

typedef struct idd_pack_index {
	uint32_t block_size;
	uint32_t frame_blocks; /* most blocks in one frame */
	uint32_t level;
	uint32_t flags;         /* IDD_PACK_INCOMPLETE */
	idd_digest catalog_key; /* the catalog state this pack was built for */
	size_t nfiles;
	idd_pack_file *files;
	size_t nframes;
	idd_pack_frame *frames;
	uint64_t nslots;        /* blocks in all frames (ordinals 0 .. nslots-1) */
	uint64_t nentries;      /* packed digests (live blocks) */
	const unsigned char *entries; /* nentries x 40 bytes, sorted by digest */
	size_t nviews;
	idd_digest *views;      /* list_keys with a view, sorted */
	void *payload;          /* owns entries */
} idd_pack_index;

/* Parse a whole pack index file (container included).  Everything is
 * checked: lengths against the payload, frames inside their files, entries
 * strictly sorted and pointing at existing slots. */
int idd_pack_index_parse(const char *name, const void *file, size_t len, idd_pack_index **out,
                         idd_error *err);
/* INDEX/pack/index; IDD_ENOENT when there is no pack. */
int idd_pack_index_load(const char *index_dir, idd_pack_index **out, idd_error *err);
void idd_pack_index_free(idd_pack_index *x);
/* Binary search for d: false when the pack does not hold it. */
bool idd_pack_lookup(const idd_pack_index *x, const idd_digest *d, idd_pack_loc *loc);
/* The frame holding ordinal p (p < nslots), by binary search. */
size_t idd_pack_frame_of(const idd_pack_frame *frames, size_t nframes, uint64_t p);

/* A view: for one block list (list_key), every distinct non-zero digest in
 * map order (first occurrence) -> its slot among the view's frames. */
typedef struct idd_pack_view {
	idd_digest list_key;
	uint32_t block_size;
	uint64_t ndistinct;
	size_t nfiles;
	idd_pack_file *files;   /* name and size (nframes unused) */
	size_t nframes;
	idd_pack_frame *frames; /* first: view slot of the frame's first block */
	uint64_t nslots;
	uint64_t *slot;         /* ndistinct: view slot + 1, or 0 when not packed */
	uint64_t packed;        /* digests with a slot */
} idd_pack_view;

/* max_payload: the largest payload accepted (0: IDD_PACK_MAX_VIEW); a
 * reader that knows the image's distinct block count passes
 * idd_pack_view_max_payload(ndistinct), so that a small hostile file
 * cannot make it allocate more than the image warrants. */
int idd_pack_view_parse(const char *name, const void *file, size_t len, uint64_t max_payload,
                        idd_pack_view **out, idd_error *err);
/* Bytes a view of ndistinct digests can take at most (every digest in its
 * own frame of its own file would take less). */
static inline uint64_t idd_pack_view_max_payload(uint64_t ndistinct)
{
	return 4096 + ndistinct * 96;
}
void idd_pack_view_free(idd_pack_view *v);
/* Where digest k (map order) is; false when not packed or k is out of range. */
bool idd_pack_view_find(const idd_pack_view *v, uint64_t k, idd_pack_loc *loc);

/* Write INDEX/pack/index and INDEX/pack/views/<hex list_key> atomically
 * (temp, fsync, rename).  The index's frames must be in file order, each
 * file's frames back to back from its header; a view's frames sorted by
 * (file, offset), not overlapping. */
int idd_pack_index_save(const char *index_dir, const idd_pack_index *x, idd_error *err);
int idd_pack_view_save(const char *index_dir, const idd_pack_view *v, idd_error *err);

/* Paths relative to the index directory (also used to build URLs). */
char *idd_pack_view_relpath(const idd_digest *list_key, idd_error *err);
char *idd_pack_data_relpath(const idd_digest *name, idd_error *err);

/* Decode one frame that must hold exactly nblocks blocks of bs bytes into
 * out (nblocks * bs bytes).  Refused: anything but exactly one zstd frame
 * of that declared content size (bombs, concatenations, truncations),
 * frames needing a dictionary. */
int idd_pack_frame_decode(ZSTD_DCtx *dctx, const char *name, const void *frame, size_t clen,
                          uint32_t nblocks, uint32_t bs, void *out, idd_error *err);

/* Check the pack of an index (verify): the index and every view parse,
 * every data file is there with its size, every catalog image has a view;
 * with deep, every frame decodes and every packed block matches its
 * digest, and each view agrees with the image's block list.  Each problem
 * goes to warn and is counted in *problems. */
void idd_pack_verify(const char *index_dir, const idd_catalog *cat, bool deep, idd_warn_fn warn,
                     void *ctx, uint64_t *problems);

#endif
