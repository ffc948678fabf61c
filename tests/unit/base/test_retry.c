/* test_retry.c - base/retry: the layer around backend operations retries
 * transient failures with doubling delays, counts and reports each retry,
 * gives up after the limit, passes other results through untouched, and
 * honours the thread's deadline and the cancel flag. */
#include "testutil.h"
#include "base/retry.h"

#include <string.h>

/* An operation that fails transiently `transient` times (each attempt
 * failing `per_attempt` requests), then returns `final`. */
struct op {
	int transient;
	unsigned per_attempt;
	int final;
	int calls;
};

static const char *const whys[] = {"http://h/f: HTTP 503", "http://h/g: HTTP 500"};

static int attempt(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs, idd_error *err)
{
	struct op *o = arg;
	o->calls++;
	fs->requests += 1;
	if (o->transient > 0) {
		o->transient--;
		/* several failed requests: each is named; one: the error says it */
		if (o->per_attempt > 1) {
			failed->why = (const char **)whys;
			failed->n = o->per_attempt;
		}
		return idd_fail_code(err, IDD_SRC_RETRY, "http://h/f: HTTP 503");
	}
	if (o->final)
		return idd_fail_code(err, o->final, "http://h/f: HTTP 404 (not found)");
	return IDD_OK;
}

static char warned[4096];
static int nwarned;

static void warn(void *ctx, const char *msg)
{
	(void)ctx;
	nwarned++;
	snprintf(warned, sizeof warned, "%s", msg);
}

static void test_retries_then_succeeds(void **state)
{
	(void)state;
	idd_retry_policy p = {.max_retries = 6, .backoff_ms = 1, .warn = warn};
	struct op o = {.transient = 3, .per_attempt = 2};
	idd_fetch_stats fs = {0};
	idd_error err = {{0}, 0};
	nwarned = 0;
	assert_int_equal(idd_retry_run(&p, "http://h/f", attempt, &o, &fs, &err), IDD_OK);
	assert_int_equal(o.calls, 4);
	assert_int_equal(fs.requests, 4);
	assert_int_equal(fs.retries, 6); /* every failed request of an attempt counts */
	assert_int_equal(nwarned, 6); /* one warning per failed request */
	assert_string_equal(warned, "warning: http://h/g: HTTP 500; retrying in 4 ms (3 of 6)");
}

static void test_gives_up_after_limit(void **state)
{
	(void)state;
	idd_retry_policy p = {.max_retries = 2, .backoff_ms = 1, .warn = warn};
	struct op o = {.transient = 100, .per_attempt = 1};
	idd_fetch_stats fs = {0};
	idd_error err = {{0}, 0};
	assert_int_equal(idd_retry_run(&p, "http://h/f", attempt, &o, &fs, &err), IDD_ENET);
	assert_int_equal(err.code, IDD_ENET);
	assert_int_equal(o.calls, 3);
	assert_int_equal(fs.retries, 2);
	assert_string_equal(warned, "warning: http://h/f: HTTP 503; retrying in 2 ms (2 of 2)");
	assert_string_equal(err.msg, "http://h/f: HTTP 503 (gave up after 2 retries)");
}

static void test_other_results_pass_through(void **state)
{
	(void)state;
	idd_retry_policy p = {.max_retries = 6, .backoff_ms = 1};
	struct op o = {.final = IDD_ENOENT};
	idd_fetch_stats fs = {0};
	idd_error err = {{0}, 0};
	assert_int_equal(idd_retry_run(&p, "http://h/f", attempt, &o, &fs, &err), IDD_ENOENT);
	assert_int_equal(o.calls, 1);
	assert_int_equal(fs.retries, 0);
	assert_string_equal(err.msg, "http://h/f: HTTP 404 (not found)");
}

static void test_deadline_and_cancel(void **state)
{
	(void)state;
	/* a retry that could only start after the deadline is not tried */
	idd_retry_policy p = {.max_retries = 6, .backoff_ms = 10000};
	struct op o = {.transient = 100, .per_attempt = 1};
	idd_fetch_stats fs = {0};
	idd_error err = {{0}, 0};
	int64_t old = idd_fetch_set_deadline(idd_mono_ns() + (int64_t)5 * 1000000000);
	assert_int_equal(idd_retry_run(&p, "http://h/f", attempt, &o, &fs, &err), IDD_ETIMEDOUT);
	assert_int_equal(o.calls, 1);
	assert_string_equal(err.msg, "http://h/f: HTTP 503 (no time left to retry)");
	idd_fetch_set_deadline(old);

	/* a set cancel flag ends the wait before the next attempt */
	atomic_bool cancel = true;
	p.cancel = &cancel;
	o = (struct op){.transient = 100, .per_attempt = 1};
	assert_int_equal(idd_retry_run(&p, "http://h/f", attempt, &o, &fs, &err), IDD_ECANCELED);
	assert_int_equal(o.calls, 1);
	assert_string_equal(err.msg, "http://h/f: stopped");
}

static void test_delays_double_up_to_ten_seconds(void **state)
{
	(void)state;
	idd_retry_policy p = {.max_retries = 20, .backoff_ms = 100};
	assert_int_equal(idd_retry_delay_ms(&p, 0), 100);
	assert_int_equal(idd_retry_delay_ms(&p, 1), 200);
	assert_int_equal(idd_retry_delay_ms(&p, 6), 6400);
	assert_int_equal(idd_retry_delay_ms(&p, 7), 10000);
	assert_int_equal(idd_retry_delay_ms(&p, 30), 10000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_retries_then_succeeds),
		cmocka_unit_test(test_gives_up_after_limit),
		cmocka_unit_test(test_other_results_pass_through),
		cmocka_unit_test(test_deadline_and_cancel),
		cmocka_unit_test(test_delays_double_up_to_ten_seconds),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
