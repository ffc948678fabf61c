/* entries.h - per-image catalog entries (entries.c).
 *
 *   entries/<hex SHA-256 of id>   one image's catalog record and the block
 *                                 size (container, magic IDD-ENT)
 *   entries/index                 the index keeps entries, and the catalog
 *                                 state they agree with (magic IDD-ENI)
 *
 * A node deploying or serving one image fetches its entry, its block map
 * (maps/<the same hex>.map) and its pack view (pack/views/<hex list_key>):
 * a few requests whatever the repository's size, instead of the whole
 * catalog.  scan writes them beside the catalog, so a directory index served
 * as it is (nginx, a mirror) has them; publish brings them up to date before
 * copying an index into an object store.  Layout: docs/formats.md
 * ("Per-image entries"). */
#ifndef IDD_INDEX_ENTRIES_H
#define IDD_INDEX_ENTRIES_H

#include "base/util.h"

#define IDD_ENTRIES_DIR "entries"
#define IDD_ENTRIES_INDEX_FILE "entries/index"
/* Largest entry and entries index files a reader accepts (a record holds
 * at most 3 strings of 4 KiB, 2 of 64 bytes and 16 backing files). */
#define IDD_ENTRY_MAX_FILE ((size_t)1 << 20)
#define IDD_ENTRIES_INDEX_MAX_FILE ((size_t)4096)
/* entries/index flag: a run is rewriting entries; until a run clears it,
 * which entries are current is unknown (the next run checks every one). */
#define IDD_ENTRIES_DIRTY 1u

typedef struct idd_entries_index {
	uint32_t block_size;
	uint32_t flags;      /* IDD_ENTRIES_DIRTY */
	uint64_t generation; /* of the catalog the entries agree with */
	uint64_t count;      /* its images, each with an entry */
} idd_entries_index;

/* "entries/<hex SHA-256 of id>", relative to the index directory. */
char *idd_entry_relpath(const char *id, idd_error *err);
/* The payload of image im's entry (container not included). */
void idd_entry_payload(uint32_t block_size, const idd_image_info *im, idd_buf *b);
/* Parse a whole entry file (container included) that must be the entry of
 * image id: *block_size and *im (idd_image_info_free) receive its content.
 * IDD_ECORRUPT (or IDD_ERR for a container problem) naming `name`. */
int idd_entry_parse_file(const char *name, const void *file, size_t len, const char *id,
                         uint32_t *block_size, idd_image_info *im, idd_error *err);
int idd_entries_index_parse_file(const char *name, const void *file, size_t len,
                                 idd_entries_index *out, idd_error *err);

/* Keeping the entries in line with the catalog, under the index lock. */
typedef struct idd_entries_sync {
	bool full;        /* their state was unknown: each was read and compared, strays removed */
	bool marked;      /* entries/index was marked dirty before the first write */
	uint64_t written; /* entries written */
	uint64_t removed; /* entries removed */
} idd_entries_sync;

/* Before catalog cat replaces old (NULL: there was none; old == cat when
 * the catalog stays as it is): write every entry of cat that is missing or
 * differs.  When entries/index agrees with old, only the records that
 * differ from old's are written and the others' files are only stat'ed
 * (size); otherwise every entry is read and compared. */
int idd_entries_prepare(const char *index_dir, const idd_catalog *old, const idd_catalog *cat,
                        idd_entries_sync *sy, idd_error *err);
/* Once cat is in place: remove the entries of images it does not hold
 * and record in entries/index that the entries agree with it (written
 * only when something changed). */
int idd_entries_commit(const char *index_dir, const idd_catalog *old, const idd_catalog *cat,
                       idd_entries_sync *sy, idd_error *err);

/* verify: when entries/index says the entries agree with cat, every image
 * of cat has an intact entry holding its record.  Each problem goes to
 * warn and is counted in *problems. */
void idd_entries_verify(const char *index_dir, const idd_catalog *cat, idd_warn_fn warn,
                        void *ctx, uint64_t *problems);

#endif
