/* repo.h - the repository tree: image files, archive members, backing
 * chains (repo.c, through the stores of repo_store.h). */
#ifndef IDD_INDEX_REPO_H
#define IDD_INDEX_REPO_H

#include "formats/image.h"

/* ---- the repository (repo.c) ---- */
typedef struct idd_repo_entry {
	char *id;        /* relative path (+ "/member" inside archives) */
	char *path;      /* absolute path of the file holding it */
	char *member;    /* archive member name, or NULL */
	char *container; /* "" or archive kind */
	uint64_t member_off, member_len; /* uncompressed archives: member data range */
	bool streamed;   /* compressed archive: member readable only as a stream */
	bool spooled;    /* streamed member already decompressed into spool_fd (owned) */
	int spool_fd;
	uint64_t dev, ino, size;
	int64_t mtime_ns, ctime_ns;
} idd_repo_entry;

typedef struct idd_repo_list {
	idd_repo_entry *v;
	size_t n;
} idd_repo_list;

/* Does NAME look like an image (DESIGN.md's patterns plus includes)? */
bool idd_repo_name_matches(const char *name, const char *const *includes, size_t n_includes);
/* Regular files under repo whose names match (not the index dir, not
 * through symlinks), with stat; depth first, names sorted within each
 * directory ("a/x.raw" before "a.raw").  Archives are listed as one entry
 * each (member == NULL); see idd_repo_list_archive. */
int idd_repo_walk(const char *repo, const char *index_dir, const char *const *includes,
                  size_t n_includes, idd_repo_list *out, idd_warn_fn warn, void *ctx,
                  idd_error *err);
void idd_repo_list_free(idd_repo_list *l);
int idd_repo_list_push(idd_repo_list *l, const idd_repo_entry *e, idd_error *err);
void idd_repo_entry_free(idd_repo_entry *e);
/* Expand an archive entry (member == NULL) into one entry per disk image
 * member (formats/archive.h lists them; entries take over spooled copies). */
int idd_repo_list_archive(const idd_repo_entry *archive, idd_repo_list *out, idd_error *err);

/* Open the image an entry names (raw/qcow2/vmdk, inside an archive or not).
 * Backing files resolve inside repo only. */
int idd_repo_open_image(const char *repo, const idd_repo_entry *e, idd_image **out, idd_error *err);

/* The backing files an image was read with, for the catalog. */
typedef struct idd_chain {
	idd_file_ident *v;
	size_t n;
} idd_chain;
void idd_chain_free(idd_chain *c);
/* Open an image and record its backing files in chain (may be NULL).
 * Backing names resolve against the directory of the image naming them
 * and must stay inside repo; chains stop at IDD_MAX_BACKING_DEPTH. */
int idd_repo_open_image_chain(const char *repo, const idd_repo_entry *e, idd_chain *chain,
                              idd_image **out, idd_error *err);
/* Are the files of a chain still what was recorded (their store's
 * identity: stat under repo, HEAD in an object store)? */
bool idd_chain_unchanged(const char *repo, const idd_file_ident *v, size_t n);

/* Is the repository (or a file path) somewhere else than a local directory? */
bool idd_repo_is_remote(const char *repo_or_path);
/* The identity of the file at path in the catalog's terms, as its store
 * defines it (repo_store.h); out->path is NULL. */
int idd_repo_file_ident(const char *path, idd_file_ident *out, idd_error *err);
/* Do two identities of one file say it is unchanged?  Asked of the store
 * that made them; identities of two stores never match. */
bool idd_repo_ident_same(const idd_file_ident *a, const idd_file_ident *b);
/* Open the file at path; size_hint (UINT64_MAX: unknown) spares a remote
 * store a request. */
int idd_repo_file_open(const char *path, uint64_t size_hint, idd_file **out, idd_error *err);

#endif
