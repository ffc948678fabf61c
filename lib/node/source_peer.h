/* source_peer.h - other nodes' caches as one block source (source_peer.c).
 *
 * A peer is another node's cache directory served read-only over HTTP (any
 * web server; docs/peers.md): PEER/index is its cache index (cache.c's
 * IDD-CIX file) and PEER/images/... the images it names.  The source reads
 * each peer's index once, when opened, and then answers for every block some
 * peer holds: requests are spread over the peers holding them, each peer's
 * share read in one thread of its own (ranges coalesced, several requests in
 * flight), every block verified against its digest.  Peers are untrusted: a
 * peer that cannot be reached or whose index is damaged is skipped; a file
 * that serves a wrong block, or has gone, is not used again and its blocks
 * are asked of the next peer holding them; a peer whose requests keep
 * failing (retries exhausted) is dropped for the rest of the run.  Each is a
 * warning, never a failure: what no peer delivers stays IDD_ENOENT (or
 * IDD_ECORRUPT when a peer served damage) for the next source.
 *
 * Threads: read() may run in several threads at once: the peers' state is
 * atomics plus a mutex around opening files.
 */
#ifndef IDD_NODE_SOURCE_PEER_H
#define IDD_NODE_SOURCE_PEER_H

#include "node/blocksource.h"
#include "base/fetch.h"

/* At most this many peers in one source. */
#define IDD_MAX_PEERS 64

/* Open the peers urls[0..n) (http:// or https:// URLs, or local directories)
 * for blocks of block_size bytes.  fo: per-peer settings; zero fields take
 * peer defaults, quicker to give up than for SOURCE since a peer is only a
 * shortcut: 4 connections, 2 retries, 50 ms backoff, 5 s stall timeout.
 * Returns an error only for bad arguments (no peers, too many, a bad URL)
 * or out of memory; an unusable peer is a warning and holds nothing. */
int idd_peer_source_open(const char *const *urls, size_t n, uint32_t block_size,
                         const idd_fetch_opts *fo, idd_warn_fn warn, void *ctx,
                         idd_block_source **out, idd_error *err);

/* Peers whose index was read and that have not been dropped. */
size_t idd_peer_source_live(idd_block_source *s);

#endif
