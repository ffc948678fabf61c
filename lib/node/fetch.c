/* fetch.c - repository sources for deploy: a local directory, or HTTP(S)
 * through libcurl (keep-alive, Range requests, curl multi for several
 * requests in flight, retries with exponential backoff). */
#include "node/fetch.h"
#include "index/indexfile.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

struct idd_source {
	char *root;      /* local: realpath of the directory; remote: URL without trailing '/' */
	bool remote;
	bool https;
	idd_fetch_opts o;
	idd_fetch_stats st;
	CURLM *multi;
	CURL **pool;     /* o.connections easy handles, reused: connections stay alive */
	bool *pool_busy;
};

bool idd_is_url(const char *s)
{
	return !strncasecmp(s, "http://", 7) || !strncasecmp(s, "https://", 8);
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

int idd_source_open(const char *root, const idd_fetch_opts *opts, idd_source **out, idd_error *err)
{
	idd_source *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return IDD_ERR;
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
	s->remote = idd_is_url(root);
	if (s->remote) {
		s->https = !strncasecmp(root, "https://", 8);
		s->root = idd_strdup(root, err);
		if (!s->root)
			goto fail;
		size_t n = strlen(s->root);
		while (n > 8 && s->root[n - 1] == '/')
			s->root[--n] = 0;
		pthread_once(&curl_once, curl_init_once);
		s->multi = curl_multi_init();
		s->pool = idd_calloc((size_t)s->o.connections, sizeof *s->pool, err);
		s->pool_busy = idd_calloc((size_t)s->o.connections, sizeof *s->pool_busy, err);
		if (!s->pool || !s->pool_busy)
			goto fail;
		if (!s->multi) {
			idd_fail(err, "%s: cannot initialise libcurl", root);
			goto fail;
		}
		curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)s->o.connections);
		curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, (long)s->o.connections);
		for (int i = 0; i < s->o.connections; i++) {
			s->pool[i] = curl_easy_init();
			if (!s->pool[i]) {
				idd_fail(err, "%s: cannot initialise libcurl", root);
				goto fail;
			}
		}
	} else {
		s->root = realpath(root, NULL);
		if (!s->root) {
			idd_fail_errno(err, root, "cannot open source");
			goto fail;
		}
	}
	*out = s;
	return IDD_OK;
fail:
	idd_source_close(s);
	return IDD_ERR;
}

void idd_source_close(idd_source *s)
{
	if (!s)
		return;
	if (s->pool)
		for (int i = 0; i < s->o.connections; i++)
			if (s->pool[i])
				curl_easy_cleanup(s->pool[i]);
	if (s->multi)
		curl_multi_cleanup(s->multi);
	free(s->pool);
	free(s->pool_busy);
	free(s->root);
	free(s);
}

bool idd_source_is_remote(const idd_source *s) { return s->remote; }
const char *idd_source_root(const idd_source *s) { return s->root; }
void idd_source_stats(const idd_source *s, idd_fetch_stats *st) { *st = s->st; }

/* ---- local sources ---- */

/* ROOT/REL, refusing anything whose real path leaves the root (symlinks). */
static int local_path(idd_source *s, const char *rel, char **out, idd_error *err)
{
	if (!idd_relpath_ok(rel))
		return idd_fail(err, "%s: '%s' is not a path inside the source", s->root, rel);
	char *p = idd_path_join(s->root, rel, err);
	if (!p)
		return IDD_ERR;
	char *real = realpath(p, NULL);
	if (!real) {
		int e = errno;
		idd_fail_errno(err, p, "cannot open");
		free(p);
		return e == ENOENT ? IDD_ENOENT : IDD_ERR;
	}
	size_t rl = strlen(s->root);
	bool inside = !strncmp(real, s->root, rl) && (real[rl] == '/' || (rl == 1 && s->root[0] == '/'));
	free(real);
	if (!inside) {
		idd_fail(err, "%s: refused: it leads outside the source %s (symlink)", p, s->root);
		free(p);
		return IDD_ERR;
	}
	*out = p;
	return IDD_OK;
}

/* ---- HTTP ---- */

static char *make_url(idd_source *s, const char *rel, idd_error *err)
{
	if (!idd_relpath_ok(rel)) {
		idd_fail(err, "%s: '%s' is not a path inside the source", s->root, rel);
		return NULL;
	}
	idd_buf b = {0};
	idd_buf_put(&b, s->root, strlen(s->root));
	idd_buf_put_u8(&b, '/');
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *c = (const unsigned char *)rel; *c; c++) {
		if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
		    strchr("-._~/", *c)) {
			idd_buf_put_u8(&b, *c);
		} else {
			unsigned char e[3] = {'%', (unsigned char)hex[*c >> 4], (unsigned char)hex[*c & 15]};
			idd_buf_put(&b, e, 3);
		}
	}
	idd_buf_put_u8(&b, 0);
	if (b.failed) {
		idd_buf_free(&b);
		idd_fail(err, "out of memory");
		return NULL;
	}
	return (char *)b.data;
}

struct seg {
	unsigned char *buf;
	uint64_t len;
};

enum req_state { REQ_WAIT, REQ_ACTIVE, REQ_DONE };
enum req_kind { REQ_RANGE, REQ_WHOLE, REQ_HEAD };

struct req {
	idd_source *s;
	const char *url;
	enum req_kind kind;
	uint64_t off, len;        /* REQ_RANGE: [off, off+len) */
	struct seg *segs;         /* REQ_RANGE: destinations covering the range, in order */
	size_t nseg;
	idd_buf *body;            /* REQ_WHOLE */
	size_t max;
	uint64_t got;             /* payload delivered so far (kept across retries) */
	size_t cur_seg;           /* where byte `got` goes */
	uint64_t cur_off;
	int attempts;
	int64_t not_before;
	enum req_state state;
	int pool_slot;
	/* per attempt */
	uint64_t cr_start;        /* Content-Range start, UINT64_MAX when absent */
	uint64_t length;          /* REQ_HEAD: Content-Length */
	const char *abort_why;    /* the write callback refused the response */
	char errbuf[CURL_ERROR_SIZE];
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t header_cb(char *p, size_t size, size_t n, void *ud)
{
	struct req *r = ud;
	size_t len = size * n;
	if (len >= 5 && !strncmp(p, "HTTP/", 5)) {
		r->cr_start = UINT64_MAX; /* a new response (after a redirect or 100) */
	} else if (len > 14 && !strncasecmp(p, "Content-Range:", 14)) {
		char tmp[128];
		size_t m = IDD_MIN(len - 14, sizeof tmp - 1);
		memcpy(tmp, p + 14, m);
		tmp[m] = 0;
		unsigned long long a, b;
		if (sscanf(tmp, " bytes %llu-%llu", &a, &b) == 2)
			r->cr_start = a;
	}
	return len;
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud)
{
	struct req *r = ud;
	size_t len = size * n;
	CURL *e = r->s->pool[r->pool_slot];
	long status = 0;
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status >= 300)
		return len; /* an error page: drain it so the connection stays usable */
	if (r->kind == REQ_WHOLE) {
		if (r->body->len + len > r->max) {
			r->abort_why = "file too large";
			return 0;
		}
		idd_buf_put(r->body, p, len);
		if (r->body->failed) {
			r->abort_why = "out of memory";
			return 0;
		}
		r->s->st.bytes += len;
		return len;
	}
	if (r->kind != REQ_RANGE)
		return len;
	if (status != 206) {
		r->abort_why = "the server ignored the Range request (no 206 Partial Content)";
		return 0;
	}
	if (r->cr_start != r->off + r->got) {
		r->abort_why = "the server answered a different range than asked";
		return 0;
	}
	if (len > r->len - r->got) {
		r->abort_why = "the server sent more bytes than asked";
		return 0;
	}
	size_t left = len;
	while (left) {
		struct seg *sg = &r->segs[r->cur_seg];
		size_t k = (size_t)IDD_MIN((uint64_t)left, sg->len - r->cur_off);
		memcpy(sg->buf + r->cur_off, p, k);
		p += k;
		left -= k;
		r->cur_off += k;
		r->got += k;
		r->cr_start += k; /* the next chunk continues here */
		if (r->cur_off == sg->len) {
			r->cur_seg++;
			r->cur_off = 0;
		}
	}
	r->s->st.bytes += len;
	return len;
}

static int start_req(idd_source *s, struct req *r, int slot, idd_error *err)
{
	CURL *e = s->pool[slot];
	r->pool_slot = slot;
	r->cr_start = UINT64_MAX;
	r->abort_why = NULL;
	r->errbuf[0] = 0;
	if (r->kind == REQ_WHOLE)
		r->body->len = 0; /* whole files restart from scratch */
	const char *proto = s->https ? "https" : "http";
	curl_easy_setopt(e, CURLOPT_URL, r->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
#if LIBCURL_VERSION_NUM >= 0x075500
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, proto);
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, proto);
#else
	long pmask = s->https ? CURLPROTO_HTTPS : CURLPROTO_HTTP;
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
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, IDD_MIN(10L, s->o.timeout_s));
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1024L);
	curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, s->o.timeout_s);
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "imgdedup/" IDD_VERSION);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->errbuf);
	curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(e, CURLOPT_NOBODY, r->kind == REQ_HEAD ? 1L : 0L);
	if (r->kind == REQ_HEAD)
		curl_easy_setopt(e, CURLOPT_HTTPGET, 0L);
	else
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	char range[64];
	if (r->kind == REQ_RANGE) {
		snprintf(range, sizeof range, "%llu-%llu", (unsigned long long)(r->off + r->got),
		         (unsigned long long)(r->off + r->len - 1));
		curl_easy_setopt(e, CURLOPT_RANGE, range);
	} else {
		curl_easy_setopt(e, CURLOPT_RANGE, NULL);
	}
	if (curl_multi_add_handle(s->multi, e) != CURLM_OK)
		return idd_fail(err, "%s: libcurl refused the request", r->url);
	s->pool_busy[slot] = true;
	r->state = REQ_ACTIVE;
	s->st.requests++;
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

enum outcome { OUT_OK, OUT_RETRY, OUT_FATAL, OUT_NOTFOUND };

/* Judge a finished attempt; fills why for failures. */
static enum outcome judge(struct req *r, CURLcode cc, char *why, size_t whylen)
{
	CURL *e = r->s->pool[r->pool_slot];
	long status = 0;
	curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
	if (r->abort_why) {
		snprintf(why, whylen, "%s", r->abort_why);
		return OUT_FATAL;
	}
	if (cc != CURLE_OK) {
		if (cc == CURLE_UNSUPPORTED_PROTOCOL && status >= 300 && status < 400)
			snprintf(why, whylen, "redirect to another scheme refused (%s)",
			         r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc));
		else
			snprintf(why, whylen, "%s", r->errbuf[0] ? r->errbuf : curl_easy_strerror(cc));
		/* a partial body before a reset: keep it (ranges resume from `got`) */
		return curl_transient(cc) ? OUT_RETRY : OUT_FATAL;
	}
	if (status >= 500 || status == 408 || status == 429) {
		snprintf(why, whylen, "HTTP %ld", status);
		return OUT_RETRY;
	}
	if (status == 404 || status == 410) {
		snprintf(why, whylen, "HTTP %ld (not found)", status);
		return OUT_NOTFOUND;
	}
	if (status >= 300) {
		snprintf(why, whylen, status < 400 ? "HTTP %ld (redirect not followed)" : "HTTP %ld", status);
		return OUT_FATAL;
	}
	if (r->kind == REQ_HEAD) {
		curl_off_t cl = -1;
		curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (cl < 0) {
			snprintf(why, whylen, "the server did not say the file's size");
			return OUT_FATAL;
		}
		r->length = (uint64_t)cl;
		return OUT_OK;
	}
	if (r->kind == REQ_RANGE && r->got < r->len) {
		snprintf(why, whylen, "short body (%llu of %llu bytes)", (unsigned long long)r->got,
		         (unsigned long long)r->len);
		return OUT_RETRY;
	}
	if (r->kind == REQ_WHOLE) {
		curl_off_t cl = -1;
		curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (cl >= 0 && (uint64_t)cl != r->body->len) {
			snprintf(why, whylen, "short body (%zu of %lld bytes)", r->body->len, (long long)cl);
			return OUT_RETRY;
		}
	}
	return OUT_OK;
}

/* Run requests to completion, n of them, at most o.connections at once. */
static int run_reqs(idd_source *s, struct req *reqs, size_t n, idd_error *err)
{
	size_t done = 0, next = 0, nretry = 0;
	int rc = IDD_OK;
	int active = 0;
	size_t *retry = idd_calloc(n, sizeof *retry, err); /* requests waiting for their backoff */
	if (!retry)
		return IDD_ERR;
	while (done < n) {
		int64_t now = mono_ms();
		int64_t wait_ms = 1000;
		for (size_t j = 0; j < nretry && active < s->o.connections;) {
			struct req *r = &reqs[retry[j]];
			if (r->not_before > now) {
				wait_ms = IDD_MIN(wait_ms, r->not_before - now);
				j++;
				continue;
			}
			retry[j] = retry[--nretry];
			int slot = 0;
			while (s->pool_busy[slot])
				slot++;
			if (start_req(s, r, slot, err)) {
				rc = IDD_ERR;
				goto out;
			}
			active++;
		}
		while (next < n && active < s->o.connections) {
			int slot = 0;
			while (s->pool_busy[slot])
				slot++;
			if (start_req(s, &reqs[next++], slot, err)) {
				rc = IDD_ERR;
				goto out;
			}
			active++;
		}
		int running = 0;
		curl_multi_perform(s->multi, &running);
		CURLMsg *m;
		int left;
		bool finished = false;
		while ((m = curl_multi_info_read(s->multi, &left))) {
			finished = true;
			if (m->msg != CURLMSG_DONE)
				continue;
			struct req *r = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
			CURLcode cc = m->data.result;
			char why[CURL_ERROR_SIZE + 128];
			enum outcome oc = judge(r, cc, why, sizeof why);
			curl_multi_remove_handle(s->multi, m->easy_handle);
			s->pool_busy[r->pool_slot] = false;
			active--;
			if (oc == OUT_OK) {
				r->state = REQ_DONE;
				done++;
				continue;
			}
			if (oc == OUT_RETRY && r->attempts < s->o.max_retries) {
				long delay = s->o.backoff_ms << IDD_MIN(r->attempts, 10);
				if (delay > 10000)
					delay = 10000;
				r->attempts++;
				r->not_before = mono_ms() + delay;
				r->state = REQ_WAIT;
				retry[nretry++] = (size_t)(r - reqs);
				s->st.retries++;
				if (s->o.warn) {
					char msg[sizeof why + 512];
					snprintf(msg, sizeof msg, "warning: %s: %s; retrying in %ld ms (%d of %d)", r->url,
					         why, delay, r->attempts, s->o.max_retries);
					s->o.warn(s->o.ctx, msg);
				}
				continue;
			}
			if (oc == OUT_RETRY)
				idd_fail(err, "%s: %s (gave up after %d retries)", r->url, why, r->attempts);
			else
				idd_fail(err, "%s: %s", r->url, why);
			rc = oc == OUT_NOTFOUND ? IDD_ENOENT : IDD_ERR;
			goto out;
		}
		/* a finished request frees a slot: start the next one at once */
		if (done < n && !finished)
			curl_multi_poll(s->multi, NULL, 0, (int)IDD_MAX(wait_ms, 1), NULL);
	}
out:
	free(retry);
	for (int i = 0; i < s->o.connections; i++) {
		if (s->pool_busy[i]) {
			curl_multi_remove_handle(s->multi, s->pool[i]);
			s->pool_busy[i] = false;
		}
	}
	return rc;
}

/* ---- remote files ---- */

struct remote {
	idd_source *s;
	char *url;
};

static int remote_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > f->size)
		return idd_fail(err, "%s: read of %zu bytes at offset %llu is past the end (%llu bytes)",
		                f->name, len, (unsigned long long)off, (unsigned long long)f->size);
	if (!len)
		return IDD_OK;
	struct remote *rm = f->priv;
	idd_range r = {off, len, buf};
	return idd_source_read_ranges(rm->s, f, &r, 1, err);
}

static void remote_close(idd_file *f)
{
	struct remote *rm = f->priv;
	if (rm) {
		free(rm->url);
		free(rm);
	}
}

static const struct idd_file_ops remote_ops = {remote_pread, NULL, remote_close};

int idd_source_open_file(idd_source *s, const char *rel, uint64_t size_hint, idd_file **out,
                         idd_error *err)
{
	if (!s->remote) {
		char *p;
		int rc = local_path(s, rel, &p, err);
		if (rc)
			return rc;
		rc = idd_file_open_local(p, out, err);
		free(p);
		return rc;
	}
	char *url = make_url(s, rel, err);
	if (!url)
		return IDD_ERR;
	uint64_t size = size_hint;
	if (size == UINT64_MAX) {
		struct req r = {.s = s, .url = url, .kind = REQ_HEAD};
		int rc = run_reqs(s, &r, 1, err);
		if (rc) {
			free(url);
			return rc;
		}
		size = r.length;
	}
	idd_file *f = idd_calloc(1, sizeof *f, err);
	struct remote *rm = idd_calloc(1, sizeof *rm, err);
	char *name = idd_strdup(url, err);
	if (!f || !rm || !name) {
		free(f);
		free(rm);
		free(name);
		free(url);
		return IDD_ERR;
	}
	rm->s = s;
	rm->url = url;
	f->ops = &remote_ops;
	f->name = name;
	f->size = size;
	f->fd = -1;
	f->priv = rm;
	*out = f;
	return IDD_OK;
}

int idd_source_get(idd_source *s, const char *rel, size_t max, void **data, size_t *len,
                   idd_error *err)
{
	if (!s->remote) {
		char *p;
		int rc = local_path(s, rel, &p, err);
		if (rc)
			return rc;
		rc = idd_read_file(p, max, data, len, err);
		if (rc && access(p, F_OK) && errno == ENOENT)
			rc = IDD_ENOENT;
		free(p);
		if (!rc)
			s->st.requests++, s->st.bytes += *len;
		return rc;
	}
	char *url = make_url(s, rel, err);
	if (!url)
		return IDD_ERR;
	idd_buf body = {0};
	struct req r = {.s = s, .url = url, .kind = REQ_WHOLE, .body = &body, .max = max};
	int rc = run_reqs(s, &r, 1, err);
	free(url);
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
	if (!n)
		return IDD_OK;
	struct order *ord = NULL;
	struct span *sp = NULL;
	size_t ns = 0;
	if (make_spans(f, r, n, &ord, &sp, &ns, err))
		return IDD_ERR;
	if (f->ops != &remote_ops) {
		/* Local (or a slice): the page cache does the coalescing; count
		 * the requests a remote source would have made, for comparable
		 * figures. */
		int rc = IDD_OK;
		for (size_t i = 0; !rc && i < n; i++)
			rc = idd_file_pread(f, r[i].buf, (size_t)r[i].len, r[i].off, err);
		for (size_t k = 0; !rc && k < ns; k++) {
			uint64_t len = sp[k].end - sp[k].off;
			s->st.requests += (len + IDD_FETCH_MAX_REQUEST - 1) / IDD_FETCH_MAX_REQUEST;
			s->st.bytes += len;
		}
		free(ord);
		free(sp);
		return rc;
	}
	struct remote *rm = f->priv;
	size_t nreq = 0;
	int rc = IDD_OK;
	for (size_t k = 0; k < ns; k++) {
		uint64_t len = sp[k].end - sp[k].off;
		nreq += (size_t)((len + IDD_FETCH_MAX_REQUEST - 1) / IDD_FETCH_MAX_REQUEST);
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
	struct seg *segs = rc ? NULL : idd_calloc(nreq ? nreq : 1, sizeof *segs, err);
	struct req *reqs = segs ? idd_calloc(nreq ? nreq : 1, sizeof *reqs, err) : NULL;
	if (!reqs)
		rc = IDD_ERR;
	/* Each span is read in requests of up to IDD_FETCH_MAX_REQUEST bytes,
	 * straight into the caller's buffer when the span is one range. */
	size_t q = 0;
	for (size_t k = 0; !rc && k < ns; k++) {
		unsigned char *dst = sp[k].stage ? sp[k].stage : r[ord[sp[k].first].idx].buf;
		uint64_t len = sp[k].end - sp[k].off;
		for (uint64_t done = 0; done < len; q++) {
			uint64_t piece = IDD_MIN(len - done, IDD_FETCH_MAX_REQUEST);
			segs[q].buf = dst + done;
			segs[q].len = piece;
			reqs[q] = (struct req){.s = s, .url = rm->url, .kind = REQ_RANGE,
			                       .off = sp[k].off + done, .len = piece, .segs = &segs[q],
			                       .nseg = 1};
			done += piece;
		}
	}
	if (!rc)
		rc = run_reqs(s, reqs, q, err);
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
	free(segs);
	free(reqs);
	return rc;
}
