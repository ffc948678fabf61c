/* repo.c - the repository: which files are images, walking the tree, and
 * opening an image with its backing files confined to the repository. */
#include "index/repo.h"
#include "base/util.h"
#include "base/error.h"
#include "base/file.h"
#include "formats/image.h"
#include "formats/archive.h"

#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const image_suffixes[] = {
	".raw", ".img", ".qcow2", ".qcow", ".ova", ".box", ".tar",
	".tar.gz", ".tgz", ".tar.zst", ".tar.xz",
};

bool idd_repo_name_matches(const char *name, const char *const *includes, size_t n_includes)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < IDD_ARRAY_LEN(image_suffixes); i++) {
		size_t k = strlen(image_suffixes[i]);
		if (n > k && strcmp(name + n - k, image_suffixes[i]) == 0)
			return true;
	}
	for (size_t i = 0; i < n_includes; i++)
		if (fnmatch(includes[i], name, 0) == 0)
			return true;
	return false;
}

void idd_repo_entry_free(idd_repo_entry *e)
{
	if (e->spooled)
		close(e->spool_fd);
	free(e->id);
	free(e->path);
	free(e->member);
	free(e->container);
	memset(e, 0, sizeof *e);
}

void idd_repo_list_free(idd_repo_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		idd_repo_entry_free(&l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

/* Takes ownership of e's strings. */
int idd_repo_list_push(idd_repo_list *l, const idd_repo_entry *e, idd_error *err)
{
	idd_repo_entry *v = idd_realloc_array(l->v, l->n + 1, sizeof *v, err);
	if (!v)
		return IDD_ERR;
	l->v = v;
	l->v[l->n++] = *e;
	return IDD_OK;
}

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
	closedir(d);
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
		/* lstat: symlinks are not followed, so the index never reaches
		 * outside the repository and never counts an image twice. */
		if (lstat(p, &st)) {
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
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(abs);
	w->depth--;
	return rc;
}

int idd_repo_walk(const char *repo, const char *index_dir, const char *const *includes,
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

/* Backing files: relative names resolve against the naming image's
 * directory, and the result must stay inside the repository. */
int idd_repo_backing_open(void *vctx, const char *name, idd_file **out, idd_error *err)
{
	idd_backing_ctx *c = vctx;
	if (c->depth >= IDD_MAX_BACKING_DEPTH)
		return idd_fail(err, "%s: backing chain longer than %d images (a cycle?)", name,
		                IDD_MAX_BACKING_DEPTH);
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
	if (c->chain) { /* remember what the image was read with */
		struct stat st;
		idd_file_ident *v = idd_realloc_array(c->chain->v, c->chain->n + 1, sizeof *v, err);
		char *rel = v ? idd_strdup(real[rl] ? real + rl + 1 : "", err) : NULL;
		if (v)
			c->chain->v = v;
		if (!rel || fstat((*out)->fd, &st)) {
			free(rel);
			idd_file_close(*out);
			return rel ? idd_fail_errno(err, real, "stat") : IDD_ERR;
		}
		c->chain->v[c->chain->n++] = (idd_file_ident){
			rel, (uint64_t)st.st_dev, (uint64_t)st.st_ino, (uint64_t)st.st_size,
			idd_ts_ns(st.st_mtim),
			idd_ts_ns(st.st_ctim)};
	}
	return IDD_OK;
}

void idd_chain_free(idd_chain *c)
{
	for (size_t i = 0; i < c->n; i++)
		free(c->v[i].path);
	free(c->v);
	c->v = NULL;
	c->n = 0;
}

bool idd_chain_unchanged(const char *repo, const idd_file_ident *v, size_t n)
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

int idd_repo_open_image(const char *repo, const idd_repo_entry *e, idd_image **out, idd_error *err)
{
	return idd_repo_open_image_chain(repo, e, NULL, out, err);
}

int idd_repo_open_image_chain(const char *repo, const idd_repo_entry *e, idd_chain *chain,
                              idd_image **out, idd_error *err)
{
	if (e->member)
		return idd_archive_open_member(repo, e, out, err);
	idd_file *f;
	/* the walk lists regular files only: a link put there since is not followed */
	if (idd_file_open_local_flags(e->path, IDD_FILE_NOFOLLOW, &f, err))
		return IDD_ERR;
	char *dir = idd_strdup(e->path, err);
	if (!dir) {
		idd_file_close(f);
		return IDD_ERR;
	}
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	idd_backing_ctx bc = {repo, slash ? dir : ".", 0, chain};
	int rc = idd_image_open(f, true, idd_repo_backing_open, &bc, out, err);
	free(dir);
	return rc;
}
