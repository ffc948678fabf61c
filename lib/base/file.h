/* file.h - byte sources read by range (file.c). */
#ifndef IDD_BASE_FILE_H
#define IDD_BASE_FILE_H

#include "base/util.h"

/* ---- byte sources (file.c) ----
 * An idd_file is something that can be read by range: a local file, a byte
 * range inside another idd_file (an archive member), or an HTTP resource.
 * Image format readers sit on top of it, so the same qcow2 code serves the
 * local scan and the remote deploy. */
typedef struct idd_file idd_file;
struct idd_file_ops {
	/* Read exactly len bytes at off; a short read past EOF is an error. */
	int (*pread)(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err);
	/* Next data at or after off (SEEK_DATA); *data = size when none.
	 * NULL: everything is data. */
	int (*next_data)(idd_file *f, uint64_t off, uint64_t *data, uint64_t *data_end, idd_error *err);
	void (*close)(idd_file *f);
};
struct idd_file {
	const struct idd_file_ops *ops;
	char *name;   /* for messages */
	uint64_t size;
	int fd;       /* local files: the descriptor, else -1 */
	void *priv;
};
/* A local regular file (or block device) by path; anything else (a FIFO, a
 * character device, a directory) is refused with IDD_EPERM, without
 * waiting on it. */
int idd_file_open_local(const char *path, idd_file **out, idd_error *err);
#define IDD_FILE_NOFOLLOW 1u /* refuse a symbolic link as the last component */
#define IDD_FILE_BLOCKDEV 2u /* a block device is as good as a regular file */
/* open(path, oflags | O_CLOEXEC | O_NOCTTY) (mode 0644 when creating) without
 * ever waiting on a FIFO, and refuse anything but a regular file (or, with
 * IDD_FILE_BLOCKDEV, a block device) naming what it is.  The descriptor, or
 * a negative code with err filled (IDD_ENOENT when it does not exist). */
int idd_open_regular(const char *path, int oflags, unsigned flags, idd_error *err);
int idd_file_open_local_flags(const char *path, unsigned flags, idd_file **out, idd_error *err);

/* ---- files in use (flock) ----
 * A reader share-locks a file it keeps open; whoever removes such a file
 * (cache gc) first takes the lock exclusively and holds it while it
 * unlinks.  idd_flock_shared waits a little for an exclusive holder (a
 * probe or a removal lets go within moments) rather than go unprotected,
 * then checks that path still names fd's file: 0 locked, 1 the file was
 * removed or replaced meanwhile (fd is of no use), -1 no lock (someone
 * holds it exclusively for longer: used unprotected, as without locks). */
int idd_flock_shared(int fd, const char *path);
/* path opened and locked exclusively, for removal: the descriptor, or -1
 * when it is in use (share-locked) or not there (errno ENOENT). */
int idd_open_for_removal(const char *path);
/* A window [off, off+len) of parent.  With owns_parent the slice closes
 * parent when it is closed (also on failure); else parent must outlive it. */
int idd_file_open_slice(idd_file *parent, bool owns_parent, uint64_t off, uint64_t len,
                        const char *name, idd_file **out, idd_error *err);
static inline int idd_file_pread(idd_file *f, void *buf, size_t len, uint64_t off, idd_error *err)
{
	return f->ops->pread(f, buf, len, off, err);
}
int idd_file_next_data(idd_file *f, uint64_t off, uint64_t *data, uint64_t *data_end, idd_error *err);
void idd_file_close(idd_file *f);

#endif
