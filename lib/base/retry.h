/* retry.h - retries as a layer around any backend operation (retry.c):
 * an operation makes one attempt; on IDD_SRC_RETRY the layer waits with
 * exponential backoff and calls it again, up to a limit, honouring the
 * calling thread's deadline (idd_fetch_set_deadline) and the cancel flag,
 * and telling the warn callback about each retry.  Internal. */
#ifndef IDD_BASE_RETRY_H
#define IDD_BASE_RETRY_H

#include "base/source.h"

typedef struct idd_retry_policy {
	int max_retries;
	long backoff_ms;            /* first delay, doubled each time, at most 10 s */
	idd_warn_fn warn;
	void *ctx;
	const atomic_bool *cancel;
} idd_retry_policy;

/* The requests of an attempt that failed transiently, each "NAME: WHY"
 * (owned by the attempt's caller, valid until the next attempt); each is
 * reported and counted as one retry.  None: the attempt's error is the one. */
typedef struct idd_retry_failures {
	const char **why;
	size_t n;
} idd_retry_failures;

/* One attempt. */
typedef int (*idd_attempt_fn)(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs,
                              idd_error *err);

/* Run fn until it returns anything but IDD_SRC_RETRY.  name is how messages
 * name the target.  Gives up with IDD_ENET ("... (gave up after N
 * retries)"), IDD_ETIMEDOUT when the next attempt would start after the
 * deadline, IDD_ECANCELED when the cancel flag is set while waiting. */
int idd_retry_run(const idd_retry_policy *p, const char *name, idd_attempt_fn fn, void *arg,
                  idd_fetch_stats *fs, idd_error *err);

/* The delay before retry number `attempt` (0-based) under p. */
long idd_retry_delay_ms(const idd_retry_policy *p, int attempt);

#endif
