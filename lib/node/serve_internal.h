/* serve_internal.h - what the parts of serve share: an export and the
 * server that holds them, and the functions one part calls in another.
 * Only lib/node/serve*.c include it.
 *
 * The parts: serve.c (the server: open, start, checkpoint, stop, close),
 * serve_export.c (an export opened and freed; --all's catalog),
 * serve_read.c (a client's read: cache, then fetch; the read memory
 * budget; --record), serve_readahead.c (the readahead thread),
 * serve_fetch.c (fetching blocks: each digest once across threads, the
 * failed-block backoff, the source's rate), serve_store.c (a fetched block
 * into the partial file, or a complete image repaired in place),
 * serve_background.c (--prefetch, --fill, repair, the flusher),
 * serve_budget.c (--cache-max), serve_snapshot.c (the counters).
 *
 * Locks, and what each guards:
 *   s->lock         the exports list; cache_src and peer_src while they are
 *                   set up (at the first export), read-only after
 *   s->cat_lock     cat_checked_ns, cat_checking (--all)
 *   s->flush_lock   nothing but flush_wake (the flusher's and the budget
 *                   thread's sleep)
 *   s->mem_lock     mem_used (with mem_freed)
 *   e->part_lock    part, part_entry, own, complete, repair_fd,
 *                   repair_warned (fill_started is set under s->lock)
 *   e->remote_lock  fetch (its sources) while they are opened (first fetch)
 *   e->fl_lock      inflight, ninflight (with fl_done)
 *   e->ra_lock      ra_block, ra_count, ra_queued, ra_started, ra_busy
 *                   (with ra_wake)
 *   e->rec_lock     seen, order, norder (--record)
 * Counters and flags are atomics and need no lock.
 *
 * Lock order: s->lock may be held while taking one of an export's locks
 * (part_lock, remote_lock, fl_lock, ra_lock: the flusher, --cache-max,
 * checkpoint, stop and the snapshot walk the exports so); never the other
 * way round.  No two of an export's locks are held at once.  part_lock
 * and fl_lock may be held while calling into the cache (cache.h) and the
 * negative cache (negcache.h), whose own locks are taken last.  cat_lock,
 * flush_lock, mem_lock and rec_lock are leaves: nothing else is taken
 * under them, and they are not taken under another serve lock.  An
 * export's work queue (workq.h) has a lock of its own, a leaf: taken under
 * s->lock and part_lock when the queue is stopped or given work.  Held across
 * blocking work: s->lock while an export is opened (its index entry and
 * map are read), remote_lock while the export's sources are opened,
 * part_lock around writes, flushes and syncs of the partial file (and the
 * rename that finishes it).  Fetches of blocks run with no serve lock held.
 */
#ifndef IDD_NODE_SERVE_INTERNAL_H
#define IDD_NODE_SERVE_INTERNAL_H

#include "base/u64set.h"
#include "node/blocksource.h"
#include "node/cache.h"
#include "node/metrics.h"
#include "node/negcache.h"
#include "node/partial.h"
#include "node/plan.h"
#include "node/profile.h"
#include "node/readahead.h"
#include "node/remote_index.h"
#include "node/workq.h"

#include <pthread.h>
#include <stdarg.h>

#define DEFAULT_READAHEAD ((uint64_t)2 << 20)
#define MAX_READAHEAD ((uint64_t)4 << 20)
/* The first window of a sequential stream at least (readahead.h): four
 * 4 KiB pages, Linux's first window for a one-page read.  A stream of small
 * reads that stops soon (a boot's metadata reads) then costs a few blocks,
 * not 128 KiB; a real stream's window doubles with each miss. */
#define READAHEAD_MIN ((uint64_t)16 << 10)
#define REFRESH_NS ((int64_t)100 * 1000000)
#define FLUSH_MS 100
#define FILL_WINDOW 256
#define REMOTE_READERS 2
/* An export's background work (--prefetch, --fill, repair) runs on this
 * many threads, and waits while the guest reads and this long after. */
#define BACKGROUND_WORKERS 2
#define GUEST_QUIET_NS ((int64_t)5 * 1000000)
/* A block that failed is not fetched again for 1 s, then 2, 4, ... 60 s
 * while it keeps failing: a guest retrying a failed read in a loop costs
 * next to nothing. */
#define FAIL_BACKOFF_NS ((int64_t)1000000000)
#define FAIL_BACKOFF_MAX_NS ((int64_t)60 * 1000000000)
/* Client read buffers filled at once (the default of read_memory_budget). */
#define READ_MEMORY_BUDGET ((uint64_t)128 << 20)
/* A client read fails after this long (the default of read_timeout_s). */
#define READ_TIMEOUT_S 60
/* Published profiles of other images fetched to choose one to borrow. */
/* A read whose block a readahead is fetching waits for it this long, then
 * fetches the block itself: the readahead must not hold it up. */
#define SPECULATIVE_WAIT_NS ((int64_t)1000000000)
/* Readahead is sized to what the source delivers in about this long. */
#define READAHEAD_TARGET_NS ((int64_t)1000000000)

struct inflight {
	idd_digest d;
	pthread_t owner;
	bool speculative;             /* a readahead: readers wait for it briefly only */
};

/* What the reads of one export did (summed over the exports for the server's
 * totals, idd_server_stats). */
struct read_counters {
	atomic_uint_least64_t reads, bytes_read, bytes_zero, bytes_from_cache, blocks_filled,
	    read_errors, cache_write_errors, fetch_errors;
};

struct idd_export {
	idd_server *srv;
	char *id;
	const idd_image_info *info;
	idd_map *m;
	uint32_t bs;
	uint64_t size;
	char *base;                   /* CACHE/images/NAME */
	char *final_path;             /* where a complete image goes */
	/* the partial image, opened at the first fetch */
	pthread_mutex_t part_lock;
	idd_partial *part;
	size_t part_entry;
	idd_u64set own;               /* blocks present in the partial file; once complete, the
	                                 blocks repaired in place (under part_lock) */
	bool complete;                /* the partial file became the complete image */
	/* a complete image that lacked a block: repaired in place (under part_lock) */
	int repair_fd;
	bool repair_warned;
	atomic_bool repair_wanted;    /* the flusher starts the repair thread */
	/* fetching */
	pthread_mutex_t remote_lock;
	idd_fetch_sources fetch;      /* the server's peers (shared), SOURCE's pack for this image
	                                 when it has one, SOURCE's image: opened at the first fetch */
	pthread_mutex_t fl_lock;      /* guards inflight */
	pthread_cond_t fl_done;
	struct inflight *inflight;
	size_t ninflight, cap_inflight;
	idd_negcache failed;          /* content that failed recently: not fetched again yet */
	atomic_uint_least64_t rate;   /* bytes/s the source delivered lately; 0: not known yet */
	/* readahead: how much, from the evidence of the reads (readahead.h); a
	 * thread of its own fetches the range the last read asked for */
	idd_readahead ra_policy;
	pthread_mutex_t ra_lock;
	pthread_cond_t ra_wake;
	uint64_t ra_block, ra_count;
	bool ra_queued, ra_started;
	bool ra_busy; /* read_ahead running (idd_server_checkpoint waits for it) */
	pthread_t ra_thread;
	/* --record: blocks in the order first read (under rec_lock) */
	pthread_mutex_t rec_lock;
	idd_u64set seen;
	uint64_t *order;
	size_t norder, cap_order;
	/* --prefetch: this export's blocks of the profile */
	uint64_t *prefetch;
	size_t nprefetch;
	/* background work */
	atomic_bool warned_cache_write;
	atomic_bool warned_changed;   /* --all: the catalog holds other content under its id */
	atomic_bool cache_failing;    /* the last block could not be cached: no readahead */
	idd_workq *bg;                /* --prefetch, --fill, repair: guest reads preempt them */
	bool fill_started, prefetch_started; /* submitted to bg */
	/* counters */
	struct read_counters c;
	idd_latency_hist read_ns, fetch_ns;
};

struct idd_server {
	idd_serve_opts o;
	char **strings;               /* copies of the option strings */
	size_t nstrings;
	idd_remote_index *ri;
	idd_cache *cache;
	/* set up at the first export, once the block size is known (the
	 * index is fetched image by image): under lock, then read-only */
	idd_block_source *cache_src;
	idd_block_source *peer_src;   /* other nodes' caches (--peer), shared by the exports */
	const char **peers;           /* their URLs (copies in strings) */
	size_t npeers;
	pthread_mutex_t lock;         /* guards exports */
	idd_export **exports;
	size_t nexports;
	atomic_int_least64_t last_refresh_ns;
	/* --all: when the catalog was last checked for a change (under cat_lock) */
	pthread_mutex_t cat_lock;
	int64_t cat_checked_ns;
	bool cat_checking;            /* a thread is checking it now */
	atomic_bool stop;
	atomic_bool quiesce; /* idd_server_checkpoint: no new readahead */
	bool started;
	pthread_t flusher;
	pthread_t budget;             /* --cache-max: keeps the cache under it */
	bool budget_started;
	bool budget_warned;           /* files in use keep the cache above it (said once) */
	atomic_uint_least64_t cache_evicted;
	pthread_mutex_t flush_lock;
	pthread_cond_t flush_wake;
	/* the profile given with --prefetch: (id, block) */
	idd_profile pf;
	/* counters: the exports' own, and these */
	atomic_uint_least64_t exports_complete;
	/* the clients' read buffers being filled at once (read_memory_budget) */
	pthread_mutex_t mem_lock;
	pthread_cond_t mem_freed;
	uint64_t mem_used, mem_budget;
	/* what exports that were closed had read and fetched */
	struct read_counters closed;
	atomic_uint_least64_t closed_fetched, closed_requests;
};

/* What start-up is doing now, for a progress display (o.progress). */
static inline void serve_progress(idd_server *s, const char *fmt, ...) IDD_PRINTF(2, 3);
static inline void serve_progress(idd_server *s, const char *fmt, ...)
{
	if (!s->o.progress)
		return;
	va_list ap;
	va_start(ap, fmt);
	idd_vwarnf(s->o.progress, s->o.node.ctx, fmt, ap);
	va_end(ap);
}

/* serve_store.c */
int serve_partial_open_locked(idd_export *e, idd_error *err);
void serve_cache_write_failed(idd_export *e, const idd_error *why);
int serve_store_block(idd_export *e, uint64_t block, const idd_digest *d, const unsigned char *buf,
                      idd_error *err);

/* serve_fetch.c */
int serve_fetch_blocks(idd_export *e, idd_block_req *reqs, size_t n, bool speculative,
                       idd_error *why, idd_error *err);

/* serve_readahead.c */
void serve_schedule_readahead(idd_export *e, uint64_t b1, uint64_t ra_blocks);

/* serve_read.c */
int serve_access_range(idd_export *e, uint64_t off, uint64_t len, unsigned char *out,
                       bool readahead, bool required, bool stats, idd_error *err);

/* serve_background.c */
void serve_start_export_threads(idd_export *e);
void serve_flush_all(idd_server *s);
void *serve_flusher_main(void *arg);

/* serve_budget.c */
void *serve_budget_main(void *arg);

/* serve_export.c */
void serve_export_free(idd_export *e);

#endif
