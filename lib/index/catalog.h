/* catalog.h - the catalog and block lists on disk (catalog.c). */
#ifndef IDD_INDEX_CATALOG_H
#define IDD_INDEX_CATALOG_H

#include "base/util.h"

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

#endif
