/* outpart.h - the output being written: OUT.part beside OUT, locked, never
 * a symlink or a special file, renamed into place when complete; and the
 * output as a block source (resume, repeats inside the image). */
#ifndef IDD_NODE_OUTPART_H
#define IDD_NODE_OUTPART_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "index/map.h"
#include "node/blocksource.h"

typedef struct idd_outpart {
	char *out, *part;
	int fd;
	uint64_t size;
	uint32_t bs;
} idd_outpart;

/* Open (creating) OUT.part for an image of `size` bytes: refuses a symlink
 * or a non-regular file at that name, takes an exclusive lock (another
 * deploy writing it: IDD_EBUSY) and then checks that the name still names
 * the file locked (a concurrent deploy may have renamed it into place:
 * then a new one is created).  A file of the right size is kept for
 * idd_outpart_resume; any other is emptied and sized. */
int idd_outpart_open(idd_outpart *p, const char *out, uint64_t size, uint32_t bs, idd_error *err);

/* Called for each block found already right in OUT.part (its reference). */
typedef void (*idd_outpart_valid_fn)(void *ctx, uint64_t block, uint32_t ref);
/* Hash what an interrupted run wrote (data regions only) and report every
 * block equal to the map; blocks the map says are zero become holes again.
 * *bytes_valid receives the bytes kept. */
int idd_outpart_resume(idd_outpart *p, const idd_map *m, idd_outpart_valid_fn fn, void *ctx,
                       uint64_t *bytes_valid, idd_error *err);

/* Write len bytes at off, and start their writeback (the final fsync then
 * has little left to wait for). */
int idd_outpart_write(idd_outpart *p, const void *buf, size_t len, uint64_t off, idd_error *err);
/* Clone [src_off, +len) of src_fd to off when the filesystem can, then
 * read it back and compare with the verified bytes; false: write instead. */
bool idd_outpart_clone(idd_outpart *p, atomic_bool *can_clone, int src_fd, uint64_t src_off,
                       const unsigned char *verified, uint64_t len, uint64_t off);

/* fsync, rename to OUT (an existing OUT only with force), fsync the
 * directory. */
int idd_outpart_finish(idd_outpart *p, bool force, idd_error *err);
/* Close; remove OUT.part when the failure is permanent (nothing a re-run
 * could resume: a damaged or refused source). */
void idd_outpart_close(idd_outpart *p, bool remove_part);

/* The output as a block source: the first copy in OUT of each digest
 * (pos[k] for digests[k - 1], UINT64_MAX: none), read back and verified. */
int idd_output_source_open(idd_outpart *p, const idd_map *m, const uint64_t *pos,
                           idd_block_source **out, idd_error *err);

#endif
