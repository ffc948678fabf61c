/* src_local.c - the local backend: a directory (or an NFS mount).  Paths
 * whose real path leaves the root (through symlinks) are refused.  It
 * claims every root no other backend claims, so it comes last. */
#include "base/source.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct local {
	char *root; /* realpath of the directory */
};

static bool local_claims(const char *root)
{
	(void)root;
	return true;
}

static int local_open(const char *root, const idd_fetch_opts *o, void **impl, char **display,
                      idd_error *err)
{
	(void)o;
	struct local *l = idd_calloc(1, sizeof *l, err);
	if (!l)
		return IDD_ERR;
	l->root = realpath(root, NULL);
	if (!l->root) {
		idd_fail_errno(err, root, "cannot open source");
		free(l);
		return IDD_ERR;
	}
	*display = idd_strdup(l->root, err);
	if (!*display) {
		free(l->root);
		free(l);
		return IDD_ERR;
	}
	*impl = l;
	return IDD_OK;
}

static void local_close(void *impl)
{
	struct local *l = impl;
	free(l->root);
	free(l);
}

static char *local_name(void *impl, const char *rel, idd_error *err)
{
	struct local *l = impl;
	return rel[0] ? idd_path_join(l->root, rel, err) : idd_strdup(l->root, err);
}

/* ROOT/REL, refusing anything whose real path leaves the root (symlinks). */
static int local_path(struct local *l, const char *rel, char **out, idd_error *err)
{
	char *p = idd_path_join(l->root, rel, err);
	if (!p)
		return IDD_ERR;
	char *real = realpath(p, NULL);
	if (!real) {
		int e = errno;
		idd_fail_errno(err, p, "cannot open");
		free(p);
		return e == ENOENT ? IDD_ENOENT : IDD_ERR;
	}
	size_t rl = strlen(l->root);
	bool inside = !strncmp(real, l->root, rl) && (real[rl] == '/' || (rl == 1 && l->root[0] == '/'));
	free(real);
	if (!inside) {
		idd_fail_code(err, IDD_EPERM, "%s: refused: it leads outside the source %s (symlink)", p,
		              l->root);
		free(p);
		return IDD_EPERM;
	}
	*out = p;
	return IDD_OK;
}

static int local_stat(void *impl, const char *rel, idd_remote_stat *st, idd_fetch_stats *fs,
                      idd_error *err)
{
	(void)fs;
	char *p;
	int rc = local_path(impl, rel, &p, err);
	if (rc)
		return rc;
	struct stat sb;
	rc = stat(p, &sb) ? idd_fail_errno(err, p, "cannot stat") : IDD_OK;
	free(p);
	if (!rc) {
		st->size = (uint64_t)sb.st_size;
		st->mtime = (int64_t)sb.st_mtim.tv_sec;
		/* what tells a replaced file (rename over it) or one rewritten
		 * within the same second apart */
		snprintf(st->etag, sizeof st->etag, "%llx-%llx-%lld.%09ld",
		         (unsigned long long)sb.st_dev, (unsigned long long)sb.st_ino,
		         (long long)sb.st_mtim.tv_sec, (long)sb.st_mtim.tv_nsec);
	}
	return rc;
}

static int local_get(void *impl, const char *rel, size_t max, idd_buf *body, idd_fetch_stats *fs,
                     idd_error *err)
{
	char *p;
	int rc = local_path(impl, rel, &p, err);
	if (rc)
		return rc;
	void *data;
	size_t len;
	rc = idd_read_file(p, max, &data, &len, err);
	if (rc && access(p, F_OK) && errno == ENOENT)
		rc = IDD_ENOENT;
	free(p);
	if (rc)
		return rc;
	*body = (idd_buf){.data = data, .len = len, .cap = len};
	fs->requests++;
	fs->bytes += len;
	return IDD_OK;
}

static int local_open_file(void *impl, const char *rel, idd_file **out, idd_error *err)
{
	char *p;
	int rc = local_path(impl, rel, &p, err);
	if (rc)
		return rc;
	rc = idd_file_open_local(p, out, err);
	free(p);
	return rc;
}

const idd_source_backend idd_source_local = {
	.name = "local",
	.remote = false,
	.claims = local_claims,
	.open = local_open,
	.close = local_close,
	.name_of = local_name,
	.stat = local_stat,
	.get = local_get,
	.open_local = local_open_file,
};
