/* repo_s3.h - repositories in an S3-compatible object store (repo_s3.c,
 * the store idd_repo_store_s3 of repo_store.h).
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
 * entry's path); repo.c hands such paths to this store.  Connections are kept per
 * bucket for the life of the process (a pool, safe from several threads).
 */
#ifndef IDD_INDEX_REPO_S3_H
#define IDD_INDEX_REPO_S3_H

#include "index/repo_store.h"

/* The device number every object of an object store has in the catalog. */
#define IDD_S3_DEV ((uint64_t)0x5333) /* "S3" */

/* Close every pooled connection (tests, and programs that want the memory
 * back; later calls reopen as needed). */
void idd_repo_s3_release_all(void);

#endif
