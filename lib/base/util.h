/* util.h - memory, strings, whole-buffer I/O, byte buffers, bounds-checked
 * readers, little/big-endian and checked arithmetic helpers (util.c). */
#ifndef IDD_BASE_UTIL_H
#define IDD_BASE_UTIL_H

/* the library sees its own internal layouts */
#ifndef IDD_STATIC_LINKING_ONLY
#define IDD_STATIC_LINKING_ONLY
#endif
#include "imgdedup.h"

#include <stdarg.h>
#include <stdio.h>
#include <sys/types.h>
#include <time.h>

#define IDD_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define IDD_MIN(a, b) ((a) < (b) ? (a) : (b))
#define IDD_MAX(a, b) ((a) > (b) ? (a) : (b))

#if defined(__GNUC__)
#define IDD_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define IDD_PRINTF(f, a)
#endif

/* ---- memory and strings (util.c) ---- */
void *idd_malloc(size_t n, idd_error *err);   /* NULL + message on failure */
void *idd_calloc(size_t n, size_t m, idd_error *err);
void *idd_realloc_array(void *p, size_t n, size_t m, idd_error *err);
char *idd_strdup(const char *s, idd_error *err);
char *idd_asprintf(idd_error *err, const char *fmt, ...) IDD_PRINTF(2, 3);
char *idd_path_join(const char *a, const char *b, idd_error *err);
/* The whole of buf to / from fd at off, retrying short transfers and EINTR.
 * 0, or -1 with errno set (EIO for an unexpected end of file). */
int idd_pwrite_all(int fd, const void *buf, size_t len, uint64_t off);
int idd_pread_all(int fd, void *buf, size_t len, uint64_t off);
/* The whole of buf to fd at its current offset (or its end, O_APPEND),
 * retrying short writes and EINTR: a short write is followed by one that
 * says why (ENOSPC, EFBIG, ...).  0, or -1 with errno set. */
int idd_write_all(int fd, const void *buf, size_t len);
/* A whole regular file into memory (at most max bytes); a missing file is
 * IDD_ENOENT. */
int idd_read_file(const char *path, size_t max, void **data, size_t *len, idd_error *err);
/* The same into *data, a buffer of *cap bytes kept from call to call (grown
 * when too small; the caller frees it), so that reading many files does not
 * map and fault in fresh memory for each. */
int idd_read_file_reuse(const char *path, size_t max, void **data, size_t *cap, size_t *len,
                        idd_error *err);
int64_t idd_now_ns(void);
/* CLOCK_MONOTONIC in ns: for timeouts and backoffs, which must not move
 * with the wall clock. */
int64_t idd_mono_ns(void);
static inline int64_t idd_ts_ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }
bool idd_is_power_of_two(uint64_t v);
/* The value of a hexadecimal digit (either case); -1 for any other char. */
int idd_hex_value(char c);
/* Threads for a --jobs option: jobs when positive, else the online CPUs (1
 * when unknown); never more than IDD_MAX_THREADS. */
#define IDD_MAX_THREADS 64
int idd_threads_for_jobs(int jobs);
/* Is rel a safe relative path (no "/" start, no "." or ".." or empty parts,
 * no backslash or control character)? */
bool idd_relpath_ok(const char *rel);

/* Growable byte buffer used to build index payloads. */
typedef struct idd_buf {
	unsigned char *data;
	size_t len, cap;
	bool failed; /* an allocation failed: the buffer is unusable */
} idd_buf;
void idd_buf_free(idd_buf *b);
int idd_buf_reserve(idd_buf *b, size_t extra);
void idd_buf_put(idd_buf *b, const void *p, size_t n);
void idd_buf_put_u8(idd_buf *b, uint8_t v);
void idd_buf_put_u32(idd_buf *b, uint32_t v);
void idd_buf_put_u64(idd_buf *b, uint64_t v);
void idd_buf_put_varint(idd_buf *b, uint64_t v);
void idd_buf_put_str(idd_buf *b, const char *s); /* varint length + bytes */

/* Bounds-checked reader over untrusted bytes.  Every getter fails (and
 * latches the failure) instead of reading past the end. */
typedef struct idd_reader {
	const unsigned char *p;
	size_t len, pos;
	bool bad;
} idd_reader;
void idd_reader_init(idd_reader *r, const void *p, size_t len);
bool idd_get_u8(idd_reader *r, uint8_t *v);
bool idd_get_u32(idd_reader *r, uint32_t *v);
bool idd_get_u64(idd_reader *r, uint64_t *v);
bool idd_get_varint(idd_reader *r, uint64_t *v);
bool idd_get_bytes(idd_reader *r, void *out, size_t n);
const unsigned char *idd_get_span(idd_reader *r, size_t n); /* NULL when short */
/* Allocates a NUL-terminated copy; rejects embedded NULs and > max bytes. */
bool idd_get_str(idd_reader *r, char **out, size_t max);
static inline size_t idd_reader_left(const idd_reader *r) { return r->len - r->pos; }

static inline void idd_le32_put(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)v; p[1] = (unsigned char)(v >> 8);
	p[2] = (unsigned char)(v >> 16); p[3] = (unsigned char)(v >> 24);
}
static inline void idd_le64_put(unsigned char *p, uint64_t v)
{
	idd_le32_put(p, (uint32_t)v); idd_le32_put(p + 4, (uint32_t)(v >> 32));
}
static inline uint32_t idd_le32(const unsigned char *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t idd_le64(const unsigned char *p)
{
	return (uint64_t)idd_le32(p) | (uint64_t)idd_le32(p + 4) << 32;
}
static inline uint16_t idd_be16(const unsigned char *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t idd_be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}
static inline uint64_t idd_be64(const unsigned char *p)
{
	return (uint64_t)idd_be32(p) << 32 | idd_be32(p + 4);
}

/* Checked arithmetic: false on overflow. */
static inline bool idd_add_ok(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_add_overflow(a, b, r); }
static inline bool idd_mul_ok(uint64_t a, uint64_t b, uint64_t *r) { return !__builtin_mul_overflow(a, b, r); }

#endif
