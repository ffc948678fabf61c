/* source_pack.h - a block source reading the repository's pack
 * (index/pack.h): the view of the image being assembled tells which frames
 * hold its blocks; frames are fetched by range (adjacent ones coalesced),
 * decoded, and every block is verified against its digest. */
#ifndef IDD_NODE_SOURCE_PACK_H
#define IDD_NODE_SOURCE_PACK_H

#include "node/blocksource.h"
#include "base/fetch.h"
#include "index/map.h"

/* Decoded frames kept, so that blocks of one frame asked for in separate
 * read() calls cost one transfer. */
#define IDD_PACK_SOURCE_CACHE ((uint64_t)32 << 20)
/* Compressed bytes fetched per batch of range requests (memory bound). */
#define IDD_PACK_SOURCE_BATCH ((uint64_t)32 << 20)

/* Open the pack source for the image whose block map is `map` (its
 * list_key names the view: INDEX_PREFIX + "pack/views/<hex>").  repo is
 * the repository's index source (a directory or URL; index_prefix "" or
 * ".imgdedup/" as for the catalog); repo and map must outlive the source.
 * Fetches the view (a few KiB; its size is counted by
 * idd_pack_source_index_bytes).
 * Returns IDD_OK; IDD_ENOENT when SOURCE has no pack for this image (no
 * pack, or a pack older than the image): nothing to warn about, deploy
 * just goes without it; IDD_ECORRUPT (damaged view), IDD_ENET, ... with err
 * saying why: the caller warns once and goes without it.
 * read() may be called from several threads: calls are serialised.  Pass
 * as many requests per call as possible (deploy: every missing block, or
 * windows of them): each frame needed is fetched once per call, and the
 * last IDD_PACK_SOURCE_CACHE bytes of decoded frames are kept for later
 * calls.  If a frame cannot be fetched later (the pack
 * was rebuilt meanwhile, the network failed), the source warns once and
 * answers IDD_ENOENT from then on: the caller falls back to the images.
 * Counters: blocks delivered, bytes = compressed frame bytes transferred,
 * requests = range requests made (retries: retried; both read from repo's
 * counters around each fetch, so they include what other users of repo do
 * at the same moment), damaged = blocks failing verification (status
 * IDD_ECORRUPT, warned once). */
int idd_pack_source_open(idd_source *repo, const char *index_prefix, const idd_map *map,
                         idd_warn_fn warn, void *ctx, idd_block_source **out, idd_error *err);
/* The same source pricing reads instead of making them: it fetches the
 * view only; read() answers every block the pack holds IDD_OK without
 * writing its buffer, and counts in bytes (and blocks) what a source opened
 * with idd_pack_source_open would transfer for the same sequence of read()
 * calls: the same frames, coalesced and kept in the same bounded frame
 * cache.  Nothing but the view is fetched. */
int idd_pack_source_open_estimate(idd_source *repo, const char *index_prefix, const idd_map *map,
                                  idd_warn_fn warn, void *ctx, idd_block_source **out,
                                  idd_error *err);
/* Index bytes the source fetched (its view), for bytes_index. */
uint64_t idd_pack_source_index_bytes(const idd_block_source *s);

#endif
