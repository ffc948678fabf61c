/* archive.c - disk images inside tar archives (.tar, .ova, .box, .tar.gz,
 * .tgz, .tar.zst, .tar.xz).
 *
 * Uncompressed tars are parsed here, header by header, so that each member's
 * data range is known exactly: the member is then a slice of the archive,
 * read (and fetched by deploy) in place.  Compressed tars go through
 * libarchive: members are listed by streaming, and opened by decompressing
 * the member once into an unlinked, sparse temporary file (see
 * docs/formats.md, "Archives"). */
#include "formats/archive.h"
#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "base/file.h"
#include "formats/image.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TAR_BLOCK 512u
#define MAX_META (1u << 20)      /* pax / GNU long-name payloads */
#define MAX_MEMBERS 100000u      /* tar entries looked at in one archive */
#define MAX_MEMBER_NAME 4096u

/* ---- detection ---- */

static bool tar_header_ok(const unsigned char *h, size_t len)
{
	if (len < TAR_BLOCK)
		return false;
	if (memcmp(h + 257, "ustar", 5) != 0)
		return false;
	uint64_t stored = 0;
	int digits = 0;
	for (size_t i = 148; i < 156; i++) {
		if (h[i] >= '0' && h[i] <= '7') {
			stored = stored * 8 + (uint64_t)(h[i] - '0');
			digits++;
		} else if (h[i] != ' ' && h[i] != 0) {
			return false;
		} else if (digits) {
			break;
		}
	}
	if (!digits)
		return false;
	uint64_t usum = 0;
	int64_t ssum = 0;
	for (size_t i = 0; i < TAR_BLOCK; i++) {
		unsigned char c = (i >= 148 && i < 156) ? ' ' : h[i];
		usum += c;
		ssum += (signed char)c;
	}
	return stored == usum || (int64_t)stored == ssum;
}

/* Decompress the start of a compressed stream (possibly cut short) and
 * say whether a tar header begins it.  When the head is too short to decode
 * anything (zstd and xz blocks can be larger than it), the magic decides;
 * listing the archive then checks it properly. */
static bool compressed_tar_head(const unsigned char *head, size_t len)
{
	struct archive *a = archive_read_new();
	if (!a)
		return false;
	archive_read_support_filter_all(a);
	archive_read_support_format_raw(a);
	unsigned char out[TAR_BLOCK];
	size_t got = 0;
	bool ended = false; /* the whole stream decoded: the answer is certain */
	struct archive_entry *ae;
	if (archive_read_open_memory(a, head, len) == ARCHIVE_OK &&
	    archive_read_next_header(a, &ae) == ARCHIVE_OK) {
		while (got < sizeof out) {
			la_ssize_t r = archive_read_data(a, out + got, sizeof out - got);
			if (r <= 0) {
				ended = r == 0;
				break;
			}
			got += (size_t)r;
		}
	}
	archive_read_free(a);
	if (got < 263)
		return !ended;
	return got < sizeof out ? memcmp(out + 257, "ustar", 5) == 0 : tar_header_ok(out, got);
}

const char *idd_archive_kind(const unsigned char *head, size_t len)
{
	if (tar_header_ok(head, len))
		return "tar";
	if (len >= 2 && head[0] == 0x1f && head[1] == 0x8b)
		return compressed_tar_head(head, len) ? "tar.gz" : NULL;
	if (len >= 6 && memcmp(head, "\xfd" "7zXZ\0", 6) == 0)
		return compressed_tar_head(head, len) ? "tar.xz" : NULL;
	if (len >= 4 && memcmp(head, "\x28\xb5\x2f\xfd", 4) == 0)
		return compressed_tar_head(head, len) ? "tar.zst" : NULL;
	return NULL;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The container's name: the file's suffix says which kind of tar it is
 * meant to be (an .ova, a Vagrant .box), the content says how it is stored. */
static const char *container_name(const char *path, const char *kind)
{
	if (ends_with(path, ".ova"))
		return "ova";
	if (ends_with(path, ".box"))
		return "box";
	return kind;
}

static const char *const archive_suffixes[] = {".ova", ".box", ".tar", ".tar.gz", ".tgz",
                                               ".tar.zst", ".tar.xz"};

/* Suffixes are matched only when something precedes them (".tar" alone is
 * no archive's name). */
static bool has_suffix(const char *name, const char *suffix)
{
	size_t n = strlen(name), k = strlen(suffix);
	return n > k && strcmp(name + n - k, suffix) == 0;
}

bool idd_archive_name_matches(const char *name)
{
	for (size_t i = 0; i < IDD_ARRAY_LEN(archive_suffixes); i++)
		if (has_suffix(name, archive_suffixes[i]))
			return true;
	return false;
}

/* Normalise a member name ("./disk.vmdk" -> "disk.vmdk") and decide whether
 * it is a disk image.  Names that could escape (absolute, "..") are never
 * images: member ids become paths on the deploy side. */
static const char *image_member_name(const char *name)
{
	while (name[0] == '.' && name[1] == '/')
		name += 2;
	if (!name[0] || name[0] == '/' || strlen(name) > MAX_MEMBER_NAME)
		return NULL;
	for (const char *p = name; *p;) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if ((n == 2 && p[0] == '.' && p[1] == '.') || n == 0 || (n == 1 && p[0] == '.'))
			return NULL;
		if (!e)
			break;
		p = e + 1;
	}
	if (name[strlen(name) - 1] == '/')
		return NULL;
	if (idd_archive_name_matches(name))
		return NULL; /* nested archives are not opened */
	if (ends_with(name, ".vmdk") || idd_image_name_matches(name))
		return name;
	return NULL;
}

/* ---- listing ---- */

void idd_archive_members_free(idd_archive_members *m)
{
	for (size_t i = 0; i < m->n; i++) {
		free(m->v[i].name);
		if (m->v[i].spool_fd >= 0)
			close(m->v[i].spool_fd);
	}
	free(m->v);
	m->v = NULL;
	m->n = 0;
}

/* Takes ownership of fd (-1: none), also on failure. */
static int members_add(idd_archive_members *m, const char *raw_name, uint64_t off, uint64_t len,
                       bool streamed, int fd, idd_error *err)
{
	const char *name = image_member_name(raw_name);
	if (!name) {
		if (fd >= 0)
			close(fd);
		return IDD_OK;
	}
	/* A later entry of the same name replaces the earlier (tar semantics). */
	for (size_t i = 0; i < m->n; i++)
		if (strcmp(m->v[i].name, name) == 0) {
			m->v[i].off = off;
			m->v[i].len = len;
			m->v[i].streamed = streamed;
			if (m->v[i].spool_fd >= 0)
				close(m->v[i].spool_fd);
			m->v[i].spool_fd = fd;
			return IDD_OK;
		}
	idd_archive_member *v = idd_realloc_array(m->v, m->n + 1, sizeof *v, err);
	char *copy = v ? idd_strdup(name, err) : NULL;
	if (v)
		m->v = v;
	if (!copy) {
		if (fd >= 0)
			close(fd);
		return IDD_ERR;
	}
	m->v[m->n] = (idd_archive_member){copy, off, len, streamed, fd};
	m->n++;
	return IDD_OK;
}

/* Octal, or GNU base-256 for large values; false when malformed. */
static bool tar_number(const unsigned char *p, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (p[0] & 0x80) {
		if (p[0] != 0x80)
			return false; /* negative or > 2^63: not a size */
		for (size_t i = 1; i < n; i++) {
			if (v >> 55)
				return false;
			v = v << 8 | p[i];
		}
		*out = v;
		return true;
	}
	size_t i = 0;
	while (i < n && (p[i] == ' ' || p[i] == 0))
		i++;
	if (i == n) {
		*out = 0;
		return true;
	}
	for (; i < n && p[i] >= '0' && p[i] <= '7'; i++) {
		if (v >> 60)
			return false;
		v = v * 8 + (uint64_t)(p[i] - '0');
	}
	for (; i < n; i++)
		if (p[i] != ' ' && p[i] != 0)
			return false;
	*out = v;
	return true;
}

/* Apply the records of a pax extended header that matter here. */
static int pax_parse(const char *fname, const char *p, size_t len, char **path, uint64_t *size,
                     bool *have_size, bool *sparse, bool *sparse_named, idd_error *err)
{
	size_t pos = 0;
	while (pos < len) {
		size_t rl = 0, i = pos;
		while (i < len && p[i] >= '0' && p[i] <= '9' && rl < MAX_META)
			rl = rl * 10 + (size_t)(p[i++] - '0');
		if (i >= len || p[i] != ' ' || rl <= i - pos + 1 || rl > len - pos || p[pos + rl - 1] != '\n')
			return idd_fail(err, "%s: corrupt pax header", fname);
		const char *kv = p + i + 1, *end = p + pos + rl - 1;
		const char *eq = memchr(kv, '=', (size_t)(end - kv));
		if (!eq)
			return idd_fail(err, "%s: corrupt pax header record", fname);
		size_t kl = (size_t)(eq - kv), vl = (size_t)(end - eq - 1);
		bool is_path = kl == 4 && memcmp(kv, "path", 4) == 0;
		bool is_sparse_name = kl == 15 && memcmp(kv, "GNU.sparse.name", 15) == 0;
		if (is_sparse_name)
			*sparse = true;
		if ((is_path && !*sparse_named) || is_sparse_name) {
			/* A sparse file's real name: its header and "path" carry a
			 * placeholder. */
			*sparse_named = *sparse_named || is_sparse_name;
			if (memchr(eq + 1, 0, vl))
				return idd_fail(err, "%s: pax path contains a NUL byte", fname);
			char *s = idd_malloc(vl + 1, err);
			if (!s)
				return IDD_ERR;
			memcpy(s, eq + 1, vl);
			s[vl] = 0;
			free(*path);
			*path = s;
		} else if (kl == 4 && memcmp(kv, "size", 4) == 0) {
			uint64_t v = 0;
			if (!vl || vl > 19)
				return idd_fail(err, "%s: corrupt pax size", fname);
			for (size_t k = 0; k < vl; k++) {
				char c = eq[1 + k];
				if (c < '0' || c > '9')
					return idd_fail(err, "%s: corrupt pax size", fname);
				v = v * 10 + (uint64_t)(c - '0');
			}
			*size = v;
			*have_size = true;
		} else if (kl > 11 && memcmp(kv, "GNU.sparse.", 11) == 0) {
			*sparse = true;
		}
		pos += rl;
	}
	return IDD_OK;
}

/* Walk the headers of an uncompressed tar and collect image members with
 * their exact data ranges. */
static int tar_list(idd_file *f, idd_archive_members *out, idd_error *err)
{
	const char *fn = f->name;
	unsigned char h[TAR_BLOCK];
	uint64_t pos = 0;
	char *long_name = NULL, *pax_path = NULL;
	uint64_t pax_size = 0;
	bool have_pax_size = false, sparse = false, sparse_named = false;
	int rc = IDD_OK;
	for (unsigned count = 0;; count++) {
		if (count >= MAX_MEMBERS) {
			rc = idd_fail(err, "%s: more than %u tar entries", fn, MAX_MEMBERS);
			break;
		}
		if (pos + TAR_BLOCK > f->size) {
			if (pos != f->size && count == 0)
				rc = idd_fail(err, "%s: truncated tar archive", fn);
			break; /* archives without end-of-archive blocks are common enough */
		}
		if ((rc = idd_file_pread(f, h, TAR_BLOCK, pos, err)))
			break;
		if (idd_is_zero(h, TAR_BLOCK))
			break;
		if (!tar_header_ok(h, TAR_BLOCK)) {
			rc = idd_fail(err, "%s: corrupt tar header at offset %llu", fn, (unsigned long long)pos);
			break;
		}
		uint64_t size;
		if (!tar_number(h + 124, 12, &size)) {
			rc = idd_fail(err, "%s: corrupt size in tar header at offset %llu", fn,
			              (unsigned long long)pos);
			break;
		}
		char type = (char)h[156];
		bool meta = type == 'L' || type == 'K' || type == 'x' || type == 'g';
		if (!meta && have_pax_size)
			size = pax_size;
		uint64_t data = pos + TAR_BLOCK, data_end, next;
		if (type == 'S') {
			/* Old GNU sparse: extension blocks of the sparse map come first. */
			unsigned char more = h[482];
			while (more && !rc) {
				unsigned char x[TAR_BLOCK];
				if (data + TAR_BLOCK > f->size)
					rc = idd_fail(err, "%s: truncated tar archive at offset %llu", fn,
					              (unsigned long long)data);
				else if (!(rc = idd_file_pread(f, x, TAR_BLOCK, data, err)))
					more = x[504], data += TAR_BLOCK;
			}
			if (rc)
				break;
		}
		if (!idd_add_ok(data, size, &data_end) || data_end > f->size ||
		    !idd_add_ok(data_end, (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK, &next)) {
			rc = idd_fail(err, "%s: truncated tar archive: entry at offset %llu claims %llu bytes",
			              fn, (unsigned long long)pos, (unsigned long long)size);
			break;
		}
		if (type == 'L' || type == 'x') {
			if (size > MAX_META) {
				rc = idd_fail(err, "%s: tar metadata entry of %llu bytes is too large", fn,
				              (unsigned long long)size);
				break;
			}
			char *buf = idd_malloc((size_t)size + 1, err);
			if (!buf || idd_file_pread(f, buf, (size_t)size, data, err)) {
				free(buf);
				rc = IDD_ERR;
				break;
			}
			buf[size] = 0;
			if (type == 'L') {
				free(long_name);
				long_name = buf; /* NUL-terminated inside, trailing NULs ignored */
			} else {
				rc = pax_parse(fn, buf, (size_t)size, &pax_path, &pax_size, &have_pax_size, &sparse,
				               &sparse_named, err);
				free(buf);
				if (rc)
					break;
			}
		} else if (!meta) {
			char name[256 + 1 + 155 + 1];
			const char *use = pax_path ? pax_path : long_name;
			if (!use) {
				char base[101], prefix[156];
				memcpy(base, h, 100);
				base[100] = 0;
				memcpy(prefix, h + 345, 155);
				prefix[155] = 0;
				/* The prefix field exists in POSIX ustar only, not old GNU. */
				if (memcmp(h + 257, "ustar\0", 6) == 0 && prefix[0])
					snprintf(name, sizeof name, "%s/%s", prefix, base);
				else
					snprintf(name, sizeof name, "%s", base);
				use = name;
			}
			if (type == '0' || type == '\0' || type == '7' || type == 'S') {
				/* Sparse members are not contiguous: libarchive reassembles them. */
				bool streamed = type == 'S' || sparse;
				if ((rc = members_add(out, use, data, size, streamed, -1, err)))
					break;
			}
			free(long_name);
			free(pax_path);
			long_name = pax_path = NULL;
			have_pax_size = sparse = sparse_named = false;
		}
		pos = next;
	}
	free(long_name);
	free(pax_path);
	return rc;
}

/* libarchive reads an archive through an idd_file (local or remote), in
 * large sequential pieces. */
struct file_reader {
	idd_file *f;
	uint64_t off;
	unsigned char *buf;
	idd_error *err;
};

#define FILE_READER_CHUNK ((size_t)4 << 20)

static la_ssize_t file_reader_cb(struct archive *a, void *ud, const void **buf)
{
	struct file_reader *fr = ud;
	if (fr->off >= fr->f->size)
		return 0;
	size_t n = (size_t)IDD_MIN((uint64_t)FILE_READER_CHUNK, fr->f->size - fr->off);
	if (idd_file_pread(fr->f, fr->buf, n, fr->off, fr->err)) {
		archive_set_error(a, EIO, "%s", fr->err->msg);
		return -1;
	}
	fr->off += n;
	*buf = fr->buf;
	return (la_ssize_t)n;
}

/* A libarchive reader over f for tar formats and every filter; fr (its
 * buffer allocated here, freed by la_close) feeds it. */
static struct archive *la_open(idd_file *f, struct file_reader *fr, idd_error *err)
{
	*fr = (struct file_reader){f, 0, idd_malloc(FILE_READER_CHUNK, err), err};
	if (!fr->buf)
		return NULL;
	struct archive *a = archive_read_new();
	if (!a) {
		idd_fail(err, "%s: libarchive: out of memory", f->name);
		free(fr->buf);
		fr->buf = NULL;
		return NULL;
	}
	archive_read_support_filter_all(a);
	archive_read_support_format_tar(a);
	archive_read_support_format_gnutar(a);
	if (archive_read_open(a, fr, NULL, file_reader_cb, NULL) != ARCHIVE_OK) {
		/* a read failure's message reaches here through archive_set_error */
		idd_fail(err, "%s: %s", f->name, archive_error_string(a) ? archive_error_string(a) : "cannot open");
		archive_read_free(a);
		free(fr->buf);
		fr->buf = NULL;
		return NULL;
	}
	return a;
}

static void la_close(struct archive *a, struct file_reader *fr)
{
	if (a)
		archive_read_free(a);
	free(fr->buf);
	fr->buf = NULL;
}

static int tmp_open(idd_error *err);
static int spool_entry(struct archive *a, struct archive_entry *ae, const char *path,
                       const char *member, int fd, idd_error *err);

/* A compressed stream cannot skip: listing decompresses everything anyway,
 * so each disk image member is written to a temporary file on the way and
 * handed over with its entry (idd_archive_open_member then reads it). */
static int la_list(idd_file *f, idd_archive_members *out, idd_error *err)
{
	const char *path = f->name;
	struct file_reader fr;
	struct archive *a = la_open(f, &fr, err);
	if (!a)
		return IDD_ERR;
	int rc = IDD_OK;
	struct archive_entry *ae;
	for (unsigned count = 0;; count++) {
		int r = archive_read_next_header(a, &ae);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN) {
			rc = idd_fail(err, "%s: %s", path, archive_error_string(a));
			break;
		}
		if (count >= MAX_MEMBERS) {
			rc = idd_fail(err, "%s: more than %u tar entries", path, MAX_MEMBERS);
			break;
		}
		const char *name = archive_entry_pathname(ae);
		const char *norm = name && archive_entry_filetype(ae) == AE_IFREG ? image_member_name(name)
		                                                                   : NULL;
		if (norm) {
			int fd = tmp_open(err);
			if (fd < 0 || spool_entry(a, ae, path, norm, fd, err)) {
				if (fd >= 0)
					close(fd);
				rc = IDD_ERR;
				break;
			}
			la_int64_t sz = archive_entry_size(ae);
			if ((rc = members_add(out, name, 0, sz > 0 ? (uint64_t)sz : 0, true, fd, err)))
				break;
		} else if (archive_read_data_skip(a) != ARCHIVE_OK) {
			rc = idd_fail(err, "%s: %s", path, archive_error_string(a));
			break;
		}
	}
	la_close(a, &fr);
	return rc;
}

static int read_kind(idd_file *f, const char **kind, idd_error *err)
{
	unsigned char head[4096];
	size_t hl = (size_t)IDD_MIN(f->size, (uint64_t)sizeof head);
	if (hl && idd_file_pread(f, head, hl, 0, err))
		return IDD_ERR;
	*kind = idd_archive_kind(head, hl);
	if (!*kind)
		return idd_fail(err, "%s: not a tar archive (nor a gzip, xz or zstd compressed one)", f->name);
	return IDD_OK;
}

int idd_archive_list(const char *path, idd_archive_members *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	idd_file *f;
	if (idd_file_open_local(path, &f, err))
		return IDD_ERR;
	int rc = idd_archive_list_file(f, path, out, err);
	idd_file_close(f);
	return rc;
}

int idd_archive_list_file(idd_file *f, const char *path, idd_archive_members *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	const char *kind;
	if (read_kind(f, &kind, err))
		return IDD_ERR;
	int rc;
	if (strcmp(kind, "tar") == 0)
		rc = tar_list(f, out, err);
	else
		rc = la_list(f, out, err);
	if (rc) {
		idd_archive_members_free(out);
		return rc;
	}
	out->kind = kind;
	out->container = container_name(path, kind);
	return IDD_OK;
}

/* ---- opening a member ---- */

/* A read-write temporary file that vanishes when closed. */
static int tmp_open(idd_error *err)
{
	const char *dir = getenv("TMPDIR");
	if (!dir || !*dir)
		dir = "/tmp";
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	char *tmpl = idd_asprintf(err, "%s/imgdedup-member-XXXXXX", dir);
	if (!tmpl)
		return -1;
	fd = mkstemp(tmpl);
	if (fd < 0)
		idd_fail_errno(err, dir, "cannot create a temporary file");
	else
		unlink(tmpl);
	free(tmpl);
	return fd;
}

static int write_all(int fd, const unsigned char *p, size_t n, uint64_t off, idd_error *err)
{
	return idd_pwrite_all(fd, p, n, off) ? idd_fail_errno(err, "temporary file", "write") : IDD_OK;
}

/* Write the data of the current entry into fd (from offset 0, truncated
 * first), leaving holes for zero runs. */
static int spool_entry(struct archive *a, struct archive_entry *ae, const char *path,
                       const char *member, int fd, idd_error *err)
{
	if (ftruncate(fd, 0))
		return idd_fail_errno(err, "temporary file", "truncate");
	uint64_t end = 0;
	int rc = IDD_OK;
	for (;;) {
		const void *buf;
		size_t len;
		la_int64_t off;
		int r = archive_read_data_block(a, &buf, &len, &off);
		if (r == ARCHIVE_EOF)
			break;
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
			return idd_fail(err, "%s: member %s: %s", path, member, archive_error_string(a));
		if (off < 0)
			return idd_fail(err, "%s: member %s: bad data offset", path, member);
		/* Sparse output: only non-zero 4 KiB pieces are written. */
		const unsigned char *p = buf;
		size_t i = 0;
		while (i < len && !rc) {
			size_t n = IDD_MIN(len - i, (size_t)(4096 - ((uint64_t)off + i) % 4096));
			if (idd_is_zero(p + i, n)) {
				i += n;
				continue;
			}
			size_t j = i + n;
			while (j < len) {
				size_t m = IDD_MIN(len - j, (size_t)4096);
				if (idd_is_zero(p + j, m))
					break;
				j += m;
			}
			rc = write_all(fd, p + i, j - i, (uint64_t)off + i, err);
			i = j;
		}
		if (rc)
			return rc;
		end = IDD_MAX(end, (uint64_t)off + len);
	}
	la_int64_t sz = archive_entry_size(ae);
	if (sz > 0 && (uint64_t)sz > end)
		end = (uint64_t)sz;
	if (ftruncate(fd, (off_t)end))
		return idd_fail_errno(err, "temporary file", "set size");
	return IDD_OK;
}

static int spool_named(struct archive *a, const char *path, const char *member, int fd,
                       idd_error *err);

/* Decompress the member named member (its last occurrence) of the archive
 * at path into fd. */
static int spool_member(const char *path, const char *member, int fd, idd_error *err)
{
	idd_file *f;
	if (idd_file_open_local(path, &f, err))
		return IDD_ERR;
	int rc = idd_archive_spool_member_from(f, member, fd, NULL, err);
	idd_file_close(f);
	return rc;
}

/* Spool the member named member (normalised as listing does; its last
 * occurrence wins) from the open reader a into fd. */
static int spool_named(struct archive *a, const char *path, const char *member, int fd,
                       idd_error *err)
{
	bool found = false;
	int rc = IDD_OK;
	struct archive_entry *ae;
	for (unsigned count = 0; !rc; count++) {
		int r = archive_read_next_header(a, &ae);
		if (r == ARCHIVE_EOF)
			break;
		if ((r != ARCHIVE_OK && r != ARCHIVE_WARN) || count >= MAX_MEMBERS) {
			rc = idd_fail(err, "%s: %s", path,
			              count >= MAX_MEMBERS ? "too many tar entries" : archive_error_string(a));
			break;
		}
		const char *name = archive_entry_pathname(ae);
		const char *norm = name && archive_entry_filetype(ae) == AE_IFREG ? image_member_name(name)
		                                                                   : NULL;
		if (!norm || strcmp(norm, member) != 0) {
			if (archive_read_data_skip(a) != ARCHIVE_OK)
				rc = idd_fail(err, "%s: %s", path, archive_error_string(a));
			continue;
		}
		found = true;
		rc = spool_entry(a, ae, path, member, fd, err);
	}
	if (!rc && !found)
		rc = idd_fail(err, "%s: member %s not found in the archive", path, member);
	return rc;
}

int idd_archive_spool_member_from(idd_file *archive, const char *member, int fd,
                                  uint64_t *bytes_read, idd_error *err)
{
	if (bytes_read)
		*bytes_read = 0;
	struct file_reader fr;
	struct archive *a = la_open(archive, &fr, err);
	int rc = a ? spool_named(a, archive->name, member, fd, err) : IDD_ERR;
	if (bytes_read)
		*bytes_read = fr.off;
	la_close(a, &fr);
	return rc;
}

/* parent: the archive read through this file (taken over: closed here, also
 * on failure), or NULL to open path when it is needed. */
static int open_member(const char *path, idd_file *parent, const idd_archive_member *m,
                       idd_image **out, idd_error *err)
{
	char *name = idd_asprintf(err, "%s/%s", path, m->name);
	if (!name) {
		idd_file_close(parent);
		return IDD_ERR;
	}
	idd_file *f = NULL;
	int rc = IDD_OK;
	if (!m->streamed) {
		if (!parent)
			rc = idd_file_open_local_flags(path, IDD_FILE_NOFOLLOW, &parent, err);
		if (!rc)
			rc = idd_file_open_slice(parent, true, m->off, m->len, name, &f, err);
		parent = NULL; /* the slice owns it */
	} else {
		/* spooled while listing, or decompressed now */
		bool spooled = m->spool_fd >= 0;
		int fd = spooled ? dup(m->spool_fd) : tmp_open(err);
		if (fd < 0 && spooled)
			idd_fail_errno(err, path, "dup");
		if (fd < 0)
			rc = IDD_ERR;
		else if (!spooled)
			rc = parent ? idd_archive_spool_member_from(parent, m->name, fd, NULL, err)
			            : spool_member(path, m->name, fd, err);
		if (!rc) {
			/* Reopen through /proc so the generic local reader serves it; the
			 * file has no name, so messages use the member's. */
			char proc[64];
			snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
			rc = idd_file_open_local(proc, &f, err);
			if (!rc) {
				free(f->name);
				f->name = name;
				name = NULL;
			}
		}
		if (fd >= 0)
			close(fd);
	}
	idd_file_close(parent);
	if (!rc)
		rc = idd_image_open(f, true, NULL, NULL, out, err);
	free(name);
	return rc;
}

int idd_archive_open_member(const char *path, const idd_archive_member *m, idd_image **out,
                            idd_error *err)
{
	return open_member(path, NULL, m, out, err);
}

int idd_archive_open_member_file(idd_file *archive, const char *path, const idd_archive_member *m,
                                 idd_image **out, idd_error *err)
{
	return open_member(path, archive, m, out, err);
}
