/* partial.c - partial images: a sparse data file and its presence journal. */
#include "node/partial.h"
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char JOURNAL_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'R', 'S', 0};
#define JOURNAL_VERSION 1

/* The first 8 bytes of SHA-256 over a record's or header's other bytes:
 * a torn append or a flipped byte ends the journal there. */
static void check8(const unsigned char *p, size_t n, unsigned char out[8])
{
	unsigned char sum[32];
	if (idd_sha256(p, n, sum, NULL))
		memset(sum, 0, sizeof sum);
	memcpy(out, sum, 8);
}

static void header_encode(const idd_partial_header *h, unsigned char b[IDD_PARTIAL_HEADER])
{
	memset(b, 0, IDD_PARTIAL_HEADER);
	memcpy(b, JOURNAL_MAGIC, 8);
	idd_le32_put(b + 8, JOURNAL_VERSION);
	idd_le32_put(b + 12, h->block_size);
	idd_le64_put(b + 16, h->image_size);
	idd_le64_put(b + 24, h->data_blocks);
	memcpy(b + 32, h->id_sum.b, 24); /* a prefix names the image well enough */
	check8(b, 56, b + 56);
}

static bool header_decode(const unsigned char b[IDD_PARTIAL_HEADER], idd_partial_header *h)
{
	unsigned char c[8];
	check8(b, 56, c);
	if (memcmp(b, JOURNAL_MAGIC, 8) || idd_le32(b + 8) != JOURNAL_VERSION || memcmp(c, b + 56, 8))
		return false;
	memset(h, 0, sizeof *h);
	h->block_size = idd_le32(b + 12);
	h->image_size = idd_le64(b + 16);
	h->data_blocks = idd_le64(b + 24);
	memcpy(h->id_sum.b, b + 32, 24);
	return idd_is_power_of_two(h->block_size) && h->block_size >= IDD_MIN_BLOCK_SIZE &&
	       h->block_size <= IDD_MAX_BLOCK_SIZE;
}

static void record_encode(const idd_partial_record *r, unsigned char b[IDD_PARTIAL_RECORD])
{
	idd_le64_put(b, r->block);
	memcpy(b + 8, r->digest.b, IDD_DIGEST_SIZE);
	check8(b, 40, b + 40);
}

static bool record_decode(const unsigned char b[IDD_PARTIAL_RECORD], idd_partial_record *r)
{
	unsigned char c[8];
	check8(b, 40, c);
	if (memcmp(c, b + 40, 8))
		return false;
	r->block = idd_le64(b);
	memcpy(r->digest.b, b + 8, IDD_DIGEST_SIZE);
	return !idd_digest_is_zero(&r->digest);
}

int idd_partial_journal_read(const char *path, idd_partial_header *h, uint64_t *off,
                             idd_partial_record_fn fn, void *ctx, idd_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return errno == ENOENT ? IDD_ENOENT : idd_fail_errno(err, path, "cannot open");
	struct stat st;
	if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
		close(fd);
		return idd_fail_code(err, IDD_ECORRUPT, "%s: not a regular file", path);
	}
	unsigned char hb[IDD_PARTIAL_HEADER];
	if (idd_pread_all(fd, hb, sizeof hb, 0) || !header_decode(hb, h)) {
		close(fd);
		return idd_fail_code(err, IDD_ECORRUPT, "%s: not an imgdedup presence journal (or damaged)",
		                     path);
	}
	if (*off < IDD_PARTIAL_HEADER)
		*off = IDD_PARTIAL_HEADER;
	uint64_t nblocks = h->image_size / h->block_size + (h->image_size % h->block_size != 0);
	unsigned char buf[IDD_PARTIAL_RECORD * 256];
	int rc = IDD_OK;
	while (!rc && *off + IDD_PARTIAL_RECORD <= (uint64_t)st.st_size) {
		uint64_t want = IDD_MIN((uint64_t)sizeof buf, ((uint64_t)st.st_size - *off) /
		                                                  IDD_PARTIAL_RECORD * IDD_PARTIAL_RECORD);
		ssize_t got = pread(fd, buf, (size_t)want, (off_t)*off);
		if (got < (ssize_t)IDD_PARTIAL_RECORD)
			break;
		size_t n = (size_t)got / IDD_PARTIAL_RECORD;
		size_t i = 0;
		for (; !rc && i < n; i++) {
			idd_partial_record r;
			if (!record_decode(buf + i * IDD_PARTIAL_RECORD, &r) || r.block >= nblocks)
				goto done; /* torn or damaged: the journal ends here */
			rc = fn(ctx, &r);
			if (!rc)
				*off += IDD_PARTIAL_RECORD;
		}
	}
done:
	close(fd);
	return rc;
}

static int count_record(void *ctx, const idd_partial_record *r)
{
	(void)ctx;
	(void)r;
	return IDD_OK;
}

static int open_file(const char *path, int flags, idd_error *err)
{
	int fd = idd_open_regular(path, flags | O_CREAT, IDD_FILE_NOFOLLOW, err);
	if (fd < 0)
		return -1;
	(void)flock(fd, LOCK_SH | LOCK_NB);
	return fd;
}

void idd_partial_close(idd_partial *p)
{
	if (!p)
		return;
	if (p->data_fd >= 0)
		close(p->data_fd);
	if (p->journal_fd >= 0)
		close(p->journal_fd);
	free(p->data_path);
	free(p->journal_path);
	free(p->pending);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

int idd_partial_open(const char *base, const char *id, uint32_t block_size, uint64_t image_size,
                     uint64_t data_blocks, idd_partial **out, idd_error *err)
{
	idd_partial *p = idd_calloc(1, sizeof *p, err);
	if (!p)
		return IDD_ENOMEM;
	p->data_fd = p->journal_fd = -1;
	pthread_mutex_init(&p->lock, NULL);
	p->h.block_size = block_size;
	p->h.image_size = image_size;
	p->h.data_blocks = data_blocks;
	int rc = idd_sha256(id, strlen(id), p->h.id_sum.b, err);
	p->data_path = idd_asprintf(err, "%s%s", base, IDD_PARTIAL_DATA_SUFFIX);
	p->journal_path = idd_asprintf(err, "%s%s", base, IDD_PARTIAL_JOURNAL_SUFFIX);
	if (!rc && (!p->data_path || !p->journal_path))
		rc = IDD_ENOMEM;
	if (!rc && (p->data_fd = open_file(p->data_path, O_RDWR, err)) < 0)
		rc = err->code ? err->code : IDD_EIO;
	if (!rc && (p->journal_fd = open_file(p->journal_path, O_RDWR | O_APPEND, err)) < 0)
		rc = err->code ? err->code : IDD_EIO;
	if (rc) {
		idd_partial_close(p);
		return rc;
	}
	/* Keep a journal of this very image; anything else starts over. */
	unsigned char hb[IDD_PARTIAL_HEADER], want[IDD_PARTIAL_HEADER];
	header_encode(&p->h, want);
	idd_partial_header old;
	bool same = idd_pread_all(p->journal_fd, hb, sizeof hb, 0) == 0 && header_decode(hb, &old) &&
	            !memcmp(hb + 8, want + 8, 24) && !memcmp(hb + 32, want + 32, 24);
	struct stat st;
	if (!same) {
		if (ftruncate(p->journal_fd, 0) || ftruncate(p->data_fd, 0) ||
		    ftruncate(p->data_fd, (off_t)image_size) ||
		    idd_write_all(p->journal_fd, want, sizeof want) ||
		    fsync(p->journal_fd))
			rc = idd_fail_errno(err, p->journal_path, "cannot start");
	} else if (fstat(p->data_fd, &st) || ((uint64_t)st.st_size != image_size &&
	                                       ftruncate(p->data_fd, (off_t)image_size))) {
		rc = idd_fail_errno(err, p->data_path, "cannot size");
	} else {
		/* a torn record at the end (a crash mid-append) would hide every
		 * record appended after it: cut the journal back to its intact part */
		idd_partial_header h2;
		uint64_t end = 0;
		struct stat js;
		if (idd_partial_journal_read(p->journal_path, &h2, &end, count_record, NULL, err) == IDD_OK &&
		    !fstat(p->journal_fd, &js) && end < (uint64_t)js.st_size &&
		    ftruncate(p->journal_fd, (off_t)end))
			rc = idd_fail_errno(err, p->journal_path, "cannot repair");
	}
	if (rc) {
		idd_partial_close(p);
		return rc;
	}
	*out = p;
	return IDD_OK;
}

int idd_partial_write(idd_partial *p, uint64_t block, const void *buf, size_t len, idd_error *err)
{
	if (idd_pwrite_all(p->data_fd, buf, len, block * p->h.block_size))
		return idd_fail_errno(err, p->data_path, "write");
	return IDD_OK;
}

int idd_partial_note(idd_partial *p, uint64_t block, const idd_digest *d, idd_error *err)
{
	pthread_mutex_lock(&p->lock);
	int rc = IDD_OK;
	if (p->npending == p->cap_pending) {
		size_t nc = p->cap_pending ? p->cap_pending * 2 : 256;
		idd_partial_record *nr = idd_realloc_array(p->pending, nc, sizeof *nr, err);
		if (!nr)
			rc = IDD_ENOMEM;
		else {
			p->pending = nr;
			p->cap_pending = nc;
		}
	}
	if (!rc)
		p->pending[p->npending++] = (idd_partial_record){block, *d};
	pthread_mutex_unlock(&p->lock);
	return rc;
}

int idd_partial_flush(idd_partial *p, size_t *flushed, idd_error *err)
{
	*flushed = 0;
	pthread_mutex_lock(&p->lock);
	size_t n = p->npending;
	idd_partial_record *v = p->pending;
	p->pending = NULL;
	p->npending = p->cap_pending = 0;
	pthread_mutex_unlock(&p->lock);
	if (!n) {
		free(v);
		return IDD_OK;
	}
	/* data first: a record never names bytes that are not on disk */
	int rc = IDD_OK;
	if (fdatasync(p->data_fd))
		rc = idd_fail_errno(err, p->data_path, "fsync");
	unsigned char *buf = rc ? NULL : idd_malloc(n * IDD_PARTIAL_RECORD, err);
	if (!rc && !buf)
		rc = IDD_ENOMEM;
	for (size_t i = 0; !rc && i < n; i++)
		record_encode(&v[i], buf + i * IDD_PARTIAL_RECORD);
	/* one append: concurrent writers' records never interleave inside it
	 * (a short one is followed by a write that says why it was short) */
	if (!rc && (idd_write_all(p->journal_fd, buf, n * IDD_PARTIAL_RECORD) ||
	            fdatasync(p->journal_fd)))
		rc = idd_fail_errno(err, p->journal_path, "append");
	if (!rc)
		*flushed = n;
	free(buf);
	free(v);
	return rc;
}
