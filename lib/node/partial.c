/* partial.c - partial images: a sparse data file and its presence journal. */
#include "node/partial.h"
#include "base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static const char JOURNAL_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'R', 'S', 0};
#define JOURNAL_VERSION 2
#define CHECK_BYTES ((size_t)1 << 20)

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
	idd_le32_put(b + 8, h->version);
	idd_le32_put(b + 12, h->block_size);
	idd_le64_put(b + 16, h->image_size);
	idd_le64_put(b + 24, h->data_blocks);
	memcpy(b + 32, h->key, 24);
	check8(b, 56, b + 56);
}

static bool header_decode(const unsigned char b[IDD_PARTIAL_HEADER], idd_partial_header *h)
{
	unsigned char c[8];
	check8(b, 56, c);
	uint32_t v = idd_le32(b + 8);
	if (memcmp(b, JOURNAL_MAGIC, 8) || (v != 1 && v != JOURNAL_VERSION) || memcmp(c, b + 56, 8))
		return false;
	memset(h, 0, sizeof *h);
	h->version = v;
	h->block_size = idd_le32(b + 12);
	h->image_size = idd_le64(b + 16);
	h->data_blocks = idd_le64(b + 24);
	memcpy(h->key, b + 32, 24);
	return idd_is_power_of_two(h->block_size) && h->block_size >= IDD_MIN_BLOCK_SIZE &&
	       h->block_size <= IDD_MAX_BLOCK_SIZE;
}

static void record_encode(const idd_partial_record *r, unsigned char b[IDD_PARTIAL_RECORD])
{
	idd_le64_put(b, r->block);
	memcpy(b + 8, r->digest.b, IDD_DIGEST_SIZE);
	idd_le64_put(b + 40, r->copies);
	check8(b, 48, b + 48);
}

static bool record_decode(const unsigned char *b, uint32_t version, idd_partial_record *r)
{
	size_t body = version == 1 ? 40 : 48;
	unsigned char c[8];
	check8(b, body, c);
	if (memcmp(c, b + body, 8))
		return false;
	r->block = idd_le64(b);
	memcpy(r->digest.b, b + 8, IDD_DIGEST_SIZE);
	r->copies = version == 1 ? 1 : idd_le64(b + 40);
	return !idd_digest_is_zero(&r->digest) && r->copies > 0;
}

int idd_partial_header_of(const char *id, const idd_map *m, idd_partial_header *h, idd_error *err)
{
	memset(h, 0, sizeof *h);
	h->version = JOURNAL_VERSION;
	h->block_size = m->block_size;
	h->image_size = m->image_size;
	h->data_blocks = idd_map_nonzero_blocks(m);
	/* the id and the map: a partial filled for an older map of the same
	 * image (changed in place since) is not taken for this one */
	idd_digest key;
	unsigned char sum[32];
	int rc = idd_map_content_key(m, &key, err);
	if (!rc)
		rc = idd_sha256_2(id, strlen(id) + 1, key.b, sizeof key.b, sum, err);
	if (!rc)
		memcpy(h->key, sum, sizeof h->key);
	return rc;
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
	size_t rs = h->version == 1 ? IDD_PARTIAL_RECORD_V1 : IDD_PARTIAL_RECORD;
	unsigned char buf[IDD_PARTIAL_RECORD * 256];
	int rc = IDD_OK;
	while (!rc && *off + rs <= (uint64_t)st.st_size) {
		uint64_t want = IDD_MIN((uint64_t)(rs * 256), ((uint64_t)st.st_size - *off) / rs * rs);
		ssize_t got = pread(fd, buf, (size_t)want, (off_t)*off);
		if (got < (ssize_t)rs)
			break;
		size_t n = (size_t)got / rs;
		for (size_t i = 0; !rc && i < n; i++) {
			idd_partial_record r;
			if (!record_decode(buf + i * rs, h->version, &r) || r.block >= nblocks)
				goto done; /* torn or damaged: the journal ends here */
			rc = fn(ctx, &r);
			if (!rc)
				*off += rs;
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
	/* a file gc removed while it was being opened is created anew */
	for (int tries = 0;; tries++) {
		int fd = idd_open_regular(path, flags | O_CREAT, IDD_FILE_NOFOLLOW, err);
		if (fd < 0)
			return fd;
		if (idd_flock_shared(fd, path) != 1 || tries == 3)
			return fd;
		close(fd);
	}
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
	free(p->copies);
	pthread_mutex_destroy(&p->lock);
	free(p);
}

/* How many blocks of m hold each digest: what one record of it covers. */
static uint32_t *count_copies(const idd_map *m, idd_error *err)
{
	uint32_t *c = idd_calloc(m->ndistinct ? m->ndistinct : 1, sizeof *c, err);
	for (size_t i = 0; c && i < m->nruns; i++) {
		const idd_map_span *sp = &m->runs[i];
		if (sp->kind == IDD_RUN_SEQ) {
			for (uint64_t k = 0; k < sp->count; k++)
				if (c[sp->ref - 1 + k] < UINT32_MAX)
					c[sp->ref - 1 + k]++;
		} else if (sp->kind == IDD_RUN_SAME) {
			uint64_t v = c[sp->ref - 1] + sp->count;
			c[sp->ref - 1] = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
		}
	}
	return c;
}

int idd_partial_open(const char *base, const char *id, const idd_map *m, idd_partial **out,
                     idd_error *err)
{
	idd_partial *p = idd_calloc(1, sizeof *p, err);
	if (!p)
		return IDD_ENOMEM;
	p->data_fd = p->journal_fd = -1;
	pthread_mutex_init(&p->lock, NULL);
	p->m = m;
	uint64_t image_size = m->image_size;
	int rc = idd_partial_header_of(id, m, &p->h, err);
	p->copies = rc ? NULL : count_copies(m, err);
	p->data_path = idd_asprintf(err, "%s%s", base, IDD_PARTIAL_DATA_SUFFIX);
	p->journal_path = idd_asprintf(err, "%s%s", base, IDD_PARTIAL_JOURNAL_SUFFIX);
	if (!rc && (!p->copies || !p->data_path || !p->journal_path))
		rc = IDD_ENOMEM;
	if (!rc && (p->data_fd = open_file(p->data_path, O_RDWR, err)) < 0)
		rc = p->data_fd;
	if (!rc && (p->journal_fd = open_file(p->journal_path, O_RDWR | O_APPEND, err)) < 0)
		rc = p->journal_fd;
	if (rc) {
		idd_partial_close(p);
		return rc;
	}
	/* Keep a journal of this very image and map; anything else starts over. */
	unsigned char hb[IDD_PARTIAL_HEADER], want[IDD_PARTIAL_HEADER];
	header_encode(&p->h, want);
	idd_partial_header old;
	bool same = idd_pread_all(p->journal_fd, hb, sizeof hb, 0) == 0 && header_decode(hb, &old) &&
	            !memcmp(hb + 8, want + 8, 48);
	struct stat st;
	if (!same) {
		/* the journal starts over; the data file's bytes are kept but never
		 * trusted (reads verify them, completion checks every block), so
		 * what did not change is still found there by this process's cache */
		if (ftruncate(p->journal_fd, 0) || ftruncate(p->data_fd, (off_t)image_size) ||
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

void idd_partial_remove_unused(const char *base)
{
	char *data = idd_asprintf(NULL, "%s%s", base, IDD_PARTIAL_DATA_SUFFIX);
	char *journal = idd_asprintf(NULL, "%s%s", base, IDD_PARTIAL_JOURNAL_SUFFIX);
	/* Each file locked exclusively while it is unlinked: one that a serve
	 * opens meanwhile is either in use (kept) or found gone by it.  The
	 * journal first: a crash leaves data without records (space, no lies). */
	int dfd = data ? idd_open_for_removal(data) : -1;
	bool data_gone = dfd < 0 && errno == ENOENT;
	if (journal && (dfd >= 0 || data_gone)) {
		int jfd = idd_open_for_removal(journal);
		if (jfd >= 0) {
			(void)unlink(journal);
			close(jfd);
		}
	}
	if (dfd >= 0) {
		if (journal && access(journal, F_OK))
			(void)unlink(data);
		close(dfd);
	}
	free(data);
	free(journal);
}

int idd_partial_load(const char *base, const char *id, const idd_map *m, idd_partial_record_fn fn,
                     void *ctx, idd_error *err)
{
	idd_partial_header want, h;
	int rc = idd_partial_header_of(id, m, &want, err);
	char *journal = rc ? NULL : idd_asprintf(err, "%s%s", base, IDD_PARTIAL_JOURNAL_SUFFIX);
	if (!rc && !journal)
		rc = IDD_ENOMEM;
	if (rc)
		return rc;
	/* the header first: the records of another map are not this image's */
	uint64_t off = 0;
	idd_error e2;
	rc = idd_partial_journal_read(journal, &h, &off, count_record, NULL, &e2);
	if (rc == IDD_OK && (h.version != want.version || h.block_size != want.block_size ||
	                     h.image_size != want.image_size || h.data_blocks != want.data_blocks ||
	                     memcmp(h.key, want.key, sizeof h.key)))
		rc = IDD_ENOENT;
	if (rc == IDD_OK) {
		off = 0;
		rc = idd_partial_journal_read(journal, &h, &off, fn, ctx, err);
	} else if (rc != IDD_ENOMEM) {
		rc = IDD_ENOENT; /* none, damaged, or another's: nothing of it is known */
	}
	free(journal);
	return rc;
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
	if (!rc) {
		uint32_t ref = block < p->m->nblocks ? idd_map_ref(p->m, block) : 0;
		uint64_t copies = ref ? p->copies[ref - 1] : 1;
		p->pending[p->npending++] = (idd_partial_record){block, *d, copies};
	}
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

int idd_partial_sync(idd_partial *p, idd_error *err)
{
	if (fdatasync(p->data_fd))
		return idd_fail_errno(err, p->data_path, "fsync");
	return IDD_OK;
}

/* A zero run of the map: a hole, or failing that zeros where it is not. */
static int check_zero(int fd, const char *path, uint64_t off, uint64_t len, unsigned char *buf,
                      size_t cap, idd_error *err)
{
	if (!len || !fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len))
		return IDD_OK;
	for (uint64_t done = 0; done < len;) {
		size_t n = (size_t)IDD_MIN((uint64_t)cap, len - done);
		if (idd_pread_all(fd, buf, n, off + done))
			return idd_fail_errno(err, path, "read");
		if (!idd_is_zero(buf, n)) {
			memset(buf, 0, n);
			if (idd_pwrite_all(fd, buf, n, off + done))
				return idd_fail_errno(err, path, "write");
		}
		done += n;
	}
	return IDD_OK;
}

int idd_image_check(int fd, const char *path, const idd_map *m, idd_block_fn bad, void *ctx,
                    idd_error *err)
{
	uint32_t bs = m->block_size;
	size_t per = IDD_MAX(CHECK_BYTES / bs, (size_t)1);
	unsigned char *buf = idd_malloc(per * bs, err);
	idd_digest *dg = buf ? idd_calloc(per, sizeof *dg, err) : NULL;
	idd_hasher *h = dg ? idd_thread_hasher(err) : NULL;
	int rc = h ? IDD_OK : IDD_ENOMEM;
	struct stat st;
	if (!rc && fstat(fd, &st))
		rc = idd_fail_errno(err, path, "stat");
	/* a file shorter than the image holds nothing past its end */
	uint64_t have = rc ? 0 : IDD_MIN((uint64_t)st.st_size, m->image_size);
	for (size_t ri = 0; !rc && ri < m->nruns; ri++) {
		const idd_map_span *sp = &m->runs[ri];
		uint64_t first = sp->block * bs, end = IDD_MIN((sp->block + sp->count) * bs, m->image_size);
		if (sp->kind == IDD_RUN_ZERO) {
			if (first < have)
				rc = check_zero(fd, path, first, IDD_MIN(end, have) - first, buf, per * bs, err);
			continue;
		}
		for (uint64_t b = sp->block; !rc && b < sp->block + sp->count;) {
			uint64_t nb = IDD_MIN((uint64_t)per, sp->block + sp->count - b);
			uint64_t off = b * bs, len = IDD_MIN(nb * bs, m->image_size - off);
			uint64_t got = off < have ? IDD_MIN(len, have - off) : 0, hashed;
			memset(buf, 0, nb * bs);
			if (got && idd_pread_all(fd, buf, (size_t)got, off)) {
				rc = idd_fail_errno(err, path, "read");
				break;
			}
			if ((rc = idd_hash_blocks(h, buf, (size_t)(nb * bs), bs, dg, &hashed, err)))
				break;
			for (uint64_t i = 0; !rc && i < nb; i++) {
				uint32_t ref = idd_map_span_ref(sp, b + i);
				if (memcmp(dg[i].b, m->digests[ref - 1].b, IDD_DIGEST_SIZE))
					rc = bad(ctx, b + i);
			}
			b += nb;
		}
	}
	free(buf);
	free(dg);
	return rc;
}
