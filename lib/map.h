/* map.h - block maps: every block of an image -> its content digest.
 * Internal to libimgdedup; the on-disk layout is in docs/formats.md.
 * Producer: map.c (the `map` command).  Consumers: deploy.c, info, similarity. */
#ifndef IDD_MAP_H
#define IDD_MAP_H

#include "internal.h"

typedef struct idd_map {
	uint32_t block_size;
	uint64_t image_size;   /* virtual size in bytes */
	uint64_t nblocks;      /* ceil(image_size / block_size) */
	uint64_t ndistinct;    /* distinct non-zero digests */
	idd_digest *digests;   /* ndistinct entries, in order of first occurrence */
	uint32_t *refs;        /* nblocks entries: 0 = zero block, k = digests[k - 1] */
} idd_map;

/* Build from a scan block list (zero blocks have the zero digest). */
int idd_map_build(const idd_digest *blocks, uint64_t nblocks, uint32_t block_size,
                  uint64_t image_size, idd_map **out, idd_error *err);
void idd_map_free(idd_map *m);

/* Where the map of image ID lives, relative to an index directory (also
 * used to build URLs): "maps/<hex SHA-256 of ID>.map". */
char *idd_map_relpath(const char *id, idd_error *err);

/* Encode into a complete index file (container included) / parse one.
 * Parsing checks everything: a map naming more blocks than its size allows,
 * a reference past the digest table, a newer version, truncation. */
int idd_map_encode(const idd_map *m, void **file, size_t *len, idd_error *err);
int idd_map_parse(const char *name, const void *file, size_t len, idd_map **out, idd_error *err);
int idd_map_save(const char *index_dir, const char *id, const idd_map *m, uint64_t *bytes_written,
                 idd_error *err);
int idd_map_load(const char *index_dir, const char *id, idd_map **out, idd_error *err);

#endif
