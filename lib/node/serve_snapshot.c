/* serve_snapshot.c - the server's counters at one moment, for
 * idd_server_stats and idd_server_metrics. */
#include "node/serve_internal.h"

#include <stdlib.h>
#include <string.h>

/* An export's counters into em, added to the totals in m (st: the
 * idd_serve_stats part).  Called under s->lock. */
static void export_snapshot(idd_export *e, idd_export_metrics *em, idd_serve_metrics *m)
{
	idd_serve_stats *st = &m->total;
	em->reads = atomic_load(&e->c.reads);
	em->bytes_read = atomic_load(&e->c.bytes_read);
	em->bytes_zero = atomic_load(&e->c.bytes_zero);
	em->bytes_from_cache = atomic_load(&e->c.bytes_from_cache);
	em->blocks_filled = atomic_load(&e->c.blocks_filled);
	em->read_errors = atomic_load(&e->c.read_errors);
	em->cache_write_errors = atomic_load(&e->c.cache_write_errors);
	em->fetch_errors = atomic_load(&e->c.fetch_errors);
	pthread_mutex_lock(&e->remote_lock);
	idd_block_source_counters pc = {0}, rc = {0};
	idd_block_source_counters_get(e->fetch.pack, &pc);
	idd_block_source_counters_get(e->fetch.remote, &rc);
	pthread_mutex_unlock(&e->remote_lock);
	em->bytes_from_pack = pc.bytes;
	em->bytes_from_repository = rc.bytes;
	em->requests = pc.requests + rc.requests;
	em->verify_failures_pack = pc.damaged;
	em->verify_failures_repository = rc.damaged;
	pthread_mutex_lock(&e->fl_lock);
	em->fetches_in_flight = e->ninflight;
	pthread_mutex_unlock(&e->fl_lock);
	pthread_mutex_lock(&e->part_lock);
	em->complete = e->complete;
	pthread_mutex_unlock(&e->part_lock);
	idd_latency_get(&e->read_ns, &em->read_latency);
	idd_latency_get(&e->fetch_ns, &em->fetch_latency);

	st->reads += em->reads;
	st->bytes_read += em->bytes_read;
	st->bytes_zero += em->bytes_zero;
	st->bytes_from_cache += em->bytes_from_cache;
	st->blocks_filled += em->blocks_filled;
	st->read_errors += em->read_errors;
	st->cache_write_errors += em->cache_write_errors;
	st->bytes_fetched += em->bytes_from_pack + em->bytes_from_repository;
	st->requests += em->requests;
	m->bytes_from_pack += em->bytes_from_pack;
	m->bytes_from_repository += em->bytes_from_repository;
	m->fetch_errors += em->fetch_errors;
	m->fetches_in_flight += em->fetches_in_flight;
	m->verify_failures_pack += em->verify_failures_pack;
	m->verify_failures_repository += em->verify_failures_repository;
	idd_latency_add(&m->read_latency, &em->read_latency);
	idd_latency_add(&m->fetch_latency, &em->fetch_latency);
}

/* Every counter at one moment: idd_server_stats and idd_server_metrics
 * read the same ones.  with_exports: m->exports filled (else left NULL). */
static int snapshot(idd_server *s, idd_serve_metrics *m, bool with_exports, idd_error *err)
{
	memset(m, 0, sizeof *m);
	idd_serve_stats *st = &m->total;
	int rc = IDD_OK;
	st->exports_complete = atomic_load(&s->exports_complete);
	st->cache_evicted = atomic_load(&s->cache_evicted);
	/* exports closed already (their fetch counters are in closed_fetched) */
	idd_export_metrics closed = {0};
	struct read_counters *c = &s->closed;
	st->reads = atomic_load(&c->reads);
	st->bytes_read = atomic_load(&c->bytes_read);
	st->bytes_zero = atomic_load(&c->bytes_zero);
	st->bytes_from_cache = atomic_load(&c->bytes_from_cache);
	st->blocks_filled = atomic_load(&c->blocks_filled);
	st->read_errors = atomic_load(&c->read_errors);
	st->cache_write_errors = atomic_load(&c->cache_write_errors);
	m->fetch_errors = atomic_load(&c->fetch_errors);
	st->bytes_fetched = atomic_load(&s->closed_fetched);
	st->requests = atomic_load(&s->closed_requests);
	/* what closed exports fetched is not split by origin any more */
	m->bytes_from_repository = st->bytes_fetched;
	if (s->ri) {
		idd_fetch_stats fs;
		idd_remote_index_fetch_stats(s->ri, &fs);
		st->requests += fs.requests;
	}
	if (s->cache) {
		st->cache_damaged = idd_cache_damaged_count(s->cache);
		if (with_exports)
			idd_cache_usage(s->cache, &m->cache_bytes, &m->partial_images);
	}
	pthread_mutex_lock(&s->lock);
	if (s->cache_src)
		m->verify_failures_cache = atomic_load(&s->cache_src->damaged);
	if (s->peer_src) {
		idd_block_source_counters pc;
		idd_block_source_counters_get(s->peer_src, &pc);
		st->bytes_from_peers = pc.bytes;
		st->requests += pc.requests;
		m->verify_failures_peer = pc.damaged;
	}
	if (with_exports && s->nexports) {
		m->exports = idd_calloc(s->nexports, sizeof *m->exports, err);
		if (!m->exports)
			rc = IDD_ENOMEM;
	}
	for (size_t i = 0; !rc && i < s->nexports; i++) {
		idd_export *e = s->exports[i];
		idd_export_metrics *em = m->exports ? &m->exports[i] : &closed;
		if (m->exports) {
			if (!(em->id = idd_strdup(e->id, err))) {
				rc = IDD_ENOMEM;
				break;
			}
			m->n_exports = i + 1;
		}
		export_snapshot(e, em, m);
	}
	pthread_mutex_unlock(&s->lock);
	if (rc)
		idd_serve_metrics_free(m);
	return rc;
}

void idd_server_stats(idd_server *s, idd_serve_stats *st)
{
	idd_serve_metrics m;
	(void)snapshot(s, &m, false, NULL); /* without the exports' list nothing can fail */
	*st = m.total;
}

int idd_server_metrics(idd_server *s, idd_serve_metrics *m, idd_error *err)
{
	return snapshot(s, m, true, err);
}

void idd_serve_metrics_free(idd_serve_metrics *m)
{
	for (size_t i = 0; i < m->n_exports; i++)
		free(m->exports[i].id);
	free(m->exports);
	m->exports = NULL;
	m->n_exports = 0;
}
