/* negcache.h - blocks that failed recently, remembered with a backoff.
 *
 * A block that no source could supply verified (the source changed since
 * it was indexed, an index from another repository, a source that is down)
 * fails the same way on the next read.  Guests retry failed reads, often
 * in a tight loop: without memory of the failure every retry fetches the
 * block again.  A failed block is barred for a while instead -- 1 s after
 * the first failure, doubling with each failure in a row up to a ceiling --
 * and a read of a barred block fails at once, fetching nothing.  The first
 * success forgets it.  Keyed by content digest: every block with that
 * content is barred.  Thread-safe (one mutex). */
#ifndef IDD_NODE_NEGCACHE_H
#define IDD_NODE_NEGCACHE_H

#include "base/digest.h"
#include "base/error.h"

#include <pthread.h>

typedef struct idd_negcache {
	pthread_mutex_t lock;
	idd_digest_set set; /* aux: index into v */
	struct idd_negcache_entry {
		int64_t until_ns; /* barred before this (monotonic clock) */
		uint32_t fails;   /* failures in a row; 0: forgotten */
		int code;         /* the last failure's code (IDD_ECORRUPT, IDD_ENET, ...) */
	} *v;
	size_t n, cap;
	int64_t first_ns, max_ns;
} idd_negcache;

/* What a barred block last failed with. */
typedef struct idd_negcache_info {
	uint32_t fails;
	int code;
	int64_t wait_ns; /* until the next attempt is allowed */
} idd_negcache_info;

/* Backoff first_ns after the first failure, doubled per failure in a row,
 * at most max_ns. */
int idd_negcache_init(idd_negcache *nc, int64_t first_ns, int64_t max_ns, idd_error *err);
void idd_negcache_free(idd_negcache *nc);
/* d failed at now (with code): barred until now + its backoff. */
int idd_negcache_fail(idd_negcache *nc, const idd_digest *d, int code, int64_t now,
                      idd_error *err);
/* Is d barred at now?  info (may be NULL) says why and for how long. */
bool idd_negcache_barred(idd_negcache *nc, const idd_digest *d, int64_t now,
                         idd_negcache_info *info);
/* d was supplied: its failures are forgotten. */
void idd_negcache_clear(idd_negcache *nc, const idd_digest *d);

#endif
