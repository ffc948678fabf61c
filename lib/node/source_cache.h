/* source_cache.h - the node cache as a block source. */
#ifndef IDD_NODE_SOURCE_CACHE_H
#define IDD_NODE_SOURCE_CACHE_H

#include "node/blocksource.h"
#include "node/cache.h"

/* A source over c (prepared for block_size; c must outlive it).  Requests
 * are answered from whichever cached image holds the content; a file that
 * fails verification is left for the rest of the run (see
 * idd_cache_read_blocks). */
int idd_cache_source_open(idd_cache *c, uint32_t block_size, idd_warn_fn warn, void *ctx,
                          idd_block_source **out, idd_error *err);

#endif
