/* test_workq.c - the background work queue: items run highest priority
 * first, an item's yield waits while a guest read is in progress and for
 * the quiet time after it, and a stop drops what has not started. */
#include "testutil.h"
#include "node/workq.h"

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#define MS ((int64_t)1000000)

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

/* an item that holds the only worker until released */
static atomic_bool gate_open;
static atomic_bool gate_entered;
static void gate(void *ctx)
{
	(void)ctx;
	atomic_store(&gate_entered, true);
	while (!atomic_load(&gate_open))
		sleep_ms(1);
}

static int order[8];
static atomic_int norder;
static void record(void *ctx)
{
	order[atomic_fetch_add(&norder, 1)] = (int)(intptr_t)ctx;
}

static void wait_for(atomic_int *v, int n)
{
	for (int i = 0; i < 5000 && atomic_load(v) < n; i++)
		sleep_ms(1);
}

static void test_highest_priority_first(void **state)
{
	(void)state;
	idd_workq *q;
	idd_error err;
	assert_int_equal(idd_workq_open(1, 0, &q, &err), IDD_OK);
	atomic_store(&gate_open, false);
	atomic_store(&gate_entered, false);
	atomic_store(&norder, 0);
	assert_int_equal(idd_workq_submit(q, 9, gate, NULL, NULL, &err), IDD_OK);
	while (!atomic_load(&gate_entered))
		sleep_ms(1);
	/* queued behind the gate: priority, then submission order */
	int prio[] = {0, 2, 1, 2, 0};
	for (int i = 0; i < 5; i++)
		assert_int_equal(idd_workq_submit(q, prio[i], record, NULL, (void *)(intptr_t)i, &err),
		                 IDD_OK);
	assert_int_equal(idd_workq_busy(q), 6);
	atomic_store(&gate_open, true);
	wait_for(&norder, 5);
	int want[] = {1, 3, 2, 0, 4};
	assert_int_equal(atomic_load(&norder), 5);
	for (int i = 0; i < 5; i++)
		assert_int_equal(order[i], want[i]);
	idd_workq_free(q);
}

static idd_workq *yq;
static atomic_int_least64_t passed_ns;
static atomic_int yields;
static void yielder(void *ctx)
{
	(void)ctx;
	bool go = idd_workq_yield(yq);
	atomic_store(&passed_ns, go ? idd_mono_ns() : -1);
	atomic_fetch_add(&yields, 1);
}

static void test_yield_waits_for_the_guest(void **state)
{
	(void)state;
	idd_error err;
	assert_int_equal(idd_workq_open(1, 20 * MS, &yq, &err), IDD_OK);
	atomic_store(&yields, 0);
	idd_workq_guest_begin(yq);
	idd_workq_guest_begin(yq); /* two reads at once */
	assert_int_equal(idd_workq_submit(yq, 0, yielder, NULL, NULL, &err), IDD_OK);
	sleep_ms(50);
	assert_int_equal(atomic_load(&yields), 0); /* preempted while the guest reads */
	idd_workq_guest_end(yq);
	sleep_ms(50);
	assert_int_equal(atomic_load(&yields), 0); /* one read still in progress */
	int64_t end = idd_mono_ns();
	idd_workq_guest_end(yq);
	wait_for(&yields, 1);
	assert_int_equal(atomic_load(&yields), 1);
	/* released by the end of the last read, after the quiet time */
	assert_true(atomic_load(&passed_ns) >= end + 20 * MS);
	assert_true(atomic_load(&passed_ns) < end + 2000 * MS);
	/* no guest read: no wait beyond the quiet time */
	sleep_ms(30);
	int64_t t0 = idd_mono_ns();
	assert_int_equal(idd_workq_submit(yq, 0, yielder, NULL, NULL, &err), IDD_OK);
	wait_for(&yields, 2);
	assert_int_equal(atomic_load(&yields), 2);
	assert_true(atomic_load(&passed_ns) - t0 < 1000 * MS);
	idd_workq_free(yq);
}

static atomic_int ran, dropped;
static void count_run(void *ctx)
{
	(void)ctx;
	atomic_fetch_add(&ran, 1);
}
static void count_drop(void *ctx)
{
	(void)ctx;
	atomic_fetch_add(&dropped, 1);
}

static void test_stop_drops_pending_items(void **state)
{
	(void)state;
	idd_error err;
	assert_int_equal(idd_workq_open(1, 1000 * MS, &yq, &err), IDD_OK);
	atomic_store(&gate_open, false);
	atomic_store(&gate_entered, false);
	atomic_store(&ran, 0);
	atomic_store(&dropped, 0);
	atomic_store(&yields, 0);
	assert_int_equal(idd_workq_submit(yq, 5, gate, NULL, NULL, &err), IDD_OK);
	while (!atomic_load(&gate_entered))
		sleep_ms(1);
	for (int i = 0; i < 3; i++)
		assert_int_equal(idd_workq_submit(yq, i, count_run, count_drop, NULL, &err), IDD_OK);
	idd_workq_guest_begin(yq);
	idd_workq_stop(yq);
	assert_int_equal(atomic_load(&dropped), 3);
	/* stopped: a yield returns at once though a guest reads, nothing new is queued */
	assert_false(idd_workq_yield(yq));
	assert_int_equal(idd_workq_submit(yq, 0, count_run, NULL, NULL, &err), IDD_ECANCELED);
	atomic_store(&gate_open, true);
	idd_workq_free(yq); /* joins the worker */
	assert_int_equal(atomic_load(&ran), 0);
	assert_int_equal(atomic_load(&dropped), 3);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_highest_priority_first),
	    cmocka_unit_test(test_yield_waits_for_the_guest),
	    cmocka_unit_test(test_stop_drops_pending_items),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
