/* map.h - block maps: every block of an image -> its content digest.
 * Internal to libimgdedup; the on-disk layout is in docs/formats.md.
 * Producer: map.c (the `map` command).  Consumers: deploy.c, info, similarity. */
#ifndef IDD_MAP_H
#define IDD_MAP_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"



/* The map in memory is a list of runs, so its cost grows with the number
 * of distinct stretches of the image, never with its virtual size: a run of
 * zero blocks, one digest repeated, or consecutive entries of the digest
 * table.  A block's reference is 0 for a zero block, k for digests[k - 1]. */
enum idd_map_run_kind {
	IDD_RUN_ZERO, /* zero blocks (ref 0) */
	IDD_RUN_SEQ,  /* refs ref, ref + 1, ..., ref + count - 1 */
	IDD_RUN_SAME  /* ref repeated count times */
};
typedef struct idd_map_span {
	uint64_t block, count;
	uint32_t ref;
	uint32_t kind;
} idd_map_span;

typedef struct idd_map {
	uint32_t block_size;
	uint64_t image_size;   /* virtual size in bytes */
	uint64_t nblocks;      /* ceil(image_size / block_size) */
	uint64_t ndistinct;    /* distinct non-zero digests */
	idd_digest *digests;   /* ndistinct entries, in order of first occurrence */
	idd_map_span *runs;     /* nruns stretches covering blocks 0..nblocks in order */
	size_t nruns;
	/* What the map was built from.  Both are optional for idd_map_encode
	 * (zero key / NULL id when unknown). */
	idd_digest list_key;   /* catalog list_key of the block list mapped */
	char *id;              /* image id (owned; may be NULL) */
} idd_map;

/* The reference of block b (< nblocks): 0 for a zero block, k for digests[k - 1]. */
uint32_t idd_map_ref(const idd_map *m, uint64_t b);
/* Index of the run holding block b (< nblocks), by binary search. */
size_t idd_map_span_index(const idd_map *m, uint64_t b);
/* The reference of block b inside run r (r holds b). */
static inline uint32_t idd_map_span_ref(const idd_map_span *r, uint64_t b)
{
	return r->kind == IDD_RUN_SEQ ? r->ref + (uint32_t)(b - r->block) : r->ref;
}
/* Non-zero blocks of the map (counted with repeats). */
uint64_t idd_map_nonzero_blocks(const idd_map *m);

/* SHA-256 of everything the map says (sizes, digest table, runs): two maps
 * with the same key describe the same image content. */
int idd_map_content_key(const idd_map *m, idd_digest *out, idd_error *err);

/* Build from a dense array of digests (zero blocks have the zero digest). */
int idd_map_build(const idd_digest *blocks, uint64_t nblocks, uint32_t block_size,
                  uint64_t image_size, idd_map **out, idd_error *err);
/* Build from a sparse block list: a run of zero blocks costs one map run,
 * whatever its length (idd_map_build would need 32 bytes per block). */
int idd_map_build_list(const idd_blocklist *bl, uint64_t image_size, idd_map **out,
                       idd_error *err);
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

/* ---- map files in the index (map.c) ---- */
/* Largest block count idd_map_parse accepts (refs cost 4 bytes per block);
 * a fuzz harness may lower it to stay under its malloc limit. */
extern uint64_t idd_map_parse_max_blocks;
#define IDD_MAPS_DIR "maps"

#endif
