/* source.h - the backend side of repository sources (fetch.h is the
 * callers' side).  A backend is a table of operations; fetch.c picks the
 * first backend in its table that claims a root, and wraps every remote
 * operation in the retry layer (retry.h), so a backend makes one attempt
 * per call and reports a transient failure as IDD_SRC_RETRY.
 *
 * Adding a backend: one file (src_NAME.c) that defines an
 * idd_source_backend, and one entry in fetch.c's table (before the local
 * backend, which claims everything else).  Internal. */
#ifndef IDD_BASE_SOURCE_H
#define IDD_BASE_SOURCE_H

#include "base/fetch.h"

/* A transient failure of one attempt (a connection reset, HTTP 5xx, a
 * short body): try again.  Never leaves the retry layer. */
#define IDD_SRC_RETRY (-100)

/* One piece of a batch read; got survives the attempts, so a retry resumes
 * where the last one stopped. */
typedef struct idd_src_io {
	uint64_t off, len;
	unsigned char *buf;
	uint64_t got;
	char *why;     /* the last attempt failed transiently: why ("NAME: WHY"), owned */
} idd_src_io;

/* Operations take the backend's own state (impl) and paths relative to the
 * root, already checked (idd_relpath_ok).  An operation a backend cannot
 * do is NULL; fetch.c then refuses it with a message. */
typedef struct idd_source_backend {
	const char *name;   /* "local", "http", "s3" */
	bool remote;        /* reads go through read_ranges (else open_local) */
	bool (*claims)(const char *root);
	/* *display_root: how messages name the root (owned by the caller) */
	int (*open)(const char *root, const idd_fetch_opts *o, void **impl, char **display_root,
	            idd_error *err);
	void (*close)(void *impl);
	/* How messages name rel (rel "" is the root). */
	char *(*name_of)(void *impl, const char *rel, idd_error *err);

	/* size and identity now (etag: the backend's opaque identity of the content) */
	int (*stat)(void *impl, const char *rel, idd_remote_stat *st, idd_fetch_stats *fs,
	            idd_error *err);
	/* a whole file into body, at most max bytes (body restarts on each attempt) */
	int (*get)(void *impl, const char *rel, size_t max, idd_buf *body, idd_fetch_stats *fs,
	           idd_error *err);
	/* local backends: a file as a byte source */
	int (*open_local)(void *impl, const char *rel, idd_file **out, idd_error *err);
	/* remote backends: read every io of rel not yet complete (io->got < io->len) */
	int (*read_ranges)(void *impl, const char *rel, idd_src_io *io, size_t n, idd_fetch_stats *fs,
	                   idd_error *err);
	/* one page of a listing of rel_prefix ("" or ending in '/'), keys relative to the
	 * root; token NULL for the first page */
	int (*list_page)(void *impl, const char *rel_prefix, const char *token, unsigned page,
	                 idd_s3_page *out, idd_fetch_stats *fs, idd_error *err);
	int (*put_fd)(void *impl, const char *rel, int fd, uint64_t len, idd_fetch_stats *fs,
	              idd_error *err);
	int (*remove)(void *impl, const char *rel, idd_fetch_stats *fs, idd_error *err);
} idd_source_backend;

extern const idd_source_backend idd_source_local, idd_source_http, idd_source_s3;

/* The backends in the order they are asked to claim a root. */
const idd_source_backend *const *idd_source_backends(size_t *n);

#endif
