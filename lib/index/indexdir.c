/* indexdir.c - the files of an index directory: temporaries' names, the
 * iterator, the garbage collector and directory sizes (indexdir.h). */
#include "index/indexdir.h"
#include "base/error.h"

#include <dirent.h>
#include <fcntl.h>
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TMP_MARK ".tmp."
#define MAX_DEPTH 8

int idd_mkdir_p(const char *path, idd_error *err)
{
	char *p = idd_strdup(path, err);
	if (!p)
		return IDD_ERR;
	for (char *s = p + 1;; s++) {
		if (*s == '/' || *s == 0) {
			char c = *s;
			*s = 0;
			if (mkdir(p, 0777) && errno != EEXIST) {
				int rc = idd_fail_errno(err, p, "cannot create directory");
				free(p);
				return rc;
			}
			*s = c;
			if (!c)
				break;
		}
	}
	free(p);
	struct stat st;
	if (stat(path, &st) || !S_ISDIR(st.st_mode))
		return idd_fail(err, "%s: not a directory", path);
	return IDD_OK;
}

int idd_fsync_dir(const char *dir, idd_error *err)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return idd_fail_errno(err, dir, "cannot open directory");
	int rc = IDD_OK;
	if (fsync(fd) && errno != EINVAL)
		rc = idd_fail_errno(err, dir, "fsync");
	close(fd);
	return rc;
}

char *idd_tmp_path(const char *final, idd_error *err)
{
	return idd_asprintf(err, "%s" TMP_MARK "%ld", final, (long)getpid());
}

bool idd_tmp_name(const char *name, long *pid)
{
	const char *t = strstr(name, TMP_MARK);
	if (pid)
		*pid = 0;
	if (!t)
		return false;
	const char *s = t + strlen(TMP_MARK);
	char *end;
	errno = 0;
	long v = (*s >= '0' && *s <= '9') ? strtol(s, &end, 10) : 0;
	if (pid && v > 0 && !errno && (*end == 0 || *end == '.'))
		*pid = v;
	return true;
}

/* Only a process that is certainly gone counts as dead: EPERM means it
 * runs under another user. */
static bool process_alive(long pid)
{
	return kill((pid_t)pid, 0) == 0 || errno != ESRCH;
}

static void classify(idd_dir_entry *e)
{
	e->pid = 0;
	e->writer_alive = false;
	if (e->name[0] == '.')
		e->kind = IDD_ENTRY_DOT;
	else if (!S_ISREG(e->st.st_mode) && !S_ISLNK(e->st.st_mode))
		e->kind = IDD_ENTRY_OTHER;
	else if (idd_tmp_name(e->name, &e->pid))
		e->kind = IDD_ENTRY_TEMP, e->writer_alive = e->pid > 0 && process_alive(e->pid);
	else
		e->kind = IDD_ENTRY_FILE;
}

struct walk {
	unsigned flags;
	idd_dir_fn on_file, on_leftover;
	void *ctx;
	size_t root_len; /* strlen of the walked directory plus its '/' */
};

/* The file type the directory entry tells (0: the file system does not
 * say): a listing of blocks/ or entries/ then costs no stat per file. */
static mode_t dirent_type(const struct dirent *de)
{
	switch (de->d_type) {
	case DT_REG: return S_IFREG;
	case DT_DIR: return S_IFDIR;
	case DT_LNK: return S_IFLNK;
	case DT_FIFO: return S_IFIFO;
	case DT_SOCK: return S_IFSOCK;
	case DT_CHR: return S_IFCHR;
	case DT_BLK: return S_IFBLK;
	default: return 0;
	}
}

static int walk(struct walk *w, const char *dir, int depth, idd_error *err)
{
	if (depth > MAX_DEPTH)
		return idd_fail(err, "%s: index directory nested too deeply", dir);
	DIR *d = opendir(dir);
	if (!d) {
		if (errno == ENOENT && depth == 0)
			return IDD_OK;
		return idd_fail_errno(err, dir, "cannot open directory");
	}
	int rc = IDD_OK;
	struct dirent *de;
	while (!rc && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char *p = idd_path_join(dir, de->d_name, err);
		if (!p) {
			rc = IDD_ENOMEM;
			break;
		}
		idd_dir_entry e = {.name = de->d_name, .path = p};
		e.rel = p + w->root_len;
		mode_t type = (w->flags & IDD_DIR_STAT) ? 0 : dirent_type(de);
		if (type) {
			e.st.st_mode = type;
		} else if (lstat(p, &e.st)) {
			if (errno != ENOENT) /* removed since it was listed: gone is fine */
				rc = idd_fail_errno(err, p, "cannot stat");
			free(p);
			continue;
		}
		classify(&e);
		if ((w->flags & IDD_DIR_RECURSE) && e.kind == IDD_ENTRY_OTHER && S_ISDIR(e.st.st_mode))
			rc = walk(w, p, depth + 1, err);
		else if (e.kind == IDD_ENTRY_FILE ? w->on_file != NULL : w->on_leftover != NULL)
			rc = (e.kind == IDD_ENTRY_FILE ? w->on_file : w->on_leftover)(w->ctx, &e, err);
		free(p);
	}
	closedir(d);
	return rc;
}

int idd_dir_for_each(const char *dir, unsigned flags, idd_dir_fn on_file, idd_dir_fn on_leftover,
                     void *ctx, idd_error *err)
{
	size_t n = strlen(dir);
	struct walk w = {.flags = flags, .on_file = on_file, .on_leftover = on_leftover, .ctx = ctx,
	                 .root_len = n && dir[n - 1] == '/' ? n : n + 1}; /* as idd_path_join joins */
	return walk(&w, dir, 0, err);
}

struct gc {
	idd_keep_fn keep;
	void *ctx;
	uint64_t removed;
	bool changed;
};

static int gc_entry(void *ctx, const idd_dir_entry *e, idd_error *err)
{
	struct gc *g = ctx;
	if (e->kind == IDD_ENTRY_DOT || e->kind == IDD_ENTRY_OTHER || (g->keep && g->keep(g->ctx, e)))
		return IDD_OK;
	if (unlink(e->path)) {
		if (errno == ENOENT)
			return IDD_OK;
		return idd_fail_errno(err, e->path, "cannot remove");
	}
	g->changed = true;
	if (e->kind == IDD_ENTRY_FILE)
		g->removed++;
	return IDD_OK;
}

int idd_dir_gc(const char *dir, idd_keep_fn keep, void *ctx, uint64_t *removed, idd_error *err)
{
	struct gc g = {.keep = keep, .ctx = ctx};
	int rc = idd_dir_for_each(dir, 0, gc_entry, gc_entry, &g, err);
	/* what was removed before a failure is synced all the same */
	if (g.changed) {
		idd_error e2;
		int src = idd_fsync_dir(dir, rc ? &e2 : err);
		if (!rc)
			rc = src;
	}
	if (removed)
		*removed = g.removed;
	return rc;
}

struct bytes {
	bool only_own;
	uint64_t total;
};

static int add_bytes(void *ctx, const idd_dir_entry *e, idd_error *err)
{
	struct bytes *b = ctx;
	if (S_ISREG(e->st.st_mode) && (!b->only_own || e->st.st_nlink == 1))
		b->total += (uint64_t)e->st.st_size;
	return IDD_OK;
}

uint64_t idd_dir_bytes(const char *dir, bool only_own)
{
	struct bytes b = {.only_own = only_own};
	idd_dir_for_each(dir, IDD_DIR_STAT, add_bytes, NULL, &b, NULL);
	return b.total;
}

bool idd_keep_live_temporaries(void *ctx, const idd_dir_entry *e)
{
	(void)ctx;
	return e->kind != IDD_ENTRY_TEMP || e->pid <= 0 || e->writer_alive;
}
