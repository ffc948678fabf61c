/* imgdedup.h - public interface of libimgdedup.
 *
 * libimgdedup indexes a repository of VM disk images by fixed-size block
 * content and deploys images from a block map plus a local cache.  Every
 * function that can fail returns a negative IDD_E* code and fills an
 * idd_error whose message names the file and the reason; the library never
 * prints and never exits.
 *
 * Two tiers.  The stable tier is everything a program gets by including
 * this header: handles are opaque (idd_server, idd_export, idd_blocklist,
 * ...: only pointers to them, used through functions), and the structs it
 * defines (options, statistics, results) only ever gain fields at their
 * end, where a field added later means, when zero, what the library did
 * before it existed; so zero-initialise them ({0} or memset) and set what
 * you need.  The unstable tier, after the stable one, is compiled in only
 * when IDD_STATIC_LINKING_ONLY is defined before the header is included:
 * layouts of internal storage (a block list's runs and digests) and the
 * output-file helper the front ends share.  It may change in any release,
 * fields moved or removed; use it only linking the static library of the
 * very version whose header you compiled with.
 * This header is self-contained (C11 or C++).  Build against the installed
 * library with `pkg-config --cflags --libs libimgdedup`; the library is a
 * static archive, so a program calling more than idd_strerror also links
 * what libimgdedup.pc lists as Requires.private and Libs.private:
 * `pkg-config --libs libimgdedup libcrypto libzstd libarchive libcurl zlib`
 * and -pthread -lm.
 */
#ifndef IMGDEDUP_H
#define IMGDEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The version compiled against; idd_version() says which library is linked. */
#define IDD_VERSION_MAJOR 0
#define IDD_VERSION_MINOR 2
#define IDD_VERSION_PATCH 0
#define IDD_VERSION_NUMBER (IDD_VERSION_MAJOR * 10000 + IDD_VERSION_MINOR * 100 + IDD_VERSION_PATCH)
#define IDD_VERSION "0.2.0"

#define IDD_DIGEST_SIZE 32
#define IDD_DEFAULT_BLOCK_SIZE 4096u
#define IDD_MIN_BLOCK_SIZE 512u
#define IDD_MAX_BLOCK_SIZE (1u << 20)
#define IDD_INDEX_SUBDIR ".imgdedup"

/* Return codes.  A function that fails returns one of these (negative) and
 * fills an idd_error with the message and the same code, so callers can
 * branch on what kind of failure it was. */
enum {
	IDD_OK = 0,
	IDD_ERR = -1,      /* failure of no more specific kind; idd_error says what and where */
	IDD_EBUSY = -2,    /* locked by another run (no-wait mode), or in use */
	IDD_ENOENT = -3,   /* the thing asked for does not exist (no index, no image, no block) */
	IDD_ECORRUPT = -4, /* data failed a check: a damaged file, a block not matching its digest */
	IDD_EIO = -5,      /* a local read, write or open failed */
	IDD_ENET = -6,     /* a remote source failed (after retries) */
	IDD_ENOMEM = -7,   /* out of memory */
	IDD_EPERM = -8,    /* refused: permission, a path outside the source, a non-regular file */
	IDD_ETIMEDOUT = -9, /* a time limit passed (serve's --read-timeout) */
	IDD_ECANCELED = -10 /* stopped on request (a server shutting down) */
};

typedef struct idd_error {
	char msg[1024];
	int code; /* the IDD_E* code of the failure (IDD_ERR when unspecified) */
} idd_error;

/* The linked library's version: "MAJOR.MINOR.PATCH", and as
 * IDD_VERSION_NUMBER computes it. */
const char *idd_version(void);
unsigned idd_version_number(void);

/* A short name for a code ("corrupt", "i/o error", "not found", ...). */
const char *idd_strerror(int code);
/* Body bytes this process received from remote sources so far (for
 * progress reports while a slow source is read). */
uint64_t idd_bytes_received(void);

/* A block's content digest.  The all-zero value marks a zero block: SHA-256
 * never yields it in practice, and zero blocks are never hashed. */
typedef struct idd_digest {
	unsigned char b[IDD_DIGEST_SIZE];
} idd_digest;

bool idd_digest_is_zero(const idd_digest *d);
void idd_digest_hex(const idd_digest *d, char out[2 * IDD_DIGEST_SIZE + 1]);

/* A printable copy of s (malloc'd): backslash, \n, \t and \r escaped as
 * such, other control bytes as \xNN.  For names read from disk (image ids
 * are file names) shown on a terminal or in a message. */
char *idd_str_escape(const char *s, idd_error *err);

/* Progress: called from the library's threads, serialised; done <= total. */
typedef void (*idd_progress_fn)(void *ctx, uint64_t done, uint64_t total);
/* Non-fatal problems (one unreadable image among many, a damaged cache). */
typedef void (*idd_warn_fn)(void *ctx, const char *msg);

/* ---- index location -------------------------------------------------- */

/* The index directory of REPO: INDEX_OPT when given, else REPO/.imgdedup. */
int idd_index_path(const char *repo, const char *index_opt, char **out, idd_error *err);

/* ---- catalog: what scan knows about each image ----------------------- */

/* The identity of a file an image depends on (a qcow2 backing file). */
typedef struct idd_file_ident {
	char *path; /* relative to REPO */
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
} idd_file_ident;

typedef struct idd_image_info {
	char *id;          /* path relative to REPO; "a.ova/disk1.vmdk" for members */
	char *file;        /* relative path of the file holding it (== id unless a member) */
	char *member;      /* archive member name, "" when the image is the file */
	char *format;      /* "raw", "qcow2", "vmdk" */
	char *container;   /* "" or "tar", "ova", "tar.gz", "box", ... */
	uint64_t member_off, member_len; /* member data range in an uncompressed archive */
	bool streamed;     /* member readable only by decompressing the archive (or a sparse
	                      tar member): not addressable by byte range */
	uint64_t dev, ino; /* identity of the file holding the image */
	uint64_t file_size;
	int64_t mtime_ns, ctime_ns;
	uint64_t virtual_size;
	uint64_t nblocks, zero_blocks, distinct_blocks;
	int64_t scanned_at; /* unix time of the scan */
	size_t nbacking;    /* backing files read with it: a change to any re-reads it */
	idd_file_ident *backing;
	idd_digest list_key; /* SHA-256 of the block list: names its blocks file */
} idd_image_info;

#define IDD_UNIQUE_UNKNOWN UINT64_MAX

typedef struct idd_catalog {
	uint32_t block_size;
	uint64_t generation;    /* bumped whenever the catalog content changes */
	uint64_t unique_blocks; /* distinct non-zero digests over all images, or
	                           IDD_UNIQUE_UNKNOWN in a checkpoint of an unfinished run */
	size_t count;
	idd_image_info *images; /* sorted by id */
} idd_catalog;

int idd_catalog_load(const char *index_dir, idd_catalog **out, idd_error *err);
void idd_catalog_free(idd_catalog *cat);
const idd_image_info *idd_catalog_find(const idd_catalog *cat, const char *id);

/* The per-block digests of one image, held sparsely: only non-zero blocks
 * cost memory, so a thin 4 TiB image costs what its data costs.  Read it
 * with idd_blocklist_get (its storage is in the unstable tier). */
typedef struct idd_blocklist idd_blocklist;

/* Load and check the block list the catalog names for img (its checksum
 * must equal its name, its counts the catalog entry's). */
int idd_blocklist_open(const char *index_dir, const idd_image_info *img, idd_blocklist **out,
                       idd_error *err);
void idd_blocklist_free(idd_blocklist *bl);
/* The block list of image ID as the current catalog names it.  A list that
 * vanishes between reading the catalog and opening it (a concurrent scan
 * replaced the catalog and collected the list) is looked up again in the
 * new catalog, up to three times. */
int idd_blocklist_open_id(const char *index_dir, const char *id, idd_blocklist **out,
                          idd_error *err);
/* The digest of block b (< nblocks), NULL for a zero block (binary search). */
const idd_digest *idd_blocklist_get(const idd_blocklist *bl, uint64_t b);
/* The image's blocks, zero ones included, and their size. */
uint64_t idd_blocklist_nblocks(const idd_blocklist *bl);
uint32_t idd_blocklist_block_size(const idd_blocklist *bl);

/* Dense form for small images and tests: nblocks digests, zero blocks
 * all-zero.  Costs 32 bytes per block of virtual size: big images must use
 * idd_blocklist_open. */
int idd_blocklist_load(const char *index_dir, const idd_image_info *img,
                       idd_digest **digests, idd_error *err);

/* ---- scan -------------------------------------------------------------- */

typedef struct idd_scan_opts {
	const char *repo;
	const char *index_dir;   /* NULL: REPO/.imgdedup */
	uint32_t block_size;     /* 0: the index's, or the default for a new one */
	int jobs;                /* 0: online CPUs */
	bool no_wait;            /* lock held by another run: fail with IDD_EBUSY */
	/* shard_n > 0: index only the files of shard shard_k (1..shard_n), a
	 * stable partition by file id, into INDEX/shards/K-of-N/ (block lists in
	 * the shared blocks/); the catalog is left alone.  Shards may run at
	 * once, on different machines sharing the index directory. */
	uint32_t shard_k, shard_n;
	/* merge: write the catalog and the block table from the shards' results
	 * (and, for a shard that has none, the catalog's own images of it),
	 * reading no image; then remove the shard results */
	bool merge;
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
	bool committed; /* the index on disk reflects this run (the figures above are its) */
	uint64_t repaired; /* images whose block list was damaged, swapped or lost: read again */
} idd_scan_stats;

/* Returns IDD_OK, or IDD_ERR when the index could not be written or at least
 * one image failed (each reported through warn; the others are indexed). */
int idd_scan(const idd_scan_opts *opts, idd_scan_stats *stats, idd_error *err);

/* ---- publish: an index into an object store -------------------------- */

typedef struct idd_publish_opts {
	const char *repo;      /* the repository (a directory or s3://BUCKET/PREFIX) */
	const char *index_dir; /* its index; NULL: REPO/.imgdedup */
	const char *to;        /* s3://BUCKET/PREFIX to publish to; NULL: REPO itself. The
	                          index goes to TO/.imgdedup, where deploy and serve read it */
	bool keep_stale;       /* leave objects the index no longer has */
	bool no_wait;          /* index locked by another run: IDD_EBUSY */
	idd_progress_fn progress;
	idd_warn_fn warn;
	void *ctx;
} idd_publish_opts;

typedef struct idd_publish_stats {
	uint64_t files;          /* files in the index */
	uint64_t uploaded;       /* uploaded this run */
	uint64_t unchanged;      /* already in the store with the same bytes (ETag = MD5) */
	uint64_t deleted;        /* objects the index no longer has, removed */
	uint64_t bytes_uploaded;
} idd_publish_stats;

/* Upload the index (under its lock): every file but the catalog, then the
 * catalog, then delete what it no longer names.  Files the store already
 * holds are not sent again. */
int idd_publish(const idd_publish_opts *opts, idd_publish_stats *stats, idd_error *err);

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

/* ---- boot profiles, published into the index by content --------------- */

typedef struct idd_profile_publish_opts {
	const char *repo;      /* a local repository */
	const char *index_dir; /* NULL: REPO/.imgdedup */
	const char *file;      /* a profile serve --record wrote (publish only) */
	const char *image;     /* the image whose boot it records */
	bool no_wait;          /* index locked by another run: IDD_EBUSY */
} idd_profile_publish_opts;

/* Store what IMAGE's entries of FILE read (the digests recorded, or those
 * IMAGE's block map gives the blocks) as IMAGE's boot profile in the index,
 * where every node's serve finds it (docs/serve.md, "Boot profiles").
 * *digests receives its length. */
int idd_profile_publish(const idd_profile_publish_opts *o, uint64_t *digests, idd_error *err);
/* Remove IMAGE's published profile (IDD_ENOENT: it has none). */
int idd_profile_unpublish(const idd_profile_publish_opts *o, idd_error *err);

/* ---- pack: a compressed copy of the repository's distinct blocks ------- */

typedef struct idd_pack_opts {
	const char *repo;
	const char *index_dir;   /* NULL: REPO/.imgdedup */
	bool no_wait;            /* index locked by another run: IDD_EBUSY */
	int jobs;                /* compression threads; 0: online CPUs */
	int level;               /* zstd level of new frames, 1..19; 0: 9 */
	idd_progress_fn progress;
	idd_warn_fn warn;
	void *ctx;
} idd_pack_opts;

typedef struct idd_pack_stats {
	uint64_t blocks;      /* distinct blocks in the pack after the run */
	uint64_t pack_bytes;  /* its size on disk: data files, index, views */
	uint64_t raw_bytes;   /* the payload those blocks hold (blocks x block size) */
	uint64_t added;       /* blocks added this run */
	uint64_t removed;     /* blocks dropped (no image holds them any more) */
	uint64_t failed;      /* blocks that could not be read or did not match their digest */
	uint64_t views_written;
	uint64_t data_bytes_written;
	uint64_t index_bytes_written; /* the pack's index files written: runs (merges included),
	                                 frame tables, views, the manifest */
	uint64_t maps_read;   /* block maps read (those of the lists packed this run) */
	uint64_t lists_read;  /* block lists read (maps missing or stale, lists gone, the
	                         block table brought up to date) */
	uint64_t runs;        /* runs of the pack's digest index after the run */
	uint64_t runs_merged; /* merges of two runs this run */
	bool upgraded;        /* an index of an older imgdedup was converted */
	bool compacted;       /* the data files were rewritten (garbage above 25%, or a rebuild) */
	bool changed;         /* anything was written */
	bool committed;       /* the pack on disk reflects this run (the figures above are its) */
} idd_pack_stats;

/* Bring INDEX/pack up to date with the index: compress the blocks it does
 * not hold yet (read from the images, each verified against its digest),
 * drop blocks no image holds.  Locked like scan; a re-run over an unchanged
 * index writes nothing; a killed run leaves the previous pack usable.
 * Returns IDD_ERR (after committing the rest) when some blocks failed. */
int idd_pack_run(const idd_pack_opts *opts, idd_pack_stats *stats, idd_error *err);

/* What `info` shows about an image in the pack. */
typedef struct idd_pack_image_summary {
	bool has_pack;        /* the index has a pack */
	bool has_view;        /* ... with a view of this image's current block list */
	uint64_t blocks;      /* the image's distinct blocks in the pack */
	uint64_t distinct;    /* its distinct non-zero blocks */
	uint64_t frames;      /* frames holding them */
	uint64_t frame_bytes; /* compressed size of those frames */
} idd_pack_image_summary;
int idd_pack_image_summary_get(const char *index_dir, const idd_image_info *im,
                               idd_pack_image_summary *out, idd_error *err);

/* ---- similarity and map ----------------------------------------------- */

typedef enum idd_metric { IDD_METRIC_JACCARD = 0, IDD_METRIC_CONTAINMENT = 1 } idd_metric;

typedef struct idd_similarity_opts {
	const char *repo;
	const char *index_dir;  /* NULL: REPO/.imgdedup */
	int jobs;               /* 0: online CPUs */
	bool no_cache;          /* recompute even when the cached result is current */
	const char *tmp_dir;    /* spill files; NULL: the index directory */
	uint64_t mem_budget;    /* bytes for the keys being grouped in memory; 0: 512 MiB */
	size_t top_candidates;  /* top-K: candidates verified per image (0: max(2K, K + 16)) */
	uint32_t top_sample_rate; /* top-K: 1 in this many digests sampled (0: chosen by size) */
	idd_progress_fn progress;
	idd_warn_fn warn;
	void *ctx;
} idd_similarity_opts;

/* The result: counts from which both metrics follow exactly. */
typedef struct idd_similarity {
	size_t n;
	char **ids;            /* sorted, as in the catalog */
	uint64_t *nonzero;     /* per image: non-zero blocks, counted with multiplicity */
	uint64_t *distinct;    /* per image: distinct non-zero digests */
	/* n x n pairs (shared, contained), 32 or 64 bits each: read them with
	 * idd_similarity_shared() and idd_similarity_contained() */
	void *counts;
	bool counts_wide;
	bool from_cache;       /* reused from the index's similarity cache as it was */
	bool cache_updated;    /* the cache was brought up to date: rows of added (or changed)
	                          images computed, rows of removed ones dropped */
	size_t rows_computed;  /* images whose counts were computed from the block lists */
	size_t rows_dropped;   /* images of the cache no longer in the index */
	uint64_t signatures;   /* distinct image sets expanded into pairs (last full computation) */
	uint64_t records;      /* (digest, image) records processed (last full computation) */
} idd_similarity;

/* |U_a and U_b| (distinct non-zero digests in both; the diagonal: |U_a|). */
uint64_t idd_similarity_shared(const idd_similarity *s, size_t a, size_t b);
/* a's non-zero blocks whose content occurs in b (the diagonal: a's non-zero blocks). */
uint64_t idd_similarity_contained(const idd_similarity *s, size_t a, size_t b);

/* Compute (or reuse the cached) similarity of every image in the index. */
int idd_similarity_compute(const idd_similarity_opts *opts, idd_similarity **out, idd_error *err);
void idd_similarity_free(idd_similarity *s);
/* jaccard(a, b) or containment(row a, column b); the diagonal is 1. */
double idd_similarity_value(const idd_similarity *s, idd_metric m, size_t a, size_t b);
/* Average-linkage hierarchical clustering on 1 - similarity (containment is
 * symmetrised as the mean of both directions).  order[0..n) receives the
 * dendrogram's leaf order: similar images adjacent, families contiguous. */
int idd_similarity_cluster_order(const idd_similarity *s, idd_metric m, size_t *order, idd_error *err);
/* Each image's k best cache seeds, without the n x n matrix: candidates
 * from a consistent sample of the digests, then exact counts for those pairs
 * only (docs/similarity.md).  Every value reported is exact; an image's true
 * best seed can be missed (rarely: the benchmark measures the recall). */
typedef struct idd_seed {
	size_t image;          /* index into ids */
	double containment;    /* share of the image's non-zero blocks the seed holds */
	double jaccard;
	uint64_t shared;       /* distinct digests in common */
} idd_seed;

typedef struct idd_top_seeds {
	size_t n, k;
	char **ids;            /* sorted, as in the catalog */
	uint64_t *nonzero, *distinct;
	size_t *count;         /* per image: seeds found (k unless fewer other images) */
	idd_seed *seeds;       /* image a's seeds at a*k .. a*k+count[a], best first */
	uint64_t candidates;   /* pairs counted exactly */
	uint32_t sample_rate;  /* 1 in sample_rate digests sampled; 0: every pair counted */
} idd_top_seeds;

int idd_similarity_top_compute(const idd_similarity_opts *opts, size_t k, idd_top_seeds **out,
                               idd_error *err);
void idd_top_seeds_free(idd_top_seeds *t);

/* The up-to-k images a shares most with, best cache seeds first
 * (containment(a, b) descending, then jaccard, then id).  Returns how many. */
size_t idd_similarity_top(const idd_similarity *s, size_t a, size_t k, size_t *out);

typedef struct idd_map_opts {
	const char *repo;
	const char *index_dir;       /* NULL: REPO/.imgdedup */
	const char *const *images;   /* limit to these ids (NULL/0: every image) */
	size_t n_images;
	bool no_wait;                /* index locked by another run: IDD_EBUSY */
	idd_progress_fn progress;
	idd_warn_fn warn;
	void *ctx;
} idd_map_opts;

typedef struct idd_map_stats {
	uint64_t images;       /* images in the index */
	uint64_t written;      /* maps (re)built this run */
	uint64_t unchanged;    /* maps reused */
	uint64_t removed;      /* stale maps deleted */
	uint64_t map_bytes;    /* total size on disk of all block maps */
	uint64_t blocktable_entries, blocktable_bytes;
	bool blocktable_rebuilt;
	uint64_t repaired;     /* damaged, swapped or lost maps (and block table) rebuilt */
} idd_map_stats;

/* Write the block map of every (or each named) image whose block list
 * changed, delete maps of removed images, refresh the block table.  Locked
 * like scan; a re-run over an unchanged index writes nothing. */
int idd_map_run(const idd_map_opts *opts, idd_map_stats *stats, idd_error *err);

/* What `info` shows about one image's map. */
typedef struct idd_image_summary {
	uint64_t blocks, zero_blocks, distinct_blocks;
	uint64_t internal_duplicates; /* non-zero blocks repeating content seen earlier in the image */
	bool has_map;                 /* a current map exists */
	uint64_t map_bytes;
	bool has_blocktable;          /* the block table is current */
	uint64_t exclusive_blocks;    /* distinct digests no other image holds */
} idd_image_summary;
int idd_image_summary_get(const char *index_dir, const char *id, idd_image_summary *out,
                          idd_error *err);

typedef struct idd_similar {
	char *id;
	double containment;  /* share of the image's non-zero blocks this one holds */
	double jaccard;
	uint64_t shared;     /* distinct digests in common */
} idd_similar;
/* The k images ID shares most with (best cache seeds first), from the
 * similarity cache, computing and caching it when stale. */
int idd_image_top_similar(const char *index_dir, const char *id, size_t k, idd_similar **out,
                          size_t *n, idd_error *err);
void idd_similar_free(idd_similar *v, size_t n);

/* An SVG heatmap of the matrix in the given order (labels, colour scale,
 * values in cells when there is room).  Returns a malloc'd NUL-terminated
 * document; *len its length. */
char *idd_similarity_svg(const idd_similarity *s, idd_metric m, const size_t *order, size_t *len,
                         idd_error *err);


/* ---- deploy and cache ------------------------------------------------- */

typedef struct idd_deploy_stats {
	uint64_t bytes_total;      /* the image's size */
	uint64_t bytes_zero;       /* zero blocks: holes in OUT */
	uint64_t bytes_from_cache; /* written from local data: cache, seeds, OUT itself (resume, repeats) */
	uint64_t bytes_fetched;    /* block payload pulled from SOURCE (stored bytes: compressed if so) */
	uint64_t requests;         /* fetch requests to SOURCE, index files and retries included */
	uint64_t bytes_index;      /* index bytes read from SOURCE (entry or catalog, map, pack view) */
	uint64_t bytes_resumed;    /* part of bytes_from_cache: found valid in an interrupted OUT */
	uint64_t bytes_seed;       /* part of bytes_from_cache: read from --seed images */
	uint64_t bytes_reflinked;  /* part of bytes_from_cache: cloned, not copied */
	uint64_t cache_damaged;    /* cache blocks that failed verification (refetched) */
	uint64_t retries;
	uint64_t bytes_done;       /* progress: bytes of the image settled so far */
	uint64_t seeds_mapped;     /* seeds known through their block map (not hashed) */
	char out_path[4096];
	uint64_t bytes_from_peers; /* payload pulled from peers (--peer) */
} idd_deploy_stats;

typedef void (*idd_deploy_progress_fn)(void *ctx, const idd_deploy_stats *st);

/* What a node needs to reach a repository and hold its blocks: shared by
 * deploy (idd_deploy_opts.node) and serve (idd_serve_opts.node). */
typedef struct idd_node_opts {
	const char *source;    /* repository: a directory, http(s):// or s3:// */
	const char *index;     /* its index (dir or URL); NULL: SOURCE/.imgdedup */
	const char *cache_dir; /* the node cache */
	const char *const *peers; /* other nodes' caches over HTTP, asked before SOURCE */
	size_t n_peers;
	int connections;       /* requests in flight (deploy: in all; serve: per export); 0: 4 */
	long timeout_s;        /* remote transfer below 1 KiB/s this long fails (retried); 0: 30 */
	bool no_pack;          /* ignore SOURCE's pack */
	idd_warn_fn warn;      /* warnings; may be NULL */
	void *ctx;             /* passed to warn (and to deploy's progress) */
} idd_node_opts;

typedef struct idd_deploy_opts {
	idd_node_opts node;
	const char *image;     /* image id, relative to SOURCE */
	const char *out;       /* NULL: inside the cache dir (images/ID) */
	const char *const *seeds; /* read-only local raw images used as further sources */
	size_t n_seeds;
	bool force;            /* replace an existing OUT */
	idd_deploy_progress_fn progress;
	int jobs;              /* threads verifying local copies; 0: online CPUs */
} idd_deploy_opts;

/* Materialise IMAGE as a raw file.  On failure OUT is untouched (an
 * interrupted run leaves OUT.part, which the next run verifies and reuses;
 * a block failing its digest from the source removes it). */
int idd_deploy(const idd_deploy_opts *o, idd_deploy_stats *st, idd_error *err);

typedef struct idd_cache_image {
	char *path;         /* absolute */
	bool owned;         /* inside the cache dir (gc deletes it) or registered from elsewhere */
	bool present;       /* the file still exists */
	uint32_t block_size;
	uint64_t size;      /* image size */
	uint64_t disk_bytes;/* allocated on disk now */
	uint64_t blocks;    /* distinct non-zero blocks it holds (indexed, or journaled) */
	int64_t last_used;  /* unix ns */
	bool partial;       /* fetched in part by serve: present_blocks of data_blocks */
	uint64_t present_blocks; /* partial: blocks of the image whose content it holds,
	                            repeats included (a repeat is stored once) */
	uint64_t data_blocks;    /* partial: the image's non-zero blocks, repeats included */
	bool in_use;        /* an export or a deploy has it open (gc leaves it) */
} idd_cache_image;

/* The cache's images (complete and partial), least recently used first.  A
 * damaged index is rebuilt from the images present, with a warning. */
int idd_cache_list(const char *dir, idd_cache_image **out, size_t *n, idd_warn_fn warn, void *ctx,
                   idd_error *err);
void idd_cache_list_free(idd_cache_image *v, size_t n);

typedef struct idd_cache_gc_stats {
	uint64_t images_before, images_removed;
	uint64_t bytes_before, bytes_after; /* allocated bytes of the cache's images */
} idd_cache_gc_stats;

/* Drop least recently used images (partial ones included) until they take
 * at most max_size bytes on disk; vanished images leave the index too.
 * Owned files are deleted, images registered from elsewhere are only
 * forgotten; an image in use (open by serve or deploy) is never removed. */
int idd_cache_gc(const char *dir, uint64_t max_size, idd_cache_gc_stats *st, idd_warn_fn warn,
                 void *ctx, idd_error *err);
/* Which images go first (docs/deploy.md, "Eviction"): by value, the images
 * whose removal loses the least per byte freed (the contents no other kept
 * image holds, each worth the reuse likelihood of every cached image
 * holding it, falling with how many images were read more recently); or
 * the least recently read.  idd_cache_gc uses IDD_GC_VALUE. */
typedef enum idd_gc_policy { IDD_GC_VALUE, IDD_GC_LRU } idd_gc_policy;
int idd_cache_gc_policy(const char *dir, uint64_t max_size, idd_gc_policy policy,
                        idd_cache_gc_stats *st, idd_warn_fn warn, void *ctx, idd_error *err);

typedef struct idd_estimate_opts {
	/* as deploy's (the cache absent: an empty cache, never created; no_pack:
	 * fetches priced from the images, as deploy --no-pack does; peers unused) */
	idd_node_opts node;
	const char *const *images; /* image ids */
	size_t n_images;
	uint64_t bandwidth;       /* bytes per second for `seconds`; 0: no time estimate */
} idd_estimate_opts;

typedef struct idd_image_estimate {
	const char *image;           /* the id asked for (the caller's string) */
	uint64_t bytes_total;        /* the image's size */
	uint64_t bytes_zero;         /* of which zero blocks */
	uint64_t bytes_missing;      /* what a deploy would fetch from SOURCE now, as transferred
	                                (compressed pack frames when SOURCE has a pack) */
	bool from_pack;              /* SOURCE's pack would serve the fetches */
	bool has_boot;               /* a boot profile applies: boot_bytes_missing is known */
	uint64_t boot_bytes_missing; /* what a boot would fetch */
	bool has_seconds;            /* bandwidth given: seconds is known */
	double seconds;              /* bytes_missing at the bandwidth given */
} idd_image_estimate;

/* What this node still lacks of each image, from index data only (each
 * image's entry, map and pack view: no block is fetched, nothing in the
 * cache is written).  bytes_missing is what `deploy` of the image into this
 * cache would report as bytes_fetched (without --peer and --seed, and
 * counting an interrupted OUT.part as absent), computed by the deploy's own
 * plan.  *out: n_images estimates in the order asked, freed with
 * idd_cache_estimate_free. */
int idd_cache_estimate(const idd_estimate_opts *o, idd_image_estimate **out, idd_error *err);
void idd_cache_estimate_free(idd_image_estimate *v);
/* The estimates as `cache estimate --json` prints them (one line, with its
 * newline): {"images":[{"image", "bytes_missing", "boot_bytes_missing",
 * "seconds", "bytes_total", "bytes_zero", "from_pack"}...]}.  *text is
 * NUL-terminated, *len excludes the NUL; free() it. */
int idd_cache_estimate_json(const idd_image_estimate *v, size_t n, char **text, size_t *len,
                            idd_error *err);

/* ---- serve: on-demand access to images over NBD ----
 *
 * A server holds the node cache and the repository connection; each export
 * is one image, read block by block: zero blocks answer as zeros, a block
 * whose content the node cache holds under any image is read from there and
 * verified, anything else is fetched (from peers, the pack or the image in
 * SOURCE), verified, written into the cache and answered.  Every function
 * is safe to call from several threads at once. */
typedef struct idd_serve_opts {
	idd_node_opts node;
	bool fill;                 /* fetch the rest of each image in the background */
	const char *record;        /* write the order of first reads here (a boot profile) */
	const char *prefetch;      /* a recorded profile: fetch those blocks ahead of the guest */
	uint64_t readahead;        /* most read ahead of a sequential stream; 0: 2 MiB (max 4 MiB) */
	bool readahead_off;        /* no readahead at all (readahead is then ignored) */
	long read_timeout_s;       /* a client read fails (EIO) after this long; 0: 60 */
	uint64_t read_memory_budget; /* bytes of client reads being filled at once (the
	                              * NBD server's buffers); more wait; 0: 128 MiB */
	/* serve --all: the catalog's ids are read at open (a missing or
	 * unreadable catalog fails there) and looked up by
	 * idd_server_list_images / idd_server_find_image */
	bool all;
	/* --all: the catalog is checked for a change at most this often;
	 * 0: 30 s; IDD_REFRESH_ALWAYS: at every lookup */
	long refresh_s;
	uint64_t cache_max;        /* keep the node cache under this many bytes (cache gc's
	                            * value policy, every second); 0: no limit */
	/* told what start-up is doing (reading the catalog, a block map, ...)
	 * as each step begins, for a progress display; may be NULL */
	idd_warn_fn progress;
	bool no_profile;           /* without prefetch: do not prefetch the boot profile SOURCE
	                            * publishes for an image (or a similar image's) */
} idd_serve_opts;

typedef struct idd_serve_stats {
	uint64_t reads;            /* client read requests */
	uint64_t bytes_read;       /* bytes the clients read */
	uint64_t bytes_zero;       /* of those, zero blocks */
	uint64_t bytes_from_cache; /* answered from local data (any cached image) */
	uint64_t bytes_fetched;    /* payload pulled from SOURCE (as transferred) */
	uint64_t bytes_from_peers; /* payload pulled from peers */
	uint64_t requests;         /* fetch requests made */
	uint64_t blocks_filled;    /* blocks written into the node cache */
	uint64_t cache_damaged;    /* cached blocks that failed verification (refetched) */
	uint64_t read_errors;      /* reads answered with an I/O error */
	uint64_t exports_complete; /* exports whose image is now complete in the cache */
	uint64_t cache_write_errors; /* verified blocks served but not cached (a full disk, ...) */
	uint64_t cache_evicted;    /* cache files removed to stay under cache_max */
} idd_serve_stats;

/* ---- records: a field table per statistics struct ----
 *
 * Each statistics struct a program passes between processes has a table:
 * field name (its JSON key), type, offset.  The JSON writer and reader
 * below go by the table, so a new counter is one line in it. */
typedef enum idd_field_type { IDD_FIELD_U64 = 1 } idd_field_type;
typedef struct idd_field {
	const char *name;    /* the JSON key */
	idd_field_type type;
	size_t offset;       /* of the member in its struct */
} idd_field;
typedef struct idd_record_type {
	const idd_field *fields;
	size_t n_fields;
} idd_record_type;

/* idd_serve_stats, in the order its JSON object lists the fields. */
extern const idd_record_type idd_serve_stats_record;

/* A field's value in rec (a struct of the table's type). */
uint64_t idd_field_u64(const idd_field *f, const void *rec);
/* rec as one flat JSON object ({"reads":1,"bytes_read":4096,...}, the
 * table's order) into out, NUL-terminated, cut at len like snprintf;
 * returns the length of the whole object. */
size_t idd_record_json(const idd_record_type *t, const void *rec, char *out, size_t len);
/* Fill rec from a flat JSON object that has every field of the table (more
 * keys are allowed).  IDD_ECORRUPT names the first field missing or not a
 * number. */
int idd_record_parse(const idd_record_type *t, const char *text, void *rec, idd_error *err);

typedef struct idd_server idd_server;
typedef struct idd_export idd_export;

int idd_server_open(const idd_serve_opts *o, idd_server **out, idd_error *err);
/* Start background work (--fill, --prefetch, durability flushes).  Call
 * once the process will not fork any more (nbdkit: after_fork). */
int idd_server_start(idd_server *s, idd_error *err);
/* Stop at once: reads in progress and later ones fail (IDD_ECANCELED),
 * fetches in flight end within 100 ms, background work ends.  Thread-safe;
 * for a server shutting down (idd_server_close still has to follow). */
void idd_server_stop(idd_server *s);
/* Stops background work, makes what was fetched durable, releases the cache. */
void idd_server_close(idd_server *s);
void idd_server_stats(idd_server *s, idd_serve_stats *st);
/* What idd_server_close saves, while reads go on: what was fetched made
 * durable, the --record profile so far written.  For a process about to end
 * without closing the server (its clients' requests left unanswered). */
int idd_server_checkpoint(idd_server *s, idd_error *err);

#define IDD_REFRESH_ALWAYS (-1L)

/* serve --all.  Each image id of SOURCE's catalog, in id order, until fn
 * returns a positive value (returned; a negative IDD_* code is a failure).  The catalog is re-read first when it
 * changed and the last check is refresh_s old: a failed re-read is a
 * warning, and the catalog read before answers. */
typedef int (*idd_id_fn)(void *ctx, const char *id);
int idd_server_list_images(idd_server *s, idd_id_fn fn, void *ctx, idd_error *err);
/* serve --all: IDD_OK when id is an image of the catalog (re-read as
 * above), else IDD_ENOENT, whatever id looks like. */
int idd_server_find_image(idd_server *s, const char *id, idd_error *err);

/* Open image ID (relative to SOURCE) for reading.  Opening the same ID
 * again returns the same export; exports live until the server closes, so
 * idd_export_close only says the caller is done with it. */
int idd_export_open(idd_server *s, const char *id, idd_export **out, idd_error *err);
void idd_export_close(idd_export *e);
uint64_t idd_export_size(const idd_export *e);
uint32_t idd_export_block_size(const idd_export *e);
/* Read [off, off+len): every byte verified.  A block no source can supply
 * verified fails the read (IDD_ECORRUPT, IDD_ENET, ...): never wrong data. */
int idd_export_read(idd_export *e, void *buf, uint64_t len, uint64_t off, idd_error *err);
/* Report [off, off+len) as extents: zero=true for zero blocks (holes). */
typedef int (*idd_extent_fn)(void *ctx, uint64_t off, uint64_t len, bool zero);
int idd_export_extents(idd_export *e, uint64_t off, uint64_t len, idd_extent_fn fn, void *ctx,
                       idd_error *err);
/* Make [off, off+len) local without returning it (NBD_CMD_CACHE). */
int idd_export_prefetch(idd_export *e, uint64_t off, uint64_t len, idd_error *err);

/* ---- serve metrics: live counters, Prometheus text (docs/serve.md) ----
 *
 * The same counters as idd_server_stats, with more detail: per export,
 * latency histograms and gauges.  A snapshot is taken with
 * idd_server_metrics, turned into Prometheus text exposition format
 * (version 0.0.4) by idd_metrics_render, and served over HTTP at /metrics
 * by a metrics server (idd_metrics_listen). */
#define IDD_LATENCY_BUCKETS 16 /* finite upper bounds, 0.5 ms to 60 s (metrics.c) */
typedef struct idd_latency {
	uint64_t bucket[IDD_LATENCY_BUCKETS + 1]; /* observations per bucket, not cumulative;
	                                             the last: above every bound */
	uint64_t sum_ns;
} idd_latency;

typedef struct idd_export_metrics {
	char *id;
	uint64_t reads, read_errors, bytes_read, bytes_zero, bytes_from_cache;
	uint64_t bytes_from_pack, bytes_from_repository; /* payload fetched, as transferred */
	uint64_t requests;             /* fetch requests to the pack and the image */
	uint64_t blocks_filled, cache_write_errors;
	uint64_t fetch_errors;         /* blocks a fetch could not deliver */
	uint64_t verify_failures_pack, verify_failures_repository;
	uint64_t fetches_in_flight;    /* blocks being fetched now */
	bool complete;                 /* the image is complete in the cache */
	idd_latency read_latency;      /* client reads */
	idd_latency fetch_latency;     /* fetches: one batch of blocks through peers, pack, image */
} idd_export_metrics;

typedef struct idd_serve_metrics {
	idd_serve_stats total;         /* what idd_server_stats says at the same moment */
	uint64_t bytes_from_pack, bytes_from_repository; /* total.bytes_fetched, by origin */
	uint64_t fetch_errors, fetches_in_flight;
	uint64_t verify_failures_cache, verify_failures_peer, verify_failures_pack,
	    verify_failures_repository;
	uint64_t cache_bytes;          /* allocated on disk by the node cache's images */
	uint64_t partial_images;       /* partial images in the node cache */
	idd_latency read_latency, fetch_latency; /* every export's */
	idd_export_metrics *exports;   /* in the order they were opened */
	size_t n_exports;
} idd_serve_metrics;

int idd_server_metrics(idd_server *s, idd_serve_metrics *m, idd_error *err);
/* idd_cache_estimate for this server's SOURCE, index and cache (its
 * pack choice, connections and timeout too): what the node lacks of any
 * image of SOURCE, exported or not.  Thread-safe: it reads only the
 * server's options and opens its own view of the index and the cache. */
int idd_server_estimate(idd_server *s, const char *const *images, size_t n, uint64_t bandwidth,
                        idd_image_estimate **out, idd_error *err);
void idd_serve_metrics_free(idd_serve_metrics *m);
/* m as Prometheus text exposition format 0.0.4 into *text (malloc'd,
 * NUL-terminated, *len bytes).  Depends on m only. */
int idd_metrics_render(const idd_serve_metrics *m, char **text, size_t *len, idd_error *err);

typedef struct idd_metrics_server idd_metrics_server;
/* Listen on ADDR:PORT (or PORT, or :PORT: the loopback address; [V6]:PORT)
 * for HTTP GET /metrics, answered with s's metrics.  Binds now, so that an
 * address in use fails here; answers once started. */
int idd_metrics_listen(const char *addr_port, idd_server *s, idd_metrics_server **out,
                       idd_error *err);
/* Start answering (a thread: call once the process will not fork any more). */
int idd_metrics_start(idd_metrics_server *m, idd_error *err);
/* Stop answering, close the socket (before s is closed). */
void idd_metrics_close(idd_metrics_server *m);

#ifdef __cplusplus
}
#endif
#endif

/* ==== unstable tier: IDD_STATIC_LINKING_ONLY ==========================
 *
 * Internal layouts, for the front ends, the nbdkit plugin and the tests
 * built with this very library.  Nothing here is kept compatible. */
#if defined(IDD_STATIC_LINKING_ONLY) && !defined(IMGDEDUP_H_STATIC_LINKING_ONLY)
#define IMGDEDUP_H_STATIC_LINKING_ONLY

#ifdef __cplusplus
extern "C" {
#endif

/* The per-block digests of one image, held sparsely: only non-zero blocks
 * cost memory (32 bytes each, plus one run per stretch of consecutive
 * non-zero blocks), so a thin 4 TiB image costs what its data costs.  Runs
 * are in block order, each holds count >= 1 non-zero blocks, and two runs
 * never touch (a zero block lies between them): every block outside the
 * runs is a zero block. */
typedef struct idd_block_run {
	uint64_t block; /* first block of the run */
	uint64_t count; /* non-zero blocks in the run */
	uint64_t first; /* digests[first .. first + count) are theirs */
} idd_block_run;

struct idd_blocklist {
	uint32_t block_size;
	uint64_t nblocks;       /* all blocks of the image, zero ones included */
	uint64_t ndata;         /* non-zero blocks: digests held */
	idd_digest *digests;    /* ndata digests in block order, none all-zero */
	idd_block_run *runs;    /* nruns runs in block order */
	size_t nruns;
	/* internal: storage and growth */
	void *storage;
	size_t digests_cap, runs_cap;
	bool borrowed;          /* digests live in a caller's buffer (idd_blocklist_open_reuse) */
};

/* Index of the first run ending after block b (nruns when none). */
size_t idd_blocklist_run_after(const idd_blocklist *bl, uint64_t b);

/* ---- output files (-o PATH) ---------------------------------------------
 *
 * A regular file (or a new name) is written through a temporary file created
 * exclusively in the target's directory, then fsynced and renamed into
 * place: PATH shows the old content or the complete new one, never a part.
 * A symbolic link at PATH is written through: its target is replaced, the
 * link stays.  A dangling link, a directory, a block device or a socket is
 * refused.  A character device or a FIFO (/dev/null, /dev/stdout, a pipe)
 * is written directly: nothing is renamed over it.  "-" is standard output.
 * Every write is checked: the first error is kept and reported by commit. */
typedef struct idd_outfile {
	FILE *f;         /* write here */
	char *name;      /* PATH as given, for messages ("stdout" for "-") */
	char *target;    /* the regular file replaced on commit (links resolved), or NULL */
	char *tmp;       /* the temporary beside target, or NULL when writing directly */
	int fd;          /* the descriptor under f (-1 for stdout) */
	int write_errno; /* first write error, 0 if none */
} idd_outfile;

int idd_outfile_open(idd_outfile *o, const char *path, idd_error *err);
/* Flush, check every write, fsync and rename into place (direct outputs:
 * flush and close).  On failure nothing replaces the target and the
 * temporary is removed; the message names PATH and the reason. */
int idd_outfile_commit(idd_outfile *o, idd_error *err);
/* Give up: close and remove the temporary (the target is untouched). */
void idd_outfile_abort(idd_outfile *o);

#ifdef __cplusplus
}
#endif
#endif /* IDD_STATIC_LINKING_ONLY */
