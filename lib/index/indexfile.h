/* indexfile.h - the container every index file uses, atomic file writes,
 * streamed index files and the index lock (indexfile.c). */
#ifndef IDD_INDEX_INDEXFILE_H
#define IDD_INDEX_INDEXFILE_H

#include "base/util.h"
#include "index/indexdir.h" /* idd_fsync_dir, idd_mkdir_p */

/* ---- index files (indexfile.c) ---- */
/* Every index file: magic[8], u32 version, u32 flags, u64 payload length,
 * u64 stored length, stored payload (zstd when flags&1), SHA-256 of all
 * preceding bytes.  See docs/formats.md. */
#define IDD_IF_HEADER 32
#define IDD_IF_TRAILER 32
#define IDD_IF_ZSTD 1u
#define IDD_IF_MAX_PAYLOAD ((uint64_t)1 << 38) /* 256 GiB: sanity bound */

/* Atomically replace PATH: write PATH.tmp.PID, fsync, rename, fsync dir. */
int idd_indexfile_write(const char *path, const char magic[8], uint32_t version,
                        const void *payload, size_t len, bool compress, idd_error *err);
/* Write into DIR a file named by the hex of its own checksum (the SHA-256
 * trailer), which *sum receives: content-named, so an existing file of that
 * name already holds these bytes and is not rewritten. */
int idd_indexfile_write_named(const char *dir, const char magic[8], uint32_t version,
                              const void *payload, size_t len, bool compress, idd_digest *sum,
                              idd_error *err);
/* An uncompressed index file streamed out in pieces (larger than memory,
 * or searched in place): begin creates PATH.tmp.PID and leaves room for the
 * header; append buffers pieces; finish writes the header and the SHA-256
 * trailer (reading back what was streamed, since the checksum covers the
 * header and the length is known only at the end), fsyncs, renames over the
 * final name and releases the writer, also on failure; abort removes the
 * temporary and releases it.  Abort is harmless on a zeroed, finished or
 * aborted writer.  The caller fsyncs the directory (once for many files). */
typedef struct idd_indexfile_out {
	int fd;
	char *tmp, *path;
	unsigned char *buf;
	size_t fill;
	uint64_t off; /* bytes in the file so far, the header's room included */
	char magic[8];
	uint32_t version;
} idd_indexfile_out;
int idd_indexfile_out_begin(idd_indexfile_out *o, const char *path, const char magic[8],
                            uint32_t version, idd_error *err);
int idd_indexfile_out_append(idd_indexfile_out *o, const void *data, size_t len, idd_error *err);
/* Payload bytes appended so far. */
uint64_t idd_indexfile_out_payload(const idd_indexfile_out *o);
/* Rename to PATH rather than to the name begun with (a file named after
 * the checksum of something written alongside it). */
int idd_indexfile_out_retarget(idd_indexfile_out *o, const char *path, idd_error *err);
/* *size (may be NULL) receives the size of the file. */
int idd_indexfile_out_finish(idd_indexfile_out *o, uint64_t *size, idd_error *err);
void idd_indexfile_out_abort(idd_indexfile_out *o);
/* Many small index files of one directory written durably at the cost of
 * one sync: add writes each to NAME.tmp.PID; commit syncs the filesystem
 * once (syncfs), renames every file into place and fsyncs the directory;
 * free removes the temporaries of files not committed. */
typedef struct idd_indexfile_batch {
	char **tmp, **final;
	size_t n, cap;
} idd_indexfile_batch;
int idd_indexfile_batch_add(idd_indexfile_batch *b, const char *path, const char magic[8],
                            uint32_t version, const void *payload, size_t len, bool compress,
                            idd_error *err);
int idd_indexfile_batch_commit(idd_indexfile_batch *b, const char *dir, idd_error *err);
void idd_indexfile_batch_free(idd_indexfile_batch *b);
/* Read and check PATH; *payload is malloc'd.  A missing file returns IDD_ENOENT
 * (with a message). */
int idd_indexfile_read(const char *path, const char magic[8], uint32_t max_version,
                       void **payload, size_t *len, uint32_t *version, idd_error *err);
/* Same, with the largest payload the caller can accept (0: the default,
 * max(64 MiB, 256 x the stored size)). */
int idd_indexfile_parse_limit(const char *name, const void *file, size_t file_len,
                              const char magic[8], uint32_t max_version, uint64_t max_payload,
                              void **payload, size_t *len, uint32_t *version, idd_error *err);
/* The same into *payload, a buffer of *cap bytes the caller keeps from call
 * to call (grown when too small, left to the caller on failure too). */
int idd_indexfile_parse_reuse(const char *name, const void *file, size_t file_len,
                              const char magic[8], uint32_t max_version, uint64_t max_payload,
                              void **payload, size_t *cap, size_t *len, uint32_t *version,
                              idd_error *err);
/* The same, but an uncompressed payload is not copied: *payload points
 * into file (valid while file is); a compressed one is decompressed into
 * *buf (*cap bytes, kept by the caller as above). */
int idd_indexfile_parse_view(const char *name, const void *file, size_t file_len,
                             const char magic[8], uint32_t max_version, uint64_t max_payload,
                             void **buf, size_t *cap, const void **payload, size_t *len,
                             uint32_t *version, idd_error *err);
/* Same checks on bytes already in memory (fetched over HTTP, fuzzing). */
int idd_indexfile_parse(const char *name, const void *file, size_t file_len,
                        const char magic[8], uint32_t max_version,
                        void **payload, size_t *len, uint32_t *version, idd_error *err);
/* What a magic names, for messages: "catalog", "block map", ... */
const char *idd_indexfile_kind(const char magic[8]);
/* Check PATH's container without decompressing it: magic, version, lengths
 * and the SHA-256 trailer, read in pieces (constant memory).  *sum (may be
 * NULL) receives the trailer, *version (may be NULL) the version.  A missing
 * file returns IDD_ENOENT. */
int idd_indexfile_verify(const char *path, const char magic[8], uint32_t max_version,
                         idd_digest *sum, uint32_t *version, idd_error *err);
/* Container-level check of any index file (magic prefix, lengths, checksum,
 * decompression), whatever its kind. */
int idd_indexfile_check(const char *name, const void *file, size_t len, idd_error *err);
/* Write a whole file atomically (temp, fsync, rename, fsync dir). */
int idd_write_file_atomic(const char *path, const void *data, size_t len, idd_error *err);

/* Exclusive lock on DIR/lock (flock).  Waits unless no_wait, in which case a
 * held lock returns IDD_EBUSY. */
int idd_lock(const char *dir, bool no_wait, int *fd_out, idd_error *err);
void idd_unlock(int fd);

#endif
