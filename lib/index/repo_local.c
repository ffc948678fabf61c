/* repo_local.c - repositories in a local directory (repo_store.h): walking
 * the tree, opening an image with its backing files confined to the
 * repository, and file identities by stat. */
#include "index/repo_store.h"
#include "base/util.h"
#include "base/error.h"
#include "base/file.h"
#include "formats/image.h"
#include "formats/archive.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct walk {
	const char *root;
	dev_t idx_dev;
	ino_t idx_ino;
	bool have_idx;
	const char *const *includes;
	size_t n_includes;
	idd_repo_list *out;
	idd_warn_fn warn;
	void *ctx;
	int depth;
};

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int walk_dir(struct walk *w, const char *rel, idd_error *err)
{
	char *abs = rel[0] ? idd_path_join(w->root, rel, err) : idd_strdup(w->root, err);
	if (!abs)
		return IDD_ERR;
	if (++w->depth > 64) {
		int rc = idd_fail(err, "%s: directory tree deeper than 64 levels", abs);
		free(abs);
		return rc;
	}
	DIR *d = opendir(abs);
	if (!d) {
		int rc = idd_fail_errno(err, abs, "cannot open directory");
		free(abs);
		w->depth--;
		return rc;
	}
	char **names = NULL;
	size_t n = 0;
	int rc = IDD_OK;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char **nn = idd_realloc_array(names, n + 1, sizeof *nn, err);
		char *s = nn ? idd_strdup(de->d_name, err) : NULL;
		if (!s) {
			if (nn)
				names = nn;
			rc = IDD_ERR;
			break;
		}
		names = nn;
		names[n++] = s;
	}
	if (!rc && n)
		qsort(names, n, sizeof *names, cmp_str); /* stable, sorted ids */
	for (size_t i = 0; !rc && i < n; i++) {
		char *r = rel[0] ? idd_asprintf(err, "%s/%s", rel, names[i]) : idd_strdup(names[i], err);
		char *p = r ? idd_path_join(w->root, r, err) : NULL;
		if (!p) {
			free(r);
			rc = IDD_ERR;
			break;
		}
		struct stat st;
		/* symlinks are not followed, so the index never reaches
		 * outside the repository and never counts an image twice. */
		if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW)) {
			if (w->warn) {
				idd_error e;
				idd_fail_errno(&e, p, "cannot stat");
				w->warn(w->ctx, e.msg);
			}
		} else if (S_ISDIR(st.st_mode)) {
			if (!(w->have_idx && st.st_dev == w->idx_dev && st.st_ino == w->idx_ino) &&
			    strcmp(names[i], IDD_INDEX_SUBDIR) != 0)
				rc = walk_dir(w, r, err);
		} else if (S_ISREG(st.st_mode) &&
		           idd_repo_name_matches(names[i], w->includes, w->n_includes)) {
			idd_repo_entry e = {0};
			e.id = r;
			e.path = p;
			r = p = NULL;
			e.dev = (uint64_t)st.st_dev;
			e.ino = (uint64_t)st.st_ino;
			e.size = (uint64_t)st.st_size;
			e.mtime_ns = idd_ts_ns(st.st_mtim);
			e.ctime_ns = idd_ts_ns(st.st_ctim);
			e.container = idd_strdup("", err);
			if (!e.container || idd_repo_list_push(w->out, &e, err)) {
				idd_repo_entry_free(&e);
				rc = IDD_ERR;
			}
		}
		free(r);
		free(p);
	}
	closedir(d); /* open until here: each name is stat'ed relative to it */
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(abs);
	w->depth--;
	return rc;
}

static int local_walk(const char *repo, const char *index_dir, const char *const *includes,
                      size_t n_includes, idd_repo_list *out, idd_warn_fn warn, void *ctx,
                      idd_error *err)
{
	struct stat st;
	if (stat(repo, &st))
		return idd_fail_errno(err, repo, "cannot open repository");
	if (!S_ISDIR(st.st_mode))
		return idd_fail(err, "%s: repository is not a directory", repo);
	struct walk w = {.root = repo, .includes = includes, .n_includes = n_includes,
	                 .out = out, .warn = warn, .ctx = ctx};
	if (index_dir && stat(index_dir, &st) == 0) {
		w.have_idx = true;
		w.idx_dev = st.st_dev;
		w.idx_ino = st.st_ino;
	}
	memset(out, 0, sizeof *out);
	int rc = walk_dir(&w, "", err);
	if (rc)
		idd_repo_list_free(out);
	return rc;
}

/* ---- backing files ----
 * Relative names resolve against the directory of the image naming them,
 * and the result must stay inside the repository.  The image reader opens
 * a chain top down, one level per call, so the context follows it: after
 * each file it opens, that file's directory is where the next name
 * resolves. */
struct backing_ctx {
	const char *repo;  /* root: nothing outside it is opened */
	char *dir;         /* directory of the image naming the next backing file (owned) */
	idd_chain *chain;  /* if set, every backing file opened is recorded here */
};

/* dir := the directory part of path ("." when there is none). */
static int set_dir(struct backing_ctx *c, const char *path, idd_error *err)
{
	char *dir = idd_strdup(path, err);
	if (!dir)
		return IDD_ERR;
	char *slash = strrchr(dir, '/');
	if (slash && slash != dir)
		*slash = 0;
	else if (slash)
		slash[1] = 0; /* "/x": the root */
	else
		strcpy(dir, ".");
	free(c->dir);
	c->dir = dir;
	return IDD_OK;
}

/* Remember what the image was read with, for the catalog. */
static int chain_add(idd_chain *chain, const char *real, size_t root_len, int fd, idd_error *err)
{
	struct stat st;
	idd_file_ident *v = idd_realloc_array(chain->v, chain->n + 1, sizeof *v, err);
	if (!v)
		return IDD_ERR;
	chain->v = v;
	char *rel = idd_strdup(real[root_len] ? real + root_len + 1 : "", err);
	if (!rel)
		return IDD_ERR;
	if (fstat(fd, &st)) {
		free(rel);
		return idd_fail_errno(err, real, "stat");
	}
	chain->v[chain->n++] = (idd_file_ident){rel, (uint64_t)st.st_dev, (uint64_t)st.st_ino,
	                                        (uint64_t)st.st_size, idd_ts_ns(st.st_mtim),
	                                        idd_ts_ns(st.st_ctim)};
	return IDD_OK;
}

static int backing_open(void *vctx, const char *name, idd_file **out, idd_error *err)
{
	struct backing_ctx *c = vctx;
	char *cand = name[0] == '/' ? idd_strdup(name, err) : idd_path_join(c->dir, name, err);
	if (!cand)
		return IDD_ERR;
	char real[PATH_MAX], root[PATH_MAX];
	if (!realpath(cand, real)) {
		int rc = idd_fail_errno(err, cand, "backing file");
		free(cand);
		return rc;
	}
	if (!realpath(c->repo, root)) {
		int rc = idd_fail_errno(err, c->repo, "repository");
		free(cand);
		return rc;
	}
	size_t rl = strlen(root);
	if (strncmp(real, root, rl) != 0 || (real[rl] != '/' && real[rl] != 0)) {
		int rc = idd_fail(err, "%s: backing file lies outside the repository; refused", cand);
		free(cand);
		return rc;
	}
	free(cand);
	if (idd_file_open_local(real, out, err))
		return IDD_ERR;
	if ((c->chain && chain_add(c->chain, real, rl, (*out)->fd, err)) || set_dir(c, real, err)) {
		idd_file_close(*out);
		return IDD_ERR;
	}
	return IDD_OK;
}

static bool local_chain_unchanged(const char *repo, const idd_file_ident *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *p = idd_path_join(repo, v[i].path, NULL);
		struct stat st;
		bool same = p && stat(p, &st) == 0 && (uint64_t)st.st_dev == v[i].dev &&
		            (uint64_t)st.st_ino == v[i].ino && (uint64_t)st.st_size == v[i].size &&
		            idd_ts_ns(st.st_mtim) == v[i].mtime_ns &&
		            idd_ts_ns(st.st_ctim) == v[i].ctime_ns;
		free(p);
		if (!same)
			return false;
	}
	return true;
}

static int local_open_image_chain(const char *repo, const idd_repo_entry *e, idd_chain *chain,
                                  idd_image **out, idd_error *err)
{
	if (e->member) {
		idd_archive_member m = {e->member, e->member_off, e->member_len, e->streamed,
		                        e->spooled ? e->spool_fd : -1};
		return idd_archive_open_member(e->path, &m, out, err);
	}
	struct backing_ctx bc = {repo, NULL, chain};
	if (set_dir(&bc, e->path, err))
		return IDD_ERR;
	idd_file *f;
	/* the walk lists regular files only: a link put there since is not followed */
	int rc = idd_file_open_local_flags(e->path, IDD_FILE_NOFOLLOW, &f, err);
	if (!rc)
		rc = idd_image_open(f, true, backing_open, &bc, out, err);
	free(bc.dir);
	return rc;
}

static bool local_claims(const char *repo_or_path)
{
	(void)repo_or_path;
	return true;
}

static bool local_owns_ident(const idd_file_ident *id)
{
	(void)id;
	return true;
}

static int local_archive_members(const idd_repo_entry *archive, idd_archive_members *out,
                                 idd_error *err)
{
	return idd_archive_list(archive->path, out, err);
}

static int local_file_ident(const char *path, idd_file_ident *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	struct stat st;
	if (stat(path, &st))
		return idd_fail_errno(err, path, "cannot stat");
	*out = (idd_file_ident){NULL, (uint64_t)st.st_dev, (uint64_t)st.st_ino, (uint64_t)st.st_size,
	                        idd_ts_ns(st.st_mtim), idd_ts_ns(st.st_ctim)};
	return IDD_OK;
}

static bool local_ident_same(const idd_file_ident *a, const idd_file_ident *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns && a->ctime_ns == b->ctime_ns;
}

static int local_file_open(const char *path, uint64_t size_hint, idd_file **out, idd_error *err)
{
	(void)size_hint;
	return idd_file_open_local(path, out, err);
}

/* Claims whatever no other store claims: it comes last. */
const idd_repo_store idd_repo_store_local = {
	.name = "local",
	.remote = false,
	.claims = local_claims,
	.owns_ident = local_owns_ident,
	.walk = local_walk,
	.open_image_chain = local_open_image_chain,
	.archive_members = local_archive_members,
	.chain_unchanged = local_chain_unchanged,
	.file_ident = local_file_ident,
	.ident_same = local_ident_same,
	.file_open = local_file_open,
};
