/* source_seed.h - read-only local images named by the user as a block
 * source (deploy --seed). */
#ifndef IDD_NODE_SOURCE_SEED_H
#define IDD_NODE_SOURCE_SEED_H

#include "node/blocksource.h"
#include "node/cache.h"
#include "node/remote_index.h"

/* Open the n seeds and find which of the digests in `want` (a set with
 * aux, used as scratch) each holds: through the block map of the
 * repository image a seed is a copy of (*mapped counts those), else by
 * hashing it.  self/self_map: the image being assembled (a seed may be a
 * copy of it).  A seed that is not a regular file is refused. */
int idd_seed_source_open(const char *const *paths, size_t n, idd_remote_index *ri,
                         const idd_image_info *self, const idd_map *self_map, idd_digest_set *want,
                         idd_warn_fn warn, void *ctx, uint64_t *mapped, idd_block_source **out,
                         idd_error *err);

#endif
