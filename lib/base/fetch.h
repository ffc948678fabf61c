/* fetch.h - repository sources: where deploy and serve (and scan and
 * publish, for an object store) read a repository from and write its index
 * to: a local directory (or NFS mount), an http:// / https:// URL, or an
 * s3://BUCKET/PREFIX location in an S3-compatible object store, through
 * libcurl.  Each kind is a backend (source.h: src_local.c, src_http.c,
 * src_s3.c) chosen from fetch.c's table; retries are the layer of retry.h
 * around every backend operation.  Internal. */
#ifndef IDD_BASE_FETCH_H
#define IDD_BASE_FETCH_H

#include "base/util.h"
#include "base/error.h"

#include "base/file.h"
#include "base/s3.h"

#include <stdatomic.h>

/* Objects of a listing (keys relative to the source). */
typedef struct idd_s3_object_list {
	idd_s3_object *v;
	size_t n;
} idd_s3_object_list;

typedef struct idd_fetch_opts {
	int connections;   /* requests in flight at once (curl multi); 0: 4 */
	int max_retries;   /* per request, on transient failures; 0: 6 */
	long backoff_ms;   /* first retry delay, doubled each time; 0: 100 */
	long timeout_s;    /* a transfer below 1 KiB/s this long is a (transient) failure, and
	                      connecting takes at most min(10, this) seconds; 0: 30 */
	idd_warn_fn warn;  /* told about each retry (may be NULL) */
	void *ctx;
	/* when set and true, requests in flight and new ones end at once with
	 * IDD_ECANCELED (a server shutting down); checked every 100 ms */
	const atomic_bool *cancel;
} idd_fetch_opts;

/* A deadline for the calling thread's remote requests (CLOCK_MONOTONIC ns,
 * 0: none): a request still running then, or a retry that would start
 * after it, ends the batch with IDD_ETIMEDOUT.  Returns the previous one,
 * for the caller to restore.  Block sources that wait for a connection or
 * a lock honour it too (idd_fetch_deadline). */
int64_t idd_fetch_set_deadline(int64_t mono_ns);
int64_t idd_fetch_deadline(void);

/* A repository root.  Paths given to it are relative to the root and are
 * checked: no absolute paths, no "..", no empty components; a local source
 * also refuses paths whose symlinks lead outside the root. */
typedef struct idd_source idd_source;

/* Is s an http:// or https:// URL? */
bool idd_is_url(const char *s);
/* Is s a remote location: an http(s):// URL or an s3:// location? */
bool idd_is_remote_location(const char *s);

/* root: a directory, an http(s):// URL, or s3://BUCKET[/PREFIX] (settings
 * and credentials from the AWS conventions, see s3.h; missing credentials
 * fail here).  Thread-safe once open: see fetch.c. */
int idd_source_open(const char *root, const idd_fetch_opts *opts, idd_source **out, idd_error *err);
void idd_source_close(idd_source *s);
bool idd_source_is_remote(const idd_source *s);
bool idd_source_is_s3(const idd_source *s);
const char *idd_source_root(const idd_source *s);

/* A whole file (index files) into memory, at most max bytes.  A missing file
 * (ENOENT, HTTP 404) returns IDD_ENOENT. */
int idd_source_get(idd_source *s, const char *rel, size_t max, void **data, size_t *len,
                   idd_error *err);
/* A file as a byte source.  size_hint (UINT64_MAX: unknown) spares the HEAD
 * request over HTTP when the catalog already knows the size. */
int idd_source_open_file(idd_source *s, const char *rel, uint64_t size_hint, idd_file **out,
                         idd_error *err);

/* As idd_source_open_file, with read-ahead for callers that read a file
 * from start to end in small pieces (scan over an object store: a qcow2 read
 * cluster by cluster): a pread smaller than `window` bytes fetches the
 * window-aligned stretch around it, and the last few windows are kept.
 * Bytes are transferred that nobody asked for, so deploy does not use it.
 * window 0: none (same as idd_source_open_file). */
int idd_source_open_file_readahead(idd_source *s, const char *rel, uint64_t size_hint,
                                   size_t window, idd_file **out, idd_error *err);

/* What identifies a remote object's content now (HEAD). */
typedef struct idd_remote_stat {
	uint64_t size;
	char etag[80];  /* without quotes; "" when the server sent none */
	int64_t mtime;  /* Last-Modified, unix seconds; -1 when unknown */
} idd_remote_stat;
/* HEAD (remote) or stat (local: etag made of device, inode and mtime in
 * ns, mtime from st_mtime).  A missing file returns IDD_ENOENT. */
int idd_source_stat(idd_source *s, const char *rel, idd_remote_stat *st, idd_error *err);

/* S3 only.  Every object whose key starts with the source's prefix + "/" +
 * rel_prefix (rel_prefix "" or ending in '/'), through ListObjectsV2, page
 * after page; keys come back relative to the source (the prefix and its '/'
 * removed), in the store's order (byte order on S3). */
int idd_source_list(idd_source *s, const char *rel_prefix, idd_s3_object_list *out,
                    idd_error *err);
void idd_s3_object_list_free(idd_s3_object_list *l);
/* S3 only.  PUT len bytes of fd (from offset 0) as rel; retried like reads. */
int idd_source_put_fd(idd_source *s, const char *rel, int fd, uint64_t len, idd_error *err);
/* S3 only.  DELETE rel (a missing object is no error). */
int idd_source_delete(idd_source *s, const char *rel, idd_error *err);

/* One range of a batch read. */
typedef struct idd_range {
	uint64_t off;
	uint64_t len;
	void *buf; /* len bytes */
} idd_range;

/* Read many ranges of f (a file opened through s): ranges that overlap,
 * touch or lie at most IDD_FETCH_MERGE_GAP bytes apart are read as one
 * stretch (in requests of up to 4 MiB, so that several can be in flight;
 * gap bytes are transferred and dropped), each range then delivered from it;
 * up to opts.connections requests in flight, transient failures retried with
 * exponential backoff.  Ranges may come in any order and may overlap. */
int idd_source_read_ranges(idd_source *s, idd_file *f, const idd_range *r, size_t n,
                           idd_error *err);

typedef struct idd_fetch_stats {
	uint64_t requests; /* requests started (HTTP, S3) or coalesced reads (local), retries included */
	uint64_t bytes;    /* payload bytes delivered to callers */
	uint64_t retries;
} idd_fetch_stats;
/* The source's totals so far (every thread's). */
void idd_source_stats(const idd_source *s, idd_fetch_stats *st);
/* idd_source_read_ranges, adding this call's own figures to *batch: exact
 * even while other threads use the source. */
int idd_source_read_ranges_counted(idd_source *s, idd_file *f, const idd_range *r, size_t n,
                                   idd_fetch_stats *batch, idd_error *err);

/* Largest request the batch reader makes. */
#define IDD_FETCH_MAX_REQUEST ((uint64_t)4 << 20)
/* Ranges at most this far apart are fetched together.  A sector joins what
 * formats store back to back (qcow2's sector-padded compressed clusters,
 * VMDK's 12-byte grain markers: 2592 -> ~75 requests for a compressed
 * qcow2), and never bridges a whole block: a raw block between two missing
 * ones is in the cache and is not fetched again. */
#define IDD_FETCH_MERGE_GAP ((uint64_t)512)

#endif
