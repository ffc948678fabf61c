/* repo_s3.h - repositories in an S3-compatible object store (repo_s3.c).
 *
 * REPO may be s3://BUCKET/PREFIX for scan, map, pack, ls, info and verify,
 * with the index in a local directory (--index).  The objects under PREFIX
 * are the repository's files: listed with ListObjectsV2, read by range
 * (images in every format, archive members by range, compressed archives
 * streamed), and recognised as unchanged by ETag, size and Last-Modified,
 * which take the place of device, inode, size and times in the catalog:
 *
 *   dev       IDD_S3_DEV for every object
 *   ino       the first 8 bytes (little-endian) of SHA-256(ETag)
 *   size      the object's size
 *   mtime_ns  0
 *   ctime_ns  Last-Modified (ns, whole seconds)
 *
 * A copy of an object under another key (same ETag and size) is thus
 * recognised as the same content moved, as a rename is for files.
 *
 * Entries of an S3 repository name their file as s3://BUCKET/KEY (the
 * entry's path); the functions below take such paths as well as local ones,
 * so the scan reads either kind the same way.  Connections are kept per
 * bucket for the life of the process (a pool, safe from several threads).
 */
#ifndef IDD_INDEX_REPO_S3_H
#define IDD_INDEX_REPO_S3_H

#include "index/repo.h"
#include "formats/archive.h"

/* The device number every object of an object store has in the catalog. */
#define IDD_S3_DEV ((uint64_t)0x5333) /* "S3" */

/* Is the repository (or a file path) in an object store? */
bool idd_repo_is_s3(const char *repo_or_path);

/* The objects under repo that look like images (the walk's rules: the
 * index directory's name anywhere and "directory" placeholders skipped),
 * sorted by id, with their identity as above.  Keys that are not safe
 * relative paths are skipped with a warning. */
int idd_repo_s3_walk(const char *repo, const char *const *includes, size_t n_includes,
                     idd_repo_list *out, idd_warn_fn warn, void *ctx, idd_error *err);

/* Open the image an entry of an S3 repository names, recording its backing
 * files (resolved by key, confined to the repository) in chain (may be
 * NULL). */
int idd_repo_s3_open_image_chain(const char *repo, const idd_repo_entry *e, idd_chain *chain,
                                 idd_image **out, idd_error *err);
/* The disk image members of an archive object (member == NULL): tar
 * members by range, compressed archives streamed once (their members
 * spooled as for local archives); idd_repo_list_archive makes entries. */
int idd_repo_s3_archive_members(const idd_repo_entry *archive, idd_archive_members *out,
                                idd_error *err);
/* Are the backing files of a chain still what was recorded (HEAD)? */
bool idd_repo_s3_chain_unchanged(const char *repo, const idd_file_ident *v, size_t n);

/* The identity of the file at path (a local path: stat; s3://: HEAD) in
 * the catalog's terms; out->path is NULL. */
int idd_repo_file_ident(const char *path, idd_file_ident *out, idd_error *err);
/* Do two identities of one file say it is unchanged?  For objects: same
 * ETag and size (HEAD and listings spell Last-Modified differently). */
bool idd_repo_ident_same(const idd_file_ident *a, const idd_file_ident *b);
/* Open the file at path (local, or s3:// read by range with read-ahead for
 * sequential readers); size_hint (UINT64_MAX: unknown) spares a HEAD. */
int idd_repo_file_open(const char *path, uint64_t size_hint, idd_file **out, idd_error *err);

/* Close every pooled connection (tests, and programs that want the memory
 * back; later calls reopen as needed). */
void idd_repo_s3_release_all(void);

#endif
