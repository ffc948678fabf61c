/* repo_store.h - where a repository lives, as a table of operations: a
 * local directory (repo_local.c) or an object store (repo_s3.c, which reads
 * through the source layer, base/fetch.h).  repo.c picks the first store
 * that claims a repository or a file path and calls it; it knows no store
 * by itself beyond its table.
 *
 * Identity: each store defines what identifies one of its files in the
 * catalog (idd_file_ident) and when two identities mean unchanged content;
 * only the store that made an identity reads it.
 *
 * Adding a store: one file (repo_NAME.c) defining an idd_repo_store, one
 * entry in repo.c's table before the local store.  Internal. */
#ifndef IDD_INDEX_REPO_STORE_H
#define IDD_INDEX_REPO_STORE_H

#include "index/repo.h"
#include "formats/archive.h"

typedef struct idd_repo_store {
	const char *name;
	bool remote;                               /* not a local directory */
	bool (*claims)(const char *repo_or_path);
	bool (*owns_ident)(const idd_file_ident *id); /* made by this store? */
	/* see idd_repo_walk (index_dir: a local path, or NULL) */
	int (*walk)(const char *repo, const char *index_dir, const char *const *includes,
	            size_t n_includes, idd_repo_list *out, idd_warn_fn warn, void *ctx,
	            idd_error *err);
	/* see idd_repo_open_image_chain */
	int (*open_image_chain)(const char *repo, const idd_repo_entry *e, idd_chain *chain,
	                        idd_image **out, idd_error *err);
	/* the disk image members of an archive entry (member == NULL) */
	int (*archive_members)(const idd_repo_entry *archive, idd_archive_members *out,
	                       idd_error *err);
	bool (*chain_unchanged)(const char *repo, const idd_file_ident *v, size_t n);
	int (*file_ident)(const char *path, idd_file_ident *out, idd_error *err);
	bool (*ident_same)(const idd_file_ident *a, const idd_file_ident *b);
	int (*file_open)(const char *path, uint64_t size_hint, idd_file **out, idd_error *err);
} idd_repo_store;

extern const idd_repo_store idd_repo_store_local, idd_repo_store_s3;

#endif
