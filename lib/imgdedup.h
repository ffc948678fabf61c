/* imgdedup.h - public interface of libimgdedup.
 *
 * libimgdedup indexes a repository of VM disk images by fixed-size block
 * content and deploys images from a block map plus a local cache.  Every
 * function that can fail returns a negative IDD_E* code and fills an
 * idd_error whose message names the file and the reason; the library never
 * prints and never exits.
 */
#ifndef IMGDEDUP_H
#define IMGDEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IDD_VERSION "0.1.0"

#define IDD_DIGEST_SIZE 32
#define IDD_DEFAULT_BLOCK_SIZE 4096u
#define IDD_MIN_BLOCK_SIZE 512u
#define IDD_MAX_BLOCK_SIZE (1u << 20)
#define IDD_INDEX_SUBDIR ".imgdedup"

enum {
	IDD_OK = 0,
	IDD_ERR = -1,   /* failure; idd_error says what and where */
	IDD_EBUSY = -2, /* the index is locked by another run (no-wait mode) */
	IDD_ENOENT = -3 /* the thing asked for does not exist (no index, no image) */
};

typedef struct idd_error {
	char msg[1024];
} idd_error;

/* A block's content digest.  The all-zero value marks a zero block: SHA-256
 * never yields it in practice, and zero blocks are never hashed. */
typedef struct idd_digest {
	unsigned char b[IDD_DIGEST_SIZE];
} idd_digest;

bool idd_digest_is_zero(const idd_digest *d);
void idd_digest_hex(const idd_digest *d, char out[2 * IDD_DIGEST_SIZE + 1]);

/* Progress: called from the library's threads, serialised; done <= total. */
typedef void (*idd_progress_fn)(void *ctx, uint64_t done, uint64_t total);
/* Non-fatal problems (one unreadable image among many, a damaged cache). */
typedef void (*idd_warn_fn)(void *ctx, const char *msg);

/* ---- index location -------------------------------------------------- */

/* The index directory of REPO: INDEX_OPT when given, else REPO/.imgdedup. */
int idd_index_path(const char *repo, const char *index_opt, char **out, idd_error *err);

/* ---- catalog: what scan knows about each image ----------------------- */

typedef struct idd_image_info {
	char *id;          /* path relative to REPO; "a.ova/disk1.vmdk" for members */
	char *file;        /* relative path of the file holding it (== id unless a member) */
	char *member;      /* archive member name, "" when the image is the file */
	char *format;      /* "raw", "qcow2", "vmdk" */
	char *container;   /* "" or "tar", "ova", "tar.gz", "box", ... */
	uint64_t member_off, member_len; /* member data range in an uncompressed archive */
	uint64_t dev, ino; /* identity of the file holding the image */
	uint64_t file_size;
	int64_t mtime_ns, ctime_ns;
	uint64_t virtual_size;
	uint64_t nblocks, zero_blocks, distinct_blocks;
	int64_t scanned_at; /* unix time of the scan */
	idd_digest list_key; /* SHA-256 of the block list: names its blocks file */
} idd_image_info;

typedef struct idd_catalog {
	uint32_t block_size;
	uint64_t generation;    /* bumped whenever the catalog content changes */
	uint64_t unique_blocks; /* distinct non-zero digests over all images */
	size_t count;
	idd_image_info *images; /* sorted by id */
} idd_catalog;

int idd_catalog_load(const char *index_dir, idd_catalog **out, idd_error *err);
void idd_catalog_free(idd_catalog *cat);
const idd_image_info *idd_catalog_find(const idd_catalog *cat, const char *id);

/* The per-block digests of one image (nblocks entries, zero blocks all-zero). */
int idd_blocklist_load(const char *index_dir, const idd_image_info *img,
                       idd_digest **digests, idd_error *err);

/* ---- scan -------------------------------------------------------------- */

typedef struct idd_scan_opts {
	const char *repo;
	const char *index_dir;   /* NULL: REPO/.imgdedup */
	uint32_t block_size;     /* 0: the index's, or the default for a new one */
	int jobs;                /* 0: online CPUs */
	bool no_wait;            /* lock held by another run: fail with IDD_EBUSY */
	const char *const *includes; /* extra glob patterns for image names */
	size_t n_includes;
	idd_progress_fn progress;
	idd_warn_fn warn;
	void *ctx;
} idd_scan_opts;

typedef struct idd_scan_stats {
	uint64_t images, scanned, unchanged, renamed, removed, failed;
	uint64_t bytes_hashed;
	uint64_t blocks, zero_blocks, unique_blocks;
} idd_scan_stats;

/* Returns IDD_OK, or IDD_ERR when the index could not be written or at least
 * one image failed (each reported through warn; the others are indexed). */
int idd_scan(const idd_scan_opts *opts, idd_scan_stats *stats, idd_error *err);

/* ---- verify ------------------------------------------------------------ */

typedef struct idd_verify_opts {
	const char *repo;
	const char *index_dir;
	bool deep; /* re-read every image and compare its digests */
	int jobs;
	idd_progress_fn progress;
	idd_warn_fn warn; /* called once per damaged file or mismatching image */
	void *ctx;
} idd_verify_opts;

/* IDD_OK when everything checked is intact, IDD_ERR otherwise. */
int idd_verify(const idd_verify_opts *opts, uint64_t *problems, idd_error *err);

/* ---- similarity and map (issue 3) ---- */

/* ---- deploy and cache (issue 4) ---- */

#ifdef __cplusplus
}
#endif
#endif
