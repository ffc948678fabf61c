/* fetch.c - repository sources for deploy and scan: a local directory,
 * HTTP(S), or an S3-compatible object store, through libcurl (keep-alive,
 * Range requests, curl multi for several requests in flight, retries with
 * exponential backoff; S3 requests signed with SigV4 by libcurl).
 *
 * Threads: a source may be used from several threads at once.  Each batch
 * of requests runs on a session (a curl multi handle and its easy handles)
 * taken from the source's idle list, or made when none is idle, so
 * connections stay alive across batches and threads never share a handle. */
#include "base/fetch.h"
#include "base/s3.h"

#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum src_kind { SRC_LOCAL, SRC_HTTP, SRC_S3 };

/* A curl multi handle with its easy handles, used by one batch at a time. */
struct session {
	CURLM *multi;
	CURL **pool;        /* o.connections easy handles, reused: connections stay alive */
	bool *pool_busy;
	idd_fetch_stats st; /* this batch's figures, added to the source's when it ends */
	struct session *next;
};

struct idd_source {
	char *root;      /* local: realpath of the directory; http: URL without trailing '/';
	                    s3: the location as given, without trailing '/' */
	enum src_kind kind;
	bool https;
	idd_s3_config s3;
	struct curl_slist *s3_headers; /* x-amz-content-sha256 (and the session token) */
	idd_fetch_opts o;
	pthread_mutex_t mu; /* st, idle */
	idd_fetch_stats st;
	struct session *idle;
};

/* Largest listing page and error body read into memory. */
#define MAX_LIST_PAGE ((size_t)64 << 20)
#define MAX_ERROR_BODY 1024

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

/* Body bytes received from remote sources by this process (progress at
 * start-up: the index of a slow source takes a while). */
static atomic_uint_least64_t bytes_received;

uint64_t idd_bytes_received(void) { return atomic_load(&bytes_received); }

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

static void stats_add(idd_fetch_stats *a, const idd_fetch_stats *b)
{
	a->requests += b->requests;
	a->bytes += b->bytes;
	a->retries += b->retries;
}

static void session_free(idd_source *s, struct session *x)
{
	if (!x)
		return;
	if (x->pool)
		for (int i = 0; i < s->o.connections; i++)
			if (x->pool[i])
				curl_easy_cleanup(x->pool[i]);
	if (x->multi)
		curl_multi_cleanup(x->multi);
	free(x->pool);
	free(x->pool_busy);
	free(x);
}

/* An idle session, or a new one. */
static struct session *session_get(idd_source *s, idd_error *err)
{
	pthread_mutex_lock(&s->mu);
	struct session *x = s->idle;
	if (x)
		s->idle = x->next;
	pthread_mutex_unlock(&s->mu);
	if (x) {
		memset(&x->st, 0, sizeof x->st);
		x->next = NULL;
		return x;
	}
	x = idd_calloc(1, sizeof *x, err);
	if (!x)
		return NULL;
	x->multi = curl_multi_init();
	x->pool = idd_calloc((size_t)s->o.connections, sizeof *x->pool, err);
	x->pool_busy = idd_calloc((size_t)s->o.connections, sizeof *x->pool_busy, err);
	if (!x->pool || !x->pool_busy)
		goto fail;
	if (!x->multi)
		goto curl_fail;
	curl_multi_setopt(x->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)s->o.connections);
	curl_multi_setopt(x->multi, CURLMOPT_MAXCONNECTS, (long)s->o.connections);
	for (int i = 0; i < s->o.connections; i++)
		if (!(x->pool[i] = curl_easy_init()))
			goto curl_fail;
	return x;
curl_fail:
	idd_fail(err, "%s: cannot initialise libcurl", s->root);
fail:
	session_free(s, x);
	return NULL;
}

static void session_put(idd_source *s, struct session *x)
{
	pthread_mutex_lock(&s->mu);
	stats_add(&s->st, &x->st);
	x->next = s->idle;
	s->idle = x;
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
	if (idd_is_s3(root)) {
		s->kind = SRC_S3;
		if (idd_s3_config_load(root, &s->s3, err))
			goto fail;
		s->https = !strncasecmp(s->s3.endpoint, "https://", 8);
		s->root = s->s3.prefix[0] ? idd_asprintf(err, "s3://%s/%s", s->s3.bucket, s->s3.prefix)
		                          : idd_asprintf(err, "s3://%s", s->s3.bucket);
		if (!s->root)
			goto fail;
		/* libcurl 7.88 signs the headers it is given and takes the payload
		 * hash from this one: bodies are not hashed (TLS protects them, and
		 * every block is verified against its digest anyway). */
		struct curl_slist *h = curl_slist_append(NULL, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
		if (h)
			s->s3_headers = h;
		if (h && s->s3.session_token) {
			char *line = idd_asprintf(err, "x-amz-security-token: %s", s->s3.session_token);
			h = line ? curl_slist_append(s->s3_headers, line) : NULL;
			free(line);
			if (h)
				s->s3_headers = h;
		}
		if (!h) {
			idd_fail(err, "out of memory");
			goto fail;
		}
		pthread_once(&curl_once, curl_init_once);
	} else if (idd_is_url(root)) {
		s->kind = SRC_HTTP;
		s->https = !strncasecmp(root, "https://", 8);
		s->root = idd_strdup(root, err);
		if (!s->root)
			goto fail;
		size_t n = strlen(s->root);
		while (n > 8 && s->root[n - 1] == '/')
			s->root[--n] = 0;
		pthread_once(&curl_once, curl_init_once);
	} else {
		s->kind = SRC_LOCAL;
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
	while (s->idle) {
		struct session *x = s->idle;
		s->idle = x->next;
		session_free(s, x);
	}
	curl_slist_free_all(s->s3_headers);
	idd_s3_config_free(&s->s3);
	pthread_mutex_destroy(&s->mu);
	free(s->root);
	free(s);
}

bool idd_source_is_remote(const idd_source *s) { return s->kind != SRC_LOCAL; }
bool idd_source_is_s3(const idd_source *s) { return s->kind == SRC_S3; }
const char *idd_source_root(const idd_source *s) { return s->root; }

void idd_source_stats(const idd_source *s, idd_fetch_stats *st)
{
	pthread_mutex_lock((pthread_mutex_t *)&s->mu);
	*st = s->st;
	pthread_mutex_unlock((pthread_mutex_t *)&s->mu);
}

static void local_count(idd_source *s, uint64_t requests, uint64_t bytes)
{
	pthread_mutex_lock(&s->mu);
	s->st.requests += requests;
	s->st.bytes += bytes;
	pthread_mutex_unlock(&s->mu);
}

/* ---- local sources ---- */

/* ROOT/REL, refusing anything whose real path leaves the root (symlinks). */
static int local_path(idd_source *s, const char *rel, char **out, idd_error *err)
{
	if (!idd_relpath_ok(rel))
		return idd_fail_code(err, IDD_EPERM, "%s: '%s' is not a path inside the source", s->root, rel);
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
		idd_fail_code(err, IDD_EPERM, "%s: refused: it leads outside the source %s (symlink)", p, s->root);
		free(p);
		return IDD_EPERM;
	}
	*out = p;
	return IDD_OK;
}

/* ---- URLs ---- */

/* The object key of rel in an S3 source. */
static char *s3_key(idd_source *s, const char *rel, idd_error *err)
{
	return s->s3.prefix[0] ? idd_asprintf(err, "%s/%s", s->s3.prefix, rel) : idd_strdup(rel, err);
}

/* The URL of rel, and the name messages use for it (the URL, or for S3
 * s3://BUCKET/KEY).  rel "" is the root itself (S3: the bucket, for
 * listings, with query). */
static int make_url(idd_source *s, const char *rel, const char *query, char **url, char **name,
                    idd_error *err)
{
	*url = *name = NULL;
	if (rel[0] && !idd_relpath_ok(rel))
		return idd_fail_code(err, IDD_EPERM, "%s: '%s' is not a path inside the source", s->root, rel);
	if (s->kind == SRC_S3) {
		char *key = rel[0] ? s3_key(s, rel, err) : idd_strdup("", err);
		if (!key)
			return IDD_ERR;
		*url = idd_s3_url(&s->s3, key, query, err);
		*name = rel[0] ? idd_asprintf(err, "s3://%s/%s", s->s3.bucket, key)
		               : idd_asprintf(err, "s3://%s", s->s3.bucket);
		free(key);
	} else {
		idd_buf b = {0};
		idd_buf_put(&b, s->root, strlen(s->root));
		idd_buf_put_u8(&b, '/');
		idd_s3_uri_encode(&b, rel, true);
		idd_buf_put_u8(&b, 0);
		if (b.failed) {
			idd_buf_free(&b);
			return idd_fail(err, "out of memory");
		}
		*url = (char *)b.data;
		*name = idd_strdup(*url, err);
	}
	if (!*url || !*name) {
		free(*url);
		free(*name);
		*url = *name = NULL;
		return IDD_ERR;
	}
	return IDD_OK;
}

/* ---- requests ---- */

struct seg {
	unsigned char *buf;
	uint64_t len;
};

enum req_state { REQ_WAIT, REQ_ACTIVE, REQ_DONE };
enum req_kind { REQ_RANGE, REQ_WHOLE, REQ_HEAD, REQ_PUT, REQ_DELETE };

struct req {
	idd_source *s;
	struct session *x;
	const char *url;
	const char *name;         /* for messages */
	enum req_kind kind;
	uint64_t off, len;        /* REQ_RANGE: [off, off+len); REQ_PUT: len bytes of fd */
	struct seg *segs;         /* REQ_RANGE: destinations covering the range, in order */
	size_t nseg;
	idd_buf *body;            /* REQ_WHOLE */
	size_t max;
	int fd;                   /* REQ_PUT */
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
	char etag[80];            /* REQ_HEAD: the ETag header, unquoted */
	int64_t mtime;            /* REQ_HEAD: Last-Modified, -1 when absent */
	uint64_t sent;            /* REQ_PUT: bytes handed to curl */
	const char *abort_why;    /* a callback refused the transfer */
	char *errbody;            /* the start of an error body (S3 says why in it) */
	size_t errlen;
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
		r->etag[0] = 0;
		r->errlen = 0;
	} else if (len > 14 && !strncasecmp(p, "Content-Range:", 14)) {
		char tmp[128];
		size_t m = IDD_MIN(len - 14, sizeof tmp - 1);
		memcpy(tmp, p + 14, m);
		tmp[m] = 0;
		unsigned long long a, b;
		if (sscanf(tmp, " bytes %llu-%llu", &a, &b) == 2)
			r->cr_start = a;
	} else if (len > 5 && !strncasecmp(p, "ETag:", 5)) {
		const char *v = p + 5, *e = p + len;
		while (v < e && (*v == ' ' || *v == '\t' || *v == '"'))
			v++;
		while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '"'))
			e--;
		size_t m = (size_t)(e - v);
		if (m < sizeof r->etag) {
			memcpy(r->etag, v, m);
			r->etag[m] = 0;
		}
	}
	return len;
}

static CURL *req_easy(struct req *r)
{
	return r->x->pool[r->pool_slot];
}

static size_t write_cb(char *p, size_t size, size_t n, void *ud)
{
	struct req *r = ud;
	size_t len = size * n;
	atomic_fetch_add(&bytes_received, len);
	long status = 0;
	curl_easy_getinfo(req_easy(r), CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status >= 300) {
		/* an error page: keep its start (S3 explains itself there), drain
		 * the rest so the connection stays usable */
		if (!r->errbody)
			r->errbody = malloc(MAX_ERROR_BODY);
		if (r->errbody && r->errlen < MAX_ERROR_BODY) {
			size_t k = IDD_MIN(len, MAX_ERROR_BODY - r->errlen);
			memcpy(r->errbody + r->errlen, p, k);
			r->errlen += k;
		}
		return len;
	}
	if (r->kind == REQ_WHOLE) {
		curl_off_t announced = -1;
		/* a file announced past the limit is refused before it is read
		 * (a hostile peer's endless index would be taken up to the limit) */
		if (!r->body->len &&
		    curl_easy_getinfo(req_easy(r), CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) == CURLE_OK &&
		    announced > 0 && (uint64_t)announced > r->max) {
			r->abort_why = "file too large (its announced size is past the limit)";
			return 0;
		}
		if (r->body->len + len > r->max) {
			r->abort_why = "file too large";
			return 0;
		}
		idd_buf_put(r->body, p, len);
		if (r->body->failed) {
			r->abort_why = "out of memory";
			return 0;
		}
		r->x->st.bytes += len;
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
	r->x->st.bytes += len;
	return len;
}

/* PUT bodies: read from the file, from the start on every attempt. */
static size_t read_cb(char *buf, size_t size, size_t n, void *ud)
{
	struct req *r = ud;
	size_t want = (size_t)IDD_MIN((uint64_t)(size * n), r->len - r->sent);
	if (!want)
		return 0;
	ssize_t got = pread(r->fd, buf, want, (off_t)r->sent);
	if (got <= 0) {
		r->abort_why = got < 0 ? "cannot read the local file" : "the local file shrank";
		return CURL_READFUNC_ABORT;
	}
	r->sent += (uint64_t)got;
	return (size_t)got;
}

static int start_req(struct req *r, int slot, idd_error *err)
{
	idd_source *s = r->s;
	struct session *x = r->x;
	CURL *e = x->pool[slot];
	r->pool_slot = slot;
	r->cr_start = UINT64_MAX;
	r->abort_why = NULL;
	r->errbuf[0] = 0;
	r->etag[0] = 0;
	r->mtime = -1;
	r->sent = 0;
	r->errlen = 0;
	if (r->kind == REQ_WHOLE)
		r->body->len = 0; /* whole files restart from scratch */
	const char *proto = s->https ? "https" : "http";
	curl_easy_reset(e); /* keeps the connection cache: only options go */
	curl_easy_setopt(e, CURLOPT_URL, r->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, r);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	/* S3: a signed request is not sent anywhere else (a region redirect
	 * names the right endpoint in its body, which the message shows) */
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, s->kind == SRC_S3 ? 0L : 1L);
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
	if (s->kind == SRC_S3) {
		/* USERNAME/PASSWORD, not USERPWD: access keys may hold a colon
		 * (Swift's account:user) */
		curl_easy_setopt(e, CURLOPT_AWS_SIGV4, s->s3.sigv4);
		curl_easy_setopt(e, CURLOPT_USERNAME, s->s3.access_key);
		curl_easy_setopt(e, CURLOPT_PASSWORD, s->s3.secret_key);
		curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->s3_headers);
	}
	switch (r->kind) {
	case REQ_HEAD:
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
		curl_easy_setopt(e, CURLOPT_FILETIME, 1L);
		break;
	case REQ_PUT:
		curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, read_cb);
		curl_easy_setopt(e, CURLOPT_READDATA, r);
		curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, (curl_off_t)r->len);
		break;
	case REQ_DELETE:
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
		break;
	case REQ_RANGE: {
		char range[64];
		snprintf(range, sizeof range, "%llu-%llu", (unsigned long long)(r->off + r->got),
		         (unsigned long long)(r->off + r->len - 1));
		curl_easy_setopt(e, CURLOPT_RANGE, range); /* copied by libcurl */
		break;
	}
	case REQ_WHOLE:
		break;
	}
	if (curl_multi_add_handle(x->multi, e) != CURLM_OK)
		return idd_fail(err, "%s: libcurl refused the request", r->name);
	x->pool_busy[slot] = true;
	r->state = REQ_ACTIVE;
	x->st.requests++;
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
static enum outcome judge(struct req *r, CURLcode cc, char *why, size_t whylen)
{
	CURL *e = req_easy(r);
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
	/* S3 says what went wrong in the body: <Code> and <Message> */
	char code[64] = "", msg[256] = "", detail[sizeof code + sizeof msg + 8] = "";
	if (status >= 300 && r->s->kind == SRC_S3) {
		idd_s3_error_parse(r->errbody, r->errlen, code, sizeof code, msg, sizeof msg);
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
		if (r->s->kind == SRC_S3)
			snprintf(why, whylen, "access denied (HTTP %ld%s%s); check the credentials "
			         "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the profile), the region "
			         "and the bucket's permissions", status, detail[0] ? ":" : "", detail);
		else
			snprintf(why, whylen, "HTTP %ld (access denied)", status);
		return OUT_DENIED;
	}
	if (status >= 300) {
		snprintf(why, whylen, status < 400 ? "HTTP %ld (redirect not followed)%s" : "HTTP %ld%s",
		         status, detail);
		return OUT_FATAL;
	}
	if (r->kind == REQ_HEAD) {
		curl_off_t cl = -1, ft = -1;
		curl_easy_getinfo(e, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (cl < 0) {
			snprintf(why, whylen, "the server did not say the file's size");
			return OUT_FATAL;
		}
		r->length = (uint64_t)cl;
		if (curl_easy_getinfo(e, CURLINFO_FILETIME_T, &ft) == CURLE_OK && ft >= 0)
			r->mtime = (int64_t)ft;
		return OUT_OK;
	}
	if (r->kind == REQ_RANGE && r->got < r->len) {
		snprintf(why, whylen, "short body (%llu of %llu bytes)", (unsigned long long)r->got,
		         (unsigned long long)r->len);
		return OUT_RETRY;
	}
	if (r->kind == REQ_PUT && r->sent != r->len) {
		snprintf(why, whylen, "upload cut short (%llu of %llu bytes)", (unsigned long long)r->sent,
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

static int free_slot(const struct session *x, int n)
{
	int slot = 0;
	while (slot < n && x->pool_busy[slot])
		slot++;
	return slot;
}

/* Run requests to completion, n of them, at most o.connections at once, on
 * a session of their own.  batch (may be NULL) receives this run's figures. */
static int run_reqs(idd_source *s, struct req *reqs, size_t n, idd_fetch_stats *batch,
                    idd_error *err)
{
	size_t done = 0, next = 0, nretry = 0;
	int rc = IDD_OK;
	int active = 0;
	struct session *x = session_get(s, err);
	if (!x)
		return IDD_ERR;
	for (size_t i = 0; i < n; i++)
		reqs[i].x = x;
	size_t *retry = idd_calloc(n ? n : 1, sizeof *retry, err); /* requests waiting for their backoff */
	if (!retry) {
		session_put(s, x);
		return IDD_ERR;
	}
	/* why the last attempt failed, for a batch that runs out of time */
	char last_why[CURL_ERROR_SIZE + 512] = "";
	int64_t deadline_ms = thread_deadline ? thread_deadline / 1000000 : 0;
	while (done < n) {
		int64_t now = mono_ms();
		/* checked at least every 100 ms (the poll below waits no longer) */
		if (s->o.cancel && atomic_load(s->o.cancel)) {
			rc = idd_fail_code(err, IDD_ECANCELED, "%s: stopped", reqs[0].name);
			goto out;
		}
		if (deadline_ms && now >= deadline_ms) {
			bool why = last_why[0] != 0;
			rc = idd_fail_code(err, IDD_ETIMEDOUT, "%s: no answer in time%s%s%s", reqs[0].name,
			                   why ? " (the last attempt: " : "", last_why, why ? ")" : "");
			goto out;
		}
		int64_t wait_ms = 100;
		for (size_t j = 0; j < nretry && active < s->o.connections;) {
			struct req *r = &reqs[retry[j]];
			if (r->not_before > now) {
				wait_ms = IDD_MIN(wait_ms, r->not_before - now);
				j++;
				continue;
			}
			retry[j] = retry[--nretry];
			if (start_req(r, free_slot(x, s->o.connections), err)) {
				rc = IDD_ERR;
				goto out;
			}
			active++;
		}
		while (next < n && active < s->o.connections) {
			if (start_req(&reqs[next++], free_slot(x, s->o.connections), err)) {
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
			struct req *r = NULL;
			curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
			CURLcode cc = m->data.result;
			char why[CURL_ERROR_SIZE + 512];
			enum outcome oc = judge(r, cc, why, sizeof why);
			curl_multi_remove_handle(x->multi, m->easy_handle);
			x->pool_busy[r->pool_slot] = false;
			active--;
			if (oc == OUT_OK) {
				r->state = REQ_DONE;
				done++;
				continue;
			}
			if (oc == OUT_RETRY)
				snprintf(last_why, sizeof last_why, "%s", why);
			long delay = s->o.backoff_ms << IDD_MIN(r->attempts, 10);
			if (delay > 10000)
				delay = 10000;
			if (oc == OUT_RETRY && deadline_ms && mono_ms() + delay >= deadline_ms) {
				/* a retry after the deadline would be cut short anyway */
				rc = idd_fail_code(err, IDD_ETIMEDOUT, "%s: %s (no time left to retry)", r->name, why);
				goto out;
			}
			if (oc == OUT_RETRY && r->attempts < s->o.max_retries) {
				r->attempts++;
				r->not_before = mono_ms() + delay;
				r->state = REQ_WAIT;
				retry[nretry++] = (size_t)(r - reqs);
				x->st.retries++;
				if (s->o.warn) {
					char msg[sizeof why + 512];
					snprintf(msg, sizeof msg, "warning: %s: %s; retrying in %ld ms (%d of %d)", r->name,
					         why, delay, r->attempts, s->o.max_retries);
					s->o.warn(s->o.ctx, msg);
				}
				continue;
			}
			int code = oc == OUT_NOTFOUND ? IDD_ENOENT : oc == OUT_DENIED ? IDD_EPERM
			         : oc == OUT_RETRY  ? IDD_ENET : IDD_ERR;
			if (oc == OUT_RETRY)
				idd_fail_code(err, code, "%s: %s (gave up after %d retries)", r->name, why, r->attempts);
			else
				idd_fail_code(err, code, "%s: %s", r->name, why);
			rc = code;
			goto out;
		}
		/* a finished request frees a slot: start the next one at once */
		if (done < n && !finished)
			curl_multi_poll(x->multi, NULL, 0, (int)IDD_MAX(wait_ms, 1), NULL);
	}
out:
	free(retry);
	for (int i = 0; i < s->o.connections; i++) {
		if (x->pool_busy[i]) {
			curl_multi_remove_handle(x->multi, x->pool[i]);
			x->pool_busy[i] = false;
		}
	}
	for (size_t i = 0; i < n; i++) {
		free(reqs[i].errbody);
		reqs[i].errbody = NULL;
	}
	if (batch)
		stats_add(batch, &x->st);
	session_put(s, x);
	return rc;
}

/* One request on its own. */
static int run_one(idd_source *s, struct req *r, idd_error *err)
{
	return run_reqs(s, r, 1, NULL, err);
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
	char *url;
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
		free(rm->url);
		free(rm);
	}
}

static const struct idd_file_ops remote_ops = {remote_pread, NULL, remote_close};

/* HEAD: size, ETag, Last-Modified. */
static int remote_head(idd_source *s, const char *url, const char *name, idd_remote_stat *st,
                       idd_error *err)
{
	struct req r = {.s = s, .url = url, .name = name, .kind = REQ_HEAD};
	int rc = run_one(s, &r, err);
	if (rc)
		return rc;
	st->size = r.length;
	memcpy(st->etag, r.etag, sizeof st->etag);
	st->mtime = r.mtime;
	return IDD_OK;
}

int idd_source_open_file_readahead(idd_source *s, const char *rel, uint64_t size_hint,
                                   size_t window, idd_file **out, idd_error *err)
{
	if (s->kind == SRC_LOCAL) {
		char *p;
		int rc = local_path(s, rel, &p, err);
		if (rc)
			return rc;
		rc = idd_file_open_local(p, out, err);
		free(p);
		return rc;
	}
	char *url, *name;
	int rc = make_url(s, rel, NULL, &url, &name, err);
	if (rc)
		return rc;
	uint64_t size = size_hint;
	if (size == UINT64_MAX) {
		idd_remote_stat st;
		rc = remote_head(s, url, name, &st, err);
		if (rc) {
			free(url);
			free(name);
			return rc;
		}
		size = st.size;
	}
	idd_file *f = idd_calloc(1, sizeof *f, err);
	struct remote *rm = idd_calloc(1, sizeof *rm, err);
	if (!f || !rm) {
		free(f);
		free(rm);
		free(name);
		free(url);
		return IDD_ERR;
	}
	rm->s = s;
	rm->url = url;
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

int idd_source_stat(idd_source *s, const char *rel, idd_remote_stat *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	st->mtime = -1;
	if (s->kind == SRC_LOCAL) {
		char *p;
		int rc = local_path(s, rel, &p, err);
		if (rc)
			return rc;
		struct stat sb;
		rc = stat(p, &sb) ? idd_fail_errno(err, p, "cannot stat") : IDD_OK;
		free(p);
		if (!rc) {
			st->size = (uint64_t)sb.st_size;
			st->mtime = (int64_t)sb.st_mtim.tv_sec;
		}
		return rc;
	}
	char *url, *name;
	int rc = make_url(s, rel, NULL, &url, &name, err);
	if (!rc)
		rc = remote_head(s, url, name, st, err);
	free(url);
	free(name);
	return rc;
}

int idd_source_get(idd_source *s, const char *rel, size_t max, void **data, size_t *len,
                   idd_error *err)
{
	if (s->kind == SRC_LOCAL) {
		char *p;
		int rc = local_path(s, rel, &p, err);
		if (rc)
			return rc;
		rc = idd_read_file(p, max, data, len, err);
		if (rc && access(p, F_OK) && errno == ENOENT)
			rc = IDD_ENOENT;
		free(p);
		if (!rc)
			local_count(s, 1, *len);
		return rc;
	}
	char *url, *name;
	int rc = make_url(s, rel, NULL, &url, &name, err);
	if (rc)
		return rc;
	idd_buf body = {0};
	struct req r = {.s = s, .url = url, .name = name, .kind = REQ_WHOLE, .body = &body, .max = max};
	rc = run_one(s, &r, err);
	free(url);
	free(name);
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

/* ---- S3: listing, upload, delete ---- */

static int need_s3(idd_source *s, const char *what, idd_error *err)
{
	if (s->kind == SRC_S3)
		return IDD_OK;
	return idd_fail(err, "%s: %s needs an s3:// location", s->root, what);
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
	if (need_s3(s, "listing", err))
		return IDD_ERR;
	size_t rpl = strlen(rel_prefix);
	if (rpl && (rel_prefix[rpl - 1] != '/' || rel_prefix[0] == '/'))
		return idd_fail(err, "%s: bad listing prefix '%s'", s->root, rel_prefix);
	char *full = s->s3.prefix[0] ? idd_asprintf(err, "%s/%s", s->s3.prefix, rel_prefix)
	                             : idd_strdup(rel_prefix, err);
	if (!full)
		return IDD_ERR;
	size_t strip = s->s3.prefix[0] ? strlen(s->s3.prefix) + 1 : 0;
	char *token = NULL;
	int rc = IDD_OK;
	for (unsigned page = 0; !rc; page++) {
		idd_s3_param p[5] = {{"list-type", "2"}, {"encoding-type", "url"}, {"max-keys", "1000"},
		                     {"prefix", full}, {"continuation-token", token}};
		char *query = idd_s3_canonical_query(p, token ? 5 : 4, err);
		char *url = NULL, *name = NULL;
		if (!query || make_url(s, "", query, &url, &name, err)) {
			free(query);
			rc = IDD_ERR;
			break;
		}
		idd_buf body = {0};
		struct req r = {.s = s, .url = url, .name = name, .kind = REQ_WHOLE, .body = &body,
		                .max = MAX_LIST_PAGE};
		rc = run_one(s, &r, err);
		idd_s3_page pg = {0};
		if (!rc) {
			char *pname = idd_asprintf(err, "%s (listing page %u)", name, page + 1);
			rc = pname ? idd_s3_list_parse(pname, (const char *)body.data, body.len, true, &pg, err)
			           : IDD_ERR;
			free(pname);
		}
		idd_buf_free(&body);
		free(query);
		free(url);
		free(name);
		for (size_t i = 0; !rc && i < pg.n; i++) {
			const char *k = pg.v[i].key;
			/* the store must answer what was asked: keys under the prefix */
			if (strncmp(k, full, strlen(full))) {
				rc = idd_fail_code(err, IDD_ECORRUPT, "%s: the listing holds key '%s', outside the prefix",
				                   s->root, k);
				break;
			}
			idd_s3_object *nv = idd_realloc_array(out->v, out->n + 1, sizeof *nv, err);
			char *rel = nv ? idd_strdup(k + strip, err) : NULL;
			if (nv)
				out->v = nv;
			if (!rel) {
				rc = IDD_ERR;
				break;
			}
			out->v[out->n] = pg.v[i];
			out->v[out->n].key = rel;
			out->n++;
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
	free(full);
	if (rc)
		idd_s3_object_list_free(out);
	return rc;
}

int idd_source_put_fd(idd_source *s, const char *rel, int fd, uint64_t len, idd_error *err)
{
	if (need_s3(s, "upload", err))
		return IDD_ERR;
	char *url, *name;
	int rc = make_url(s, rel, NULL, &url, &name, err);
	if (rc)
		return rc;
	struct req r = {.s = s, .url = url, .name = name, .kind = REQ_PUT, .fd = fd, .len = len};
	rc = run_one(s, &r, err);
	free(url);
	free(name);
	return rc;
}

int idd_source_delete(idd_source *s, const char *rel, idd_error *err)
{
	if (need_s3(s, "delete", err))
		return IDD_ERR;
	char *url, *name;
	int rc = make_url(s, rel, NULL, &url, &name, err);
	if (rc)
		return rc;
	struct req r = {.s = s, .url = url, .name = name, .kind = REQ_DELETE};
	rc = run_one(s, &r, err);
	free(url);
	free(name);
	return rc == IDD_ENOENT ? IDD_OK : rc;
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
		/* Local (or a slice): the page cache does the coalescing; count
		 * the requests a remote source would have made, for comparable
		 * figures. */
		int rc = IDD_OK;
		for (size_t i = 0; !rc && i < n; i++)
			rc = idd_file_pread(f, r[i].buf, (size_t)r[i].len, r[i].off, err);
		uint64_t requests = 0, bytes = 0;
		for (size_t k = 0; !rc && k < ns; k++) {
			uint64_t len = sp[k].end - sp[k].off;
			requests += (len + IDD_FETCH_MAX_REQUEST - 1) / IDD_FETCH_MAX_REQUEST;
			bytes += len;
		}
		if (!rc)
			local_count(s, requests, bytes);
		if (!rc && batch) {
			batch->requests += requests;
			batch->bytes += bytes;
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
			reqs[q] = (struct req){.s = s, .url = rm->url, .name = f->name, .kind = REQ_RANGE,
			                       .off = sp[k].off + done, .len = piece, .segs = &segs[q],
			                       .nseg = 1};
			done += piece;
		}
	}
	if (!rc)
		rc = run_reqs(s, reqs, q, batch, err);
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
