/* repo.c - the repository, whichever store holds it (repo_store.h): each
 * call goes to the first store of the table that claims the repository or
 * the file path. */
#include "index/repo_store.h"
#include "base/util.h"
#include "base/error.h"

#include <stdlib.h>
#include <string.h>

/* Asked in this order; the local store claims whatever is left. */
static const idd_repo_store *const stores[] = {&idd_repo_store_s3, &idd_repo_store_local};

static const idd_repo_store *store_of(const char *repo_or_path)
{
	for (size_t i = 0;; i++)
		if (stores[i]->claims(repo_or_path) || i + 1 == sizeof stores / sizeof *stores)
			return stores[i];
}

bool idd_repo_is_remote(const char *repo_or_path)
{
	return store_of(repo_or_path)->remote;
}

int idd_repo_walk(const char *repo, const char *index_dir, const char *const *includes,
                  size_t n_includes, idd_repo_list *out, idd_warn_fn warn, void *ctx,
                  idd_error *err)
{
	return store_of(repo)->walk(repo, index_dir, includes, n_includes, out, warn, ctx, err);
}

int idd_repo_open_image_chain(const char *repo, const idd_repo_entry *e, idd_chain *chain,
                              idd_image **out, idd_error *err)
{
	return store_of(repo)->open_image_chain(repo, e, chain, out, err);
}

bool idd_chain_unchanged(const char *repo, const idd_file_ident *v, size_t n)
{
	return store_of(repo)->chain_unchanged(repo, v, n);
}

int idd_repo_file_ident(const char *path, idd_file_ident *out, idd_error *err)
{
	return store_of(path)->file_ident(path, out, err);
}

bool idd_repo_ident_same(const idd_file_ident *a, const idd_file_ident *b)
{
	/* an identity is read by the store that made it; two stores' never match */
	for (size_t i = 0; i < sizeof stores / sizeof *stores; i++) {
		bool oa = stores[i]->owns_ident(a), ob = stores[i]->owns_ident(b);
		if (oa || ob)
			return oa && ob && stores[i]->ident_same(a, b);
	}
	return false;
}

int idd_repo_file_open(const char *path, uint64_t size_hint, idd_file **out, idd_error *err)
{
	return store_of(path)->file_open(path, size_hint, out, err);
}

int idd_repo_list_archive(const idd_repo_entry *archive, idd_repo_list *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	idd_archive_members m;
	if (store_of(archive->path)->archive_members(archive, &m, err))
		return IDD_ERR;
	int rc = IDD_OK;
	for (size_t i = 0; !rc && i < m.n; i++) {
		idd_repo_entry e = {0};
		e.id = idd_asprintf(err, "%s/%s", archive->id, m.v[i].name);
		e.path = idd_strdup(archive->path, err);
		e.member = idd_strdup(m.v[i].name, err);
		e.container = idd_strdup(m.container, err);
		e.member_off = m.v[i].off;
		e.member_len = m.v[i].len;
		e.streamed = m.v[i].streamed;
		if (m.v[i].spool_fd >= 0) {
			e.spooled = true; /* the entry owns the descriptor now */
			e.spool_fd = m.v[i].spool_fd;
			m.v[i].spool_fd = -1;
		}
		e.dev = archive->dev;
		e.ino = archive->ino;
		e.size = archive->size;
		e.mtime_ns = archive->mtime_ns;
		e.ctime_ns = archive->ctime_ns;
		if (!e.id || !e.path || !e.member || !e.container || idd_repo_list_push(out, &e, err)) {
			idd_repo_entry_free(&e);
			rc = IDD_ERR;
		}
	}
	idd_archive_members_free(&m);
	if (rc)
		idd_repo_list_free(out);
	return rc;
}

int idd_repo_open_image(const char *repo, const idd_repo_entry *e, idd_image **out, idd_error *err)
{
	return idd_repo_open_image_chain(repo, e, NULL, out, err);
}

