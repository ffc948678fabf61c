/* metrics.h - latency histograms that many threads add to (metrics.c); the
 * renderer and the HTTP server are in the public header. */
#ifndef IDD_NODE_METRICS_H
#define IDD_NODE_METRICS_H

#include "base/util.h"

#include <stdatomic.h>

typedef struct idd_latency_hist {
	atomic_uint_least64_t bucket[IDD_LATENCY_BUCKETS + 1];
	atomic_uint_least64_t sum_ns;
} idd_latency_hist;

void idd_latency_observe(idd_latency_hist *h, int64_t ns);
void idd_latency_get(idd_latency_hist *h, idd_latency *out);
/* to += from */
void idd_latency_add(idd_latency *to, const idd_latency *from);
/* The observations a snapshot holds. */
uint64_t idd_latency_count(const idd_latency *l);

#endif
