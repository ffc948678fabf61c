/* retry.c - retries as a layer around backend operations (retry.h). */
#include "base/retry.h"

#include <string.h>
#include <time.h>

long idd_retry_delay_ms(const idd_retry_policy *p, int attempt)
{
	long delay = p->backoff_ms << IDD_MIN(attempt, 10);
	return delay > 10000 ? 10000 : delay;
}

/* The message of a failed attempt without the "NAME: " it starts with. */
static const char *why_of(const char *msg, const char *name)
{
	size_t nl = strlen(name);
	return !strncmp(msg, name, nl) && !strncmp(msg + nl, ": ", 2) ? msg + nl + 2 : msg;
}

/* Sleep ms, waking every 100 ms to look at the cancel flag. */
static bool sleep_unless_cancelled(const idd_retry_policy *p, long ms)
{
	int64_t end = idd_mono_ns() + (int64_t)ms * 1000000;
	for (;;) {
		if (p->cancel && atomic_load(p->cancel))
			return false;
		int64_t left = end - idd_mono_ns();
		if (left <= 0)
			return true;
		if (left > 100000000)
			left = 100000000;
		struct timespec ts = {0, (long)left};
		nanosleep(&ts, NULL);
	}
}

int idd_retry_run(const idd_retry_policy *p, const char *name, idd_attempt_fn fn, void *arg,
                  idd_fetch_stats *fs, idd_error *err)
{
	char last[sizeof err->msg] = "";
	for (int attempt = 0;; attempt++) {
		idd_error e = {0};
		idd_retry_failures failed = {0};
		int rc = fn(arg, &failed, fs, &e);
		if (rc != IDD_SRC_RETRY) {
			if (rc == IDD_ETIMEDOUT && last[0])
				/* a batch that ran out of time: say what went wrong before */
				return idd_fail_code(err, rc, "%s (the last attempt: %s)", e.msg, last);
			if (rc && err)
				*err = e;
			return rc;
		}
		const char *why = why_of(e.msg, name);
		long delay = idd_retry_delay_ms(p, attempt);
		int64_t deadline = idd_fetch_deadline();
		if (deadline && idd_mono_ns() + (int64_t)delay * 1000000 >= deadline)
			/* a retry after the deadline would be cut short anyway */
			return idd_fail_code(err, IDD_ETIMEDOUT, "%s: %s (no time left to retry)", name, why);
		if (attempt >= p->max_retries)
			return idd_fail_code(err, IDD_ENET, "%s: %s (gave up after %d retries)", name, why,
			                     attempt);
		const char *one = e.msg;
		if (!failed.n) {
			failed.why = &one;
			failed.n = 1;
		}
		fs->retries += failed.n;
		for (size_t i = 0; p->warn && i < failed.n; i++) {
			char msg[sizeof e.msg + 640];
			snprintf(msg, sizeof msg, "warning: %s; retrying in %ld ms (%d of %d)", failed.why[i],
			         delay, attempt + 1, p->max_retries);
			p->warn(p->ctx, msg);
		}
		snprintf(last, sizeof last, "%s", why);
		if (!sleep_unless_cancelled(p, delay))
			return idd_fail_code(err, IDD_ECANCELED, "%s: stopped", name);
	}
}
