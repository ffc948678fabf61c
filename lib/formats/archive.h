/* archive.h - disk images inside tar, OVA, Vagrant-box and compressed tar
 * archives (archive.c).  Knows archives and members only: the repository
 * turns members into its own entries (index/repo.c). */
#ifndef IDD_FORMATS_ARCHIVE_H
#define IDD_FORMATS_ARCHIVE_H

#include "base/file.h"
#include "formats/image.h"

/* Is the file whose first bytes are head an archive (tar, or a gzip, xz or
 * zstd compressed tar)?  Its kind ("tar", "tar.gz", "tar.xz", "tar.zst"), or
 * NULL. */
const char *idd_archive_kind(const unsigned char *head, size_t len);
/* Does NAME end like an archive (.ova .box .tar .tar.gz .tgz .tar.zst .tar.xz)? */
bool idd_archive_name_matches(const char *name);

/* One disk image inside an archive. */
typedef struct idd_archive_member {
	char *name;        /* normalised ("./disk.vmdk" -> "disk.vmdk"); of several entries
	                      of one name the last wins (tar semantics) */
	uint64_t off, len; /* data range inside the archive (uncompressed tars); len: its size */
	bool streamed;     /* readable only by decompressing (compressed archive, sparse tar
	                      member): not addressable by byte range */
	int spool_fd;      /* a streamed member already decompressed into this unlinked file
	                      (owned by the list), or -1 */
} idd_archive_member;

typedef struct idd_archive_members {
	const char *kind;      /* as idd_archive_kind (static storage) */
	const char *container; /* "ova" or "box" when the file is named so, else kind */
	idd_archive_member *v;
	size_t n;
} idd_archive_members;

/* The disk image members of the archive at path (names ending in .raw, .img,
 * .qcow2, .qcow or .vmdk; nested archives and names that could escape a
 * directory are skipped).  Compressed archives are read once: their members
 * come back already decompressed (spool_fd). */
int idd_archive_list(const char *path, idd_archive_members *out, idd_error *err);
/* The same, the archive read through f (an object in a store, say); path
 * names it (the container kind comes from its name). */
int idd_archive_list_file(idd_file *f, const char *path, idd_archive_members *out, idd_error *err);
void idd_archive_members_free(idd_archive_members *m);

/* Open member m of the archive at path as an image: a slice of an
 * uncompressed archive, or the decompressed copy (spool_fd, or decompressed
 * now into an unlinked temporary file; see docs/formats.md).  Members
 * must be self-contained: backing files are refused. */
int idd_archive_open_member(const char *path, const idd_archive_member *m, idd_image **out,
                            idd_error *err);
/* The same, the archive read through `archive` (taken over: closed with the
 * image, or on failure); path names it. */
int idd_archive_open_member_file(idd_file *archive, const char *path, const idd_archive_member *m,
                                 idd_image **out, idd_error *err);

/* Decompress the member named member (a normalised name as listed; its last
 * occurrence) of the compressed tar read through archive into fd (sparse,
 * truncated first).  *bytes_read: archive bytes read. */
int idd_archive_spool_member_from(idd_file *archive, const char *member, int fd,
                                  uint64_t *bytes_read, idd_error *err);

#endif
