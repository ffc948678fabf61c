/* archive.h - images inside tar, OVA and compressed archives (archive.c). */
#ifndef IDD_FORMATS_ARCHIVE_H
#define IDD_FORMATS_ARCHIVE_H

#include "index/repo.h"

/* ---- archives (archive.c) ----
 * Is the file at f an archive (tar, ova, gz/xz/zstd-compressed tar)?  Returns
 * its kind ("tar", "tar.gz", ...) or NULL. */
const char *idd_archive_kind(const unsigned char *head, size_t len);
/* Expand an archive entry into one entry per disk image member. */
int idd_archive_list(const idd_repo_entry *archive, idd_repo_list *out, idd_error *err);
/* The same, the archive read through f (a remote object, say); the entries
 * name archive->path. */
int idd_archive_list_file(const idd_repo_entry *archive, idd_file *f, idd_repo_list *out,
                          idd_error *err);
/* Open the disk image of a member entry (e->member != NULL): a slice of an
 * uncompressed archive, or for compressed archives the member decompressed
 * once into an unlinked temporary file (see docs/formats.md). */
int idd_archive_open_member(const char *repo, const idd_repo_entry *e, idd_image **out,
                            idd_error *err);
/* The same, the archive read through `archive` (taken over: closed with the
 * image, or on failure). */
int idd_archive_open_member_file(const idd_repo_entry *e, idd_file *archive, idd_image **out,
                                 idd_error *err);
/* Decompress the member named member (a normalised name as listed; its last
 * occurrence) of the compressed tar read through archive into fd (sparse,
 * truncated first).  *bytes_read: archive bytes read. */
int idd_archive_spool_member_from(idd_file *archive, const char *member, int fd,
                                  uint64_t *bytes_read, idd_error *err);

/* Open the image an entry names (raw/qcow2/vmdk, inside an archive or not).
 * Backing files resolve inside repo only. */
int idd_repo_open_image(const char *repo, const idd_repo_entry *e, idd_image **out, idd_error *err);
/* Backing-file resolver for images under repo: ctx is an idd_backing_ctx. */

#endif
