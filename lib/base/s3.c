/* s3.c - S3 locations, settings (the AWS conventions), URLs, canonical
 * queries, and the two XML bodies imgdedup reads: ListObjectsV2 pages and
 * error bodies.  The XML readers are deliberately minimal: they look for a
 * handful of elements by name inside a bounded buffer, decode the five
 * predefined entities and numeric references, and refuse anything else. */
#include "base/s3.h"
#include "base/error.h"

#include <errno.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define MAX_CREDENTIALS_FILE ((size_t)1 << 20)
#define MAX_KEY 1024 /* S3's own limit on key length */

bool idd_is_s3(const char *s)
{
	return s && !strncasecmp(s, "s3://", 5);
}

static bool bucket_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
	       c == '-' || c == '_';
}

int idd_s3_parse_location(const char *loc, char **bucket, char **prefix, idd_error *err)
{
	*bucket = *prefix = NULL;
	if (!idd_is_s3(loc))
		return idd_fail(err, "%s: not an s3:// location", loc);
	const char *b = loc + 5;
	const char *slash = strchr(b, '/');
	size_t bl = slash ? (size_t)(slash - b) : strlen(b);
	if (bl < 3 || bl > 255)
		return idd_fail(err, "%s: the bucket name must have 3 to 255 characters", loc);
	for (size_t i = 0; i < bl; i++)
		if (!bucket_char(b[i]))
			return idd_fail(err, "%s: the bucket name may hold letters, digits, '.', '-' and '_' only",
			                loc);
	if (b[0] == '.' || b[bl - 1] == '.' || memmem(b, bl, "..", 2))
		return idd_fail(err, "%s: bad bucket name", loc);
	/* the prefix: components separated by '/', leading and trailing '/' ignored */
	idd_buf p = {0};
	const char *s = slash ? slash : b + bl;
	while (*s) {
		while (*s == '/')
			s++;
		if (!*s)
			break;
		const char *e = strchr(s, '/');
		size_t n = e ? (size_t)(e - s) : strlen(s);
		if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) {
			idd_buf_free(&p);
			return idd_fail(err, "%s: '.' and '..' are not allowed in the key prefix", loc);
		}
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f || s[i] == '\\') {
				idd_buf_free(&p);
				return idd_fail(err, "%s: control characters in the key prefix", loc);
			}
		if (p.len)
			idd_buf_put_u8(&p, '/');
		idd_buf_put(&p, s, n);
		s += n;
	}
	idd_buf_put_u8(&p, 0);
	*bucket = p.failed ? NULL : idd_malloc(bl + 1, err);
	if (!*bucket) {
		idd_buf_free(&p);
		return idd_fail(err, "out of memory");
	}
	memcpy(*bucket, b, bl);
	(*bucket)[bl] = 0;
	if (p.len > MAX_KEY) {
		free(*bucket);
		*bucket = NULL;
		idd_buf_free(&p);
		return idd_fail(err, "%s: key prefix longer than %d bytes", loc, MAX_KEY);
	}
	*prefix = (char *)p.data;
	return IDD_OK;
}

void idd_s3_config_free(idd_s3_config *c)
{
	free(c->bucket);
	free(c->prefix);
	free(c->endpoint);
	free(c->region);
	free(c->access_key);
	if (c->secret_key) { /* do not leave the secret in freed memory */
		memset(c->secret_key, 0, strlen(c->secret_key));
		free(c->secret_key);
	}
	free(c->session_token);
	free(c->sigv4);
	memset(c, 0, sizeof *c);
}

static const char *env(const char *name)
{
	const char *v = getenv(name);
	return v && *v ? v : NULL;
}

/* ---- the shared credentials file ---- */

static void trim(const char **s, const char **e)
{
	while (*s < *e && (**s == ' ' || **s == '\t' || **s == '\r'))
		(*s)++;
	while (*e > *s && ((*e)[-1] == ' ' || (*e)[-1] == '\t' || (*e)[-1] == '\r'))
		(*e)--;
}

static char *dup_span(const char *s, const char *e, idd_error *err)
{
	char *r = idd_malloc((size_t)(e - s) + 1, err);
	if (r) {
		memcpy(r, s, (size_t)(e - s));
		r[e - s] = 0;
	}
	return r;
}

int idd_s3_credentials_parse(const char *name, const char *text, size_t len, const char *profile,
                             char **access_key, char **secret_key, char **token, idd_error *err)
{
	*access_key = *secret_key = *token = NULL;
	const char *p = text, *end = text + len;
	bool in_profile = false, seen_profile = false;
	size_t pl = strlen(profile);
	int lineno = 0;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		const char *le = nl ? nl : end;
		const char *s = p, *e = le;
		p = nl ? nl + 1 : end;
		lineno++;
		trim(&s, &e);
		if (s == e || *s == '#' || *s == ';')
			continue;
		if (memchr(s, 0, (size_t)(e - s)))
			goto bad;
		if (*s == '[') {
			if (e[-1] != ']')
				goto bad;
			const char *ns = s + 1, *ne = e - 1;
			trim(&ns, &ne);
			/* "[profile x]" is the config file's spelling; accept it here too */
			if ((size_t)(ne - ns) > 8 && !strncmp(ns, "profile ", 8) && strcmp(profile, "default")) {
				ns += 8;
				trim(&ns, &ne);
			}
			in_profile = (size_t)(ne - ns) == pl && !memcmp(ns, profile, pl);
			seen_profile = seen_profile || in_profile;
			continue;
		}
		const char *eq = memchr(s, '=', (size_t)(e - s));
		if (!eq)
			goto bad;
		if (!in_profile)
			continue;
		const char *ks = s, *ke = eq, *vs = eq + 1, *ve = e;
		trim(&ks, &ke);
		trim(&vs, &ve);
		char **dst = NULL;
		size_t kl = (size_t)(ke - ks);
		if (kl == 17 && !strncasecmp(ks, "aws_access_key_id", kl))
			dst = access_key;
		else if (kl == 21 && !strncasecmp(ks, "aws_secret_access_key", kl))
			dst = secret_key;
		else if (kl == 17 && !strncasecmp(ks, "aws_session_token", kl))
			dst = token;
		if (!dst)
			continue;
		free(*dst);
		if (!(*dst = dup_span(vs, ve, err)))
			goto oom;
	}
	if (*access_key && *secret_key && **access_key && **secret_key)
		return IDD_OK;
	free(*access_key);
	free(*secret_key);
	free(*token);
	*access_key = *secret_key = *token = NULL;
	return idd_fail_code(err, IDD_ENOENT,
	                     seen_profile ? "%s: profile '%s' has no aws_access_key_id and aws_secret_access_key"
	                                  : "%s: no profile '%s'",
	                     name, profile);
bad:
	idd_fail_code(err, IDD_ECORRUPT, "%s: line %d: not an INI line (expected [profile] or key = value)",
	              name, lineno);
oom:
	free(*access_key);
	free(*secret_key);
	free(*token);
	*access_key = *secret_key = *token = NULL;
	return err ? err->code : IDD_ERR;
}

static char *credentials_path(idd_error *err)
{
	const char *f = env("AWS_SHARED_CREDENTIALS_FILE");
	if (f)
		return idd_strdup(f, err);
	const char *home = env("HOME");
	if (!home) {
		struct passwd *pw = getpwuid(getuid());
		home = pw ? pw->pw_dir : NULL;
	}
	if (!home)
		return NULL;
	return idd_path_join(home, ".aws/credentials", err);
}

/* ---- the configuration ---- */

static bool dns_bucket(const char *b)
{
	size_t n = strlen(b);
	if (n < 3 || n > 63)
		return false;
	for (const char *p = b; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return false; /* dots break the TLS wildcard: path-style then */
	return b[0] != '-' && b[n - 1] != '-';
}

int idd_s3_config_load(const char *location, idd_s3_config *c, idd_error *err)
{
	memset(c, 0, sizeof *c);
	if (idd_s3_parse_location(location, &c->bucket, &c->prefix, err))
		return IDD_ERR;
	const char *region = env("AWS_REGION");
	if (!region)
		region = env("AWS_DEFAULT_REGION");
	if (!region)
		region = "us-east-1";
	for (const char *p = region; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			goto bad_region;
	if (strlen(region) > 64)
		goto bad_region;
	c->region = idd_strdup(region, err);
	c->sigv4 = idd_asprintf(err, "aws:amz:%s:s3", region);
	if (!c->region || !c->sigv4)
		goto fail;

	const char *ep = env("AWS_ENDPOINT_URL_S3");
	const char *ep_name = "AWS_ENDPOINT_URL_S3";
	if (!ep) {
		ep = env("AWS_ENDPOINT_URL");
		ep_name = "AWS_ENDPOINT_URL";
	}
	if (ep) {
		if (strncasecmp(ep, "http://", 7) && strncasecmp(ep, "https://", 8)) {
			idd_fail(err, "%s=%s: an endpoint must be an http:// or https:// URL", ep_name, ep);
			goto fail;
		}
		for (const char *p = ep; *p; p++)
			if ((unsigned char)*p <= 0x20 || *p == '?' || *p == '#' || *p == 0x7f) {
				idd_fail(err, "%s: the endpoint URL may not hold spaces, '?' or '#'", ep_name);
				goto fail;
			}
		c->endpoint = idd_strdup(ep, err);
		if (!c->endpoint)
			goto fail;
		size_t n = strlen(c->endpoint);
		while (n && c->endpoint[n - 1] == '/')
			c->endpoint[--n] = 0;
		c->path_style = true;
	} else if (dns_bucket(c->bucket)) {
		c->endpoint = idd_asprintf(err, "https://%s.s3.%s.amazonaws.com", c->bucket, region);
		c->path_style = false;
	} else {
		c->endpoint = idd_asprintf(err, "https://s3.%s.amazonaws.com", region);
		c->path_style = true;
	}
	if (!c->endpoint)
		goto fail;

	const char *ak = env("AWS_ACCESS_KEY_ID"), *sk = env("AWS_SECRET_ACCESS_KEY");
	if (ak && sk) {
		const char *tok = env("AWS_SESSION_TOKEN");
		c->access_key = idd_strdup(ak, err);
		c->secret_key = idd_strdup(sk, err);
		c->session_token = tok ? idd_strdup(tok, err) : NULL;
		if (!c->access_key || !c->secret_key || (tok && !c->session_token))
			goto fail;
	} else {
		const char *profile = env("AWS_PROFILE");
		if (!profile)
			profile = "default";
		char *path = credentials_path(err);
		if (!path) {
			idd_fail(err, "%s: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
			         "(no home directory for ~/.aws/credentials)", location);
			goto fail;
		}
		void *text = NULL;
		size_t len = 0;
		idd_error e;
		int rc = idd_read_file(path, MAX_CREDENTIALS_FILE, &text, &len, &e);
		if (rc) {
			if (access(path, F_OK) && errno == ENOENT)
				idd_fail(err, "%s: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
				         "or write them in %s", location, path);
			else
				*err = e;
			free(path);
			goto fail;
		}
		rc = idd_s3_credentials_parse(path, text, len, profile, &c->access_key, &c->secret_key,
		                              &c->session_token, err);
		memset(text, 0, len);
		free(text);
		free(path);
		if (rc) {
			if (rc == IDD_ENOENT)
				idd_error_prefix(err, "%s: no S3 credentials", location);
			goto fail;
		}
	}
	/* libcurl puts these in an HTTP header line: no line breaks */
	if (strpbrk(c->access_key, "\r\n") || strpbrk(c->secret_key, "\r\n") ||
	    (c->session_token && strpbrk(c->session_token, "\r\n"))) {
		idd_fail(err, "%s: the S3 credentials contain a line break", location);
		goto fail;
	}
	return IDD_OK;
bad_region:
	idd_fail(err, "region '%s' (AWS_REGION / AWS_DEFAULT_REGION): lower-case letters, digits and '-' only",
	         region);
fail:
	idd_s3_config_free(c);
	return IDD_ERR;
}

/* ---- URLs and queries ---- */

void idd_s3_uri_encode(idd_buf *b, const char *s, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
		    *c == '-' || *c == '_' || *c == '.' || *c == '~' || (keep_slash && *c == '/')) {
			idd_buf_put_u8(b, *c);
		} else {
			unsigned char e[3] = {'%', (unsigned char)hex[*c >> 4], (unsigned char)hex[*c & 15]};
			idd_buf_put(b, e, 3);
		}
	}
}

static int cmp_param(const void *a, const void *b)
{
	const idd_s3_param *x = a, *y = b;
	int c = strcmp(x->name, y->name);
	return c ? c : strcmp(x->value, y->value);
}

char *idd_s3_canonical_query(const idd_s3_param *p, size_t n, idd_error *err)
{
	idd_s3_param *v = idd_calloc(n ? n : 1, sizeof *v, err);
	if (!v)
		return NULL;
	/* Sort on the encoded forms, as the signature does (byte order of the
	 * encoded names; equal to the raw order for the names used here). */
	idd_buf enc = {0};
	char **names = idd_calloc(n ? n : 1, sizeof *names, err);
	char **vals = names ? idd_calloc(n ? n : 1, sizeof *vals, err) : NULL;
	bool ok = vals != NULL;
	for (size_t i = 0; ok && i < n; i++) {
		idd_buf a = {0}, b = {0};
		idd_s3_uri_encode(&a, p[i].name, false);
		idd_buf_put_u8(&a, 0);
		idd_s3_uri_encode(&b, p[i].value ? p[i].value : "", false);
		idd_buf_put_u8(&b, 0);
		names[i] = (char *)a.data;
		vals[i] = (char *)b.data;
		ok = !a.failed && !b.failed;
		v[i].name = names[i];
		v[i].value = vals[i];
	}
	if (ok && n)
		qsort(v, n, sizeof *v, cmp_param);
	for (size_t i = 0; ok && i < n; i++) {
		if (i)
			idd_buf_put_u8(&enc, '&');
		idd_buf_put(&enc, v[i].name, strlen(v[i].name));
		idd_buf_put_u8(&enc, '=');
		idd_buf_put(&enc, v[i].value, strlen(v[i].value));
	}
	idd_buf_put_u8(&enc, 0);
	for (size_t i = 0; names && i < n; i++) {
		free(names[i]);
		if (vals)
			free(vals[i]);
	}
	free(names);
	free(vals);
	free(v);
	if (!ok || enc.failed) {
		idd_buf_free(&enc);
		idd_fail(err, "out of memory");
		return NULL;
	}
	return (char *)enc.data;
}

char *idd_s3_url(const idd_s3_config *c, const char *key, const char *query, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put(&b, c->endpoint, strlen(c->endpoint));
	idd_buf_put_u8(&b, '/');
	if (c->path_style) {
		idd_s3_uri_encode(&b, c->bucket, false);
		idd_buf_put_u8(&b, '/');
	}
	idd_s3_uri_encode(&b, key, true);
	if (query && *query) {
		idd_buf_put_u8(&b, '?');
		idd_buf_put(&b, query, strlen(query));
	}
	idd_buf_put_u8(&b, 0);
	if (b.failed) {
		idd_buf_free(&b);
		idd_fail(err, "out of memory");
		return NULL;
	}
	return (char *)b.data;
}

/* ---- XML ---- */

/* The text of the first <tag>...</tag> in [p, end), or NULL.  Elements are
 * matched by exact name (attributes allowed on the start tag); the text is
 * raw (entities not decoded). */
static const char *xml_find(const char *p, const char *end, const char *tag, const char **text_end)
{
	size_t tl = strlen(tag);
	while (p < end) {
		const char *lt = memchr(p, '<', (size_t)(end - p));
		if (!lt || (size_t)(end - lt) < tl + 2)
			return NULL;
		p = lt + 1;
		if (strncmp(p, tag, tl) || (p[tl] != '>' && p[tl] != ' ' && p[tl] != '/'))
			continue;
		const char *gt = memchr(p, '>', (size_t)(end - p));
		if (!gt)
			return NULL;
		if (gt[-1] == '/') { /* <tag/>: empty */
			*text_end = gt + 1;
			return gt + 1;
		}
		const char *s = gt + 1;
		/* the matching close tag: these elements never nest in themselves */
		for (const char *q = s; q < end;) {
			const char *c = memchr(q, '<', (size_t)(end - q));
			if (!c || (size_t)(end - c) < tl + 3)
				return NULL;
			if (c[1] == '/' && !strncmp(c + 2, tag, tl) && c[2 + tl] == '>') {
				*text_end = c;
				return s;
			}
			q = c + 1;
		}
		return NULL;
	}
	return NULL;
}

static void put_utf8(idd_buf *b, uint32_t cp)
{
	if (cp < 0x80) {
		idd_buf_put_u8(b, (uint8_t)cp);
	} else if (cp < 0x800) {
		idd_buf_put_u8(b, (uint8_t)(0xc0 | cp >> 6));
		idd_buf_put_u8(b, (uint8_t)(0x80 | (cp & 0x3f)));
	} else if (cp < 0x10000) {
		idd_buf_put_u8(b, (uint8_t)(0xe0 | cp >> 12));
		idd_buf_put_u8(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
		idd_buf_put_u8(b, (uint8_t)(0x80 | (cp & 0x3f)));
	} else {
		idd_buf_put_u8(b, (uint8_t)(0xf0 | cp >> 18));
		idd_buf_put_u8(b, (uint8_t)(0x80 | ((cp >> 12) & 0x3f)));
		idd_buf_put_u8(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3f)));
		idd_buf_put_u8(b, (uint8_t)(0x80 | (cp & 0x3f)));
	}
}

/* Decode XML text (entities; then, with url, %XX and '+'), NUL-terminated,
 * into a new string.  NULL when malformed or holding a NUL byte. */
static char *xml_text(const char *s, const char *e, bool url, idd_error *err)
{
	idd_buf b = {0};
	while (s < e) {
		if (*s == '<') /* markup inside a text element: not ours */
			goto bad;
		if (*s != '&') {
			idd_buf_put_u8(&b, (uint8_t)*s++);
			continue;
		}
		const char *semi = memchr(s, ';', (size_t)(e - s));
		if (!semi || semi - s > 10)
			goto bad;
		size_t n = (size_t)(semi - s - 1);
		const char *name = s + 1;
		if (n == 3 && !strncmp(name, "amp", 3))
			idd_buf_put_u8(&b, '&');
		else if (n == 2 && !strncmp(name, "lt", 2))
			idd_buf_put_u8(&b, '<');
		else if (n == 2 && !strncmp(name, "gt", 2))
			idd_buf_put_u8(&b, '>');
		else if (n == 4 && !strncmp(name, "quot", 4))
			idd_buf_put_u8(&b, '"');
		else if (n == 4 && !strncmp(name, "apos", 4))
			idd_buf_put_u8(&b, '\'');
		else if (n >= 2 && name[0] == '#') {
			uint32_t cp = 0;
			bool hex = name[1] == 'x' || name[1] == 'X';
			size_t i = hex ? 2 : 1;
			if (i >= n)
				goto bad;
			for (; i < n; i++) {
				int d = hex ? idd_hex_value(name[i]) : (name[i] >= '0' && name[i] <= '9' ? name[i] - '0' : -1);
				if (d < 0)
					goto bad;
				cp = cp * (hex ? 16 : 10) + (uint32_t)d;
				if (cp > 0x10ffff)
					goto bad;
			}
			if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff))
				goto bad;
			put_utf8(&b, cp);
		} else {
			goto bad;
		}
		s = semi + 1;
	}
	if (url) { /* percent-decode in place */
		size_t w = 0;
		for (size_t r = 0; r < b.len; r++) {
			unsigned char c = b.data[r];
			if (c == '%') {
				int hi = r + 2 < b.len ? idd_hex_value((char)b.data[r + 1]) : -1;
				int lo = r + 2 < b.len ? idd_hex_value((char)b.data[r + 2]) : -1;
				if (hi < 0 || lo < 0)
					goto bad;
				c = (unsigned char)(hi << 4 | lo);
				r += 2;
			} else if (c == '+') {
				c = ' ';
			}
			b.data[w++] = c;
		}
		b.len = w;
	}
	if (b.len && memchr(b.data, 0, b.len))
		goto bad;
	idd_buf_put_u8(&b, 0);
	if (b.failed) {
		idd_buf_free(&b);
		idd_fail(err, "out of memory");
		return NULL;
	}
	return (char *)b.data;
bad:
	idd_buf_free(&b);
	idd_fail_code(err, IDD_ECORRUPT, "malformed text in the XML answer");
	return NULL;
}

bool idd_s3_parse_time(const char *s, int64_t *t)
{
	int Y, M, D, h, m, sec, n = 0;
	if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &Y, &M, &D, &h, &m, &sec, &n) != 6 || n != 19)
		return false;
	if (Y < 1970 || M < 1 || M > 12 || D < 1 || D > 31 || h > 23 || m > 59 || sec > 60 || h < 0 ||
	    m < 0 || sec < 0)
		return false;
	const char *rest = s + 19;
	if (*rest == '.') {
		rest++;
		if (*rest < '0' || *rest > '9')
			return false;
		while (*rest >= '0' && *rest <= '9')
			rest++;
	}
	if (strcmp(rest, "Z") && strcmp(rest, "+00:00"))
		return false;
	struct tm tm = {.tm_year = Y - 1900, .tm_mon = M - 1, .tm_mday = D, .tm_hour = h,
	                .tm_min = m, .tm_sec = sec};
	time_t v = timegm(&tm);
	if (v == (time_t)-1)
		return false;
	*t = (int64_t)v;
	return true;
}

void idd_s3_objects_free(idd_s3_object *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i].key);
	free(v);
}

void idd_s3_page_free(idd_s3_page *p)
{
	idd_s3_objects_free(p->v, p->n);
	free(p->next_token);
	memset(p, 0, sizeof *p);
}

int idd_s3_list_parse(const char *name, const char *xml, size_t len, bool url_encoded,
                      idd_s3_page *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	const char *end = xml + len, *te;
	const char *root = xml_find(xml, end, "ListBucketResult", &te);
	if (!root)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: not a ListBucketResult", name);
	end = te;
	const char *s;
	idd_error e;
	/* the page's own fields come before the first <Contents> */
	const char *first = xml_find(root, end, "Contents", &te);
	const char *head_end = first ? first : end;
	if ((s = xml_find(root, head_end, "IsTruncated", &te)))
		out->truncated = (size_t)(te - s) == 4 && !strncmp(s, "true", 4);
	if (out->truncated) {
		s = xml_find(root, head_end, "NextContinuationToken", &te);
		if (!s)
			s = xml_find(root, end, "NextContinuationToken", &te);
		if (!s || te == s || !(out->next_token = xml_text(s, te, false, &e))) {
			idd_s3_page_free(out);
			return idd_fail_code(err, IDD_ECORRUPT, "%s: truncated listing without a continuation token",
			                     name);
		}
	}
	const char *p = root;
	while ((s = xml_find(p, end, "Contents", &te))) {
		const char *ce = te, *v, *ve;
		p = te + 1;
		idd_s3_object o = {0};
		if (!(v = xml_find(s, ce, "Key", &ve)) || ve == v || (size_t)(ve - v) > 3 * MAX_KEY ||
		    !(o.key = xml_text(v, ve, url_encoded, &e)))
			goto corrupt;
		if (strlen(o.key) > MAX_KEY) {
			free(o.key);
			goto corrupt;
		}
		if ((v = xml_find(s, ce, "Size", &ve))) {
			uint64_t sz = 0;
			if (ve == v || ve - v > 20)
				goto corrupt_obj;
			for (const char *q = v; q < ve; q++) {
				if (*q < '0' || *q > '9' || !idd_mul_ok(sz, 10, &sz) ||
				    !idd_add_ok(sz, (uint64_t)(*q - '0'), &sz))
					goto corrupt_obj;
			}
			o.size = sz;
		} else {
			goto corrupt_obj;
		}
		if ((v = xml_find(s, ce, "ETag", &ve))) {
			char *t = xml_text(v, ve, false, &e);
			if (!t)
				goto corrupt_obj;
			const char *a = t;
			size_t n = strlen(a);
			if (n >= 2 && a[0] == '"' && a[n - 1] == '"')
				a++, n -= 2;
			if (n >= sizeof o.etag) {
				free(t);
				goto corrupt_obj;
			}
			memcpy(o.etag, a, n);
			o.etag[n] = 0;
			free(t);
		}
		if ((v = xml_find(s, ce, "LastModified", &ve))) {
			char tb[64];
			size_t n = (size_t)(ve - v);
			if (n >= sizeof tb)
				goto corrupt_obj;
			memcpy(tb, v, n);
			tb[n] = 0;
			if (!idd_s3_parse_time(tb, &o.mtime))
				goto corrupt_obj;
		}
		idd_s3_object *nv = idd_realloc_array(out->v, out->n + 1, sizeof *nv, err);
		if (!nv) {
			free(o.key);
			idd_s3_page_free(out);
			return IDD_ERR;
		}
		out->v = nv;
		out->v[out->n++] = o;
		continue;
	corrupt_obj:
		free(o.key);
		goto corrupt;
	}
	return IDD_OK;
corrupt:
	idd_s3_page_free(out);
	return idd_fail_code(err, IDD_ECORRUPT, "%s: malformed object entry in the listing", name);
}

void idd_s3_error_parse(const char *body, size_t len, char *code, size_t ncode, char *msg,
                        size_t nmsg)
{
	const char *end = body + len, *te, *s;
	struct {
		const char *tag;
		char *out;
		size_t n;
	} f[2] = {{"Code", code, ncode}, {"Message", msg, nmsg}};
	for (int i = 0; i < 2; i++) {
		if (!f[i].n)
			continue;
		f[i].out[0] = 0;
		if (!body || !(s = xml_find(body, end, f[i].tag, &te)))
			continue;
		size_t w = 0;
		for (; s < te && w + 1 < f[i].n; s++)
			if ((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f)
				f[i].out[w++] = *s;
		f[i].out[w] = 0;
	}
}
