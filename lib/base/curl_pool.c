/* curl_pool.c - the curl engine of the HTTP and S3 backends: sessions
 * (a curl multi handle with its easy handles) kept in a pool, and one
 * attempt at a batch of requests (keep-alive, Range requests, several
 * requests in flight).
 *
 * Ownership: a session belongs to one batch at a time.  idd_curl_run takes
 * it from the pool's idle list (or makes one when none is idle), uses its
 * handles from the calling thread only, and gives it back when the batch
 * ends; so connections stay alive across batches and no two threads ever
 * touch one handle.  Idle sessions are the pool's and are freed with it;
 * the pool belongs to the backend that made it and must outlive every
 * batch running on it. */
#include "base/curl_pool.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* Largest error body kept (S3 says why in it). */
#define MAX_ERROR_BODY 1024

struct session {
	CURLM *multi;
	CURL **easy;        /* connections easy handles, reused: connections stay alive */
	bool *busy;
	struct session *next;
};

struct idd_curl_pool {
	int connections;
	pthread_mutex_t mu; /* idle */
	struct session *idle;
};

/* Body bytes received from remote sources by this process (progress at
 * start-up: the index of a slow source takes a while). */
static atomic_uint_least64_t bytes_received;

uint64_t idd_bytes_received(void) { return atomic_load(&bytes_received); }

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static void session_free(idd_curl_pool *p, struct session *x)
{
	if (!x)
		return;
	if (x->easy)
		for (int i = 0; i < p->connections; i++)
			if (x->easy[i])
				curl_easy_cleanup(x->easy[i]);
	if (x->multi)
		curl_multi_cleanup(x->multi);
	free(x->easy);
	free(x->busy);
	free(x);
}

int idd_curl_pool_new(int connections, idd_curl_pool **out, idd_error *err)
{
	pthread_once(&curl_once, curl_init_once);
	idd_curl_pool *p = idd_calloc(1, sizeof *p, err);
	if (!p)
		return IDD_ERR;
	p->connections = connections > 0 ? connections : 1;
	pthread_mutex_init(&p->mu, NULL);
	*out = p;
	return IDD_OK;
}

void idd_curl_pool_free(idd_curl_pool *p)
{
	if (!p)
		return;
	while (p->idle) {
		struct session *x = p->idle;
		p->idle = x->next;
		session_free(p, x);
	}
	pthread_mutex_destroy(&p->mu);
	free(p);
}

/* An idle session, or a new one. */
static struct session *session_get(idd_curl_pool *p, const char *name, idd_error *err)
{
	pthread_mutex_lock(&p->mu);
	struct session *x = p->idle;
	if (x)
		p->idle = x->next;
	pthread_mutex_unlock(&p->mu);
	if (x) {
		x->next = NULL;
		return x;
	}
	x = idd_calloc(1, sizeof *x, err);
	if (!x)
		return NULL;
	x->multi = curl_multi_init();
	x->easy = idd_calloc((size_t)p->connections, sizeof *x->easy, err);
	x->busy = idd_calloc((size_t)p->connections, sizeof *x->busy, err);
	if (!x->easy || !x->busy)
		goto fail;
	if (!x->multi)
		goto curl_fail;
	curl_multi_setopt(x->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)p->connections);
	curl_multi_setopt(x->multi, CURLMOPT_MAXCONNECTS, (long)p->connections);
	for (int i = 0; i < p->connections; i++)
		if (!(x->easy[i] = curl_easy_init()))
			goto curl_fail;
	return x;
curl_fail:
	idd_fail(err, "%s: cannot initialise libcurl", name);
fail:
	session_free(p, x);
	return NULL;
}

static void session_put(idd_curl_pool *p, struct session *x)
{
	pthread_mutex_lock(&p->mu);
	x->next = p->idle;
	p->idle = x;
	pthread_mutex_unlock(&p->mu);
}

/* ---- one attempt ---- */

enum att_state { ATT_WAIT, ATT_ACTIVE, ATT_DONE };

/* The engine's side of a request during one attempt. */
struct attempt {
	idd_http_req *q;
	const idd_curl_target *t;
	CURL *easy;
	idd_fetch_stats *st;
	enum att_state state;
	int slot;
	uint64_t cr_start;        /* Content-Range start, UINT64_MAX when absent */
	uint64_t sent;            /* PUT: bytes handed to curl */
	const char *abort_why;    /* a callback refused the transfer */
	char *errbody;            /* the start of an error body */
	size_t errlen;
	char errbuf[CURL_ERROR_SIZE];
};

static size_t header_cb(char *p, size_t size, size_t n, void *ud)
{
	struct attempt *a = ud;
	size_t len = size * n;
	if (len >= 5 && !strncmp(p, "HTTP/", 5)) {
		a->cr_start = UINT64_MAX; /* a new response (after a redirect or 100) */
		a->q->etag[0] = 0;
		a->errlen = 0;
	} else if (len > 14 && !strncasecmp(p, "Content-Range:", 14)) {
		char tmp[128];
		size_t m = IDD_MIN(len - 14, sizeof tmp - 1);
		memcpy(tmp, p + 14, m);
		tmp[m] = 0;
		unsigned long long x, y;
		if (sscanf(tmp, " bytes %llu-%llu", &x, &y) == 2)
			a->cr_start = x;
	} else if (len > 5 && !strncasecmp(p, "ETag:", 5)) {
		const char *v = p + 5, *e = p + len;
		while (v < e && (*v == ' ' || *v == '\t' || *v == '"'))
			v++;
		while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '"'))
			e--;
		size_t m = (size_t)(e - v);
		if (m < sizeof a->q->etag) {
			memcpy(a->q->etag, v, m);
			a->q->etag[m] = 0;
		}
	}
	return len;
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud)
{
	struct attempt *a = ud;
	idd_http_req *q = a->q;
	size_t len = size * n;
	atomic_fetch_add(&bytes_received, len);
	long status = 0;
	curl_easy_getinfo(a->easy, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status >= 300) {
		/* an error page: keep its start (S3 explains itself there), drain
		 * the rest so the connection stays usable */
		if (!a->errbody)
			a->errbody = malloc(MAX_ERROR_BODY);
		if (a->errbody && a->errlen < MAX_ERROR_BODY) {
			size_t k = IDD_MIN(len, MAX_ERROR_BODY - a->errlen);
			memcpy(a->errbody + a->errlen, p, k);
			a->errlen += k;
		}
		return len;
	}
	if (q->kind == IDD_HTTP_WHOLE) {
		curl_off_t announced = -1;
		/* a file announced past the limit is refused before it is read
		 * (a hostile peer's endless index would be taken up to the limit) */
		if (!q->body->len &&
		    curl_easy_getinfo(a->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) == CURLE_OK &&
		    announced > 0 && (uint64_t)announced > q->max) {
			a->abort_why = "file too large (its announced size is past the limit)";
			return 0;
		}
		if (q->body->len + len > q->max) {
			a->abort_why = "file too large";
			return 0;
		}
		idd_buf_put(q->body, p, len);
		if (q->body->failed) {
			a->abort_why = "out of memory";
			return 0;
		}
		a->st->bytes += len;
		return len;
	}
	if (q->kind != IDD_HTTP_RANGE)
		return len;
	if (status != 206) {
		a->abort_why = "the server ignored the Range request (no 206 Partial Content)";
		return 0;
	}
	if (a->cr_start != q->off + *q->got) {
		a->abort_why = "the server answered a different range than asked";
		return 0;
	}
	if (len > q->len - *q->got) {
		a->abort_why = "the server sent more bytes than asked";
		return 0;
	}
	memcpy(q->buf + *q->got, p, len);
	*q->got += len;
	a->cr_start += len; /* the next chunk continues here */
	a->st->bytes += len;
	return len;
}

/* PUT bodies: read from the file, from the start on every attempt. */
static size_t read_cb(char *buf, size_t size, size_t n, void *ud)
{
	struct attempt *a = ud;
	size_t want = (size_t)IDD_MIN((uint64_t)(size * n), a->q->len - a->sent);
	if (!want)
		return 0;
	ssize_t got = pread(a->q->fd, buf, want, (off_t)a->sent);
	if (got <= 0) {
		a->abort_why = got < 0 ? "cannot read the local file" : "the local file shrank";
		return CURL_READFUNC_ABORT;
	}
	a->sent += (uint64_t)got;
	return (size_t)got;
}

static int start_attempt(struct attempt *a, struct session *x, int slot, idd_error *err)
{
	const idd_curl_target *t = a->t;
	idd_http_req *q = a->q;
	CURL *e = x->easy[slot];
	a->easy = e;
	a->slot = slot;
	a->cr_start = UINT64_MAX;
	a->abort_why = NULL;
	a->errbuf[0] = 0;
	a->sent = 0;
	a->errlen = 0;
	q->etag[0] = 0;
	q->mtime = -1;
	q->retry = false;
	if (q->kind == IDD_HTTP_WHOLE)
		q->body->len = 0; /* whole files restart from scratch */
	const char *proto = t->https ? "https" : "http";
	curl_easy_reset(e); /* keeps the connection cache: only options go */
	curl_easy_setopt(e, CURLOPT_URL, q->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, a);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, t->follow_redirects ? 1L : 0L);
	curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, proto);
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, proto);
#else
	long pmask = t->https ? CURLPROTO_HTTPS : CURLPROTO_HTTP;
	curl_easy_setopt(e, CURLOPT_PROTOCOLS, pmask);
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS, pmask);
	(void)proto;
#endif
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	/* a transfer slower than 1 KiB/s for timeout_s seconds (a stalled or
	 * trickling server) fails as CURLE_OPERATION_TIMEDOUT: retried, then an
	 * error; a floor of 1 byte/s let a server trickling 2 bytes/s hold a
	 * deploy forever */
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, IDD_MIN(10L, t->timeout_s));
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, t->timeout_s);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "imgdedup/" IDD_VERSION);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, a->errbuf);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
	if (t->sigv4) {
		/* USERNAME/PASSWORD, not USERPWD: access keys may hold a colon
		 * (Swift's account:user) */
		curl_easy_setopt(e, CURLOPT_AWS_SIGV4, t->sigv4);
		curl_easy_setopt(e, CURLOPT_USERNAME, t->user);
		curl_easy_setopt(e, CURLOPT_PASSWORD, t->password);
	}
	if (t->headers)
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, (struct curl_slist *)t->headers);
	switch (q->kind) {
	case IDD_HTTP_HEAD:
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
		curl_easy_setopt(e, CURLOPT_FILETIME, 1L);
		break;
	case IDD_HTTP_PUT:
		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
		curl_easy_setopt(e, CURLOPT_READDATA, a);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)q->len);
		break;
	case IDD_HTTP_DELETE:
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
		break;
	case IDD_HTTP_RANGE: {
		char range[64];
		snprintf(range, sizeof range, "%llu-%llu", (unsigned long long)(q->off + *q->got),
		         (unsigned long long)(q->off + q->len - 1));
		curl_easy_setopt(e, CURLOPT_RANGE, range); /* copied by libcurl */
		break;
	}
	case IDD_HTTP_WHOLE:
		break;
	}
	if (curl_multi_add_handle(x->multi, e) != CURLM_OK)
		return idd_fail(err, "%s: libcurl refused the request", q->name);
	x->busy[slot] = true;
	a->state = ATT_ACTIVE;
	a->st->requests++;
	return IDD_OK;
}

static bool curl_transient(CURLcode c)
{
	switch (c) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_PARTIAL_FILE:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return true;
	default:
		return false;
	}
}

enum outcome { OUT_OK, OUT_RETRY, OUT_FATAL, OUT_NOTFOUND, OUT_DENIED };

/* Judge a finished attempt; fills why for failures. */
static enum outcome judge(struct attempt *a, CURLcode cc, char *why, size_t whylen)
{
	const idd_curl_target *t = a->t;
	idd_http_req *q = a->q;
	CURL *e = a->easy;
	long status = 0;
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	if (a->abort_why) {
		snprintf(why, whylen, "%s", a->abort_why);
		return OUT_FATAL;
	}
	if (cc != CURLE_OK) {
		if (cc == CURLE_UNSUPPORTED_PROTOCOL && status >= 300 && status < 400)
			snprintf(why, whylen, "redirect to another scheme refused (%s)",
			         a->errbuf[0] ? a->errbuf : curl_easy_strerror(cc));
		else
			snprintf(why, whylen, "%s", a->errbuf[0] ? a->errbuf : curl_easy_strerror(cc));
		/* a partial body before a reset: keep it (ranges resume from `got`) */
		return curl_transient(cc) ? OUT_RETRY : OUT_FATAL;
	}
	char code[64] = "", msg[256] = "", detail[sizeof code + sizeof msg + 8] = "";
	if (status >= 300 && t->error_detail) {
		t->error_detail(a->errbody, a->errlen, code, sizeof code, msg, sizeof msg);
		if (code[0])
			snprintf(detail, sizeof detail, " %s%s%s", code, msg[0] ? ": " : "", msg);
	}
	if (status >= 500 || status == 408 || status == 429 ||
	    (status == 400 && !strcmp(code, "RequestTimeout"))) {
		snprintf(why, whylen, "HTTP %ld%s", status, detail);
		return OUT_RETRY;
	}
	if (status == 404 && !strcmp(code, "NoSuchBucket")) {
		/* not a missing file: the whole location is wrong */
		snprintf(why, whylen, "no such bucket (HTTP 404)");
		return OUT_FATAL;
	}
	if (status == 404 || status == 410) {
		snprintf(why, whylen, "HTTP %ld (not found)%s", status, detail);
		return OUT_NOTFOUND;
	}
	if (status == 401 || status == 403) {
		if (t->denied_hint)
			snprintf(why, whylen, "access denied (HTTP %ld%s%s); %s", status, detail[0] ? ":" : "",
			         detail, t->denied_hint);
		else
			snprintf(why, whylen, "HTTP %ld (access denied)", status);
		return OUT_DENIED;
	}
	if (status >= 300) {
		snprintf(why, whylen, status < 400 ? "HTTP %ld (redirect not followed)%s" : "HTTP %ld%s",
		         status, detail);
		return OUT_FATAL;
	}
	if (q->kind == IDD_HTTP_HEAD) {
		curl_off_t cl = -1, ft = -1;
		curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (cl < 0) {
			snprintf(why, whylen, "the server did not say the file's size");
			return OUT_FATAL;
		}
		q->length = (uint64_t)cl;
		if (curl_easy_getinfo(e, CURLINFO_FILETIME_T, &ft) == CURLE_OK && ft >= 0)
			q->mtime = (int64_t)ft;
		return OUT_OK;
	}
	if (q->kind == IDD_HTTP_RANGE && *q->got < q->len) {
		snprintf(why, whylen, "short body (%llu of %llu bytes)", (unsigned long long)*q->got,
		         (unsigned long long)q->len);
		return OUT_RETRY;
	}
	if (q->kind == IDD_HTTP_PUT && a->sent != q->len) {
		snprintf(why, whylen, "upload cut short (%llu of %llu bytes)", (unsigned long long)a->sent,
		         (unsigned long long)q->len);
		return OUT_RETRY;
	}
	if (q->kind == IDD_HTTP_WHOLE) {
		curl_off_t cl = -1;
		curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (cl >= 0 && (uint64_t)cl != q->body->len) {
			snprintf(why, whylen, "short body (%zu of %lld bytes)", q->body->len, (long long)cl);
			return OUT_RETRY;
		}
	}
	return OUT_OK;
}

static int free_slot(const struct session *x, int n)
{
	int slot = 0;
	while (slot < n && x->busy[slot])
		slot++;
	return slot;
}

static int64_t mono_ms(void) { return idd_mono_ns() / 1000000; }

int idd_curl_run(idd_curl_pool *p, const idd_curl_target *t, idd_http_req *reqs, size_t n,
                 idd_fetch_stats *st, idd_error *err)
{
	if (!n)
		return IDD_OK;
	struct attempt *att = idd_calloc(n, sizeof *att, err);
	if (!att)
		return IDD_ERR;
	struct session *x = session_get(p, reqs[0].name, err);
	if (!x) {
		free(att);
		return IDD_ERR;
	}
	for (size_t i = 0; i < n; i++)
		att[i] = (struct attempt){.q = &reqs[i], .t = t, .st = st, .slot = -1};
	size_t finished_n = 0, next = 0;
	int active = 0, rc = IDD_OK;
	bool any_retry = false;
	int64_t deadline_ms = idd_fetch_deadline() / 1000000;
	while (finished_n < n) {
		/* checked at least every 100 ms (the poll below waits no longer) */
		if (t->cancel && atomic_load(t->cancel)) {
			rc = idd_fail_code(err, IDD_ECANCELED, "%s: stopped", reqs[0].name);
			goto out;
		}
		if (deadline_ms && mono_ms() >= deadline_ms) {
			rc = idd_fail_code(err, IDD_ETIMEDOUT, "%s: no answer in time", reqs[0].name);
			goto out;
		}
		while (next < n && active < p->connections) {
			if (start_attempt(&att[next++], x, free_slot(x, p->connections), err)) {
				rc = IDD_ERR;
				goto out;
			}
			active++;
		}
		int running = 0;
		curl_multi_perform(x->multi, &running);
		CURLMsg *m;
		int left;
		bool finished = false;
		while ((m = curl_multi_info_read(x->multi, &left))) {
			finished = true;
			if (m->msg != CURLMSG_DONE)
				continue;
			struct attempt *a = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&a);
			char why[CURL_ERROR_SIZE + 512];
			enum outcome oc = judge(a, m->data.result, why, sizeof why);
			curl_multi_remove_handle(x->multi, m->easy_handle);
			x->busy[a->slot] = false;
			active--;
			a->state = ATT_DONE;
			finished_n++;
			if (oc == OUT_OK)
				continue;
			if (oc == OUT_RETRY) {
				/* the others go on; the retry layer decides about this one */
				a->q->retry = true;
				any_retry = true;
				idd_fail_code(err, IDD_SRC_RETRY, "%s: %s", a->q->name, why);
				free(a->q->why);
				a->q->why = idd_asprintf(NULL, "%s: %s", a->q->name, why);
				continue;
			}
			int code = oc == OUT_NOTFOUND ? IDD_ENOENT : oc == OUT_DENIED ? IDD_EPERM : IDD_ERR;
			rc = idd_fail_code(err, code, "%s: %s", a->q->name, why);
			goto out;
		}
		/* a finished request frees a slot: start the next one at once */
		if (finished_n < n && !finished)
			curl_multi_poll(x->multi, NULL, 0, 100, NULL);
	}
	if (any_retry)
		rc = IDD_SRC_RETRY;
out:
	for (int i = 0; i < p->connections; i++) {
		if (x->busy[i]) {
			curl_multi_remove_handle(x->multi, x->easy[i]);
			x->busy[i] = false;
		}
	}
	for (size_t i = 0; i < n; i++)
		free(att[i].errbody);
	free(att);
	session_put(p, x);
	return rc;
}

/* ---- requests of one kind ---- */

int idd_curl_head(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                  idd_remote_stat *st, idd_fetch_stats *fs, idd_error *err)
{
	idd_http_req q = {.url = url, .name = name, .kind = IDD_HTTP_HEAD};
	int rc = idd_curl_run(p, t, &q, 1, fs, err);
	free(q.why); /* one request: err says it */
	if (rc)
		return rc;
	st->size = q.length;
	memcpy(st->etag, q.etag, sizeof st->etag);
	st->mtime = q.mtime;
	return IDD_OK;
}

int idd_curl_get(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                 size_t max, idd_buf *body, idd_fetch_stats *fs, idd_error *err)
{
	idd_http_req q = {.url = url, .name = name, .kind = IDD_HTTP_WHOLE, .body = body, .max = max};
	int rc = idd_curl_run(p, t, &q, 1, fs, err);
	free(q.why);
	return rc;
}

int idd_curl_put_fd(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                    int fd, uint64_t len, idd_fetch_stats *fs, idd_error *err)
{
	idd_http_req q = {.url = url, .name = name, .kind = IDD_HTTP_PUT, .fd = fd, .len = len};
	int rc = idd_curl_run(p, t, &q, 1, fs, err);
	free(q.why);
	return rc;
}

int idd_curl_delete(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                    idd_fetch_stats *fs, idd_error *err)
{
	idd_http_req q = {.url = url, .name = name, .kind = IDD_HTTP_DELETE};
	int rc = idd_curl_run(p, t, &q, 1, fs, err);
	free(q.why);
	return rc;
}

int idd_curl_read_ios(idd_curl_pool *p, const idd_curl_target *t, const char *url,
                      const char *name, idd_src_io *io, size_t n, idd_fetch_stats *fs,
                      idd_error *err)
{
	idd_http_req *q = idd_calloc(n ? n : 1, sizeof *q, err);
	if (!q)
		return IDD_ERR;
	size_t *of = idd_calloc(n ? n : 1, sizeof *of, err);
	if (!of) {
		free(q);
		return IDD_ERR;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		free(io[i].why);
		io[i].why = NULL;
		if (io[i].got < io[i].len) {
			of[k] = i;
			q[k++] = (idd_http_req){.url = url, .name = name, .kind = IDD_HTTP_RANGE,
			                        .off = io[i].off, .len = io[i].len, .buf = io[i].buf,
			                        .got = &io[i].got};
		}
	}
	int rc = idd_curl_run(p, t, q, k, fs, err);
	for (size_t j = 0; j < k; j++)
		io[of[j]].why = q[j].why; /* the io owns it now */
	free(of);
	free(q);
	return rc;
}
