/* source_peer.c - other nodes' caches as a block source (source_peer.h). */
#include "node/source_peer.h"
#include "node/cache.h"
#include "index/indexfile.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* cache.c's index file: its magic and the version this reader knows. */
static const char PEER_INDEX_MAGIC[8] = {'I', 'D', 'D', '-', 'C', 'I', 'X', 0};
#define PEER_INDEX_VERSION 1
/* Requests in a row one peer keeps before the least loaded takes over:
 * 4 MiB at 4 KiB blocks, one range request (IDD_FETCH_MAX_REQUEST). */
#define RUN_BLOCKS 1024
/* A peer index larger than this is not believed. */
#define MAX_PEER_INDEX ((size_t)1 << 30)

struct pfile {
	char *rel;        /* images/... inside the peer's cache directory */
	uint64_t size;
	idd_file *f;      /* opened on first use (mu) */
	atomic_bool bad;  /* served a wrong block, or is gone: not used again */
};

struct peer {
	char *url;
	idd_source *src;
	atomic_bool dead; /* unreachable or failing: not asked again */
	struct pfile *files;
	size_t nfiles;
};

/* Who holds a digest: chains through next (index + 1; 0 ends). */
struct holder {
	uint32_t peer, file;
	uint64_t block;
	uint32_t next;
};

struct peers {
	idd_block_source base;
	struct peer *p;
	size_t n;
	idd_digest_set set; /* digest -> first holder + 1 */
	struct holder *h;
	size_t nh, caph;
	pthread_mutex_t mu; /* opening files */
};

static void peers_close(idd_block_source *bs)
{
	struct peers *P = bs->priv;
	for (size_t i = 0; i < P->n; i++) {
		struct peer *p = &P->p[i];
		for (size_t k = 0; k < p->nfiles; k++) {
			free(p->files[k].rel);
			if (p->files[k].f)
				idd_file_close(p->files[k].f);
		}
		free(p->files);
		idd_source_close(p->src);
		free(p->url);
	}
	free(P->p);
	free(P->h);
	idd_digest_set_free(&P->set);
	pthread_mutex_destroy(&P->mu);
	idd_block_source_fini(bs);
	free(P);
}

/* The first holder of d on a peer still usable, or NULL. */
static const struct holder *first_usable(struct peers *P, const idd_digest *d, uint64_t tried)
{
	size_t slot = idd_digest_set_find(&P->set, d);
	if (slot == (size_t)-1)
		return NULL;
	for (uint32_t i = (uint32_t)P->set.aux[slot]; i; i = P->h[i - 1].next) {
		const struct holder *h = &P->h[i - 1];
		if (!(tried >> h->peer & 1) && !atomic_load(&P->p[h->peer].dead) &&
		    !atomic_load(&P->p[h->peer].files[h->file].bad))
			return h;
	}
	return NULL;
}

static bool peers_has(idd_block_source *bs, const idd_digest *d)
{
	return first_usable(bs->priv, d, 0) != NULL;
}

/* One peer's share of a round: requests k with who[k] == peer. */
struct job {
	struct peers *P;
	uint32_t peer;
	idd_block_req *reqs;
	size_t n;
	const struct holder **who;
	bool *damaged;        /* per request: a peer served damage for it */
	idd_fetch_stats st;
	uint64_t blocks, damage;
	bool oom;
	int64_t deadline;     /* the asking thread's (idd_fetch_deadline) */
	int stopped;          /* IDD_ETIMEDOUT or IDD_ECANCELED: not the peer's fault */
	idd_error why;        /* for stopped */
};

static int cmp_file(const void *a, const void *b, void *ctx)
{
	const struct holder *const *who = ctx;
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	uint32_t fx = who[x]->file, fy = who[y]->file;
	return fx < fy ? -1 : fx > fy;
}

static idd_file *pfile_open(struct peers *P, struct peer *p, struct pfile *pf, idd_error *err)
{
	pthread_mutex_lock(&P->mu);
	int rc = IDD_OK;
	if (!pf->f)
		rc = idd_source_open_file(p->src, pf->rel, pf->size, &pf->f, err);
	idd_file *f = rc ? NULL : pf->f;
	pthread_mutex_unlock(&P->mu);
	return f;
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct peers *P = j->P;
	struct peer *p = &P->p[j->peer];
	uint32_t bs = P->base.block_size;
	int64_t old_deadline = idd_fetch_set_deadline(j->deadline);
	idd_error e;
	idd_hasher *hs = idd_hasher_new(&e);
	size_t *mine = idd_calloc(j->n ? j->n : 1, sizeof *mine, &e);
	idd_range *rg = idd_calloc(j->n ? j->n : 1, sizeof *rg, &e);
	size_t m = 0;
	if (!hs || !mine || !rg) {
		j->oom = true;
		goto out;
	}
	for (size_t k = 0; k < j->n; k++)
		if (j->who[k] && j->who[k]->peer == j->peer)
			mine[m++] = k;
	qsort_r(mine, m, sizeof *mine, cmp_file, j->who);
	/* one batch per file: its ranges coalesce */
	for (size_t a = 0; a < m && !atomic_load(&p->dead);) {
		uint32_t fi = j->who[mine[a]]->file;
		size_t b = a;
		while (b < m && j->who[mine[b]]->file == fi)
			b++;
		struct pfile *pf = &p->files[fi];
		size_t nr = 0;
		for (size_t i = a; i < b; i++) {
			idd_block_req *r = &j->reqs[mine[i]];
			uint64_t off = j->who[mine[i]]->block * bs;
			uint64_t len = IDD_MIN((uint64_t)bs, pf->size - off);
			memset(r->buf + len, 0, bs - len);
			rg[nr++] = (idd_range){off, len, r->buf};
		}
		idd_file *f = atomic_load(&pf->bad) ? NULL : pfile_open(P, p, pf, &e);
		int rc = f ? idd_source_read_ranges_counted(p->src, f, rg, nr, &j->st, &e) : IDD_ERR;
		if (rc == IDD_ENOMEM) {
			j->oom = true;
			break;
		}
		if (rc == IDD_ETIMEDOUT || rc == IDD_ECANCELED) {
			j->stopped = rc;
			j->why = e;
			break;
		}
		if (rc == IDD_ENET) {
			/* retries exhausted: the peer is down or too slow */
			if (!atomic_exchange(&p->dead, true))
				idd_warnf(P->base.warn, P->base.warn_ctx,
				          "warning: peer %s: %s; not used any more (its blocks come from the next source)",
				          p->url, e.msg);
			break;
		}
		if (rc) {
			/* the file went away or changed size under the peer's index */
			if (f && !atomic_exchange(&pf->bad, true))
				idd_warnf(P->base.warn, P->base.warn_ctx, "warning: peer %s: %s; that file is not used",
				          p->url, e.msg);
			a = b;
			continue;
		}
		for (size_t i = a; i < b; i++) {
			idd_block_req *r = &j->reqs[mine[i]];
			if (idd_block_verify(hs, r->buf, bs, &r->digest)) {
				r->status = IDD_OK;
				r->origin_fd = -1;
				j->blocks++;
				continue;
			}
			j->damage++;
			j->damaged[mine[i]] = true;
			if (!atomic_exchange(&pf->bad, true))
				idd_warnf(P->base.warn, P->base.warn_ctx,
				          "warning: peer %s: %s: block %llu does not match its digest; "
				          "that file is not used any more",
				          p->url, pf->rel, (unsigned long long)j->who[mine[i]]->block);
		}
		a = b;
	}
out:
	idd_hasher_free(hs);
	free(mine);
	free(rg);
	idd_fetch_set_deadline(old_deadline);
	return NULL;
}

static int peers_read(idd_block_source *bs, idd_block_req *reqs, size_t n, idd_error *err)
{
	struct peers *P = bs->priv;
	const struct holder **who = idd_calloc(n ? n : 1, sizeof *who, err);
	uint64_t *tried = idd_calloc(n ? n : 1, sizeof *tried, err);
	bool *damaged = idd_calloc(n ? n : 1, sizeof *damaged, err);
	uint64_t *load = idd_calloc(P->n, sizeof *load, err);
	struct job *jobs = idd_calloc(P->n, sizeof *jobs, err);
	pthread_t *tids = idd_calloc(P->n, sizeof *tids, err);
	bool *started = idd_calloc(P->n, sizeof *started, err);
	int rc = IDD_OK;
	if (!who || !tried || !damaged || !load || !jobs || !tids || !started) {
		rc = idd_fail_code(err, IDD_ENOMEM, "peers: out of memory");
		goto out;
	}
	/* Rounds: what a peer fails to deliver goes to the next holder.
	 * Requests come in image order, and neighbours in the image are mostly
	 * neighbours in a peer's copy: a peer keeps the requests it holds for
	 * up to RUN_BLOCKS in a row (they coalesce into one range request),
	 * then the least loaded peer holding the next one takes over, so the
	 * peers share the work in runs rather than block by block. */
	for (;;) {
		memset(load, 0, P->n * sizeof *load);
		size_t assigned = 0, run = 0;
		uint32_t prev = UINT32_MAX;
		for (size_t k = 0; k < n; k++) {
			who[k] = NULL;
			if (reqs[k].status != IDD_ENOENT)
				continue;
			size_t slot = idd_digest_set_find(&P->set, &reqs[k].digest);
			if (slot == (size_t)-1)
				continue;
			const struct holder *same = NULL, *best = NULL;
			for (uint32_t i = (uint32_t)P->set.aux[slot]; i; i = P->h[i - 1].next) {
				const struct holder *h = &P->h[i - 1];
				if ((tried[k] >> h->peer & 1) || atomic_load(&P->p[h->peer].dead) ||
				    atomic_load(&P->p[h->peer].files[h->file].bad))
					continue;
				if (h->peer == prev)
					same = h;
				if (!best || load[h->peer] < load[best->peer])
					best = h;
			}
			who[k] = same && run < RUN_BLOCKS ? same : best;
			if (who[k]) {
				run = who[k]->peer == prev ? run + 1 : 1;
				prev = who[k]->peer;
				load[who[k]->peer] += reqs[k].len;
				tried[k] |= (uint64_t)1 << who[k]->peer;
				assigned++;
			}
		}
		if (!assigned)
			break;
		size_t busy = 0, last = 0;
		for (size_t i = 0; i < P->n; i++) {
			jobs[i] = (struct job){.P = P, .peer = (uint32_t)i, .reqs = reqs, .n = n, .who = who,
			                       .damaged = damaged, .deadline = idd_fetch_deadline()};
			if (load[i])
				busy++, last = i;
		}
		/* every peer with work in a thread of its own; one alone runs here */
		for (size_t i = 0; i < P->n; i++) {
			started[i] = false;
			if (!load[i] || (busy == 1 && i == last))
				continue;
			started[i] = pthread_create(&tids[i], NULL, job_main, &jobs[i]) == 0;
			if (!started[i])
				job_main(&jobs[i]);
		}
		if (busy == 1)
			job_main(&jobs[last]);
		for (size_t i = 0; i < P->n; i++) {
			if (started[i])
				pthread_join(tids[i], NULL);
			atomic_fetch_add(&bs->blocks, jobs[i].blocks);
			atomic_fetch_add(&bs->bytes, jobs[i].st.bytes);
			atomic_fetch_add(&bs->requests, jobs[i].st.requests);
			atomic_fetch_add(&bs->retries, jobs[i].st.retries);
			atomic_fetch_add(&bs->damaged, jobs[i].damage);
			if (jobs[i].oom)
				rc = IDD_ENOMEM;
		}
		if (rc) {
			idd_fail_code(err, rc, "peers: out of memory");
			break;
		}
		for (size_t i = 0; !rc && i < P->n; i++)
			if (jobs[i].stopped) {
				*err = jobs[i].why;
				rc = jobs[i].stopped;
			}
		if (rc)
			break;
	}
	for (size_t k = 0; k < n; k++)
		if (reqs[k].status == IDD_ENOENT && damaged[k])
			reqs[k].status = IDD_ECORRUPT;
out:
	free(who);
	free(tried);
	free(damaged);
	free(load);
	free(jobs);
	free(tids);
	free(started);
	return rc;
}

static const struct idd_block_source_ops peers_ops = {"peer", peers_has, peers_read, peers_close};

/* Read one peer's cache index into p->files and the holders.  A failure is
 * the peer's (returned with e filled), except out of memory (IDD_ENOMEM). */
static int load_peer(struct peers *P, uint32_t pi, idd_error *e)
{
	struct peer *p = &P->p[pi];
	void *file = NULL, *payload = NULL;
	size_t flen = 0, plen = 0;
	idd_cache *c = NULL;
	int rc = idd_source_get(p->src, IDD_CACHE_INDEX, MAX_PEER_INDEX, &file, &flen, e);
	if (rc == IDD_ENOENT)
		idd_error_prefix(e, "no cache index (is this a node cache directory?)");
	if (!rc)
		rc = idd_indexfile_parse(p->url, file, flen, PEER_INDEX_MAGIC, PEER_INDEX_VERSION, &payload,
		                         &plen, NULL, e);
	free(file);
	if (!rc) {
		c = calloc(1, sizeof *c);
		rc = c ? idd_cache_index_parse(p->url, payload, plen, c, e) : idd_fail_code(e, IDD_ENOMEM, "out of memory");
	}
	free(payload);
	if (rc)
		goto out;
	uint32_t bsz = P->base.block_size;
	size_t usable = 0;
	for (size_t i = 0; i < c->count; i++)
		usable += c->e[i].owned && c->e[i].block_size == bsz;
	p->files = calloc(usable ? usable : 1, sizeof *p->files);
	if (!p->files) {
		rc = idd_fail_code(e, IDD_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < c->count; i++) {
		idd_cache_entry *ce = &c->e[i];
		/* only images inside the cache directory are served with it;
		 * others are paths on that node */
		if (!ce->owned || ce->block_size != bsz || !idd_relpath_ok(ce->path))
			continue;
		uint32_t fi = (uint32_t)p->nfiles;
		struct pfile *pf = &p->files[p->nfiles++];
		pf->rel = ce->path;
		ce->path = NULL;
		pf->size = ce->size;
		atomic_init(&pf->bad, false);
		for (uint64_t k = 0; k < ce->n; k++) {
			bool added;
			idd_error me;
			size_t slot = idd_digest_set_add(&P->set, &ce->digests[k], &added, &me);
			if (slot == (size_t)-1) {
				rc = idd_fail_code(e, IDD_ENOMEM, "out of memory");
				goto out;
			}
			uint32_t tail = 0;
			if (!added) { /* held already: add this peer unless it holds it too */
				bool mine = false;
				for (uint32_t t = (uint32_t)P->set.aux[slot]; t; t = P->h[t - 1].next) {
					mine = mine || P->h[t - 1].peer == pi;
					tail = t;
				}
				if (mine)
					continue;
			}
			if (P->nh >= UINT32_MAX - 1) {
				rc = idd_fail_code(e, IDD_ENOMEM, "peers: too many blocks");
				goto out;
			}
			if (P->nh == P->caph) {
				size_t cap = P->caph ? P->caph * 2 : 4096;
				struct holder *nh = idd_realloc_array(P->h, cap, sizeof *nh, &me);
				if (!nh) {
					rc = idd_fail_code(e, IDD_ENOMEM, "out of memory");
					goto out;
				}
				P->h = nh;
				P->caph = cap;
			}
			P->h[P->nh++] = (struct holder){pi, fi, ce->blocks[k], 0};
			if (added)
				P->set.aux[slot] = P->nh;
			else
				P->h[tail - 1].next = (uint32_t)P->nh;
		}
	}
out:
	idd_cache_close(c);
	return rc;
}

int idd_peer_source_open(const char *const *urls, size_t n, uint32_t block_size,
                         const idd_fetch_opts *fo, idd_warn_fn warn, void *ctx,
                         idd_block_source **out, idd_error *err)
{
	if (!n || n > IDD_MAX_PEERS)
		return idd_fail(err, "peers: %zu given; 1 to %d are supported", n, IDD_MAX_PEERS);
	for (size_t i = 0; i < n; i++)
		if (idd_is_s3(urls[i]))
			return idd_fail(err, "%s: a peer is a node cache served over HTTP, not an s3:// location",
			                urls[i]);
	struct peers *P = idd_calloc(1, sizeof *P, err);
	if (!P)
		return IDD_ERR;
	pthread_mutex_init(&P->mu, NULL);
	if (idd_block_source_init(&P->base, &peers_ops, n == 1 ? urls[0] : "peers", block_size, warn,
	                          ctx, err)) {
		pthread_mutex_destroy(&P->mu);
		free(P);
		return IDD_ERR;
	}
	P->base.priv = P;
	int rc = IDD_OK;
	P->p = idd_calloc(n, sizeof *P->p, err);
	if (!P->p || idd_digest_set_init(&P->set, 1024, true, err)) {
		rc = IDD_ERR;
		goto out;
	}
	P->n = n;
	idd_fetch_opts o = fo ? *fo : (idd_fetch_opts){0};
	if (o.connections <= 0)
		o.connections = 4;
	if (o.max_retries <= 0)
		o.max_retries = 2;
	if (o.backoff_ms <= 0)
		o.backoff_ms = 50;
	if (o.timeout_s <= 0)
		o.timeout_s = 5;
	/* retries of a peer are not worth a line each: the outcome is */
	o.warn = NULL;
	for (size_t i = 0; i < n; i++) {
		struct peer *p = &P->p[i];
		atomic_init(&p->dead, true);
		p->url = idd_strdup(urls[i], err);
		if (!p->url) {
			rc = IDD_ERR;
			goto out;
		}
		idd_error e;
		int prc = idd_source_open(urls[i], &o, &p->src, &e);
		if (!prc)
			prc = load_peer(P, (uint32_t)i, &e);
		if (prc == IDD_ENOMEM) {
			*err = e;
			rc = IDD_ERR;
			goto out;
		}
		if (prc) {
			idd_warnf(warn, ctx, "warning: peer not used: %s", e.msg);
			continue;
		}
		atomic_store(&p->dead, false);
	}
out:
	if (rc) {
		peers_close(&P->base);
		return rc;
	}
	*out = &P->base;
	return IDD_OK;
}

size_t idd_peer_source_live(idd_block_source *s)
{
	struct peers *P = s->priv;
	size_t live = 0;
	for (size_t i = 0; i < P->n; i++)
		live += !atomic_load(&P->p[i].dead);
	return live;
}
