/* workq.h - background work that steps aside while a guest reads.
 *
 * A queue of work items run by a few worker threads, the highest priority
 * first (in the order submitted within one priority).  Guest reads say
 * when they begin and end; an item calls idd_workq_yield between its
 * steps, which returns once no guest read is in progress and none ended
 * within the queue's quiet time.  Nothing polls: the end of the last guest
 * read wakes the waiters, and the quiet time is one timed wait.
 *
 * Locking: one mutex per queue guards the items, the workers and the
 * waiters' condition variable; items run without it, and it is a leaf
 * (nothing else is taken under it).  The guest count is an atomic: a read
 * takes the mutex only when an item is waiting for it to end.
 *
 * Shutdown: idd_workq_stop makes every yield return at once and drops the
 * items not started (their drop function is called, if any); idd_workq_free
 * stops, waits for the running items to return, and frees. */
#ifndef IDD_NODE_WORKQ_H
#define IDD_NODE_WORKQ_H

#include "base/util.h"
#include "base/error.h"

typedef struct idd_workq idd_workq;
typedef void (*idd_work_fn)(void *ctx);

/* workers: the threads that run items (started at the first submit).
 * quiet_ns: how long after a guest read's end an item still waits. */
int idd_workq_open(int workers, int64_t quiet_ns, idd_workq **out, idd_error *err);
/* Queue fn(ctx) at priority (higher runs first).  drop (may be NULL) is
 * called instead of fn when the queue stops before the item started. */
int idd_workq_submit(idd_workq *q, int priority, idd_work_fn fn, idd_work_fn drop, void *ctx,
                     idd_error *err);
void idd_workq_guest_begin(idd_workq *q);
void idd_workq_guest_end(idd_workq *q);
/* Wait while a guest reads (see above).  false: the queue is stopping. */
bool idd_workq_yield(idd_workq *q);
/* Items pending or running. */
size_t idd_workq_busy(idd_workq *q);
void idd_workq_stop(idd_workq *q);
void idd_workq_free(idd_workq *q);

#endif
