/* fill.h - filling blocks of OUT from a chain of block sources, in windows,
 * on several threads: what deploy does for local copies, fetches and
 * repeats alike. */
#ifndef IDD_NODE_FILL_H
#define IDD_NODE_FILL_H

#include "node/blocksource.h"
#include "node/outpart.h"

typedef void (*idd_fill_progress_fn)(void *ctx, uint64_t bytes_written);

typedef struct idd_fill {
	idd_outpart *part;
	const idd_map *m;
	idd_block_chain *chain;
	atomic_bool *can_clone;      /* cloning (reflinks) still worth trying */
	size_t window_blocks;        /* blocks per window (one chain read each) */
	int jobs;                    /* threads (the caller's included) */
	idd_fill_progress_fn progress; /* called by the caller's thread only */
	void *ctx;
	/* results */
	uint64_t bytes_written;      /* bytes of blocks filled */
	uint64_t bytes_cloned;       /* of those, cloned instead of copied */
	uint64_t *failed;            /* blocks no source could fill (sorted), malloc'd */
	size_t nfailed;
	int failed_status;           /* the status of the first failed block */
} idd_fill;

/* Fill blocks[0..n) (non-zero blocks of m, ascending) from f->chain.  A
 * window's blocks consecutive in OUT are written with one call, cloned
 * when every block came from consecutive offsets of one local file.
 * Blocks that no source filled are listed in f->failed, not written. */
int idd_fill_run(idd_fill *f, const uint64_t *blocks, size_t n, idd_error *err);
void idd_fill_free(idd_fill *f);

#endif
