/* src_http.c - the HTTP backend: a repository at an http:// or https://
 * URL, read with HEAD, GET and Range requests (curl_pool.c sends them).
 * Redirects are followed within the same scheme. */
#include "base/source.h"
#include "base/curl_pool.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct http {
	char *root; /* the URL without trailing '/' */
	idd_curl_pool *pool;
	idd_curl_target t;
};

static bool http_claims(const char *root) { return idd_is_url(root); }

static void http_close(void *impl)
{
	struct http *h = impl;
	idd_curl_pool_free(h->pool);
	free(h->root);
	free(h);
}

static int http_open(const char *root, const idd_fetch_opts *o, void **impl, char **display,
                     idd_error *err)
{
	struct http *h = idd_calloc(1, sizeof *h, err);
	if (!h)
		return IDD_ERR;
	h->t = (idd_curl_target){.https = !strncasecmp(root, "https://", 8), .follow_redirects = true,
	                         .timeout_s = o->timeout_s, .cancel = o->cancel};
	h->root = idd_strdup(root, err);
	if (!h->root || idd_curl_pool_new(o->connections, &h->pool, err)) {
		http_close(h);
		return IDD_ERR;
	}
	size_t n = strlen(h->root);
	while (n > 8 && h->root[n - 1] == '/')
		h->root[--n] = 0;
	if (!(*display = idd_strdup(h->root, err))) {
		http_close(h);
		return IDD_ERR;
	}
	*impl = h;
	return IDD_OK;
}

/* ROOT/REL with REL percent-encoded; messages name files by it too. */
static char *http_url(void *impl, const char *rel, idd_error *err)
{
	struct http *h = impl;
	idd_buf b = {0};
	idd_buf_put(&b, h->root, strlen(h->root));
	idd_buf_put_u8(&b, '/');
	idd_s3_uri_encode(&b, rel, true);
	idd_buf_put_u8(&b, 0);
	if (b.failed) {
		idd_buf_free(&b);
		idd_fail(err, "out of memory");
		return NULL;
	}
	return (char *)b.data;
}

static int http_stat(void *impl, const char *rel, idd_remote_stat *st, idd_fetch_stats *fs,
                     idd_error *err)
{
	struct http *h = impl;
	char *url = http_url(h, rel, err);
	int rc = url ? idd_curl_head(h->pool, &h->t, url, url, st, fs, err) : IDD_ERR;
	free(url);
	return rc;
}

static int http_get(void *impl, const char *rel, size_t max, idd_buf *body, idd_fetch_stats *fs,
                    idd_error *err)
{
	struct http *h = impl;
	char *url = http_url(h, rel, err);
	int rc = url ? idd_curl_get(h->pool, &h->t, url, url, max, body, fs, err) : IDD_ERR;
	free(url);
	return rc;
}

static int http_read(void *impl, const char *rel, idd_src_io *io, size_t n, idd_fetch_stats *fs,
                     idd_error *err)
{
	struct http *h = impl;
	char *url = http_url(h, rel, err);
	int rc = url ? idd_curl_read_ios(h->pool, &h->t, url, url, io, n, fs, err) : IDD_ERR;
	free(url);
	return rc;
}

const idd_source_backend idd_source_http = {
	.name = "http",
	.remote = true,
	.claims = http_claims,
	.open = http_open,
	.close = http_close,
	.name_of = http_url,
	.stat = http_stat,
	.get = http_get,
	.read_ranges = http_read,
};
