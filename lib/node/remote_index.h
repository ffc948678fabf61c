/* remote_index.h - the index of a repository as a node sees it: the
 * catalog and block maps read from SOURCE (a directory, a URL), checked
 * against each other before anything trusts them. */
#ifndef IDD_NODE_REMOTE_INDEX_H
#define IDD_NODE_REMOTE_INDEX_H

#include "base/util.h"
#include "base/error.h"
#include "index/map.h"
#include "base/fetch.h"

/* Largest index file a node accepts from a source. */
#define IDD_MAX_REMOTE_INDEX_FILE ((size_t)1 << 32)

typedef struct idd_remote_index {
	idd_source *src;     /* the repository (images) */
	idd_source *isrc;    /* where its index lives: src itself unless --index */
	char *prefix;        /* path of the index inside isrc: "" or ".imgdedup/" */
	idd_catalog *cat;
	uint32_t block_size;
	uint64_t bytes;      /* index bytes read (catalog, maps) */
} idd_remote_index;

/* Open SOURCE (and INDEX when given, else SOURCE/.imgdedup) and load the
 * catalog.  Threads: the sources inside are safe to share (fetch.h). */
int idd_remote_index_open(const char *source, const char *index, const idd_fetch_opts *fo,
                          idd_remote_index **out, idd_error *err);
void idd_remote_index_close(idd_remote_index *ri);
/* The catalog entry of image ID: refuses ids and file names that are not
 * relative paths inside the source. */
int idd_remote_index_image(idd_remote_index *ri, const char *id, const idd_image_info **out,
                           idd_error *err);
/* Load and check the block map of catalog image in: the map must agree
 * with the catalog (block size, image size, block count, the block list it
 * was built from) and every reference must fall inside its digest table. */
int idd_remote_index_map(idd_remote_index *ri, const idd_image_info *in, idd_map **out,
                         idd_error *err);
/* Requests and retries of both sources. */
void idd_remote_index_fetch_stats(const idd_remote_index *ri, idd_fetch_stats *st);

#endif
