/* source_remote.h - the repository's image as a block source (read by
 * range in its original format, every block verified). */
#ifndef IDD_NODE_SOURCE_REMOTE_H
#define IDD_NODE_SOURCE_REMOTE_H

#include "index/catalog.h"
#include "node/blocksource.h"
#include "base/fetch.h"

/* Open image `info` of the repository at SOURCE (a directory or URL) as a
 * block source.  image_size is the map's; tmp_dir receives a streamed
 * archive member (extracted once, unlinked); `readers` batches may be
 * fetched at once (each with its own connections).  info must outlive the
 * source.  Counters: bytes = stored bytes transferred (the whole archive
 * for a streamed member), requests = requests made. */
int idd_remote_source_open(const char *source, const idd_image_info *info, uint64_t image_size,
                           uint32_t block_size, const char *tmp_dir, int readers,
                           const idd_fetch_opts *fo, idd_warn_fn warn, void *ctx,
                           idd_block_source **out, idd_error *err);

/* A source that prices reads of image `info` instead of making them: every
 * request ends IDD_OK (its buffer untouched) and bytes counts what
 * idd_remote_source_open's source would transfer: a block's bytes in the
 * image (exact for raw images and members read in place; for qcow2 and VMDK
 * the virtual bytes, which their compressed clusters would undercut), and
 * the whole archive once for a member that has to be streamed.  Nothing is
 * opened or fetched. */
int idd_remote_source_open_estimate(const idd_image_info *info, uint64_t image_size,
                                    uint32_t block_size, idd_block_source **out, idd_error *err);

#endif
