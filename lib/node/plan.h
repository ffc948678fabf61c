/* plan.h - what a deploy of one image needs: each block of its map sorted
 * by where its content will come from (a hole, an interrupted OUT, the
 * node's local data, a fetch, an earlier copy in OUT), and the chain of
 * sources a fetch asks (peers, the pack, the image in SOURCE).
 *
 * deploy.c runs a plan; estimate.c prices the same plan without fetching
 * a block (the sources opened in estimate mode), so that an estimate is
 * what the deploy would transfer, not a second opinion about it. */
#ifndef IDD_NODE_PLAN_H
#define IDD_NODE_PLAN_H

#include "base/util.h"
#include "base/error.h"
#include "base/fetch.h"
#include "index/map.h"
#include "node/blocksource.h"
#include "node/remote_index.h"

/* Windows: local copies in runs of 1 MiB, fetches of up to 16 MiB (one
 * chain read each: what the pack source fetches per call depends on it). */
#define IDD_PLAN_LOCAL_WINDOW_BYTES ((uint64_t)1 << 20)
#define IDD_PLAN_FETCH_WINDOW_BYTES ((uint64_t)16 << 20)

/* Where a digest's first copy comes from. */
enum idd_plan_origin { IDD_PLAN_FETCH, IDD_PLAN_HAVE, IDD_PLAN_LOCAL };

/* A growable list of block numbers. */
typedef struct idd_blist {
	uint64_t *v;
	size_t n, cap;
} idd_blist;

int idd_blist_push(idd_blist *l, uint64_t b, idd_error *err);
void idd_blist_free(idd_blist *l);

typedef struct idd_plan {
	const idd_map *m;
	uint32_t bs;
	unsigned char *origin; /* per digest k = 1..ndistinct: enum idd_plan_origin */
	uint64_t *pos;         /* per digest: block holding its first copy, UINT64_MAX: none yet */
	uint64_t *valid;       /* blocks found right in an interrupted OUT, ascending */
	size_t nvalid, cap_valid;
	bool valid_oom;
} idd_plan;

/* Every digest of m to fetch, nothing placed yet. */
int idd_plan_init(idd_plan *p, const idd_map *m, idd_error *err);
void idd_plan_free(idd_plan *p);
/* Block `block` (content ref) is already right in OUT (blocks reported in
 * ascending order, as idd_outpart_resume does).  Out of memory is noted
 * in valid_oom. */
void idd_plan_have(idd_plan *p, uint64_t block, uint32_t ref);
/* Digests still to fetch that src says it holds (its has()) become local
 * copies. */
void idd_plan_locate(idd_plan *p, idd_block_source *src);
/* Digests still to fetch. */
uint64_t idd_plan_count_fetch(const idd_plan *p);

/* What sorting settled without a source. */
typedef struct idd_plan_settled {
	uint64_t bytes_zero;  /* zero blocks: holes */
	uint64_t bytes_valid; /* blocks already right in OUT */
} idd_plan_settled;

/* Walk the map in order: the first copy of each digest goes to `local` or
 * `fetch` by its origin, every later copy to `repeat` (NULL: not listed),
 * each list ascending; zero and valid blocks are counted in *st. */
int idd_plan_sort(idd_plan *p, idd_blist *local, idd_blist *fetch, idd_blist *repeat,
                  idd_plan_settled *st, idd_error *err);

/* The sources a fetch asks, in order: peers, the pack, the image. */
typedef struct idd_fetch_sources_opts {
	const char *const *peers;
	size_t n_peers;
	bool no_pack;
	int connections;
	long timeout_s;
	const char *tmp_dir; /* where a streamed archive member is extracted */
	/* Price the fetches instead of making them: the pack source reads its
	 * view (index data) and counts the frames a deploy would transfer; the
	 * image's source counts its stored bytes; no block is transferred, no
	 * request buffer is written, every request ends IDD_OK.  Peers are not
	 * asked (what they hold is not fetched from SOURCE either way). */
	bool estimate;
	idd_warn_fn warn;
	void *ctx;
	/* Peers opened already and shared by several images (serve's exports):
	 * asked first, never closed here; peers and n_peers are then unused. */
	idd_block_source *shared_peer;
	int readers;                /* the image's source's parallel readers (0: one) */
	const atomic_bool *cancel;  /* the image's source stops when it is set (NULL: never) */
	const char *name;           /* warnings about the pack name it (NULL: they name nothing) */
} idd_fetch_sources_opts;

typedef struct idd_fetch_sources {
	idd_block_source *peer, *pack, *remote;
	uint64_t index_bytes; /* the pack's view */
	bool peer_shared;     /* peer is the caller's (shared_peer): not closed here */
} idd_fetch_sources;

/* Open the sources for image `info` (map m) of ri.  A pack that SOURCE
 * lacks, or that cannot be used, and peers that cannot be opened, are left
 * out (with a warning for trouble); the image's source is required. */
int idd_fetch_sources_open(idd_fetch_sources *fs, idd_remote_index *ri, const idd_image_info *info,
                           const idd_map *m, const idd_fetch_sources_opts *o, idd_error *err);
/* The chain to ask, in order: every fetch of deploy, estimate and serve
 * asks this one. */
void idd_fetch_sources_chain(const idd_fetch_sources *fs, idd_block_chain *c);
/* Payload bytes transferred from SOURCE (the pack's compressed frames and
 * the image's stored bytes; peers not included). */
uint64_t idd_fetch_sources_bytes(const idd_fetch_sources *fs);
void idd_fetch_sources_close(idd_fetch_sources *fs);

#endif
