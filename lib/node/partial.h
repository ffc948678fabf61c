/* partial.h - a partial image in the node cache: the blocks serve fetched
 * so far, in a sparse file at their own offsets, and a presence journal.
 *
 *   CACHE/images/NAME.partial   the image's bytes where present (sparse)
 *   CACHE/images/NAME.present   journal: a header naming the image and
 *                               the map it is filled for, then one record
 *                               per block whose data is durable
 *
 * A record is appended only after the data it names was fsynced, so a
 * crash or kill -9 loses at most what was being fetched.  Records are also
 * only a hint: every block read from the cache is verified anyway.  Byte
 * layout: docs/formats.md ("Partial images"). */
#ifndef IDD_NODE_PARTIAL_H
#define IDD_NODE_PARTIAL_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "index/map.h"

#include <pthread.h>

#define IDD_PARTIAL_DATA_SUFFIX ".partial"
#define IDD_PARTIAL_JOURNAL_SUFFIX ".present"
#define IDD_PARTIAL_HEADER 64
#define IDD_PARTIAL_RECORD 56    /* a record of a version 2 journal */
#define IDD_PARTIAL_RECORD_V1 48 /* ... and of a version 1 journal */

typedef struct idd_partial_record {
	uint64_t block;
	idd_digest digest;
	uint64_t copies; /* blocks of the image holding this content (1 in a version 1 journal) */
} idd_partial_record;

typedef struct idd_partial_header {
	uint32_t version;
	uint32_t block_size;
	uint64_t image_size;
	uint64_t data_blocks;      /* non-zero blocks of the image (for "how much is present") */
	unsigned char key[24];     /* version 2: SHA-256 of the image id and of its map's content
	                              key; version 1: of the id only */
} idd_partial_header;

typedef struct idd_partial {
	char *data_path, *journal_path; /* absolute */
	int data_fd, journal_fd;
	idd_partial_header h;
	const idd_map *m;               /* the map it is filled for (the caller's, outlives it) */
	uint32_t *copies;               /* per digest of m: the blocks holding it */
	pthread_mutex_t lock;           /* guards pending */
	idd_partial_record *pending;    /* written, not yet durable nor journaled */
	size_t npending, cap_pending;
} idd_partial;

/* The header the partial image of id, filled for map m, carries. */
int idd_partial_header_of(const char *id, const idd_map *m, idd_partial_header *h, idd_error *err);
/* Open (creating) the partial image of id, filled for map m, at base
 * (CACHE/images/NAME, without suffix).  A journal written for anything else
 * (another image, block size, size or map, or a version 1 journal, which
 * does not say its map) starts over: both files emptied.  Both files are
 * share-locked while open. */
int idd_partial_open(const char *base, const char *id, const idd_map *m, idd_partial **out,
                     idd_error *err);
void idd_partial_close(idd_partial *p);
/* Remove the partial image at base (journal first, then data) unless a
 * process has either file open; nothing is reported. */
void idd_partial_remove_unused(const char *base);
/* Write one block's bytes (len <= block size) at its offset. */
int idd_partial_write(idd_partial *p, uint64_t block, const void *buf, size_t len, idd_error *err);
/* Queue the record of a block written (d: the map's digest of that block):
 * journaled at the next flush. */
int idd_partial_note(idd_partial *p, uint64_t block, const idd_digest *d, idd_error *err);
/* Make queued blocks durable, then journal them.  *flushed: records written. */
int idd_partial_flush(idd_partial *p, size_t *flushed, idd_error *err);
/* Make everything written to the data file durable (queued or not). */
int idd_partial_sync(idd_partial *p, idd_error *err);

/* Read a journal from byte offset *off on (0: with its header): calls fn for
 * every intact record and advances *off past them; stops at the first torn
 * or damaged record (a writer may be appending).  A bad header is
 * IDD_ECORRUPT. */
typedef int (*idd_partial_record_fn)(void *ctx, const idd_partial_record *r);
int idd_partial_journal_read(const char *path, idd_partial_header *h, uint64_t *off,
                             idd_partial_record_fn fn, void *ctx, idd_error *err);
/* The records of the journal at base (without suffix), when it was written
 * for image id filled for map m; IDD_ENOENT when there is none or it was
 * written for anything else (its records would be about other content). */
int idd_partial_load(const char *base, const char *id, const idd_map *m, idd_partial_record_fn fn,
                     void *ctx, idd_error *err);

/* Check a cache image file (fd, named path in errors) against m, as it must
 * be before it counts as the complete image: calls bad(ctx, block) for every
 * non-zero block of m whose bytes do not hash to its digest, in ascending
 * order; a zero block of m that is not zero there is made a hole (or
 * written with zeros). */
typedef int (*idd_block_fn)(void *ctx, uint64_t block);
int idd_image_check(int fd, const char *path, const idd_map *m, idd_block_fn bad, void *ctx,
                    idd_error *err);

#endif
