/* outpart.c - OUT.part: the image being written, resumable, and renamed
 * into place only when complete. */
#include "node/outpart.h"
#include "base/file.h"
#include "index/indexfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#define RUN_BYTES ((size_t)1 << 20)

static int open_once(idd_outpart *p, bool *retry, idd_error *err)
{
	*retry = false;
	/* a symlink planted at OUT.part is never written through, a FIFO there
	 * does not hang the open */
	int fd = idd_open_regular(p->part, O_RDWR | O_CREAT, IDD_FILE_NOFOLLOW, err);
	if (fd < 0)
		return fd == IDD_ENOENT ? IDD_ERR : fd;
	struct stat st, now;
	if (fstat(fd, &st)) {
		close(fd);
		return idd_fail_errno(err, p->part, "stat");
	}
	if (flock(fd, LOCK_EX | LOCK_NB)) {
		close(fd);
		return idd_fail_code(err, IDD_EBUSY, "%s: another deploy is writing this file", p->part);
	}
	/* The lock is on the inode opened; the name may meanwhile have been
	 * renamed to OUT by the deploy that held it.  Only the file the name
	 * still points to may be written. */
	if (lstat(p->part, &now) || now.st_dev != st.st_dev || now.st_ino != st.st_ino) {
		close(fd);
		*retry = true;
		return IDD_OK;
	}
	p->fd = fd;
	if ((uint64_t)st.st_size != p->size &&
	    (ftruncate(fd, 0) || ftruncate(fd, (off_t)p->size)))
		return idd_fail_errno(err, p->part, "cannot size");
	return IDD_OK;
}

int idd_outpart_open(idd_outpart *p, const char *out, uint64_t size, uint32_t bs, idd_error *err)
{
	memset(p, 0, sizeof *p);
	p->fd = -1;
	p->size = size;
	p->bs = bs;
	p->out = idd_strdup(out, err);
	p->part = p->out ? idd_asprintf(err, "%s.part", out) : NULL;
	if (!p->part)
		return IDD_ENOMEM;
	for (int attempt = 0; attempt < 5; attempt++) {
		bool retry;
		int rc = open_once(p, &retry, err);
		if (rc || !retry)
			return rc;
	}
	return idd_fail_code(err, IDD_EBUSY, "%s: keeps being replaced by another deploy", p->part);
}

int idd_outpart_write(idd_outpart *p, const void *buf, size_t len, uint64_t off, idd_error *err)
{
	if (idd_pwrite_all(p->fd, buf, len, off))
		return idd_fail_errno(err, p->part, "write");
	/* only a hint: errors surface in the final fsync */
	(void)sync_file_range(p->fd, (off_t)off, (off_t)len, SYNC_FILE_RANGE_WRITE);
	return IDD_OK;
}

bool idd_outpart_clone(idd_outpart *p, atomic_bool *can_clone, int src_fd, uint64_t src_off,
                       const unsigned char *verified, uint64_t len, uint64_t off)
{
	if (!atomic_load_explicit(can_clone, memory_order_relaxed) || len % 4096 || src_off % 4096 ||
	    off % 4096)
		return false;
	struct file_clone_range r = {.src_fd = src_fd, .src_offset = src_off, .src_length = len,
	                             .dest_offset = off};
	if (ioctl(p->fd, FICLONERANGE, &r)) {
		if (errno == EOPNOTSUPP || errno == EXDEV || errno == ENOTTY || errno == EPERM ||
		    errno == ENOSYS || errno == EINVAL)
			atomic_store(can_clone, false); /* this filesystem cannot: stop trying */
		return false;
	}
	/* The clone shares the source's blocks as they are now, not as they
	 * were when hashed: read it back and compare. */
	unsigned char *back = malloc((size_t)len);
	bool same = back && idd_pread_all(p->fd, back, (size_t)len, off) == 0 &&
	            memcmp(back, verified, (size_t)len) == 0;
	free(back);
	return same;
}

int idd_outpart_resume(idd_outpart *p, const idd_map *m, idd_outpart_valid_fn fn, void *ctx,
                       uint64_t *bytes_valid, idd_error *err)
{
	*bytes_valid = 0;
	uint32_t bs = p->bs;
	unsigned char *buf = idd_malloc(RUN_BYTES + bs, err);
	idd_digest *dg = idd_calloc(RUN_BYTES / bs + 1, sizeof *dg, err);
	idd_hasher *h = idd_thread_hasher(err);
	int rc = (!buf || !dg || !h) ? IDD_ENOMEM : IDD_OK;
	uint64_t size = p->size, off = 0;
	while (!rc && off < size) {
		off_t ds = lseek(p->fd, (off_t)off, SEEK_DATA);
		if (ds < 0)
			break; /* ENXIO: only holes remain */
		off_t he = lseek(p->fd, ds, SEEK_HOLE);
		uint64_t end = he < 0 ? size : IDD_MIN((uint64_t)he, size);
		uint64_t b1 = (end + bs - 1) / bs;
		for (uint64_t b = (uint64_t)ds / bs; !rc && b < b1;) {
			uint64_t nb = IDD_MIN(b1 - b, (uint64_t)(RUN_BYTES / bs));
			uint64_t start = b * bs, len = IDD_MIN(nb * bs, size - start);
			memset(buf, 0, nb * bs);
			uint64_t hashed = 0;
			if (idd_pread_all(p->fd, buf, (size_t)len, start)) {
				rc = idd_fail_errno(err, p->part, "read");
				break;
			}
			if ((rc = idd_hash_blocks(h, buf, (size_t)(nb * bs), bs, dg, &hashed, err)))
				break;
			for (uint64_t i = 0; !rc && i < nb; i++) {
				uint64_t blk = b + i, bl = IDD_MIN((uint64_t)bs, size - blk * bs);
				uint32_t ref = idd_map_ref(m, blk);
				if (ref == 0) {
					/* the map says zero: make it a hole again (or zeros) */
					if (fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
					              (off_t)(blk * bs), (off_t)bl) &&
					    !idd_digest_is_zero(&dg[i])) {
						memset(buf, 0, bl);
						rc = idd_outpart_write(p, buf, bl, blk * bs, err);
					}
				} else if (!memcmp(dg[i].b, m->digests[ref - 1].b, IDD_DIGEST_SIZE)) {
					fn(ctx, blk, ref);
					*bytes_valid += bl;
				}
			}
			b += nb;
		}
		off = end;
	}
	free(buf);
	free(dg);
	return rc;
}

int idd_outpart_finish(idd_outpart *p, bool force, idd_error *err)
{
	if (fsync(p->fd))
		return idd_fail_errno(err, p->part, "fsync");
	struct stat st;
	if (!force && lstat(p->out, &st) == 0)
		return idd_fail_code(err, IDD_EPERM, "%s: exists (use --force to replace it)", p->out);
	if (rename(p->part, p->out))
		return idd_fail_errno(err, p->out, "cannot rename the finished image into place");
	char *dir = idd_strdup(p->out, err);
	if (!dir)
		return IDD_ENOMEM;
	int rc = idd_fsync_dir(dirname(dir), err);
	free(dir);
	return rc;
}

void idd_outpart_close(idd_outpart *p, bool remove_part)
{
	if (p->fd >= 0) {
		/* remove while the lock is held: no other deploy is using it */
		if (remove_part)
			unlink(p->part);
		close(p->fd);
	}
	p->fd = -1;
	free(p->out);
	free(p->part);
	p->out = p->part = NULL;
}

/* ---- the output as a block source ---- */

struct output {
	idd_outpart *p;
	const idd_map *m;
	const uint64_t *pos;
	idd_digest_set refs; /* digest -> its reference k */
};

static bool output_has(idd_block_source *s, const idd_digest *d)
{
	struct output *o = s->priv;
	size_t slot = idd_digest_set_find(&o->refs, d);
	return slot != (size_t)-1 && o->pos[o->refs.aux[slot]] != UINT64_MAX;
}

static int output_read(idd_block_source *s, idd_block_req *reqs, size_t n, idd_error *err)
{
	struct output *o = s->priv;
	idd_hasher *h = idd_thread_hasher(err);
	if (!h)
		return IDD_ENOMEM;
	uint32_t bs = s->block_size;
	uint64_t *from = idd_malloc((n ? n : 1) * sizeof *from, err);
	if (!from)
		return IDD_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		reqs[i].status = IDD_ENOENT;
		reqs[i].origin_fd = -1;
		size_t slot = idd_digest_set_find(&o->refs, &reqs[i].digest);
		from[i] = slot == (size_t)-1 ? UINT64_MAX : o->pos[o->refs.aux[slot]];
	}
	int rc = IDD_OK;
	for (size_t i = 0; !rc && i < n;) {
		if (from[i] == UINT64_MAX) {
			i++;
			continue;
		}
		/* first copies consecutive in OUT into consecutive buffers: one read */
		size_t j = i + 1;
		while (j < n && from[j] == from[i] + (j - i) && reqs[j].buf == reqs[i].buf + (j - i) * bs)
			j++;
		uint64_t off = from[i] * bs, len = IDD_MIN((uint64_t)(j - i) * bs, o->p->size - off);
		memset(reqs[i].buf + len, 0, (size_t)((j - i) * bs - len));
		if (idd_pread_all(o->p->fd, reqs[i].buf, (size_t)len, off)) {
			rc = idd_fail_errno(err, o->p->part, "read");
			break;
		}
		for (size_t k = i; k < j; k++) {
			idd_block_req *q = &reqs[k];
			if (idd_block_verify(h, q->buf, bs, &q->digest)) {
				q->status = IDD_OK;
				q->origin_fd = o->p->fd;
				q->origin_off = from[k] * bs;
				atomic_fetch_add(&s->blocks, 1);
				atomic_fetch_add(&s->bytes, IDD_MIN((uint64_t)bs, o->p->size - from[k] * bs));
			} else {
				q->status = IDD_ECORRUPT;
				atomic_fetch_add(&s->damaged, 1);
			}
		}
		i = j;
	}
	free(from);
	return rc;
}

static void output_close(idd_block_source *s)
{
	struct output *o = s->priv;
	if (o) {
		idd_digest_set_free(&o->refs);
		free(o);
	}
	idd_block_source_fini(s);
	free(s);
}

static const struct idd_block_source_ops output_ops = {"output", output_has, output_read,
                                                       output_close};

int idd_output_source_open(idd_outpart *p, const idd_map *m, const uint64_t *pos,
                           idd_block_source **out, idd_error *err)
{
	idd_block_source *s = idd_calloc(1, sizeof *s, err);
	struct output *o = idd_calloc(1, sizeof *o, err);
	if (!s || !o) {
		free(s);
		free(o);
		return IDD_ENOMEM;
	}
	o->p = p;
	o->m = m;
	o->pos = pos;
	s->priv = o;
	int rc = idd_block_source_init(s, &output_ops, p->part, p->bs, NULL, NULL, err);
	if (!rc)
		rc = idd_digest_set_init(&o->refs, (size_t)m->ndistinct + 16, true, err);
	for (uint64_t k = 0; !rc && k < m->ndistinct; k++) {
		bool added;
		size_t slot = idd_digest_set_add(&o->refs, &m->digests[k], &added, err);
		if (slot == (size_t)-1)
			rc = IDD_ENOMEM;
		else
			o->refs.aux[slot] = k + 1;
	}
	if (rc) {
		output_close(s);
		return rc;
	}
	*out = s;
	return IDD_OK;
}
