/* fetch.c - repository sources (fetch.h): a root opened by the first
 * backend of the table below that claims it (source.h says what a backend
 * is), every operation run through the retry layer (retry.h), and what all
 * backends share: path checks, figures, batch reads (ranges sorted and
 * coalesced into requests of up to IDD_FETCH_MAX_REQUEST bytes) and remote
 * files with read-ahead windows.
 *
 * Threads: a source may be used from several threads at once; backends
 * keep their own connection pools (curl_pool.c says who owns what). */
#include "base/fetch.h"
#include "base/source.h"
#include "base/retry.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Asked in this order; the local backend claims whatever is left. */
static const idd_source_backend *const backends[] = {&idd_source_s3, &idd_source_http,
                                                     &idd_source_local};

const idd_source_backend *const *idd_source_backends(size_t *n)
{
	*n = sizeof backends / sizeof *backends;
	return backends;
}

struct idd_source {
	const idd_source_backend *b;
	void *impl;
	char *root;      /* as messages name it */
	idd_fetch_opts o;
	idd_retry_policy retry;
	pthread_mutex_t mu; /* st */
	idd_fetch_stats st;
};

bool idd_is_url(const char *s)
{
	return !strncasecmp(s, "http://", 7) || !strncasecmp(s, "https://", 8);
}

bool idd_is_remote_location(const char *s)
{
	return idd_is_url(s) || idd_is_s3(s);
}

/* The calling thread's deadline for remote requests (idd_fetch_set_deadline). */
static _Thread_local int64_t thread_deadline;

int64_t idd_fetch_set_deadline(int64_t mono_ns)
{
	int64_t old = thread_deadline;
	thread_deadline = mono_ns > 0 ? mono_ns : 0;
	return old;
}

int64_t idd_fetch_deadline(void) { return thread_deadline; }

static void stats_add(idd_fetch_stats *a, const idd_fetch_stats *b)
{
	a->requests += b->requests;
	a->bytes += b->bytes;
	a->retries += b->retries;
}

/* Add one operation's figures to the source's totals. */
static void count(idd_source *s, const idd_fetch_stats *fs)
{
	pthread_mutex_lock(&s->mu);
	stats_add(&s->st, fs);
	pthread_mutex_unlock(&s->mu);
}

int idd_source_open(const char *root, const idd_fetch_opts *opts, idd_source **out, idd_error *err)
{
	idd_source *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return IDD_ERR;
	pthread_mutex_init(&s->mu, NULL);
	if (opts)
		s->o = *opts;
	if (s->o.connections <= 0)
		s->o.connections = 4;
	if (s->o.connections > 64)
		s->o.connections = 64;
	if (s->o.max_retries <= 0)
		s->o.max_retries = 6;
	if (s->o.backoff_ms <= 0)
		s->o.backoff_ms = 100;
	if (s->o.timeout_s <= 0)
		s->o.timeout_s = 30;
	s->retry = (idd_retry_policy){.max_retries = s->o.max_retries, .backoff_ms = s->o.backoff_ms,
	                              .warn = s->o.warn, .ctx = s->o.ctx, .cancel = s->o.cancel};
	for (size_t i = 0; i < sizeof backends / sizeof *backends; i++) {
		if (backends[i]->claims(root)) {
			s->b = backends[i];
			break;
		}
	}
	if (s->b->open(root, &s->o, &s->impl, &s->root, err)) {
		s->impl = NULL;
		idd_source_close(s);
		return IDD_ERR;
	}
	*out = s;
	return IDD_OK;
}

void idd_source_close(idd_source *s)
{
	if (!s)
		return;
	if (s->impl)
		s->b->close(s->impl);
	pthread_mutex_destroy(&s->mu);
	free(s->root);
	free(s);
}

bool idd_source_is_remote(const idd_source *s) { return s->b->remote; }
bool idd_source_is_s3(const idd_source *s) { return s->b == &idd_source_s3; }
const char *idd_source_root(const idd_source *s) { return s->root; }

void idd_source_stats(const idd_source *s, idd_fetch_stats *st)
{
	pthread_mutex_lock((pthread_mutex_t *)&s->mu);
	*st = s->st;
	pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
}

/* rel must name something inside the root ("" is the root of a remote
 * source: listings). */
static int check_rel(idd_source *s, const char *rel, idd_error *err)
{
	if ((s->b->remote && !rel[0]) || idd_relpath_ok(rel))
		return IDD_OK;
	return idd_fail_code(err, IDD_EPERM, "%s: '%s' is not a path inside the source", s->root, rel);
}

static int unsupported(idd_source *s, const char *what, idd_error *err)
{
	return idd_fail(err, "%s: %s needs an s3:// location", s->root, what);
}

/* ---- operations through the retry layer ---- */

struct call {
	idd_source *s;
	const char *rel;
	idd_remote_stat *st; /* stat */
	size_t max;          /* get */
	idd_buf *body;
	int fd;              /* put */
	uint64_t len;
	const char *prefix;  /* list */
	const char *token;
	unsigned page;
	idd_s3_page *pg;
	idd_src_io *io;      /* read */
	size_t nio;
	const char **why;    /* read: the failures of the last attempt */
	size_t nwhy;
};

static int stat_attempt(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs,
                         idd_error *err)
{
	struct call *c = arg;
	(void)failed;
	return c->s->b->stat(c->s->impl, c->rel, c->st, fs, err);
}

static int get_attempt(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs,
                         idd_error *err)
{
	struct call *c = arg;
	(void)failed;
	return c->s->b->get(c->s->impl, c->rel, c->max, c->body, fs, err);
}

static int put_attempt(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs,
                         idd_error *err)
{
	struct call *c = arg;
	(void)failed;
	return c->s->b->put_fd(c->s->impl, c->rel, c->fd, c->len, fs, err);
}

static int remove_attempt(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs,
                         idd_error *err)
{
	struct call *c = arg;
	(void)failed;
	return c->s->b->remove(c->s->impl, c->rel, fs, err);
}

static int list_attempt(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs,
                         idd_error *err)
{
	struct call *c = arg;
	(void)failed;
	return c->s->b->list_page(c->s->impl, c->prefix, c->token, c->page, c->pg, fs, err);
}

static int read_attempt(void *arg, idd_retry_failures *failed, idd_fetch_stats *fs,
                        idd_error *err)
{
	struct call *c = arg;
	int rc = c->s->b->read_ranges(c->s->impl, c->rel, c->io, c->nio, fs, err);
	c->nwhy = 0;
	for (size_t i = 0; rc == IDD_SRC_RETRY && i < c->nio; i++)
		if (c->io[i].why)
			c->why[c->nwhy++] = c->io[i].why;
	failed->why = c->why;
	failed->n = c->nwhy;
	return rc;
}

/* Run one operation on rel through the retry layer, its figures counted. */
static int run(idd_source *s, idd_attempt_fn fn, struct call *c, idd_fetch_stats *batch,
               idd_error *err)
{
	char *name = s->b->name_of(s->impl, c->rel, err);
	if (!name)
		return IDD_ERR;
	idd_fetch_stats fs = {0};
	int rc = idd_retry_run(&s->retry, name, fn, c, &fs, err);
	free(name);
	count(s, &fs);
	if (batch)
		stats_add(batch, &fs);
	return rc;
}

int idd_source_stat(idd_source *s, const char *rel, idd_remote_stat *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	st->mtime = -1;
	if (check_rel(s, rel, err))
		return IDD_EPERM;
	struct call c = {.s = s, .rel = rel, .st = st};
	return run(s, stat_attempt, &c, NULL, err);
}

int idd_source_get(idd_source *s, const char *rel, size_t max, void **data, size_t *len,
                   idd_error *err)
{
	if (check_rel(s, rel, err))
		return IDD_EPERM;
	idd_buf body = {0};
	struct call c = {.s = s, .rel = rel, .max = max, .body = &body};
	int rc = run(s, get_attempt, &c, NULL, err);
	if (rc) {
		idd_buf_free(&body);
		return rc;
	}
	if (!body.data) { /* empty file */
		body.data = malloc(1);
		if (!body.data)
			return idd_fail(err, "out of memory");
	}
	*data = body.data;
	*len = body.len;
	return IDD_OK;
}

void idd_s3_object_list_free(idd_s3_object_list *l)
{
	idd_s3_objects_free(l->v, l->n);
	l->v = NULL;
	l->n = 0;
}

int idd_source_list(idd_source *s, const char *rel_prefix, idd_s3_object_list *out,
                    idd_error *err)
{
	memset(out, 0, sizeof *out);
	if (!s->b->list_page)
		return unsupported(s, "listing", err);
	size_t rpl = strlen(rel_prefix);
	if (rpl && (rel_prefix[rpl - 1] != '/' || rel_prefix[0] == '/'))
		return idd_fail(err, "%s: bad listing prefix '%s'", s->root, rel_prefix);
	char *token = NULL;
	int rc = IDD_OK;
	for (unsigned page = 0; !rc; page++) {
		idd_s3_page pg = {0};
		/* rel "" names the root in messages; the prefix goes to the backend */
		struct call c = {.s = s, .rel = "", .prefix = rel_prefix, .token = token, .page = page,
		                 .pg = &pg};
		rc = run(s, list_attempt, &c, NULL, err);
		for (size_t i = 0; !rc && i < pg.n; i++) {
			idd_s3_object *nv = idd_realloc_array(out->v, out->n + 1, sizeof *nv, err);
			if (!nv) {
				rc = IDD_ERR;
				break;
			}
			out->v = nv;
			out->v[out->n++] = pg.v[i];
			pg.v[i].key = NULL;
		}
		free(token);
		token = NULL;
		if (!rc && pg.truncated) {
			/* a token that does not move on would loop forever */
			if (!pg.n && page > 0) {
				rc = idd_fail_code(err, IDD_ECORRUPT, "%s: the listing does not advance", s->root);
			} else {
				token = pg.next_token;
				pg.next_token = NULL;
			}
		}
		idd_s3_page_free(&pg);
		if (!token)
			break;
	}
	free(token);
	if (rc)
		idd_s3_object_list_free(out);
	return rc;
}

int idd_source_put_fd(idd_source *s, const char *rel, int fd, uint64_t len, idd_error *err)
{
	if (!s->b->put_fd)
		return unsupported(s, "upload", err);
	if (check_rel(s, rel, err))
		return IDD_EPERM;
	struct call c = {.s = s, .rel = rel, .fd = fd, .len = len};
	return run(s, put_attempt, &c, NULL, err);
}

int idd_source_delete(idd_source *s, const char *rel, idd_error *err)
{
	if (!s->b->remove)
		return unsupported(s, "delete", err);
	if (check_rel(s, rel, err))
		return IDD_EPERM;
	struct call c = {.s = s, .rel = rel};
	return run(s, remove_attempt, &c, NULL, err);
}

/* ---- remote files ---- */

/* Read-ahead windows (idd_source_open_file_readahead). */
#define RA_WINDOWS 4
struct ra_window {
	uint64_t off, len;
	unsigned char *buf;
	uint64_t tick;   /* last use */
	bool loading;    /* being fetched by a thread (others wait) */
	bool valid;
};

struct remote {
	idd_source *s;
	char *rel;
	size_t ra;       /* window size, 0: none */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct ra_window w[RA_WINDOWS];
	uint64_t tick;
};

static int remote_read_direct(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	struct remote *rm = f->priv;
	idd_range r = {off, len, buf};
	return idd_source_read_ranges(rm->s, f, &r, 1, err);
}

/* A small read through the windows: served from a window that holds it,
 * else the aligned window around it is fetched (once, even when several
 * threads ask) and kept. */
static int remote_read_ahead(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	struct remote *rm = f->priv;
	uint64_t woff = off / rm->ra * rm->ra;
	uint64_t wlen = IDD_MIN((uint64_t)rm->ra, f->size - woff);
	if (off + len > woff + wlen) /* straddles two windows: read it as it is */
		return remote_read_direct(f, buf, len, off, err);
	pthread_mutex_lock(&rm->mu);
	for (;;) {
		struct ra_window *hit = NULL;
		for (int i = 0; i < RA_WINDOWS; i++)
			if ((rm->w[i].valid || rm->w[i].loading) && rm->w[i].off == woff)
				hit = &rm->w[i];
		if (hit && hit->valid) {
			memcpy(buf, hit->buf + (off - woff), len);
			hit->tick = ++rm->tick;
			pthread_mutex_unlock(&rm->mu);
			return IDD_OK;
		}
		if (hit) { /* another thread is fetching it */
			pthread_cond_wait(&rm->cv, &rm->mu);
			continue;
		}
		/* claim the least recently used window that is not loading */
		struct ra_window *v = NULL;
		for (int i = 0; i < RA_WINDOWS; i++) {
			struct ra_window *c = &rm->w[i];
			if (c->loading)
				continue;
			if (!c->valid) { /* an empty one first */
				v = c;
				break;
			}
			if (!v || c->tick < v->tick)
				v = c;
		}
		if (!v) { /* all windows loading: read this one directly */
			pthread_mutex_unlock(&rm->mu);
			return remote_read_direct(f, buf, len, off, err);
		}
		if (!v->buf && !(v->buf = malloc(rm->ra))) {
			pthread_mutex_unlock(&rm->mu);
			return remote_read_direct(f, buf, len, off, err);
		}
		v->valid = false;
		v->loading = true;
		v->off = woff;
		v->len = wlen;
		pthread_mutex_unlock(&rm->mu);
		int rc = remote_read_direct(f, v->buf, (size_t)wlen, woff, err);
		pthread_mutex_lock(&rm->mu);
		v->loading = false;
		v->valid = rc == IDD_OK;
		v->tick = ++rm->tick;
		pthread_cond_broadcast(&rm->cv);
		if (rc) {
			pthread_mutex_unlock(&rm->mu);
			return rc;
		}
	}
}

static int remote_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > f->size)
		return idd_fail(err, "%s: read of %zu bytes at offset %llu is past the end (%llu bytes)",
		                f->name, len, (unsigned long long)off, (unsigned long long)f->size);
	if (!len)
		return IDD_OK;
	struct remote *rm = f->priv;
	if (rm->ra && len < rm->ra)
		return remote_read_ahead(f, buf, len, off, err);
	return remote_read_direct(f, buf, len, off, err);
}

static void remote_close(idd_file *f)
{
	struct remote *rm = f->priv;
	if (rm) {
		for (int i = 0; i < RA_WINDOWS; i++)
			free(rm->w[i].buf);
		pthread_mutex_destroy(&rm->mu);
		pthread_cond_destroy(&rm->cv);
		free(rm->rel);
		free(rm);
	}
}

static const struct idd_file_ops remote_ops = {remote_pread, NULL, remote_close};
int idd_source_open_file_readahead(idd_source *s, const char *rel, uint64_t size_hint,
                                   size_t window, idd_file **out, idd_error *err)
{
	if (check_rel(s, rel, err))
		return IDD_EPERM;
	if (!s->b->remote)
		return s->b->open_local(s->impl, rel, out, err);
	uint64_t size = size_hint;
	if (size == UINT64_MAX) {
		idd_remote_stat st;
		int rc = idd_source_stat(s, rel, &st, err);
		if (rc)
			return rc;
		size = st.size;
	}
	idd_file *f = idd_calloc(1, sizeof *f, err);
	struct remote *rm = idd_calloc(1, sizeof *rm, err);
	char *name = rm ? s->b->name_of(s->impl, rel, err) : NULL;
	char *r = name ? idd_strdup(rel, err) : NULL;
	if (!f || !r) {
		free(f);
		free(rm);
		free(name);
		return IDD_ERR;
	}
	rm->s = s;
	rm->rel = r;
	rm->ra = window;
	pthread_mutex_init(&rm->mu, NULL);
	pthread_cond_init(&rm->cv, NULL);
	f->ops = &remote_ops;
	f->name = name;
	f->size = size;
	f->fd = -1;
	f->priv = rm;
	*out = f;
	return IDD_OK;
}

int idd_source_open_file(idd_source *s, const char *rel, uint64_t size_hint, idd_file **out,
                         idd_error *err)
{
	return idd_source_open_file_readahead(s, rel, size_hint, 0, out, err);
}

/* ---- batch reads ---- */

struct order {
	uint64_t off;
	size_t idx;
};

static int cmp_order(const void *a, const void *b)
{
	const struct order *x = a, *y = b;
	if (x->off != y->off)
		return x->off < y->off ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Ranges sorted by offset, grouped into spans: a range overlapping the span
 * so far, or starting at most IDD_FETCH_MERGE_GAP bytes after its end,
 * joins it.  One span is read as one stretch of the file. */
struct span {
	uint64_t off, end;
	size_t first, count;     /* in the sorted order */
	unsigned char *stage;    /* several ranges: read here, then copied out */
};

static int make_spans(idd_file *f, const idd_range *r, size_t n, struct order **ord_out,
                      struct span **spans_out, size_t *nspans, idd_error *err)
{
	struct order *ord = idd_calloc(n, sizeof *ord, err);
	struct span *sp = idd_calloc(n, sizeof *sp, err);
	if (!ord || !sp) {
		free(ord);
		free(sp);
		return IDD_ERR;
	}
	for (size_t i = 0; i < n; i++) {
		uint64_t end;
		if (!idd_add_ok(r[i].off, r[i].len, &end) || end > f->size) {
			free(ord);
			free(sp);
			return idd_fail(err, "%s: range %llu+%llu is past the end (%llu bytes)", f->name,
			                (unsigned long long)r[i].off, (unsigned long long)r[i].len,
			                (unsigned long long)f->size);
		}
		ord[i].off = r[i].off;
		ord[i].idx = i;
	}
	qsort(ord, n, sizeof *ord, cmp_order);
	size_t ns = 0;
	for (size_t i = 0; i < n; i++) {
		const idd_range *x = &r[ord[i].idx];
		uint64_t end = x->off + x->len;
		struct span *cur = ns ? &sp[ns - 1] : NULL;
		if (cur && x->off <= cur->end + IDD_FETCH_MERGE_GAP) {
			cur->end = IDD_MAX(cur->end, end);
			cur->count++;
		} else {
			sp[ns++] = (struct span){x->off, end, i, 1, NULL};
		}
	}
	*ord_out = ord;
	*spans_out = sp;
	*nspans = ns;
	return IDD_OK;
}

int idd_source_read_ranges(idd_source *s, idd_file *f, const idd_range *r, size_t n, idd_error *err)
{
	return idd_source_read_ranges_counted(s, f, r, n, NULL, err);
}

/* Local files (or slices): the page cache does the coalescing; count the
 * requests a remote source would have made, for comparable figures. */
static int read_local(idd_source *s, idd_file *f, const idd_range *r, size_t n,
                      const struct span *sp, size_t ns, idd_fetch_stats *batch, idd_error *err)
{
	for (size_t i = 0; i < n; i++)
		if (idd_file_pread(f, r[i].buf, (size_t)r[i].len, r[i].off, err))
			return IDD_ERR;
	idd_fetch_stats fs = {0};
	for (size_t k = 0; k < ns; k++) {
		uint64_t len = sp[k].end - sp[k].off;
		fs.requests += (len + IDD_FETCH_MAX_REQUEST - 1) / IDD_FETCH_MAX_REQUEST;
		fs.bytes += len;
	}
	count(s, &fs);
	if (batch)
		stats_add(batch, &fs);
	return IDD_OK;
}

int idd_source_read_ranges_counted(idd_source *s, idd_file *f, const idd_range *r, size_t n,
                                   idd_fetch_stats *batch, idd_error *err)
{
	if (!n)
		return IDD_OK;
	struct order *ord = NULL;
	struct span *sp = NULL;
	size_t ns = 0;
	if (make_spans(f, r, n, &ord, &sp, &ns, err))
		return IDD_ERR;
	if (f->ops != &remote_ops) {
		int rc = read_local(s, f, r, n, sp, ns, batch, err);
		free(ord);
		free(sp);
		return rc;
	}
	struct remote *rm = f->priv;
	size_t nio = 0;
	int rc = IDD_OK;
	for (size_t k = 0; k < ns; k++) {
		uint64_t len = sp[k].end - sp[k].off;
		nio += (size_t)((len + IDD_FETCH_MAX_REQUEST - 1) / IDD_FETCH_MAX_REQUEST);
		if (sp[k].count > 1 && len) {
			if (len > SIZE_MAX) {
				rc = idd_fail(err, "%s: batch read too large", f->name);
				break;
			}
			sp[k].stage = idd_malloc((size_t)len, err);
			if (!sp[k].stage) {
				rc = IDD_ERR;
				break;
			}
		}
	}
	idd_src_io *io = rc ? NULL : idd_calloc(nio ? nio : 1, sizeof *io, err);
	if (!io)
		rc = IDD_ERR;
	/* Each span is read in requests of up to IDD_FETCH_MAX_REQUEST bytes,
	 * straight into the caller's buffer when the span is one range. */
	size_t q = 0;
	for (size_t k = 0; !rc && k < ns; k++) {
		unsigned char *dst = sp[k].stage ? sp[k].stage : r[ord[sp[k].first].idx].buf;
		uint64_t len = sp[k].end - sp[k].off;
		for (uint64_t done = 0; done < len; q++) {
			uint64_t piece = IDD_MIN(len - done, IDD_FETCH_MAX_REQUEST);
			io[q] = (idd_src_io){.off = sp[k].off + done, .len = piece, .buf = dst + done};
			done += piece;
		}
	}
	if (!rc) {
		struct call c = {.s = s, .rel = rm->rel, .io = io, .nio = q};
		c.why = idd_calloc(q ? q : 1, sizeof *c.why, err);
		rc = c.why ? run(s, read_attempt, &c, batch, err) : IDD_ERR;
		free(c.why);
	}
	for (size_t i = 0; io && i < q; i++)
		free(io[i].why);
	for (size_t k = 0; k < ns; k++) {
		if (!sp[k].stage)
			continue;
		for (size_t i = sp[k].first; !rc && i < sp[k].first + sp[k].count; i++) {
			const idd_range *x = &r[ord[i].idx];
			memcpy(x->buf, sp[k].stage + (x->off - sp[k].off), (size_t)x->len);
		}
		free(sp[k].stage);
	}
	free(ord);
	free(sp);
	free(io);
	return rc;
}
