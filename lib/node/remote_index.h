/* remote_index.h - the index of a repository as a node sees it: the
 * catalog records (per-image entries, or the whole catalog of an older
 * index) and block maps read from SOURCE (a directory, a URL, an object
 * store), checked against each other before anything trusts them. */
#ifndef IDD_NODE_REMOTE_INDEX_H
#define IDD_NODE_REMOTE_INDEX_H

#include "base/util.h"
#include "base/error.h"
#include "index/map.h"
#include "index/profiles.h"
#include "base/fetch.h"

#include <pthread.h>

/* Largest index file a node accepts from a source. */
#define IDD_MAX_REMOTE_INDEX_FILE ((size_t)1 << 32)

/* Which index layout the source has: per-image entries (entries/), or
 * only the whole catalog (an index written before entries existed). */
enum idd_remote_layout { IDD_LAYOUT_UNKNOWN, IDD_LAYOUT_ENTRIES, IDD_LAYOUT_CATALOG };

typedef struct idd_remote_index {
	idd_source *src;     /* the repository (images) */
	idd_source *isrc;    /* where its index lives: src itself unless --index */
	char *prefix;        /* path of the index inside isrc: "" or ".imgdedup/" */
	pthread_mutex_t mu;  /* guards what follows */
	enum idd_remote_layout layout;
	idd_catalog *cat;    /* the whole catalog, fetched only when needed */
	idd_image_info **images; /* entries fetched, each kept until close */
	size_t nimages;
	uint32_t block_size; /* 0 until the first image is looked up */
	uint64_t bytes;      /* index bytes read (entries, catalog, maps) */
} idd_remote_index;

/* Open SOURCE (and INDEX when given, else SOURCE/.imgdedup).  Nothing is
 * fetched yet.  Threads: the sources inside are safe to share (fetch.h),
 * and so are the functions below. */
int idd_remote_index_open(const char *source, const char *index, const idd_fetch_opts *fo,
                          idd_remote_index **out, idd_error *err);
void idd_remote_index_close(idd_remote_index *ri);
/* The catalog record of image ID, valid until close: its entry
 * (entries/<hex SHA-256 of ID>, one small request) or, when the index has
 * no entries (entries/index absent too), the catalog, fetched once.
 * Refuses ids and file names that are not relative paths inside the
 * source, and an entry whose block size differs from the images' before.
 * IDD_ENOENT: no such image. */
int idd_remote_index_image(idd_remote_index *ri, const char *id, const idd_image_info **out,
                           idd_error *err);
/* The whole catalog (fetched once): for what needs every image (seeds
 * matched by name).  Valid until close. */
int idd_remote_index_catalog(idd_remote_index *ri, const idd_catalog **out, idd_error *err);
/* The repository's block size once an image was looked up, else 0. */
uint32_t idd_remote_index_block_size(idd_remote_index *ri);
/* Index bytes fetched so far. */
uint64_t idd_remote_index_bytes(idd_remote_index *ri);
/* Load and check the block map of catalog image in: the map must agree
 * with the catalog (block size, image size, block count, the block list it
 * was built from) and every reference must fall inside its digest table. */
int idd_remote_index_map(idd_remote_index *ri, const idd_image_info *in, idd_map **out,
                         idd_error *err);
/* The boot profiles the index holds (profiles/index): IDD_ENOENT when
 * none was published. */
int idd_remote_index_profiles(idd_remote_index *ri, idd_profiles_index *out, idd_error *err);
/* Image id's published boot profile: IDD_ENOENT when it has none. */
int idd_remote_index_profile(idd_remote_index *ri, const char *id, idd_boot_profile *out,
                             idd_error *err);
/* Requests and retries of both sources. */
void idd_remote_index_fetch_stats(const idd_remote_index *ri, idd_fetch_stats *st);

#endif
