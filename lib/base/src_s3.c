/* src_s3.c - the S3 backend: s3://BUCKET[/PREFIX] in an S3-compatible
 * object store (s3.c: settings, URLs, listings; curl_pool.c sends the
 * requests, signed with SigV4 by libcurl).  Keys are PREFIX/REL. */
#include "base/source.h"
#include "base/curl_pool.h"
#include "base/s3.h"

#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Largest listing page read into memory. */
#define MAX_LIST_PAGE ((size_t)64 << 20)

struct s3 {
	idd_s3_config c;
	struct curl_slist *headers; /* x-amz-content-sha256 (and the session token) */
	idd_curl_pool *pool;
	idd_curl_target t;
};

static void s3_close(void *impl)
{
	struct s3 *s = impl;
	idd_curl_pool_free(s->pool);
	curl_slist_free_all(s->headers);
	idd_s3_config_free(&s->c);
	free(s);
}

static int s3_open(const char *root, const idd_fetch_opts *o, void **impl, char **display,
                   idd_error *err)
{
	struct s3 *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return IDD_ERR;
	if (idd_s3_config_load(root, &s->c, err))
		goto fail;
	*display = s->c.prefix[0] ? idd_asprintf(err, "s3://%s/%s", s->c.bucket, s->c.prefix)
	                          : idd_asprintf(err, "s3://%s", s->c.bucket);
	if (!*display)
		goto fail;
	/* libcurl 7.88 signs the headers it is given and takes the payload hash
	 * from this one: bodies are not hashed (TLS protects them, and every
	 * block is verified against its digest anyway). */
	struct curl_slist *h = curl_slist_append(NULL, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
	if (h)
		s->headers = h;
	if (h && s->c.session_token) {
		char *line = idd_asprintf(err, "x-amz-security-token: %s", s->c.session_token);
		h = line ? curl_slist_append(s->headers, line) : NULL;
		free(line);
		if (h)
			s->headers = h;
	}
	if (!h) {
		idd_fail(err, "out of memory");
		goto fail_display;
	}
	if (idd_curl_pool_new(o->connections, &s->pool, err))
		goto fail_display;
	s->t = (idd_curl_target){
		.https = !strncasecmp(s->c.endpoint, "https://", 8),
		/* a signed request is not sent anywhere else (a region redirect
		 * names the right endpoint in its body, which the message shows) */
		.follow_redirects = false,
		.timeout_s = o->timeout_s,
		.cancel = o->cancel,
		.sigv4 = s->c.sigv4,
		.user = s->c.access_key,
		.password = s->c.secret_key,
		.headers = s->headers,
		.error_detail = idd_s3_error_parse,
		.denied_hint = "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or the "
		               "profile), the region and the bucket's permissions",
	};
	*impl = s;
	return IDD_OK;
fail_display:
	free(*display);
	*display = NULL;
fail:
	s3_close(s);
	return IDD_ERR;
}

/* The object key of rel ("" for the bucket itself). */
static char *s3_key(struct s3 *s, const char *rel, idd_error *err)
{
	if (!rel[0])
		return idd_strdup("", err);
	return s->c.prefix[0] ? idd_asprintf(err, "%s/%s", s->c.prefix, rel) : idd_strdup(rel, err);
}

/* Messages name objects s3://BUCKET/KEY. */
static char *s3_name(void *impl, const char *rel, idd_error *err)
{
	struct s3 *s = impl;
	if (!rel[0])
		return idd_asprintf(err, "s3://%s", s->c.bucket);
	char *key = s3_key(s, rel, err);
	char *name = key ? idd_asprintf(err, "s3://%s/%s", s->c.bucket, key) : NULL;
	free(key);
	return name;
}

/* The URL and name of rel (query: a canonical query string, or NULL). */
static int s3_target(struct s3 *s, const char *rel, const char *query, char **url, char **name,
                     idd_error *err)
{
	char *key = s3_key(s, rel, err);
	*url = key ? idd_s3_url(&s->c, key, query, err) : NULL;
	*name = *url ? s3_name(s, rel, err) : NULL;
	free(key);
	if (!*name) {
		free(*url);
		*url = NULL;
		return IDD_ERR;
	}
	return IDD_OK;
}

static int s3_stat(void *impl, const char *rel, idd_remote_stat *st, idd_fetch_stats *fs,
                   idd_error *err)
{
	struct s3 *s = impl;
	char *url, *name;
	int rc = s3_target(s, rel, NULL, &url, &name, err);
	if (!rc)
		rc = idd_curl_head(s->pool, &s->t, url, name, st, fs, err);
	free(url);
	free(name);
	return rc;
}

static int s3_get(void *impl, const char *rel, size_t max, idd_buf *body, idd_fetch_stats *fs,
                  idd_error *err)
{
	struct s3 *s = impl;
	char *url, *name;
	int rc = s3_target(s, rel, NULL, &url, &name, err);
	if (!rc)
		rc = idd_curl_get(s->pool, &s->t, url, name, max, body, fs, err);
	free(url);
	free(name);
	return rc;
}

static int s3_read(void *impl, const char *rel, idd_src_io *io, size_t n, idd_fetch_stats *fs,
                   idd_error *err)
{
	struct s3 *s = impl;
	char *url, *name;
	int rc = s3_target(s, rel, NULL, &url, &name, err);
	if (!rc)
		rc = idd_curl_read_ios(s->pool, &s->t, url, name, io, n, fs, err);
	free(url);
	free(name);
	return rc;
}

static int s3_put(void *impl, const char *rel, int fd, uint64_t len, idd_fetch_stats *fs,
                  idd_error *err)
{
	struct s3 *s = impl;
	char *url, *name;
	int rc = s3_target(s, rel, NULL, &url, &name, err);
	if (!rc)
		rc = idd_curl_put_fd(s->pool, &s->t, url, name, fd, len, fs, err);
	free(url);
	free(name);
	return rc;
}

static int s3_remove(void *impl, const char *rel, idd_fetch_stats *fs, idd_error *err)
{
	struct s3 *s = impl;
	char *url, *name;
	int rc = s3_target(s, rel, NULL, &url, &name, err);
	if (!rc)
		rc = idd_curl_delete(s->pool, &s->t, url, name, fs, err);
	free(url);
	free(name);
	return rc == IDD_ENOENT ? IDD_OK : rc; /* a missing object is no error */
}

/* One ListObjectsV2 page under PREFIX/rel_prefix, keys made relative. */
static int s3_list_page(void *impl, const char *rel_prefix, const char *token, unsigned page,
                        idd_s3_page *out, idd_fetch_stats *fs, idd_error *err)
{
	struct s3 *s = impl;
	memset(out, 0, sizeof *out);
	char *full = s->c.prefix[0] ? idd_asprintf(err, "%s/%s", s->c.prefix, rel_prefix)
	                            : idd_strdup(rel_prefix, err);
	if (!full)
		return IDD_ERR;
	idd_s3_param p[5] = {{"list-type", "2"}, {"encoding-type", "url"}, {"max-keys", "1000"},
	                     {"prefix", full}, {"continuation-token", token}};
	char *query = idd_s3_canonical_query(p, token ? 5 : 4, err);
	char *url = NULL, *name = NULL;
	int rc = query ? s3_target(s, "", query, &url, &name, err) : IDD_ERR;
	idd_buf body = {0};
	if (!rc)
		rc = idd_curl_get(s->pool, &s->t, url, name, MAX_LIST_PAGE, &body, fs, err);
	if (!rc) {
		char *pname = idd_asprintf(err, "%s (listing page %u)", name, page + 1);
		rc = pname ? idd_s3_list_parse(pname, (const char *)body.data, body.len, true, out, err)
		           : IDD_ERR;
		free(pname);
	}
	size_t strip = s->c.prefix[0] ? strlen(s->c.prefix) + 1 : 0;
	for (size_t i = 0; !rc && i < out->n; i++) {
		char *k = out->v[i].key;
		/* the store must answer what was asked: keys under the prefix */
		if (strncmp(k, full, strlen(full))) {
			rc = idd_fail_code(err, IDD_ECORRUPT, "s3://%s%s%s: the listing holds key '%s', "
			                   "outside the prefix", s->c.bucket, s->c.prefix[0] ? "/" : "",
			                   s->c.prefix, k);
			break;
		}
		memmove(k, k + strip, strlen(k + strip) + 1);
	}
	if (rc)
		idd_s3_page_free(out);
	idd_buf_free(&body);
	free(query);
	free(url);
	free(name);
	free(full);
	return rc;
}

const idd_source_backend idd_source_s3 = {
	.name = "s3",
	.remote = true,
	.claims = idd_is_s3,
	.open = s3_open,
	.close = s3_close,
	.name_of = s3_name,
	.stat = s3_stat,
	.get = s3_get,
	.read_ranges = s3_read,
	.list_page = s3_list_page,
	.put_fd = s3_put,
	.remove = s3_remove,
};
