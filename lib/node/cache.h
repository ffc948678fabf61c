/* cache.h - the node cache: images deployed before, and an index from block
 * digest to (image file, offset).  Internal; layout in docs/deploy.md. */
#ifndef IDD_CACHE_H
#define IDD_CACHE_H

#include "base/util.h"
#include "base/error.h"

#include "base/digest.h"
#include "index/map.h"
#include "node/blocksource.h"

#include <pthread.h>
#include <stdatomic.h>

#define IDD_CACHE_INDEX "index"
#define IDD_CACHE_IMAGES "images"

typedef struct idd_cache_entry {
	char *path;          /* as stored: relative to the cache dir when owned, else absolute */
	char *abs;           /* absolute path */
	bool owned;          /* the file lives in the cache dir: gc deletes it */
	uint32_t block_size;
	uint64_t size;       /* image size when registered */
	int64_t last_used;   /* unix ns */
	uint64_t n;          /* distinct non-zero blocks listed */
	idd_digest *digests; /* n digests ... */
	uint64_t *blocks;    /* ... and the block index of each one's first occurrence */
	int fd;              /* open for reading (and share-locked: gc leaves it alone), -1 when
	                        not (yet) usable */
	atomic_bool used;    /* a block was read from it this run */
	atomic_bool damaged; /* a block failed verification: not used again this run */
	bool partial;        /* a partial image written by serve (not in the index file) */
	bool rewritable;     /* this process writes verified blocks back into the file (a
	                        partial image, or a complete image it repairs): a block
	                        failing verification there is refetched and written back,
	                        the rest of the file stays in use */
	atomic_bool warned;  /* partial: damage reported once */
	char *journal;       /* partial: its presence journal, and how far it was read */
	uint64_t journal_off;
} idd_cache_entry;

typedef struct idd_cache {
	char *dir;
	size_t count;
	idd_cache_entry *e;
	idd_digest_set lookup; /* aux: entry << 40 | block */
	bool have_lookup;
	pthread_rwlock_t lock; /* guards e/count growth and lookup: readers share it */
	uint32_t lookup_bs;
	idd_warn_fn warn;
	void *ctx;
	int64_t index_mtime;  /* of the index file when last read (refresh reloads on change) */
} idd_cache;

/* Open (creating) the cache dir and read its index.  A damaged index is
 * reported through warn and the cache starts empty: never an error. */
int idd_cache_open(const char *dir, idd_warn_fn warn, void *ctx, idd_cache **out, idd_error *err);
void idd_cache_close(idd_cache *c);
/* Open the entries of block size bs and index their digests.  Entries that
 * cannot be opened are skipped with a warning. */
int idd_cache_prepare(idd_cache *c, uint32_t bs, idd_error *err);
/* Exact lookup: entry index and block index, false when absent. */
bool idd_cache_find(idd_cache *c, const idd_digest *d, size_t *entry, uint64_t *block);
/* Fill the requests whose content the cache holds, verified: runs of
 * consecutive blocks of one file are read with one pread.  Each request
 * ends IDD_OK, IDD_ENOENT (not cached) or IDD_ECORRUPT (the file changed
 * behind the cache's back: the file is not used again by this process and
 * a warning names it once).  *bytes_read counts what was read.  Safe from
 * several threads. */
int idd_cache_read_blocks(idd_cache *c, idd_block_req *reqs, size_t n, uint64_t *bytes_read,
                          idd_error *err);
/* Blocks read from, and damaged entries found, this run. */
uint64_t idd_cache_damaged_count(idd_cache *c);
/* What the cache's images take on disk now (allocated bytes; the index
 * files not included), and how many of them are partial (serve's). */
void idd_cache_usage(idd_cache *c, uint64_t *disk_bytes, uint64_t *partial_images);
/* Pick up what other processes added since: new records of partial images,
 * new partial images, images a deploy registered.  Safe from several
 * threads; cheap when nothing changed. */
int idd_cache_refresh(idd_cache *c, idd_error *err);
/* Make a block known to the cache (serve fetched it into a partial image):
 * from now on its content is read there.  entry: from
 * idd_cache_partial_entry. */
int idd_cache_add_block(idd_cache *c, size_t entry, const idd_digest *d, uint64_t block,
                        idd_error *err);
/* The entry of the partial image whose data file is data_path (added when
 * absent). */
int idd_cache_partial_entry(idd_cache *c, const char *data_path, const char *journal_path,
                            uint64_t size, size_t *entry, idd_error *err);
/* This process repairs the complete image at path (absolute) in place: a
 * block of it failing verification costs that block only. */
void idd_cache_set_rewritable(idd_cache *c, const char *path);
/* The file at path (absolute) was just checked to hold exactly m's image:
 * every digest of m is read there (at its first occurrence) from now on. */
int idd_cache_adopt(idd_cache *c, const char *path, const idd_map *m, idd_error *err);
/* Register an image (path absolute) with its map; entries using the same path
 * are replaced; entries used this run get last_used = now.  Re-reads the
 * index under the lock so concurrent deploys do not lose each other's work. */
int idd_cache_register(idd_cache *c, const char *path, const idd_map *m, idd_error *err);
/* Does the entry register exactly m's image (sizes, every digest at its
 * first occurrence)? */
bool idd_cache_entry_holds(const idd_cache_entry *e, const idd_map *m);

/* ---- names (cache_name.c) ---- */
/* Where deploy writes IMAGE when no -o is given, and serve keeps it: DIR/
 * images/NAME, NAME the id escaped ('/' -> %2F, '%' -> %25, a leading '.'
 * -> %2E), with "%.raw" appended unless the id ends in .raw or .img; an id
 * too long for that is named by its start and its SHA-256. */
char *idd_cache_default_out(const char *dir, const char *id, idd_error *err);
/* The name older versions used (".raw" appended, no leading-dot escape):
 * "X" and "X.raw" shared one. */
char *idd_cache_old_out(const char *dir, const char *id, idd_error *err);
struct idd_remote_index;
/* An image cached under its old name moves to its name now, index entry
 * included, when the cache index registers that file with exactly its
 * map (m); and a file under id's name that is provably the image of the id
 * that used to share that name (id without ".raw") moves to that id's name.
 * Anything less certain stays where it is (its blocks are still read and
 * verified like any cache file). */
int idd_cache_migrate_name(const char *cache_dir, struct idd_remote_index *ri, const char *id,
                           const idd_map *m, idd_warn_fn warn, void *ctx, idd_error *err);

/* Shared by cache.c and cache_gc.c. */
void idd_cache_entry_free(idd_cache_entry *e);
int idd_cache_save_index(idd_cache *c, idd_error *err);
/* Open the cache with its lock held (*lockfd, released by idd_unlock). */
int idd_cache_open_locked(const char *dir, idd_warn_fn warn, void *ctx, idd_cache **out, int *lockfd,
                          idd_error *err);

/* Index (de)serialisation, exposed for tests. */
int idd_cache_index_parse(const char *name, const void *payload, size_t len, idd_cache *c,
                          idd_error *err);

#endif
