/* blocktable.h - how many images hold each distinct digest of the
 * repository, kept up to date from the block lists that changed
 * (blocktable.c).  Layout: docs/formats.md ("Block table"). */
#ifndef IDD_INDEX_BLOCKTABLE_H
#define IDD_INDEX_BLOCKTABLE_H

#include "base/util.h"

#define IDD_BLOCKTABLE_DIR "blocktable"

/* An image the table counts, and its block list file as it was when
 * counted: a list whose file still looks the same need not be read again
 * to be trusted. */
typedef struct idd_bt_image {
	char *id;
	idd_digest list_key;
	uint64_t nblocks, zero_blocks;
	uint64_t list_size, list_ino;
	int64_t list_mtime_ns;
	bool seen; /* in memory: this run found the list's file as recorded */
} idd_bt_image;

/* A sorted run of (digest, signed count) entries; a digest's count is the
 * sum over every run.  Mapped read-only while the table is open. */
typedef struct idd_bt_run {
	uint64_t seq, entries;
	uint64_t size, ino;
	int64_t mtime_ns;
	const unsigned char *map;
	size_t map_len;
	uint64_t touched;    /* lookups since its pages were last dropped */
	uint64_t dropped_to; /* entries before this one are out of the resident set */
} idd_bt_run;

typedef struct idd_blocktable {
	char *dir;
	uint64_t next_seq;
	int64_t written_ns;     /* when the manifest was written: a file modified
	                           within a moment of it is not trusted by its stat */
	uint64_t entries;       /* distinct non-zero digests at least one image holds */
	size_t nruns;
	idd_bt_run *runs;       /* oldest (largest) first */
	size_t nimages;
	idd_bt_image *images;   /* sorted by id */
	int lists_fd;           /* blocks/, opened on first use: the lists are
	                           stat'ed relative to it, one lookup each */
	bool lists_fd_open;
} idd_blocktable;

typedef struct idd_bt_update_stats {
	uint64_t entries;       /* as idd_blocktable.entries after the update */
	bool rebuilt;           /* counted from every block list: no usable table */
	bool repaired;          /* ... because the table was damaged (warned) */
	uint64_t lists_read;    /* block lists read to update it */
	uint64_t runs_written;
	uint64_t bytes_written; /* run files written, merges included */
} idd_bt_update_stats;

/* Entries held in memory before they are written out as a sorted run
 * (36 bytes each): the update's memory budget. */
extern size_t idd_blocktable_buffer_entries;

/* Open the table (manifest and runs).  IDD_ENOENT when there is none, or
 * only one in the format of an older imgdedup (the next update replaces it). */
int idd_blocktable_open(const char *index_dir, idd_blocktable **out, idd_error *err);
void idd_blocktable_free(idd_blocktable *bt);
/* Does the table count exactly the catalog's images (ids and lists)? */
bool idd_blocktable_matches(const idd_blocktable *bt, const idd_catalog *cat);
/* How many images hold d (0: none). */
int idd_blocktable_count(idd_blocktable *bt, const idd_digest *d, int64_t *count, idd_error *err);
/* Was im's block list counted by this table, and does its file look as it
 * did then (size, inode, mtime)?  Only lists in the current format are
 * trusted so; the image is marked seen for the update that follows. */
bool idd_blocktable_list_trusted(idd_blocktable *bt, const char *index_dir,
                                 const idd_image_info *im);
/* Bring the table to the catalog's images, reading only the block lists of
 * images added, changed or removed since it was written (all of them when
 * there is no usable table).  Caller holds the index lock.  dropped (may be
 * NULL, else cat->count flags): a catalog image whose list cannot be read
 * is flagged and left out; with NULL that is an error.  lists_checked: the
 * caller checked every list of cat this run (scan), by reading it or by
 * idd_blocktable_list_trusted on opened, so their file identities may be
 * recorded as trusted.  opened (may be NULL): the table as the caller
 * opened it under the same lock, used rather than read again (and still
 * the caller's to free). */
int idd_blocktable_update(const char *index_dir, idd_blocktable *opened, const idd_catalog *cat,
                          bool *dropped,
                          bool lists_checked, idd_bt_update_stats *st, idd_warn_fn warn, void *ctx,
                          idd_error *err);
/* Bytes the table's files take. */
uint64_t idd_blocktable_bytes(const char *index_dir);

#endif
