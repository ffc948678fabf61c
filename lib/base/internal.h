/* internal.h - shared helpers of libimgdedup; not installed. */
#ifndef IDD_INTERNAL_H
#define IDD_INTERNAL_H

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

/* ---- errors (error.c) ---- */
/* Fill err (if non-NULL) and return IDD_ERR. */
int idd_fail(idd_error *err, const char *fmt, ...) IDD_PRINTF(2, 3);
/* "PATH: WHAT: strerror(errno)" */
int idd_fail_errno(idd_error *err, const char *path, const char *what);
/* Prepend "PREFIX: " to an existing message. */
void idd_error_prefix(idd_error *err, const char *fmt, ...) IDD_PRINTF(2, 3);

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
int64_t idd_now_ns(void);
static inline int64_t idd_ts_ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }
bool idd_is_power_of_two(uint64_t v);

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

/* ---- digests (digest.c) ---- */
typedef struct idd_hasher idd_hasher; /* one per thread; reuses its EVP context */
idd_hasher *idd_hasher_new(idd_error *err);
void idd_hasher_free(idd_hasher *h);
int idd_hasher_digest(idd_hasher *h, const void *data, size_t len, idd_digest *out, idd_error *err);
/* SHA-256 of a whole buffer (checksums of index files). */
int idd_sha256(const void *data, size_t len, unsigned char out[32], idd_error *err);
/* SHA-256 of a followed by b. */
int idd_sha256_2(const void *a, size_t alen, const void *b, size_t blen, unsigned char out[32],
                 idd_error *err);
bool idd_is_zero(const void *p, size_t len);
/* Hash every block of buf (len a multiple of bs, or the tail zero-padded):
 * zero blocks get the zero digest and are not hashed.  *hashed counts the
 * bytes digested. */
int idd_hash_blocks(idd_hasher *h, const unsigned char *buf, size_t len, uint32_t bs,
                    idd_digest *out, uint64_t *hashed, idd_error *err);

/* Open-addressing set of digests, keyed by the digest's first 8 bytes
 * (uniformly distributed) and compared in full. */
typedef struct idd_digest_set {
	idd_digest *slots;
	uint64_t *aux; /* per-slot user value (counts, locations), may be NULL */
	size_t cap, count;
	bool with_aux;
} idd_digest_set;
int idd_digest_set_init(idd_digest_set *s, size_t expect, bool with_aux, idd_error *err);
void idd_digest_set_free(idd_digest_set *s);
/* Inserts d if absent.  Returns the slot index, or (size_t)-1 on allocation
 * failure; *added says whether it was new.  The zero digest is not allowed. */
size_t idd_digest_set_add(idd_digest_set *s, const idd_digest *d, bool *added, idd_error *err);
size_t idd_digest_set_find(const idd_digest_set *s, const idd_digest *d); /* (size_t)-1 if absent */

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
/* Read and check PATH; *payload is malloc'd.  A missing file returns IDD_ENOENT
 * (with a message). */
int idd_indexfile_read(const char *path, const char magic[8], uint32_t max_version,
                       void **payload, size_t *len, uint32_t *version, idd_error *err);
/* Same, with the largest payload the caller can accept (0: the default,
 * max(64 MiB, 256 x the stored size)). */
int idd_indexfile_parse_limit(const char *name, const void *file, size_t file_len,
                              const char magic[8], uint32_t max_version, uint64_t max_payload,
                              void **payload, size_t *len, uint32_t *version, idd_error *err);
/* Same checks on bytes already in memory (fetched over HTTP, fuzzing). */
int idd_indexfile_parse(const char *name, const void *file, size_t file_len,
                        const char magic[8], uint32_t max_version,
                        void **payload, size_t *len, uint32_t *version, idd_error *err);
/* Container-level check of any index file (magic prefix, lengths, checksum,
 * decompression), whatever its kind. */
int idd_indexfile_check(const char *name, const void *file, size_t len, idd_error *err);
/* Write a whole file atomically (temp, fsync, rename, fsync dir). */
int idd_write_file_atomic(const char *path, const void *data, size_t len, idd_error *err);
int idd_fsync_dir(const char *dir, idd_error *err);
int idd_mkdir_p(const char *path, idd_error *err);
/* Whole file into memory (bounded by max). */
int idd_read_file(const char *path, size_t max, void **data, size_t *len, idd_error *err);

/* Exclusive lock on DIR/lock (flock).  Waits unless no_wait, in which case a
 * held lock returns IDD_EBUSY. */
int idd_lock(const char *dir, bool no_wait, int *fd_out, idd_error *err);
void idd_unlock(int fd);

/* ---- catalog internals (catalog.c) ---- */
#define IDD_CATALOG_FILE "catalog"
#define IDD_BLOCKS_DIR "blocks"
char *idd_blocks_path(const char *index_dir, const idd_digest *key, idd_error *err);
int idd_catalog_save(const char *index_dir, const idd_catalog *cat, idd_error *err);
int idd_blocklist_save(const char *index_dir, uint32_t block_size, const idd_digest *d,
                       uint64_t nblocks, idd_digest *key_out, idd_error *err);
int idd_catalog_parse(const char *name, const void *payload, size_t len, idd_catalog **out,
                      idd_error *err);
/* A whole catalog file (container included) already in memory, e.g. fetched. */
int idd_catalog_parse_file(const char *name, const void *file, size_t len, idd_catalog **out,
                           idd_error *err);
void idd_image_info_free(idd_image_info *im);
int idd_image_info_copy(idd_image_info *dst, const idd_image_info *src, idd_error *err);

/* ---- byte sources (file.c) ----
 * An idd_file is something that can be read by range: a local file, a byte
 * range inside another idd_file (an archive member), or an HTTP resource.
 * Image format readers sit on top of it, so the same qcow2 code serves the
 * local scan and the remote deploy. */
typedef struct idd_file idd_file;
struct idd_file_ops {
	/* Read exactly len bytes at off; a short read past EOF is an error. */
	int (*pread)(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err);
	/* Next data at or after off (SEEK_DATA); *data = size when none.
	 * NULL: everything is data. */
	int (*next_data)(idd_file *f, uint64_t off, uint64_t *data, uint64_t *data_end, idd_error *err);
	void (*close)(idd_file *f);
};
struct idd_file {
	const struct idd_file_ops *ops;
	char *name;   /* for messages */
	uint64_t size;
	int fd;       /* local files: the descriptor, else -1 */
	void *priv;
};
int idd_file_open_local(const char *path, idd_file **out, idd_error *err);
/* A window [off, off+len) of parent.  With owns_parent the slice closes
 * parent when it is closed (also on failure); else parent must outlive it. */
int idd_file_open_slice(idd_file *parent, bool owns_parent, uint64_t off, uint64_t len,
                        const char *name, idd_file **out, idd_error *err);
static inline int idd_file_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	return f->ops->pread(f, buf, len, off, err);
}
int idd_file_next_data(idd_file *f, uint64_t off, uint64_t *data, uint64_t *data_end, idd_error *err);
void idd_file_close(idd_file *f);

/* ---- images (image.c, qcow2.c, vmdk.c) ----
 * An image presents its virtual disk.  Formats describe the disk as extents
 * so callers can skip zeros and fetch exactly the stored bytes they need. */
enum idd_extent_kind {
	IDD_EXT_ZERO,       /* reads as zeros; nothing stored */
	IDD_EXT_DATA,       /* stored verbatim at file_off */
	IDD_EXT_COMPRESSED  /* a compressed unit: decompress file range -> vlen bytes */
};
enum idd_codec { IDD_CODEC_NONE, IDD_CODEC_DEFLATE, IDD_CODEC_ZSTD, IDD_CODEC_ZLIB };

typedef struct idd_extent {
	uint64_t voff, vlen;         /* virtual range covered */
	enum idd_extent_kind kind;
	uint64_t file_off, file_len; /* stored bytes (DATA: file_len == vlen) */
	enum idd_codec codec;
	idd_file *file;              /* which file holds it (backing chains); NULL: the image's own */
} idd_extent;

typedef struct idd_image idd_image;
struct idd_image_ops {
	const char *format;
	/* The extent containing voff (voff < size).  Formats may return extents
	 * shorter than the whole run; callers loop. */
	int (*extent)(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err);
	/* Optional fast path for reading virtual bytes (NULL: generic). */
	int (*read)(idd_image *img, uint64_t voff, void *buf, size_t len, idd_error *err);
	void (*close)(idd_image *img);
};
struct idd_image {
	const struct idd_image_ops *ops;
	idd_file *file;      /* the container bytes */
	bool owns_file;
	uint64_t size;       /* virtual size */
	const char *format;
	void *priv;
};

/* Detect the format from content and open the image over f.  Takes ownership
 * of f when owns_file.  backing_open resolves backing files (may be NULL:
 * backing files refused). */
typedef int (*idd_backing_open_fn)(void *ctx, const char *name, idd_file **out, idd_error *err);
int idd_image_open(idd_file *f, bool owns_file, idd_backing_open_fn backing_open, void *backing_ctx,
                   idd_image **out, idd_error *err);
void idd_image_close(idd_image *img);
/* A COMPRESSED extent always starts at its unit's start (ext->voff <= voff);
 * its vlen may be shorter than the unit's decompressed size (disk end, or a
 * qcow2 overlay's own clusters taking over): decode vlen bytes for that
 * prefix.  Same file + file_off: same unit.  See qcow2_extent. */
int idd_image_extent(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err);
/* Read virtual bytes [voff, voff+len); zero-fills holes, decompresses. */
int idd_image_read(idd_image *img, uint64_t voff, void *buf, size_t len, idd_error *err);
/* Decode one stored extent (read from its file) into out (ext->vlen bytes). */
int idd_extent_decode(const idd_extent *ext, const void *stored, size_t stored_len, void *out,
                      idd_error *err);

/* Largest compressed unit decoded in one piece (qcow2 clusters are <= 2 MiB,
 * VMDK grains <= 1 MiB at any sane grain size). */
#define IDD_MAX_COMPRESSED_UNIT ((uint64_t)64 << 20)

/* Format backends register here (image.c asks each in turn). */
typedef int (*idd_format_probe_fn)(const unsigned char *head, size_t len);
typedef int (*idd_format_open_fn)(idd_image *img, idd_backing_open_fn bo, void *bctx, idd_error *err);
int idd_qcow2_probe(const unsigned char *head, size_t len);
int idd_qcow2_open(idd_image *img, idd_backing_open_fn bo, void *bctx, idd_error *err);
int idd_vmdk_probe(const unsigned char *head, size_t len);
int idd_vmdk_open(idd_image *img, idd_backing_open_fn bo, void *bctx, idd_error *err);

/* ---- the repository (repo.c) ---- */
typedef struct idd_repo_entry {
	char *id;        /* relative path (+ "/member" inside archives) */
	char *path;      /* absolute path of the file holding it */
	char *member;    /* archive member name, or NULL */
	char *container; /* "" or archive kind */
	uint64_t member_off, member_len; /* uncompressed archives: member data range */
	bool streamed;   /* compressed archive: member readable only as a stream */
	bool spooled;    /* streamed member already decompressed into spool_fd (owned) */
	int spool_fd;
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
} idd_repo_entry;

typedef struct idd_repo_list {
	idd_repo_entry *v;
	size_t n;
} idd_repo_list;

/* Does NAME look like an image (DESIGN.md's patterns plus includes)? */
bool idd_repo_name_matches(const char *name, const char *const *includes, size_t n_includes);
/* Regular files under repo (not the index dir), sorted by path, with stat.
 * Archives are listed as one entry each (member == NULL); see archive.c. */
int idd_repo_walk(const char *repo, const char *index_dir, const char *const *includes,
                  size_t n_includes, idd_repo_list *out, idd_warn_fn warn, void *ctx,
                  idd_error *err);
void idd_repo_list_free(idd_repo_list *l);
int idd_repo_list_push(idd_repo_list *l, const idd_repo_entry *e, idd_error *err);
void idd_repo_entry_free(idd_repo_entry *e);

/* ---- archives (archive.c) ----
 * Is the file at f an archive (tar, ova, gz/xz/zstd-compressed tar)?  Returns
 * its kind ("tar", "tar.gz", ...) or NULL. */
const char *idd_archive_kind(const unsigned char *head, size_t len);
/* Expand an archive entry into one entry per disk image member. */
int idd_archive_list(const idd_repo_entry *archive, idd_repo_list *out, idd_error *err);
/* Open the disk image of a member entry (e->member != NULL): a slice of an
 * uncompressed archive, or for compressed archives the member decompressed
 * once into an unlinked temporary file (see docs/formats.md). */
int idd_archive_open_member(const char *repo, const idd_repo_entry *e, idd_image **out,
                            idd_error *err);
/* Decompress the member named member (a normalised name as listed; its last
 * occurrence) of the compressed tar read through archive into fd (sparse,
 * truncated first).  *bytes_read: archive bytes read. */
int idd_archive_spool_member_from(idd_file *archive, const char *member, int fd,
                                  uint64_t *bytes_read, idd_error *err);

/* Open the image an entry names (raw/qcow2/vmdk, inside an archive or not).
 * Backing files resolve inside repo only. */
int idd_repo_open_image(const char *repo, const idd_repo_entry *e, idd_image **out, idd_error *err);
/* Backing-file resolver for images under repo: ctx is an idd_backing_ctx. */
typedef struct idd_backing_ctx {
	const char *repo;  /* root: nothing outside it is opened */
	const char *dir;   /* directory of the image naming the backing file */
	int depth;         /* chain depth so far; cycles hit IDD_MAX_BACKING_DEPTH */
	struct idd_chain *chain; /* if set, every backing file opened is recorded here */
} idd_backing_ctx;
/* The backing files an image was read with, for the catalog. */
typedef struct idd_chain {
	idd_file_ident *v;
	size_t n;
} idd_chain;
void idd_chain_free(idd_chain *c);
/* Open an image and record its backing files in chain (may be NULL). */
int idd_repo_open_image_chain(const char *repo, const idd_repo_entry *e, idd_chain *chain,
                              idd_image **out, idd_error *err);
/* Are the files of a chain still what was recorded (stat under repo)? */
bool idd_chain_unchanged(const char *repo, const idd_file_ident *v, size_t n);
#define IDD_MAX_BACKING_DEPTH 16
int idd_repo_backing_open(void *ctx, const char *name, idd_file **out, idd_error *err);

#endif
