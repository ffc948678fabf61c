/* s3.h - what imgdedup needs to speak to an S3-compatible object store
 * (s3.c): locations (s3://BUCKET/PREFIX), settings from the AWS conventions
 * (environment, shared credentials file), request URLs (path-style or
 * virtual-hosted), canonical query strings, ListObjectsV2 pages and error
 * bodies.  Requests are signed by libcurl (CURLOPT_AWS_SIGV4); fetch.c
 * sends them.  Internal. */
#ifndef IDD_BASE_S3_H
#define IDD_BASE_S3_H

#include "base/util.h"

/* Is s an s3:// location? */
bool idd_is_s3(const char *s);

/* "s3://BUCKET[/PREFIX]": the bucket and the key prefix, without leading or
 * trailing '/' ("" for the whole bucket).  Refuses empty or odd bucket
 * names and prefixes with empty, "." or ".." components. */
int idd_s3_parse_location(const char *loc, char **bucket, char **prefix, idd_error *err);

typedef struct idd_s3_config {
	char *bucket;
	char *prefix;         /* see idd_s3_parse_location */
	char *endpoint;       /* scheme://host[:port], no trailing '/' */
	bool path_style;      /* ENDPOINT/BUCKET/KEY; else BUCKET.host/KEY */
	char *region;
	char *access_key, *secret_key;
	char *session_token;  /* NULL unless temporary credentials */
	char *sigv4;          /* "aws:amz:REGION:s3", for CURLOPT_AWS_SIGV4 */
} idd_s3_config;

/* Settings for a location, from the AWS conventions:
 *   credentials  AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN),
 *                else the shared credentials file (AWS_SHARED_CREDENTIALS_FILE,
 *                default ~/.aws/credentials), profile AWS_PROFILE or "default"
 *   region       AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1
 *   endpoint     AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL (path-style
 *                addressing), else AWS itself (virtual-hosted addressing when
 *                the bucket name allows it)
 * No credentials at all is an error that says where they were looked for. */
int idd_s3_config_load(const char *location, idd_s3_config *c, idd_error *err);
void idd_s3_config_free(idd_s3_config *c);

/* The keys of one profile of a shared credentials file (INI: "[profile]",
 * "key = value", '#' and ';' comments).  IDD_ENOENT when the profile or its
 * two keys are missing.  *token is NULL unless aws_session_token is set. */
int idd_s3_credentials_parse(const char *name, const char *text, size_t len, const char *profile,
                             char **access_key, char **secret_key, char **token, idd_error *err);

/* AWS URI encoding: every byte except A-Z a-z 0-9 - _ . ~ (and '/' when
 * keep_slash) as %XX, upper-case hex. */
void idd_s3_uri_encode(idd_buf *b, const char *s, bool keep_slash);

/* A canonical query string: parameters sorted by name (then value), names
 * and values URI-encoded, joined by '&'.  libcurl 7.88 signs the query as it
 * is written, so it must be written canonically. */
typedef struct idd_s3_param {
	const char *name, *value;
} idd_s3_param;
char *idd_s3_canonical_query(const idd_s3_param *p, size_t n, idd_error *err);

/* The URL of KEY (the full key, prefix included) with an optional canonical
 * query (NULL: none). */
char *idd_s3_url(const idd_s3_config *c, const char *key, const char *query, idd_error *err);

/* One object of a listing. */
typedef struct idd_s3_object {
	char *key;        /* the full key */
	uint64_t size;
	char etag[80];    /* without the quotes */
	int64_t mtime;    /* Last-Modified, unix seconds */
} idd_s3_object;

/* One page of a ListObjectsV2 answer. */
typedef struct idd_s3_page {
	idd_s3_object *v;
	size_t n;
	bool truncated;
	char *next_token; /* NextContinuationToken, when truncated */
} idd_s3_page;

/* Parse a ListBucketResult.  url_encoded: the request asked for
 * encoding-type=url, so keys are percent-encoded ('+' is a space).  Keys
 * are checked for NUL bytes; anything malformed is IDD_ECORRUPT. */
int idd_s3_list_parse(const char *name, const char *xml, size_t len, bool url_encoded,
                      idd_s3_page *out, idd_error *err);
void idd_s3_page_free(idd_s3_page *p);
void idd_s3_objects_free(idd_s3_object *v, size_t n);

/* The <Code> and <Message> of an S3 error body ("" when absent), printable
 * ASCII only, truncated to fit. */
void idd_s3_error_parse(const char *body, size_t len, char *code, size_t ncode, char *msg,
                        size_t nmsg);

/* "2024-01-31T12:34:56.000Z" -> unix seconds. */
bool idd_s3_parse_time(const char *s, int64_t *t);

#endif
