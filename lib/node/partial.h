/* partial.h - a partial image in the node cache: the blocks serve fetched
 * so far, in a sparse file at their own offsets, and a presence journal.
 *
 *   CACHE/images/NAME.partial   the image's bytes where present (sparse)
 *   CACHE/images/NAME.present   journal: a header, then one record per
 *                               block whose data is durable
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

#include <pthread.h>

#define IDD_PARTIAL_DATA_SUFFIX ".partial"
#define IDD_PARTIAL_JOURNAL_SUFFIX ".present"
#define IDD_PARTIAL_HEADER 64
#define IDD_PARTIAL_RECORD 48

typedef struct idd_partial_record {
	uint64_t block;
	idd_digest digest;
} idd_partial_record;

typedef struct idd_partial_header {
	uint32_t block_size;
	uint64_t image_size;
	uint64_t data_blocks;  /* non-zero blocks of the image (for "how much is present") */
	idd_digest id_sum;     /* SHA-256 of the image id */
} idd_partial_header;

typedef struct idd_partial {
	char *data_path, *journal_path; /* absolute */
	int data_fd, journal_fd;
	idd_partial_header h;
	pthread_mutex_t lock;           /* guards pending */
	idd_partial_record *pending;    /* written, not yet durable nor journaled */
	size_t npending, cap_pending;
} idd_partial;

/* Open (creating) the partial image of id at base (CACHE/images/NAME,
 * without suffix).  A journal for another image or block size starts over
 * (both files emptied).  Both files are share-locked while open. */
int idd_partial_open(const char *base, const char *id, uint32_t block_size, uint64_t image_size,
                     uint64_t data_blocks, idd_partial **out, idd_error *err);
void idd_partial_close(idd_partial *p);
/* Write one block's bytes (len <= block size) at its offset. */
int idd_partial_write(idd_partial *p, uint64_t block, const void *buf, size_t len, idd_error *err);
/* Queue the record of a block written: journaled at the next flush. */
int idd_partial_note(idd_partial *p, uint64_t block, const idd_digest *d, idd_error *err);
/* Make queued blocks durable, then journal them.  *flushed: records written. */
int idd_partial_flush(idd_partial *p, size_t *flushed, idd_error *err);

/* Read a journal from byte offset *off on (0: with its header): calls fn for
 * every intact record and advances *off past them; stops at the first torn
 * or damaged record (a writer may be appending).  A bad header is
 * IDD_ECORRUPT. */
typedef int (*idd_partial_record_fn)(void *ctx, const idd_partial_record *r);
int idd_partial_journal_read(const char *path, idd_partial_header *h, uint64_t *off,
                             idd_partial_record_fn fn, void *ctx, idd_error *err);

#endif
