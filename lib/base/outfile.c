/* outfile.c - output files (-o PATH) written through an exclusive temporary
 * and a rename, or directly when they are devices or FIFOs (imgdedup.h). */
#include "base/util.h"
#include "base/error.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The stream's write side keeps the first errno, so a failure in the middle
 * of a long output is reported with its reason even when later writes or
 * the final flush happen to succeed. */
static ssize_t cookie_write(void *c, const char *buf, size_t len)
{
	idd_outfile *o = c;
	size_t done = 0;
	while (done < len) {
		ssize_t w = write(o->fd, buf + done, len - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (!o->write_errno)
				o->write_errno = w < 0 ? errno : EIO;
			return -1;
		}
		done += (size_t)w;
	}
	return (ssize_t)len;
}

static int cookie_close(void *c)
{
	(void)c; /* the descriptor is closed by commit/abort */
	return 0;
}

static void reset(idd_outfile *o)
{
	free(o->name);
	free(o->target);
	free(o->tmp);
	memset(o, 0, sizeof *o);
	o->fd = -1;
}

static int attach_stream(idd_outfile *o, idd_error *err)
{
	cookie_io_functions_t io = {.write = cookie_write, .close = cookie_close};
	o->f = fopencookie(o, "w", io);
	if (!o->f)
		return idd_fail_errno(err, o->name, "cannot open a stream");
	return IDD_OK;
}

static mode_t creation_mode(void)
{
	mode_t mask = umask(0);
	umask(mask);
	return 0666 & ~mask;
}

int idd_outfile_open(idd_outfile *o, const char *path, idd_error *err)
{
	memset(o, 0, sizeof *o);
	o->fd = -1;
	if (!strcmp(path, "-")) {
		if (!(o->name = idd_strdup("stdout", err)))
			return IDD_ERR;
		o->f = stdout;
		return IDD_OK;
	}
	if (!(o->name = idd_strdup(path, err)))
		return IDD_ERR;
	struct stat lst, st;
	bool exists = lstat(path, &lst) == 0;
	if (!exists && errno != ENOENT) {
		int rc = idd_fail_errno(err, path, "cannot write");
		reset(o);
		return rc;
	}
	bool have_target = exists && stat(path, &st) == 0;
	if (exists && !have_target) {
		int rc = errno == ENOENT
		       ? idd_fail_code(err, IDD_EPERM, "%s: not writing through a dangling symbolic link", path)
		       : idd_fail_errno(err, path, "cannot write");
		reset(o);
		return rc;
	}
	if (have_target && (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode))) {
		/* a device or a pipe is the destination itself: write into it */
		o->fd = open(path, O_WRONLY | O_NOCTTY | O_CLOEXEC);
		if (o->fd < 0) {
			int rc = idd_fail_errno(err, path, "cannot open");
			reset(o);
			return rc;
		}
		if (attach_stream(o, err)) {
			close(o->fd);
			reset(o);
			return IDD_ERR;
		}
		return IDD_OK;
	}
	if (have_target && !S_ISREG(st.st_mode)) {
		int rc = idd_fail_code(err, IDD_EPERM, "%s: %s; refused", path,
		                       S_ISDIR(st.st_mode) ? "is a directory"
		                       : S_ISBLK(st.st_mode) ? "is a block device, not a regular file"
		                                             : "not a regular file");
		reset(o);
		return rc;
	}
	/* a regular file or a new name: replace it by rename; a link is
	 * written through to the file it names */
	o->target = have_target && S_ISLNK(lst.st_mode) ? realpath(path, NULL) : strdup(path);
	if (!o->target) {
		int rc = idd_fail_errno(err, path, "cannot resolve");
		reset(o);
		return rc;
	}
	if (!(o->tmp = idd_asprintf(err, "%s.tmp.XXXXXX", o->target))) {
		reset(o);
		return IDD_ERR;
	}
	o->fd = mkostemp(o->tmp, O_CLOEXEC); /* O_EXCL: never an existing file or link */
	if (o->fd < 0) {
		int rc = idd_fail_errno(err, o->tmp, "cannot create");
		reset(o);
		return rc;
	}
	mode_t mode = have_target ? st.st_mode & 07777 : creation_mode();
	if (fchmod(o->fd, mode) || attach_stream(o, err)) {
		int rc = o->f ? idd_fail_errno(err, o->tmp, "chmod") : IDD_ERR;
		close(o->fd);
		unlink(o->tmp);
		reset(o);
		return rc;
	}
	return IDD_OK;
}

void idd_outfile_abort(idd_outfile *o)
{
	if (o->f && o->f != stdout)
		fclose(o->f);
	if (o->fd >= 0)
		close(o->fd);
	if (o->tmp)
		unlink(o->tmp);
	reset(o);
}

int idd_outfile_commit(idd_outfile *o, idd_error *err)
{
	if (o->f == stdout) {
		int e = fflush(stdout) ? errno : ferror(stdout) ? EIO : 0;
		int rc = e ? idd_fail_code(err, IDD_EIO, "stdout: %s", strerror(e)) : IDD_OK;
		reset(o);
		return rc;
	}
	int e = fflush(o->f) ? (o->write_errno ? o->write_errno : errno) : o->write_errno;
	if (!e && ferror(o->f))
		e = EIO;
	fclose(o->f);
	o->f = NULL;
	if (!e && o->tmp && fsync(o->fd))
		e = errno;
	if (close(o->fd) && !e)
		e = errno;
	o->fd = -1;
	if (e) {
		int rc = idd_fail_code(err, IDD_EIO, "%s: %s", o->name, strerror(e));
		idd_outfile_abort(o);
		return rc;
	}
	if (!o->tmp) {
		reset(o);
		return IDD_OK;
	}
	/* refuse if the name became something else than a regular file while
	 * we wrote: rename would replace it */
	struct stat st;
	if (lstat(o->target, &st) == 0 && !S_ISREG(st.st_mode)) {
		int rc = idd_fail_code(err, IDD_EPERM, "%s: replaced by something not a regular file while "
		                       "being written; refused", o->target);
		idd_outfile_abort(o);
		return rc;
	}
	if (rename(o->tmp, o->target)) {
		int rc = idd_fail_errno(err, o->target, "cannot rename the temporary file into place");
		idd_outfile_abort(o);
		return rc;
	}
	free(o->tmp);
	o->tmp = NULL;
	char *dir = idd_strdup(o->target, err);
	int rc = dir ? IDD_OK : IDD_ERR;
	if (dir) {
		char *slash = strrchr(dir, '/');
		const char *d = slash ? (slash == dir ? "/" : (*slash = 0, dir)) : ".";
		int dfd = open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			if (fsync(dfd) && errno != EINVAL)
				rc = idd_fail_errno(err, d, "fsync");
			close(dfd);
		}
		free(dir);
	}
	reset(o);
	return rc;
}
