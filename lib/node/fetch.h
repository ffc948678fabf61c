/* fetch.h - where deploy reads a repository from: a local directory (or NFS
 * mount) or an http:// / https:// URL through libcurl.  Internal. */
#ifndef IDD_FETCH_H
#define IDD_FETCH_H

#include "base/util.h"
#include "base/error.h"

#include "base/file.h"

typedef struct idd_fetch_opts {
	int connections;   /* requests in flight at once (curl multi); 0: 4 */
	int max_retries;   /* per request, on transient failures; 0: 6 */
	long backoff_ms;   /* first retry delay, doubled each time; 0: 100 */
	long timeout_s;    /* a transfer below 1 KiB/s this long is a (transient) failure, and
	                      connecting takes at most min(10, this) seconds; 0: 30 */
	idd_warn_fn warn;  /* told about each retry (may be NULL) */
	void *ctx;
} idd_fetch_opts;

/* A repository root.  Paths given to it are relative to the root and are
 * checked: no absolute paths, no "..", no empty components; a local source
 * also refuses paths whose symlinks lead outside the root. */
typedef struct idd_source idd_source;

/* Is s an http:// or https:// URL? */
bool idd_is_url(const char *s);

int idd_source_open(const char *root, const idd_fetch_opts *opts, idd_source **out, idd_error *err);
void idd_source_close(idd_source *s);
bool idd_source_is_remote(const idd_source *s);
const char *idd_source_root(const idd_source *s);

/* A whole file (index files) into memory, at most max bytes.  A missing file
 * (ENOENT, HTTP 404) returns IDD_ENOENT. */
int idd_source_get(idd_source *s, const char *rel, size_t max, void **data, size_t *len,
                   idd_error *err);
/* A file as a byte source.  size_hint (UINT64_MAX: unknown) spares the HEAD
 * request over HTTP when the catalog already knows the size. */
int idd_source_open_file(idd_source *s, const char *rel, uint64_t size_hint, idd_file **out,
                         idd_error *err);

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
	uint64_t requests; /* requests started (HTTP) or coalesced reads (local), retries included */
	uint64_t bytes;    /* payload bytes delivered to callers */
	uint64_t retries;
} idd_fetch_stats;
void idd_source_stats(const idd_source *s, idd_fetch_stats *st);

/* Largest request the batch reader makes. */
#define IDD_FETCH_MAX_REQUEST ((uint64_t)4 << 20)
/* Ranges at most this far apart are fetched together.  A sector joins what
 * formats store back to back (qcow2's sector-padded compressed clusters,
 * VMDK's 12-byte grain markers: 2592 -> ~75 requests for a compressed
 * qcow2), and never bridges a whole block: a raw block between two missing
 * ones is in the cache and is not fetched again. */
#define IDD_FETCH_MERGE_GAP ((uint64_t)512)

#endif
