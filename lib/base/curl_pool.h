/* curl_pool.h - the curl engine the HTTP and S3 backends share
 * (curl_pool.c): a pool of sessions (a curl multi handle and its easy
 * handles) and one attempt at a batch of requests on one of them.  Retries
 * are not done here: a transient failure is reported (IDD_SRC_RETRY) and
 * the retry layer (retry.h) decides.  Internal. */
#ifndef IDD_BASE_CURL_POOL_H
#define IDD_BASE_CURL_POOL_H

#include "base/fetch.h"
#include "base/source.h"

#include <stdatomic.h>

typedef struct idd_curl_pool idd_curl_pool;

/* Where and how requests are sent: the backend's settings. */
typedef struct idd_curl_target {
	bool https;            /* the only protocol allowed, redirects included */
	bool follow_redirects;
	long timeout_s;        /* see idd_fetch_opts */
	const atomic_bool *cancel;
	/* SigV4 signing (NULL: none); headers is a struct curl_slist * */
	const char *sigv4, *user, *password;
	const void *headers;
	/* error bodies explain themselves (S3's <Code> and <Message>); NULL: not read */
	void (*error_detail)(const char *body, size_t len, char *code, size_t ncode, char *msg,
	                     size_t nmsg);
	const char *denied_hint; /* appended to access-denied messages; NULL: plain "HTTP 403" */
} idd_curl_target;

enum idd_http_kind { IDD_HTTP_RANGE, IDD_HTTP_WHOLE, IDD_HTTP_HEAD, IDD_HTTP_PUT, IDD_HTTP_DELETE };

typedef struct idd_http_req {
	const char *url;
	const char *name;      /* for messages */
	enum idd_http_kind kind;
	uint64_t off, len;     /* RANGE: [off, off+len) into buf; PUT: len bytes of fd */
	unsigned char *buf;    /* RANGE */
	uint64_t *got;         /* RANGE: bytes delivered so far, kept across attempts */
	idd_buf *body;         /* WHOLE: restarted on every attempt */
	size_t max;
	int fd;                /* PUT: read from offset 0 on every attempt */
	/* results */
	bool retry;            /* this attempt failed transiently ... */
	char *why;             /* ... and why, "NAME: WHY" (the caller frees it) */
	uint64_t length;       /* HEAD: Content-Length */
	char etag[80];         /* HEAD: the ETag header, unquoted */
	int64_t mtime;         /* HEAD: Last-Modified, -1 when absent */
} idd_http_req;

/* A pool of up to `connections` requests in flight per batch. */
int idd_curl_pool_new(int connections, idd_curl_pool **out, idd_error *err);
void idd_curl_pool_free(idd_curl_pool *p);

/* One attempt at each of n requests, at most `connections` at once, on a
 * session of the pool.  IDD_OK: all done.  IDD_SRC_RETRY: every request
 * ran, those with .retry set failed transiently, err says why (of the last
 * one).  Any other code: a request failed for good (404: IDD_ENOENT, 401 and
 * 403: IDD_EPERM), or the calling thread's deadline passed (IDD_ETIMEDOUT),
 * or t->cancel was set (IDD_ECANCELED).  st receives the requests started
 * and the payload bytes delivered. */
int idd_curl_run(idd_curl_pool *p, const idd_curl_target *t, idd_http_req *reqs, size_t n,
                 idd_fetch_stats *st, idd_error *err);

/* Requests of one kind, one attempt each (results as idd_curl_run's). */
int idd_curl_head(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                  idd_remote_stat *st, idd_fetch_stats *fs, idd_error *err);
int idd_curl_get(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                 size_t max, idd_buf *body, idd_fetch_stats *fs, idd_error *err);
int idd_curl_put_fd(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                    int fd, uint64_t len, idd_fetch_stats *fs, idd_error *err);
int idd_curl_delete(idd_curl_pool *p, const idd_curl_target *t, const char *url, const char *name,
                    idd_fetch_stats *fs, idd_error *err);
/* Range requests for every io not yet complete. */
int idd_curl_read_ios(idd_curl_pool *p, const idd_curl_target *t, const char *url,
                      const char *name, idd_src_io *io, size_t n, idd_fetch_stats *fs,
                      idd_error *err);

#endif
