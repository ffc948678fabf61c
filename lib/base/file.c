/* file.c - byte sources readable by range: local files and slices. */
#include "base/file.h"
#include "base/util.h"
#include "base/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int local_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	unsigned char *p = buf;
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > f->size)
		return idd_fail(err, "%s: read of %zu bytes at offset %llu is past the end (%llu bytes)",
		                f->name, len, (unsigned long long)off, (unsigned long long)f->size);
	while (len) {
		ssize_t r = pread(f->fd, p, len, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return idd_fail_errno(err, f->name, "read");
		}
		if (r == 0)
			return idd_fail(err, "%s: unexpected end of file at offset %llu (file shrank?)", f->name,
			                (unsigned long long)off);
		p += r;
		off += (uint64_t)r;
		len -= (size_t)r;
	}
	return IDD_OK;
}

static int local_next_data(idd_file *f, uint64_t off, uint64_t *data, uint64_t *data_end,
                           idd_error *err)
{
	if (off >= f->size) {
		*data = *data_end = f->size;
		return IDD_OK;
	}
	off_t d = lseek(f->fd, (off_t)off, SEEK_DATA);
	if (d < 0) {
		if (errno == ENXIO) { /* only a hole remains */
			*data = *data_end = f->size;
			return IDD_OK;
		}
		if (errno == EINVAL || errno == ENOTSUP) { /* no SEEK_DATA here: all data */
			*data = off;
			*data_end = f->size;
			return IDD_OK;
		}
		return idd_fail_errno(err, f->name, "lseek(SEEK_DATA)");
	}
	off_t h = lseek(f->fd, d, SEEK_HOLE);
	if (h < 0)
		return idd_fail_errno(err, f->name, "lseek(SEEK_HOLE)");
	*data = IDD_MIN((uint64_t)d, f->size);
	*data_end = IDD_MIN((uint64_t)h, f->size);
	return IDD_OK;
}

static void local_close(idd_file *f)
{
	if (f->fd >= 0)
		close(f->fd);
}

static const struct idd_file_ops local_ops = {local_pread, local_next_data, local_close};

int idd_file_open_local(const char *path, idd_file **out, idd_error *err)
{
	return idd_file_open_local_flags(path, 0, out, err);
}

int idd_open_regular(const char *path, int oflags, unsigned flags, idd_error *err)
{
	/* O_NONBLOCK: opening a FIFO (or a device) in place of the file must
	 * not wait for a writer; it is refused below, and regular files are
	 * unaffected by the flag, which is cleared anyway. */
	oflags |= O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
	if (flags & IDD_FILE_NOFOLLOW)
		oflags |= O_NOFOLLOW;
	int fd = open(path, oflags, 0644);
	if (fd < 0) {
		if (errno == ELOOP && (flags & IDD_FILE_NOFOLLOW))
			return idd_fail_code(err, IDD_EPERM, "%s: is a symbolic link; not followed", path);
		return idd_fail_errno(err, path, "cannot open");
	}
	struct stat st;
	if (fstat(fd, &st)) {
		int rc = idd_fail_errno(err, path, "stat");
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode) && !((flags & IDD_FILE_BLOCKDEV) && S_ISBLK(st.st_mode))) {
		close(fd);
		return idd_fail_code(err, IDD_EPERM, "%s: not a regular file (%s); refused", path,
		                     S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISCHR(st.st_mode) ? "a character device"
		                     : S_ISDIR(st.st_mode) ? "a directory" : S_ISSOCK(st.st_mode) ? "a socket"
		                     : S_ISBLK(st.st_mode) ? "a block device" : "a special file");
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
		int rc = idd_fail_errno(err, path, "fcntl");
		close(fd);
		return rc;
	}
	return fd;
}

int idd_file_open_local_flags(const char *path, unsigned flags, idd_file **out, idd_error *err)
{
	int fd = idd_open_regular(path, O_RDONLY, flags | IDD_FILE_BLOCKDEV, err);
	if (fd < 0)
		return fd == IDD_ENOENT ? IDD_ERR : fd;
	struct stat st;
	if (fstat(fd, &st)) {
		int rc = idd_fail_errno(err, path, "stat");
		close(fd);
		return rc;
	}
	uint64_t size;
	if (S_ISREG(st.st_mode)) {
		size = (uint64_t)st.st_size;
	} else if (S_ISBLK(st.st_mode)) {
		off_t e = lseek(fd, 0, SEEK_END);
		if (e < 0) {
			int rc = idd_fail_errno(err, path, "lseek");
			close(fd);
			return rc;
		}
		size = (uint64_t)e;
	} else {
		close(fd);
		return idd_fail(err, "%s: not a regular file", path);
	}
	idd_file *f = idd_calloc(1, sizeof *f, err);
	char *name = idd_strdup(path, err);
	if (!f || !name) {
		free(f);
		free(name);
		close(fd);
		return IDD_ERR;
	}
	f->ops = &local_ops;
	f->name = name;
	f->size = size;
	f->fd = fd;
	*out = f;
	return IDD_OK;
}

/* ---- slices: an archive member inside a local or remote file ---- */

struct slice {
	idd_file *parent;
	uint64_t base;
	bool owns_parent;
};

static int slice_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	struct slice *s = f->priv;
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > f->size)
		return idd_fail(err, "%s: read of %zu bytes at offset %llu is past the end (%llu bytes)",
		                f->name, len, (unsigned long long)off, (unsigned long long)f->size);
	return idd_file_pread(s->parent, buf, len, s->base + off, err);
}

static int slice_next_data(idd_file *f, uint64_t off, uint64_t *data, uint64_t *data_end,
                           idd_error *err)
{
	struct slice *s = f->priv;
	if (off >= f->size) {
		*data = *data_end = f->size;
		return IDD_OK;
	}
	uint64_t d, e;
	if (idd_file_next_data(s->parent, s->base + off, &d, &e, err))
		return IDD_ERR;
	d = d < s->base ? 0 : d - s->base;
	e = e < s->base ? 0 : e - s->base;
	*data = IDD_MIN(d, f->size);
	*data_end = IDD_MIN(e, f->size);
	return IDD_OK;
}

static void slice_close(idd_file *f)
{
	struct slice *s = f->priv;
	if (s->owns_parent)
		idd_file_close(s->parent);
	free(s);
}

static const struct idd_file_ops slice_ops = {slice_pread, slice_next_data, slice_close};

int idd_file_open_slice(idd_file *parent, bool owns_parent, uint64_t off, uint64_t len,
                        const char *name, idd_file **out, idd_error *err)
{
	uint64_t end;
	if (!idd_add_ok(off, len, &end) || end > parent->size) {
		idd_fail(err, "%s: member range %llu+%llu lies outside the file (%llu bytes)",
		                parent->name, (unsigned long long)off, (unsigned long long)len,
		                (unsigned long long)parent->size);
		if (owns_parent)
			idd_file_close(parent);
		return IDD_ERR;
	}
	idd_file *f = idd_calloc(1, sizeof *f, err);
	struct slice *s = idd_calloc(1, sizeof *s, err);
	char *n = idd_strdup(name, err);
	if (!f || !s || !n) {
		free(f);
		free(s);
		free(n);
		if (owns_parent)
			idd_file_close(parent);
		return IDD_ERR;
	}
	s->owns_parent = owns_parent;
	s->parent = parent;
	s->base = off;
	f->ops = &slice_ops;
	f->name = n;
	f->size = len;
	f->fd = -1;
	f->priv = s;
	*out = f;
	return IDD_OK;
}

int idd_file_next_data(idd_file *f, uint64_t off, uint64_t *data, uint64_t *data_end, idd_error *err)
{
	if (f->ops->next_data)
		return f->ops->next_data(f, off, data, data_end, err);
	*data = IDD_MIN(off, f->size);
	*data_end = f->size;
	return IDD_OK;
}

void idd_file_close(idd_file *f)
{
	if (!f)
		return;
	if (f->ops->close)
		f->ops->close(f);
	free(f->name);
	free(f);
}

int idd_flock_shared(int fd, const char *path)
{
	/* up to a second: a probe holds its lock for microseconds, a removal
	 * for as long as one unlink takes */
	for (int i = 0; flock(fd, LOCK_SH | LOCK_NB); i++) {
		if ((errno != EWOULDBLOCK && errno != EINTR) || i >= 1000)
			return -1;
		struct timespec ms = {0, 1000000};
		nanosleep(&ms, NULL);
	}
	struct stat a, b;
	if (fstat(fd, &a) || lstat(path, &b) || a.st_dev != b.st_dev || a.st_ino != b.st_ino)
		return 1;
	return 0;
}

int idd_open_for_removal(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return -1;
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		close(fd);
		errno = EWOULDBLOCK;
		return -1;
	}
	return fd;
}
