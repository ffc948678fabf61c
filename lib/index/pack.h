/* pack.h - the pack: a zstd-compressed copy of every distinct non-zero
 * block of the repository, kept beside the index (INDEX/pack/), so that
 * deploy and serve transfer fewer bytes while the images stay as they are.
 * Layout byte by byte, and the measurements that chose it: docs/formats.md
 * ("Pack").
 *
 *   pack/index              the manifest (magic IDD-PKI): data files, the
 *                           runs of the digest index, the block lists the
 *                           pack covers
 *   pack/runs/<16 hex>      sorted runs of digest -> ordinal (a log-
 *                           structured merge, newest wins), searched in
 *                           place through mmap
 *   pack/data/<hex>.zpk     data files: a header (a zstd skippable frame),
 *                           then zstd frames back to back, each holding up
 *                           to 256 KiB of whole blocks
 *   pack/data/<hex>.zpf     each data file's frame table (fixed records,
 *                           searched in place)
 *   pack/views/<hex>        one view per block list (named by its list_key):
 *                           where each distinct digest of the image sits,
 *                           in the image's map order, and the frames holding
 *                           them; all a remote node fetches besides frames
 *   pack/lists/<hex>        the block list each view was made from (a hard
 *                           link to blocks/<hex>): what a later run takes
 *                           away when that list leaves the catalog
 *
 * Producer: pack_build.c (`imgdedup pack`).  The index: pack_index.c.
 * Consumers: the pack block source (node/source_pack.c, views only),
 * verify, info. */
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
#define IDD_PACK_RUNS_DIR "pack/runs"
#define IDD_PACK_LISTS_DIR "pack/lists"
#define IDD_PACK_DATA_SUFFIX ".zpk"
#define IDD_PACK_FT_SUFFIX ".zpf"

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
	/* index only: */
	uint64_t nslots;      /* blocks its frames hold */
	uint64_t first;       /* ordinal of its first block */
	uint64_t first_frame; /* index of its first frame among the pack's frames */
	uint64_t ft_size, ft_ino; /* its frame table file as written (version 2) */
	int64_t ft_mtime_ns;
	const unsigned char *ft; /* the frame table's records, mapped on first use */
	void *ft_map;
	size_t ft_map_len;
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

#define IDD_PACK_ENTRY 40 /* digest[32], u64 ordinal: index version 1 and runs */
/* A run entry with this ordinal says the digest left the pack. */
#define IDD_PACK_REMOVED UINT64_MAX
/* Frame table record: u64 first (block of the file), u64 off, u32 clen,
 * u32 nblocks. */
#define IDD_PACK_FT_REC 24
/* Version 1 only: some blocks of the catalog could not be packed. */
#define IDD_PACK_INCOMPLETE 1u
/* A list whose unpacked count is unknown (from a version 1 index that was
 * incomplete): it is gone through again. */
#define IDD_PACK_UNPACKED_UNKNOWN UINT64_MAX

/* A sorted run of the digest index. */
typedef struct idd_pack_idxrun {
	uint64_t seq, entries;
	uint64_t size, ino;     /* its file as written */
	int64_t mtime_ns;
	const unsigned char *recs; /* entries x IDD_PACK_ENTRY bytes, sorted */
	void *map;              /* the mapped file (NULL: recs lie in the payload) */
	size_t map_len;
} idd_pack_idxrun;

/* A block list the pack covers: it has a view, and its digests are packed
 * (all but `unpacked`, which the next run tries again). */
typedef struct idd_pack_list {
	idd_digest list_key;
	uint64_t nblocks, zero_blocks; /* to read its retained copy back */
	uint64_t ndistinct;
	uint64_t unpacked;
} idd_pack_list;

typedef struct idd_pack_index {
	uint32_t version;      /* of the file: 1 (older imgdedup, one sorted table) or 2 */
	uint32_t block_size;
	uint32_t frame_blocks; /* most blocks in one frame */
	uint32_t level;
	uint32_t flags;         /* version 1: IDD_PACK_INCOMPLETE */
	idd_digest catalog_key; /* version 1: the catalog state it was built for */
	int64_t written_ns;     /* version 2: when the manifest was written */
	uint64_t next_seq;      /* version 2: the next run number */
	size_t nfiles;
	idd_pack_file *files;
	size_t nframes;         /* frames of all files */
	idd_pack_frame *frames; /* all of them: version 1, or once loaded
	                           (idd_pack_index_load); else NULL */
	uint64_t nslots;        /* blocks in all frames (ordinals 0 .. nslots-1) */
	uint64_t nentries;      /* packed digests (live blocks) */
	size_t nruns;
	idd_pack_idxrun *runs;     /* oldest first; version 1: one, in the payload */
	size_t nlists;
	idd_pack_list *lists;   /* sorted by list_key: the views */
	char *dir;              /* the index directory (runs and frame tables) */
	void *payload;
} idd_pack_index;

/* Parse a pack index file (container included), either version.  Checked:
 * every count against the payload, the files, runs and lists; version 1:
 * frames inside and filling their files, entries strictly sorted and
 * pointing at existing slots.  Runs are not opened. */
int idd_pack_index_parse(const char *name, const void *file, size_t len, idd_pack_index **out,
                         idd_error *err);
/* INDEX/pack/index with its runs mapped (headers checked; a run whose file
 * is not as the manifest recorded it has its checksum and order verified);
 * IDD_ENOENT when there is no pack. */
int idd_pack_index_open(const char *index_dir, idd_pack_index **out, idd_error *err);
/* For tests: called after the manifest is read, before its runs are
 * opened, to interleave a concurrent pack run deterministically. */
extern void (*idd_pack_index_read_hook)(void *ctx, const char *index_dir);
extern void *idd_pack_index_read_hook_ctx;
/* The same, with every frame in x->frames (verify, tests). */
int idd_pack_index_load(const char *index_dir, idd_pack_index **out, idd_error *err);
void idd_pack_index_free(idd_pack_index *x);
/* The ordinal of d (newest run first); false when the pack does not hold it. */
bool idd_pack_find(const idd_pack_index *x, const idd_digest *d, uint64_t *ordinal);
/* Where ordinal p (< nslots) lies.  IDD_ECORRUPT for a damaged frame table. */
int idd_pack_locate(idd_pack_index *x, uint64_t p, idd_pack_loc *loc, idd_error *err);
/* find + locate: false when the pack does not hold d (or cannot say where). */
bool idd_pack_lookup(idd_pack_index *x, const idd_digest *d, idd_pack_loc *loc);
/* The frame holding ordinal p (p < nslots), by binary search. */
size_t idd_pack_frame_of(const idd_pack_frame *frames, size_t nframes, uint64_t p);
/* Is list_key covered (a view)?  Its entry, or NULL. */
const idd_pack_list *idd_pack_index_list(const idd_pack_index *x, const idd_digest *list_key);

/* Lookups in digest order: one position per run, galloping forward. */
typedef struct idd_pack_seeker {
	const idd_pack_index *x;
	uint64_t *pos;
} idd_pack_seeker;
int idd_pack_seeker_init(idd_pack_seeker *s, const idd_pack_index *x, idd_error *err);
void idd_pack_seeker_free(idd_pack_seeker *s);
/* As idd_pack_find, for digests given in increasing order. */
bool idd_pack_seek(idd_pack_seeker *s, const unsigned char d[32], uint64_t *ordinal);

/* Every live entry in digest order (the runs merged, newest winning,
 * removals skipped). */
typedef struct idd_pack_iter {
	const idd_pack_index *x;
	uint64_t *pos;
} idd_pack_iter;
int idd_pack_iter_init(idd_pack_iter *it, const idd_pack_index *x, idd_error *err);
void idd_pack_iter_free(idd_pack_iter *it);
/* 1 with the next entry (*digest points into a run), 0 at the end. */
int idd_pack_iter_next(idd_pack_iter *it, const unsigned char **digest, uint64_t *ordinal);

/* ---- writing the index (pack_build.c) ---- */

/* Bytes each of pack's external sorts holds in memory (at most three at
 * once); beyond that they spill to files in INDEX/pack.  Tests lower it. */
extern size_t idd_pack_sort_budget;

extern const char IDD_PACK_RUN_MAGIC[8];
extern const char IDD_PACK_FT_MAGIC[8];
#define IDD_PACK_RUN_VERSION 1
#define IDD_PACK_FT_VERSION 1

char *idd_pack_run_path(const char *index_dir, uint64_t seq, idd_error *err);
char *idd_pack_ft_relpath(const idd_digest *name, idd_error *err);
char *idd_pack_list_relpath(const idd_digest *list_key, idd_error *err);
/* Map run r (seq, entries set) of the pack in index_dir, recording its
 * file's identity. */
int idd_pack_run_map(const char *index_dir, idd_pack_idxrun *r, idd_error *err);
void idd_pack_run_unmap(idd_pack_idxrun *r);
/* Record the identity of file f's frame table as it is on disk now. */
int idd_pack_ft_stat(const char *index_dir, idd_pack_file *f, idd_error *err);
/* Write INDEX/pack/index (version 2) atomically. */
int idd_pack_index_save(const char *index_dir, const idd_pack_index *x, idd_error *err);

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

/* Write INDEX/pack/views/<hex list_key> atomically (temp, fsync, rename).
 * Its frames sorted by (file, offset), not overlapping. */
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
