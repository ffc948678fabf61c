/* indexfile.c - the container every index file uses (magic, version,
 * zstd payload, SHA-256 trailer), atomic replacement and the index lock. */
#include "index/indexfile.h"
#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "index/indexdir.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <zstd.h>

/* Write pieces to PATH.tmp.PID, fsync it, rename over PATH, fsync the
 * directory: readers see the old file or the new one, never a mix. */
static int write_atomic_iov(const char *path, const void *const *parts, const size_t *lens,
                            size_t nparts, idd_error *err)
{
	char *tmp = idd_tmp_path(path, err);
	if (!tmp)
		return IDD_ERR;
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		int rc = idd_fail_errno(err, tmp, "cannot create");
		free(tmp);
		return rc;
	}
	uint64_t off = 0;
	for (size_t i = 0; i < nparts; off += lens[i], i++) {
		if (idd_pwrite_all(fd, parts[i], lens[i], off)) {
			idd_fail_errno(err, tmp, "write");
			goto fail;
		}
	}
	if (fsync(fd)) {
		idd_fail_errno(err, tmp, "fsync");
		goto fail;
	}
	if (close(fd)) {
		fd = -1;
		idd_fail_errno(err, tmp, "close");
		goto fail;
	}
	fd = -1;
	if (rename(tmp, path)) {
		idd_fail_errno(err, path, "cannot rename temporary file into place");
		goto fail;
	}
	free(tmp);
	char *d = idd_strdup(path, err);
	if (!d)
		return IDD_ERR;
	int rc = idd_fsync_dir(dirname(d), err);
	free(d);
	return rc;
fail:
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	free(tmp);
	return IDD_ERR;
}

int idd_write_file_atomic(const char *path, const void *data, size_t len, idd_error *err)
{
	const void *parts[1] = {data};
	size_t lens[1] = {len};
	return write_atomic_iov(path, parts, lens, 1, err);
}

/* An index file ready to write: header, stored payload, checksum. */
struct encoded {
	unsigned char hdr[IDD_IF_HEADER];
	const void *stored;
	size_t stored_len;
	void *zbuf;
	unsigned char sum[32];
};

static int encode(const char *name, const char magic[8], uint32_t version, const void *payload,
                  size_t len, bool compress, struct encoded *e, idd_error *err)
{
	e->stored = payload;
	e->stored_len = len;
	e->zbuf = NULL;
	if (compress) {
		size_t bound = ZSTD_compressBound(len);
		e->zbuf = idd_malloc(bound, err);
		if (!e->zbuf)
			return IDD_ERR;
		/* level 1: payloads are mostly SHA-256 digests, which no level compresses;
		 * the zero runs and repeated strings compress as well at level 1 */
		size_t z = ZSTD_compress(e->zbuf, bound, payload, len, 1);
		if (ZSTD_isError(z)) {
			free(e->zbuf);
			return idd_fail(err, "%s: zstd: %s", name, ZSTD_getErrorName(z));
		}
		e->stored = e->zbuf;
		e->stored_len = z;
	}
	memcpy(e->hdr, magic, 8);
	idd_le32_put(e->hdr + 8, version);
	idd_le32_put(e->hdr + 12, compress ? IDD_IF_ZSTD : 0);
	idd_le64_put(e->hdr + 16, len);
	idd_le64_put(e->hdr + 24, e->stored_len);
	if (idd_sha256_2(e->hdr, sizeof e->hdr, e->stored, e->stored_len, e->sum, err)) {
		free(e->zbuf);
		return IDD_ERR;
	}
	return IDD_OK;
}

static int write_encoded(const char *path, struct encoded *e, idd_error *err)
{
	const void *parts[3] = {e->hdr, e->stored, e->sum};
	size_t lens[3] = {sizeof e->hdr, e->stored_len, sizeof e->sum};
	return write_atomic_iov(path, parts, lens, 3, err);
}

int idd_indexfile_write(const char *path, const char magic[8], uint32_t version,
                        const void *payload, size_t len, bool compress, idd_error *err)
{
	struct encoded e;
	if (encode(path, magic, version, payload, len, compress, &e, err))
		return IDD_ERR;
	int rc = write_encoded(path, &e, err);
	free(e.zbuf);
	return rc;
}

/* Does PATH already hold exactly these bytes?  A damaged file of the right
 * name is rewritten, not trusted for its name. */
static bool same_bytes(const char *path, const struct encoded *e)
{
	void *data;
	size_t len;
	if (idd_read_file(path, IDD_IF_HEADER + e->stored_len + IDD_IF_TRAILER, &data, &len, NULL))
		return false;
	const unsigned char *d = data;
	bool same = len == IDD_IF_HEADER + e->stored_len + IDD_IF_TRAILER &&
	            !memcmp(d, e->hdr, IDD_IF_HEADER) &&
	            !memcmp(d + IDD_IF_HEADER, e->stored, e->stored_len) &&
	            !memcmp(d + IDD_IF_HEADER + e->stored_len, e->sum, IDD_IF_TRAILER);
	free(data);
	return same;
}

int idd_indexfile_batch_add(idd_indexfile_batch *b, const char *path, const char magic[8],
                            uint32_t version, const void *payload, size_t len, bool compress,
                            idd_error *err)
{
	struct encoded e;
	if (encode(path, magic, version, payload, len, compress, &e, err))
		return IDD_ERR;
	char *tmp = idd_tmp_path(path, err);
	char *fin = tmp ? idd_strdup(path, err) : NULL;
	int rc = fin ? IDD_OK : IDD_ENOMEM;
	int fd = -1;
	if (!rc && b->n == b->cap) {
		size_t nc = b->cap ? b->cap * 2 : 64;
		char **t = idd_realloc_array(b->tmp, nc, sizeof *t, err);
		if (t)
			b->tmp = t;
		char **f = t ? idd_realloc_array(b->final, nc, sizeof *f, err) : NULL;
		if (f)
			b->final = f;
		if (!t || !f)
			rc = IDD_ENOMEM;
		else
			b->cap = nc;
	}
	if (!rc && (fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644)) < 0)
		rc = idd_fail_errno(err, tmp, "cannot create");
	const void *parts[3] = {e.hdr, e.stored, e.sum};
	size_t lens[3] = {sizeof e.hdr, e.stored_len, sizeof e.sum};
	uint64_t off = 0;
	for (size_t i = 0; !rc && i < 3; off += lens[i], i++)
		if (idd_pwrite_all(fd, parts[i], lens[i], off))
			rc = idd_fail_errno(err, tmp, "write");
	if (fd >= 0 && close(fd) && !rc)
		rc = idd_fail_errno(err, tmp, "close");
	free(e.zbuf);
	if (rc) {
		if (fd >= 0)
			unlink(tmp);
		free(tmp);
		free(fin);
		return rc;
	}
	b->tmp[b->n] = tmp;
	b->final[b->n++] = fin;
	return IDD_OK;
}

static void batch_clear(idd_indexfile_batch *b, bool unlink_tmp)
{
	for (size_t i = 0; i < b->n; i++) {
		if (unlink_tmp && b->tmp[i])
			unlink(b->tmp[i]);
		free(b->tmp[i]);
		free(b->final[i]);
	}
	b->n = 0;
}

int idd_indexfile_batch_commit(idd_indexfile_batch *b, const char *dir, idd_error *err)
{
	if (!b->n)
		return IDD_OK;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = dfd < 0 ? idd_fail_errno(err, dir, "cannot open directory") : IDD_OK;
	/* every file's data is durable before any name points at it: one sync
	 * of the filesystem instead of one per file */
	if (!rc && syncfs(dfd))
		rc = idd_fail_errno(err, dir, "syncfs");
	for (size_t i = 0; !rc && i < b->n; i++) {
		if (rename(b->tmp[i], b->final[i]))
			rc = idd_fail_errno(err, b->final[i], "cannot rename temporary file into place");
		else {
			free(b->tmp[i]);
			b->tmp[i] = NULL;
		}
	}
	if (!rc && fsync(dfd) && errno != EINVAL)
		rc = idd_fail_errno(err, dir, "fsync");
	if (dfd >= 0)
		close(dfd);
	batch_clear(b, true);
	return rc;
}

void idd_indexfile_batch_free(idd_indexfile_batch *b)
{
	batch_clear(b, true);
	free(b->tmp);
	free(b->final);
	memset(b, 0, sizeof *b);
}

int idd_indexfile_write_named(const char *dir, const char magic[8], uint32_t version,
                              const void *payload, size_t len, bool compress, idd_digest *sum,
                              idd_error *err)
{
	struct encoded e;
	if (encode(dir, magic, version, payload, len, compress, &e, err))
		return IDD_ERR;
	memcpy(sum->b, e.sum, sizeof sum->b);
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(sum, hex);
	char *path = idd_path_join(dir, hex, err);
	int rc = !path ? IDD_ERR : same_bytes(path, &e) ? IDD_OK : write_encoded(path, &e, err);
	free(path);
	free(e.zbuf);
	return rc;
}

/* How large a payload may claim to be before anything is allocated for it.
 * Index payloads are digests, counts and names: zstd shrinks them at most
 * ~7x in practice.  Block lists of sparse images shrink far more, but their
 * exact size is known and passed explicitly.  A "bomb" (a tiny frame
 * declaring gigabytes) is refused instead of filling memory. */
static uint64_t default_max_payload(uint64_t stored_len)
{
	uint64_t by_ratio = stored_len > IDD_IF_MAX_PAYLOAD / 256 ? IDD_IF_MAX_PAYLOAD : stored_len * 256;
	return IDD_MAX(by_ratio, (uint64_t)64 << 20);
}

const char *idd_indexfile_kind(const char magic[8])
{
	static const struct {
		char magic[8];
		const char *kind;
	} kinds[] = {
		{"IDD-CAT", "catalog"},           {"IDD-BLK", "block list"},
		{"IDD-MAP", "block map"},         {"IDD-MIX", "maps index"},
		{"IDD-BTI", "block table index"}, {"IDD-BTS", "block table shard"},
		{"IDD-SIM", "similarity cache"},  {"IDD-CIX", "cache index"},
		{"IDD-PRS", "partial image journal"},
		{"IDD-ENT", "catalog entry"},     {"IDD-ENI", "entries index"},
		{"IDD-PKI", "pack index"},        {"IDD-PKV", "pack view"},
		{"IDD-PKR", "pack index run"},    {"IDD-PKF", "pack frame table"},
		{"IDD-BTR", "block table run"},
	};
	for (size_t i = 0; i < IDD_ARRAY_LEN(kinds); i++)
		if (!memcmp(kinds[i].magic, magic, 8))
			return kinds[i].kind;
	return "index";
}

int idd_indexfile_parse(const char *name, const void *file, size_t file_len,
                        const char magic[8], uint32_t max_version,
                        void **payload, size_t *len, uint32_t *version, idd_error *err)
{
	return idd_indexfile_parse_limit(name, file, file_len, magic, max_version, 0, payload, len,
	                                 version, err);
}

int idd_indexfile_parse_limit(const char *name, const void *file, size_t file_len,
                              const char magic[8], uint32_t max_version, uint64_t max_payload,
                              void **payload, size_t *len, uint32_t *version, idd_error *err)
{
	void *buf = NULL;
	size_t cap = 0;
	int rc = idd_indexfile_parse_reuse(name, file, file_len, magic, max_version, max_payload, &buf, &cap,
	                                   len, version, err);
	if (rc)
		free(buf);
	else
		*payload = buf;
	return rc;
}

/* With view, an uncompressed payload is not copied: *view points into file. */
static int parse_into(const char *name, const void *file, size_t file_len, const char magic[8],
                      uint32_t max_version, uint64_t max_payload, void **payload, size_t *cap,
                      const void **view, size_t *len, uint32_t *version, idd_error *err)
{
	const unsigned char *f = file;
	if (file_len < IDD_IF_HEADER + IDD_IF_TRAILER)
		return idd_fail(err, "%s: truncated (%zu bytes, smaller than any index file)", name, file_len);
	if (memcmp(f, magic, 8) != 0)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: not an imgdedup %s file (bad magic)", name,
		                     idd_indexfile_kind(magic));
	uint32_t ver = idd_le32(f + 8), flags = idd_le32(f + 12);
	uint64_t raw_len = idd_le64(f + 16), stored_len = idd_le64(f + 24);
	if (ver == 0 || ver > max_version)
		return idd_fail(err, "%s: format version %u is newer than this imgdedup supports (%u); upgrade imgdedup",
		                name, ver, max_version);
	if (flags & ~IDD_IF_ZSTD)
		return idd_fail(err, "%s: unknown flags 0x%x", name, flags);
	if (stored_len != file_len - IDD_IF_HEADER - IDD_IF_TRAILER)
		return idd_fail(err, "%s: truncated or has trailing bytes (payload %llu bytes, file holds %zu)",
		                name, (unsigned long long)stored_len, file_len - IDD_IF_HEADER - IDD_IF_TRAILER);
	if (raw_len > IDD_IF_MAX_PAYLOAD || (!(flags & IDD_IF_ZSTD) && raw_len != stored_len))
		return idd_fail(err, "%s: corrupt header (payload length %llu)", name, (unsigned long long)raw_len);
	uint64_t limit = max_payload ? max_payload : default_max_payload(stored_len);
	if (raw_len > limit)
		return idd_fail(err, "%s: corrupt header (payload of %llu bytes declared, at most %llu expected)",
		                name, (unsigned long long)raw_len, (unsigned long long)limit);
	unsigned char sum[32];
	if (idd_sha256(f, IDD_IF_HEADER + (size_t)stored_len, sum, err))
		return IDD_ERR;
	if (memcmp(sum, f + IDD_IF_HEADER + stored_len, 32) != 0)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: checksum mismatch (file is corrupted)", name);
	if (flags & IDD_IF_ZSTD) {
		/* the frame says how much it holds: a header claiming more is
		 * refused before anything is allocated for it */
		unsigned long long fcs = ZSTD_getFrameContentSize(f + IDD_IF_HEADER, (size_t)stored_len);
		if (fcs == ZSTD_CONTENTSIZE_ERROR)
			return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt compressed payload (not a zstd frame)",
			                     name);
		if (fcs != ZSTD_CONTENTSIZE_UNKNOWN && fcs != raw_len)
			return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt header (payload of %llu bytes "
			                     "declared, the zstd frame holds %llu)", name,
			                     (unsigned long long)raw_len, fcs);
	}
	if (view && !(flags & IDD_IF_ZSTD)) {
		*view = f + IDD_IF_HEADER;
		*len = (size_t)raw_len;
		if (version)
			*version = ver;
		return IDD_OK;
	}
	if (!*payload || raw_len > *cap) {
		free(*payload);
		*cap = 0;
		if (!(*payload = malloc(raw_len ? (size_t)raw_len : 1)))
			return idd_fail_code(err, IDD_ENOMEM, "%s: out of memory for its %llu-byte payload", name,
			                     (unsigned long long)raw_len);
		*cap = (size_t)raw_len;
	}
	void *out = *payload;
	if (flags & IDD_IF_ZSTD) {
		size_t z = ZSTD_decompress(out, (size_t)raw_len, f + IDD_IF_HEADER, (size_t)stored_len);
		if (ZSTD_isError(z) || z != raw_len) {
			return idd_fail(err, "%s: corrupt compressed payload (%s)", name,
			                ZSTD_isError(z) ? ZSTD_getErrorName(z) : "wrong length");
		}
	} else {
		memcpy(out, f + IDD_IF_HEADER, (size_t)raw_len);
	}
	if (view)
		*view = out;
	*len = (size_t)raw_len;
	if (version)
		*version = ver;
	return IDD_OK;
}

int idd_indexfile_parse_reuse(const char *name, const void *file, size_t file_len,
                              const char magic[8], uint32_t max_version, uint64_t max_payload,
                              void **payload, size_t *cap, size_t *len, uint32_t *version,
                              idd_error *err)
{
	return parse_into(name, file, file_len, magic, max_version, max_payload, payload, cap, NULL, len,
	                  version, err);
}

int idd_indexfile_parse_view(const char *name, const void *file, size_t file_len,
                             const char magic[8], uint32_t max_version, uint64_t max_payload,
                             void **buf, size_t *cap, const void **payload, size_t *len,
                             uint32_t *version, idd_error *err)
{
	return parse_into(name, file, file_len, magic, max_version, max_payload, buf, cap, payload, len,
	                  version, err);
}

int idd_indexfile_check(const char *name, const void *file, size_t len, idd_error *err)
{
	if (len < 8 || memcmp(file, "IDD-", 4) != 0)
		return idd_fail(err, "%s: not an imgdedup index file (bad magic)", name);
	char magic[8];
	memcpy(magic, file, 8);
	void *payload;
	size_t plen;
	if (idd_indexfile_parse(name, file, len, magic, UINT32_MAX, &payload, &plen, NULL, err))
		return IDD_ERR;
	free(payload);
	return IDD_OK;
}

int idd_indexfile_verify(const char *path, const char magic[8], uint32_t max_version,
                         idd_digest *sum, uint32_t *version, idd_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		int e = errno;
		idd_fail_errno(err, path, "cannot open");
		return e == ENOENT ? IDD_ENOENT : IDD_ERR;
	}
	struct stat st;
	unsigned char hdr[IDD_IF_HEADER], trailer[IDD_IF_TRAILER], got[32];
	int rc = IDD_OK;
	EVP_MD_CTX *ctx = NULL;
	unsigned char *buf = NULL;
	if (fstat(fd, &st)) {
		rc = idd_fail_errno(err, path, "stat");
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = idd_fail_code(err, IDD_EPERM, "%s: not a regular file; refused", path);
		goto out;
	}
	uint64_t size = (uint64_t)st.st_size;
	if (size < IDD_IF_HEADER + IDD_IF_TRAILER || idd_pread_all(fd, hdr, sizeof hdr, 0)) {
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: truncated (%llu bytes, smaller than any index file)",
		                   path, (unsigned long long)size);
		goto out;
	}
	uint32_t ver = idd_le32(hdr + 8);
	if (memcmp(hdr, magic, 8)) {
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: not an imgdedup %s file (bad magic)", path,
		                   idd_indexfile_kind(magic));
		goto out;
	}
	if (ver == 0 || ver > max_version) {
		rc = idd_fail(err, "%s: format version %u is newer than this imgdedup supports (%u); upgrade imgdedup",
		              path, ver, max_version);
		goto out;
	}
	if (idd_le64(hdr + 24) != size - IDD_IF_HEADER - IDD_IF_TRAILER) {
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: truncated or has trailing bytes", path);
		goto out;
	}
	ctx = EVP_MD_CTX_new();
	buf = malloc(1 << 20);
	if (!ctx || !buf || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		rc = idd_fail_code(err, IDD_ENOMEM, "%s: out of memory checking it", path);
		goto out;
	}
	uint64_t end = size - IDD_IF_TRAILER;
	for (uint64_t off = 0; off < end;) {
		size_t n = (size_t)IDD_MIN(end - off, (uint64_t)1 << 20);
		if (idd_pread_all(fd, buf, n, off)) {
			rc = idd_fail_errno(err, path, "read");
			goto out;
		}
		EVP_DigestUpdate(ctx, buf, n);
		off += n;
	}
	if (EVP_DigestFinal_ex(ctx, got, NULL) != 1 || idd_pread_all(fd, trailer, sizeof trailer, end)) {
		rc = idd_fail_errno(err, path, "read");
		goto out;
	}
	if (memcmp(got, trailer, 32)) {
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: checksum mismatch (file is corrupted)", path);
		goto out;
	}
	if (sum)
		memcpy(sum->b, trailer, 32);
	if (version)
		*version = ver;
out:
	EVP_MD_CTX_free(ctx);
	free(buf);
	close(fd);
	return rc;
}

int idd_indexfile_read(const char *path, const char magic[8], uint32_t max_version,
                       void **payload, size_t *len, uint32_t *version, idd_error *err)
{
	void *file;
	size_t flen;
	int rc = idd_read_file(path, (size_t)(IDD_IF_MAX_PAYLOAD + IDD_IF_HEADER + IDD_IF_TRAILER),
	                       &file, &flen, err);
	if (rc)
		return rc;
	rc = idd_indexfile_parse(path, file, flen, magic, max_version, payload, len, version, err);
	free(file);
	return rc;
}

int idd_lock(const char *dir, bool no_wait, int *fd_out, idd_error *err)
{
	char *p = idd_path_join(dir, "lock", err);
	if (!p)
		return IDD_ERR;
	int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		int rc = idd_fail_errno(err, p, "cannot open lock file");
		free(p);
		return rc;
	}
	for (;;) {
		if (flock(fd, LOCK_EX | (no_wait ? LOCK_NB : 0)) == 0)
			break;
		if (errno == EINTR)
			continue;
		int e = errno;
		if (e == EWOULDBLOCK)
			idd_fail(err, "%s: the index is locked by another imgdedup run; try again later", p);
		else
			idd_fail_errno(err, p, "cannot lock");
		close(fd);
		free(p);
		return e == EWOULDBLOCK ? IDD_EBUSY : IDD_ERR;
	}
	free(p);
	*fd_out = fd;
	return IDD_OK;
}

void idd_unlock(int fd)
{
	if (fd >= 0)
		close(fd); /* releases the flock */
}

/* ---- streamed index files ---- */

#define OUT_BUF (1u << 20)

int idd_indexfile_out_begin(idd_indexfile_out *o, const char *path, const char magic[8],
                            uint32_t version, idd_error *err)
{
	memset(o, 0, sizeof *o);
	o->fd = -1;
	o->off = IDD_IF_HEADER;
	memcpy(o->magic, magic, 8);
	o->version = version;
	if (!(o->path = idd_strdup(path, err)) || !(o->tmp = idd_tmp_path(path, err)) ||
	    !(o->buf = idd_malloc(OUT_BUF, err))) {
		idd_indexfile_out_abort(o);
		return IDD_ENOMEM;
	}
	o->fd = open(o->tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (o->fd < 0) {
		int rc = idd_fail_errno(err, o->tmp, "cannot create");
		idd_indexfile_out_abort(o);
		return rc;
	}
	return IDD_OK;
}

static void out_release(idd_indexfile_out *o, bool remove_tmp)
{
	if (o->fd >= 0)
		close(o->fd);
	if (remove_tmp && o->tmp)
		unlink(o->tmp);
	free(o->tmp);
	free(o->path);
	free(o->buf);
	memset(o, 0, sizeof *o);
	o->fd = -1;
}

void idd_indexfile_out_abort(idd_indexfile_out *o)
{
	out_release(o, o->fd >= 0);
}

static int out_flush(idd_indexfile_out *o, idd_error *err)
{
	if (o->fill && idd_pwrite_all(o->fd, o->buf, o->fill, o->off))
		return idd_fail_errno(err, o->tmp, "write");
	o->off += o->fill;
	o->fill = 0;
	return IDD_OK;
}

int idd_indexfile_out_append(idd_indexfile_out *o, const void *data, size_t len, idd_error *err)
{
	if (o->fill + len > OUT_BUF && out_flush(o, err))
		return IDD_ERR;
	if (len > OUT_BUF) { /* larger than the buffer: straight to the file */
		if (idd_pwrite_all(o->fd, data, len, o->off))
			return idd_fail_errno(err, o->tmp, "write");
		o->off += len;
		return IDD_OK;
	}
	memcpy(o->buf + o->fill, data, len);
	o->fill += len;
	return IDD_OK;
}

uint64_t idd_indexfile_out_payload(const idd_indexfile_out *o)
{
	return o->off + o->fill - IDD_IF_HEADER;
}

int idd_indexfile_out_retarget(idd_indexfile_out *o, const char *path, idd_error *err)
{
	char *p = idd_strdup(path, err);
	if (!p)
		return IDD_ENOMEM;
	free(o->path);
	o->path = p;
	return IDD_OK;
}

/* SHA-256 of the first o->off bytes of the file, read back through o->buf. */
static int out_checksum(idd_indexfile_out *o, unsigned char sum[32], idd_error *err)
{
	idd_sha256_ctx *c = idd_sha256_begin(err);
	if (!c)
		return IDD_ERR;
	for (uint64_t at = 0; at < o->off;) {
		size_t n = (size_t)IDD_MIN((uint64_t)OUT_BUF, o->off - at);
		if (idd_pread_all(o->fd, o->buf, n, at)) {
			idd_sha256_abort(c);
			return idd_fail_errno(err, o->tmp, "read back");
		}
		if (idd_sha256_update(c, o->buf, n, err)) {
			idd_sha256_abort(c);
			return IDD_ERR;
		}
		at += n;
	}
	return idd_sha256_end(c, sum, err);
}

static int out_finish(idd_indexfile_out *o, uint64_t *size, idd_error *err)
{
	if (out_flush(o, err))
		return IDD_ERR;
	unsigned char hdr[IDD_IF_HEADER];
	uint64_t payload = o->off - IDD_IF_HEADER;
	memcpy(hdr, o->magic, 8);
	idd_le32_put(hdr + 8, o->version);
	idd_le32_put(hdr + 12, 0);
	idd_le64_put(hdr + 16, payload);
	idd_le64_put(hdr + 24, payload);
	if (idd_pwrite_all(o->fd, hdr, sizeof hdr, 0))
		return idd_fail_errno(err, o->tmp, "write");
	unsigned char sum[IDD_IF_TRAILER];
	if (out_checksum(o, sum, err))
		return IDD_ERR;
	if (idd_pwrite_all(o->fd, sum, sizeof sum, o->off))
		return idd_fail_errno(err, o->tmp, "write");
	if (fsync(o->fd))
		return idd_fail_errno(err, o->tmp, "fsync");
	int fd = o->fd;
	o->fd = -1;
	if (close(fd)) {
		unlink(o->tmp);
		return idd_fail_errno(err, o->tmp, "close");
	}
	if (rename(o->tmp, o->path)) {
		idd_fail_errno(err, o->path, "cannot rename temporary file into place");
		unlink(o->tmp);
		return IDD_ERR;
	}
	if (size)
		*size = o->off + sizeof sum;
	return IDD_OK;
}

int idd_indexfile_out_finish(idd_indexfile_out *o, uint64_t *size, idd_error *err)
{
	int rc = out_finish(o, size, err);
	out_release(o, rc != IDD_OK);
	return rc;
}
