/* workq.c - background work that steps aside while a guest reads
 * (workq.h). */
#include "node/workq.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

struct work_item {
	int priority;
	uint64_t seq; /* submission order within a priority */
	idd_work_fn fn, drop;
	void *ctx;
};

struct idd_workq {
	pthread_mutex_t lock;
	pthread_cond_t work;    /* an item was queued, or stop */
	pthread_cond_t idle;    /* the last guest read ended, or stop */
	struct work_item *items;
	size_t n, cap, running;
	uint64_t seq;
	pthread_t *threads;
	int nthreads, started;
	bool stop;
	int64_t quiet_ns;
	atomic_int guests;
	atomic_int waiters;
	atomic_int_least64_t last_end_ns; /* monotonic */
};

int idd_workq_open(int workers, int64_t quiet_ns, idd_workq **out, idd_error *err)
{
	idd_workq *q = idd_calloc(1, sizeof *q, err);
	if (!q)
		return IDD_ENOMEM;
	q->nthreads = workers > 0 ? workers : 1;
	q->threads = idd_calloc((size_t)q->nthreads, sizeof *q->threads, err);
	if (!q->threads) {
		free(q);
		return IDD_ENOMEM;
	}
	q->quiet_ns = quiet_ns;
	atomic_init(&q->guests, 0);
	atomic_init(&q->waiters, 0);
	atomic_init(&q->last_end_ns, 0);
	pthread_mutex_init(&q->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->work, NULL);
	pthread_cond_init(&q->idle, &ca);
	pthread_condattr_destroy(&ca);
	*out = q;
	return IDD_OK;
}

/* The next item: highest priority, then first submitted.  Under lock. */
static bool take_locked(idd_workq *q, struct work_item *it)
{
	if (!q->n)
		return false;
	size_t best = 0;
	for (size_t i = 1; i < q->n; i++)
		if (q->items[i].priority > q->items[best].priority ||
		    (q->items[i].priority == q->items[best].priority && q->items[i].seq < q->items[best].seq))
			best = i;
	*it = q->items[best];
	q->items[best] = q->items[--q->n];
	return true;
}

static void *worker_main(void *arg)
{
	idd_workq *q = arg;
	pthread_mutex_lock(&q->lock);
	while (!q->stop) {
		struct work_item it;
		if (!take_locked(q, &it)) {
			pthread_cond_wait(&q->work, &q->lock);
			continue;
		}
		q->running++;
		pthread_mutex_unlock(&q->lock);
		it.fn(it.ctx);
		pthread_mutex_lock(&q->lock);
		q->running--;
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

int idd_workq_submit(idd_workq *q, int priority, idd_work_fn fn, idd_work_fn drop, void *ctx,
                     idd_error *err)
{
	pthread_mutex_lock(&q->lock);
	int rc = IDD_OK;
	if (q->stop)
		rc = idd_fail_code(err, IDD_ECANCELED, "the work queue is stopping");
	if (!rc && q->n == q->cap) {
		size_t nc = q->cap ? q->cap * 2 : 8;
		struct work_item *nv = realloc(q->items, nc * sizeof *nv);
		if (!nv)
			rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
		else {
			q->items = nv;
			q->cap = nc;
		}
	}
	if (!rc) {
		q->items[q->n++] = (struct work_item){priority, q->seq++, fn, drop, ctx};
		while (q->started < q->nthreads &&
		       !pthread_create(&q->threads[q->started], NULL, worker_main, q))
			q->started++;
		if (!q->started) {
			q->n--;
			rc = idd_fail_code(err, IDD_ENOMEM, "cannot start a background thread");
		}
		pthread_cond_signal(&q->work);
	}
	pthread_mutex_unlock(&q->lock);
	return rc;
}

void idd_workq_guest_begin(idd_workq *q)
{
	atomic_fetch_add(&q->guests, 1);
}

void idd_workq_guest_end(idd_workq *q)
{
	atomic_store(&q->last_end_ns, idd_mono_ns());
	/* the waiters' count is read after the decrement and a waiter counts
	 * itself before reading the guests (both sequentially consistent): one
	 * of the two sees the other, so no wake-up is lost */
	if (atomic_fetch_sub(&q->guests, 1) == 1 && atomic_load(&q->waiters) > 0) {
		pthread_mutex_lock(&q->lock);
		pthread_cond_broadcast(&q->idle);
		pthread_mutex_unlock(&q->lock);
	}
}

bool idd_workq_yield(idd_workq *q)
{
	pthread_mutex_lock(&q->lock);
	atomic_fetch_add(&q->waiters, 1);
	while (!q->stop) {
		int64_t now = idd_mono_ns();
		int64_t quiet_until = atomic_load(&q->last_end_ns) + q->quiet_ns;
		if (atomic_load(&q->guests) > 0) {
			pthread_cond_wait(&q->idle, &q->lock);
		} else if (atomic_load(&q->last_end_ns) && now < quiet_until) {
			struct timespec ts = {(time_t)(quiet_until / 1000000000),
			                      (long)(quiet_until % 1000000000)};
			pthread_cond_timedwait(&q->idle, &q->lock, &ts);
		} else
			break;
	}
	atomic_fetch_sub(&q->waiters, 1);
	bool go = !q->stop;
	pthread_mutex_unlock(&q->lock);
	return go;
}

size_t idd_workq_busy(idd_workq *q)
{
	pthread_mutex_lock(&q->lock);
	size_t n = q->n + q->running;
	pthread_mutex_unlock(&q->lock);
	return n;
}

void idd_workq_stop(idd_workq *q)
{
	if (!q)
		return;
	pthread_mutex_lock(&q->lock);
	q->stop = true;
	struct work_item *dropped = q->items;
	size_t ndropped = q->n;
	q->items = NULL;
	q->n = q->cap = 0;
	pthread_cond_broadcast(&q->work);
	pthread_cond_broadcast(&q->idle);
	pthread_mutex_unlock(&q->lock);
	for (size_t i = 0; i < ndropped; i++)
		if (dropped[i].drop)
			dropped[i].drop(dropped[i].ctx);
	free(dropped);
}

void idd_workq_free(idd_workq *q)
{
	if (!q)
		return;
	idd_workq_stop(q);
	for (int i = 0; i < q->started; i++)
		pthread_join(q->threads[i], NULL);
	free(q->threads);
	free(q->items);
	pthread_mutex_destroy(&q->lock);
	pthread_cond_destroy(&q->work);
	pthread_cond_destroy(&q->idle);
	free(q);
}
