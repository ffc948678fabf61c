/* catalog.h - the catalog and block lists on disk (catalog.c). */
#ifndef IDD_INDEX_CATALOG_H
#define IDD_INDEX_CATALOG_H

#include "base/util.h"

/* ---- catalog internals (catalog.c) ---- */
#define IDD_CATALOG_FILE "catalog"
#define IDD_BLOCKS_DIR "blocks"
/* mtime_ns of an entry read while its file was racily clean: matches no
 * file, so the next scan reads it again (scan.c) */
#define IDD_MTIME_UNKNOWN INT64_MIN
char *idd_blocks_path(const char *index_dir, const idd_digest *key, idd_error *err);
/* The format version block lists are written in (1: the dense lists of
 * imgdedup 0.1, upgraded when met). */
#define IDD_BLOCKLIST_VERSION 2
int idd_catalog_save(const char *index_dir, const idd_catalog *cat, idd_error *err);
/* One image's record, byte for byte as the catalog holds it (and the
 * per-image entry files, entries.h). */
void idd_catalog_put_record(idd_buf *b, const idd_image_info *im);
/* Read one record, checking what block_size alone allows (nblocks against
 * virtual_size, zero and distinct counts, flags).  False on a short or
 * inconsistent record; *im then holds what was read (idd_image_info_free). */
bool idd_catalog_get_record(idd_reader *r, uint32_t block_size, idd_image_info *im);
/* The identity of a catalog state: SHA-256 over block size, ids and list keys. */
int idd_catalog_key(const idd_catalog *cat, idd_digest *key, idd_error *err);
/* Building a block list: init, append digests in block order (zero
 * digests among them are skipped; blocks not appended are zero blocks),
 * finish at the image's block count. */
void idd_blocklist_init(idd_blocklist *bl, uint32_t block_size);
/* d[0..n) are the digests of blocks block .. block+n-1; block must be at or
 * after the end of what was appended before. */
int idd_blocklist_append(idd_blocklist *bl, uint64_t block, const idd_digest *d, uint64_t n,
                         idd_error *err);
/* Set the block count (>= the end of the last run). */
int idd_blocklist_finish(idd_blocklist *bl, uint64_t nblocks, idd_error *err);
/* Release what an init'ed (not opened) list holds. */
void idd_blocklist_clear(idd_blocklist *bl);
/* Write blocks/<hex of its checksum>; *key_out receives the checksum. */
int idd_blocklist_write(const char *index_dir, const idd_blocklist *bl, idd_digest *key_out,
                        idd_error *err);
/* Dense convenience (tests, generators): nblocks digests, zero blocks all-zero. */
int idd_blocklist_save(const char *index_dir, uint32_t block_size, const idd_digest *d,
                       uint64_t nblocks, idd_digest *key_out, idd_error *err);
/* For tests: called after every successful idd_catalog_load (NULL: none),
 * to interleave a concurrent scan deterministically. */
extern void (*idd_catalog_load_hook)(void *ctx, const char *index_dir);
extern void *idd_catalog_load_hook_ctx;
/* Is the block list the catalog names for img intact (checksum, name)?
 * Reads it once in constant memory, without decompressing; *version (may
 * be NULL) receives its format version.  IDD_ENOENT when missing. */
int idd_blocklist_check(const char *index_dir, const idd_image_info *img, uint32_t *version,
                        idd_error *err);
/* The same two for a list kept under another path (the pack keeps the
 * lists its views were made from): its name is still its checksum. */
int idd_blocklist_open_path(const char *path, const idd_image_info *img, idd_blocklist **out,
                            idd_error *err);
int idd_blocklist_check_path(const char *path, const idd_digest *list_key, uint32_t *version,
                             idd_error *err);
/* Parse a block list file already in memory (container included) against
 * what the catalog says (nblocks, zero blocks); name for messages. */
int idd_blocklist_parse(const char *name, const void *file, size_t len, uint64_t nblocks,
                        uint64_t zero_blocks, idd_blocklist **out, idd_error *err);
/* Reading many lists one after the other: the file and its payload go into
 * buffers kept from list to list (freed by idd_blocklist_buffers_free); bl
 * borrows them until the next open and is released with idd_blocklist_clear. */
typedef struct idd_blocklist_buffers {
	void *file, *payload;
	size_t file_cap, payload_cap;
} idd_blocklist_buffers;
int idd_blocklist_open_reuse(const char *index_dir, const idd_image_info *img,
                             idd_blocklist_buffers *bufs, idd_blocklist *bl, idd_error *err);
void idd_blocklist_buffers_free(idd_blocklist_buffers *b);
int idd_catalog_parse(const char *name, const void *payload, size_t len, idd_catalog **out,
                      idd_error *err);
/* A whole catalog file (container included) already in memory, e.g. fetched. */
int idd_catalog_parse_file(const char *name, const void *file, size_t len, idd_catalog **out,
                           idd_error *err);
void idd_image_info_free(idd_image_info *im);
int idd_image_info_copy(idd_image_info *dst, const idd_image_info *src, idd_error *err);

#endif
