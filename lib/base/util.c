/* util.c - allocation, strings, growable buffers and bounded readers. */
#include "base/util.h"
#include "base/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void *idd_malloc(size_t n, idd_error *err)
{
	void *p = malloc(n ? n : 1);
	if (!p)
		idd_fail_code(err, IDD_ENOMEM, "out of memory allocating %zu bytes", n);
	return p;
}

void *idd_calloc(size_t n, size_t m, idd_error *err)
{
	void *p = calloc(n ? n : 1, m ? m : 1);
	if (!p)
		idd_fail_code(err, IDD_ENOMEM, "out of memory allocating %zu x %zu bytes", n, m);
	return p;
}

void *idd_realloc_array(void *p, size_t n, size_t m, idd_error *err)
{
	size_t total;
	if (__builtin_mul_overflow(n, m, &total)) {
		idd_fail_code(err, IDD_ENOMEM, "allocation of %zu x %zu bytes overflows", n, m);
		return NULL;
	}
	void *q = realloc(p, total ? total : 1);
	if (!q)
		idd_fail_code(err, IDD_ENOMEM, "out of memory allocating %zu bytes", total);
	return q;
}

char *idd_strdup(const char *s, idd_error *err)
{
	char *d = strdup(s);
	if (!d)
		idd_fail_code(err, IDD_ENOMEM, "out of memory");
	return d;
}

char *idd_asprintf(idd_error *err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0) {
		idd_fail(err, "bad format string");
		return NULL;
	}
	char *s = idd_malloc((size_t)n + 1, err);
	if (!s)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

char *idd_path_join(const char *a, const char *b, idd_error *err)
{
	size_t la = strlen(a);
	if (la && a[la - 1] == '/')
		return idd_asprintf(err, "%s%s", a, b);
	return idd_asprintf(err, "%s/%s", a, b);
}

int idd_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	const unsigned char *p = buf;
	while (len) {
		ssize_t w = pwrite(fd, p, len, (off_t)off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = EIO;
			return -1;
		}
		p += w;
		off += (uint64_t)w;
		len -= (size_t)w;
	}
	return 0;
}

int idd_write_all(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (w == 0)
				errno = EIO;
			return -1;
		}
		p += w;
		len -= (size_t)w;
	}
	return 0;
}

int idd_pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	unsigned char *p = buf;
	while (len) {
		ssize_t r = pread(fd, p, len, (off_t)off);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			if (r == 0)
				errno = EIO;
			return -1;
		}
		p += r;
		off += (uint64_t)r;
		len -= (size_t)r;
	}
	return 0;
}

int64_t idd_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return idd_ts_ns(ts);
}

int64_t idd_mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return idd_ts_ns(ts);
}

int idd_hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

bool idd_is_power_of_two(uint64_t v) { return v && !(v & (v - 1)); }

int idd_threads_for_jobs(int jobs)
{
	long n = jobs > 0 ? jobs : sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > IDD_MAX_THREADS)
		n = IDD_MAX_THREADS;
	return (int)n;
}

void idd_buf_free(idd_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

int idd_buf_reserve(idd_buf *b, size_t extra)
{
	if (b->failed)
		return IDD_ERR;
	if (b->cap - b->len >= extra)
		return IDD_OK;
	size_t need;
	if (__builtin_add_overflow(b->len, extra, &need)) {
		b->failed = true;
		return IDD_ERR;
	}
	size_t cap = b->cap ? b->cap : 256;
	while (cap < need) {
		if (cap > SIZE_MAX / 2) {
			cap = need;
			break;
		}
		cap *= 2;
	}
	unsigned char *p = realloc(b->data, cap);
	if (!p) {
		b->failed = true;
		return IDD_ERR;
	}
	b->data = p;
	b->cap = cap;
	return IDD_OK;
}

void idd_buf_put(idd_buf *b, const void *p, size_t n)
{
	if (!n || idd_buf_reserve(b, n))
		return;
	memcpy(b->data + b->len, p, n);
	b->len += n;
}

void idd_buf_put_u8(idd_buf *b, uint8_t v) { idd_buf_put(b, &v, 1); }

void idd_buf_put_u32(idd_buf *b, uint32_t v)
{
	unsigned char t[4];
	idd_le32_put(t, v);
	idd_buf_put(b, t, 4);
}

void idd_buf_put_u64(idd_buf *b, uint64_t v)
{
	unsigned char t[8];
	idd_le64_put(t, v);
	idd_buf_put(b, t, 8);
}

void idd_buf_put_varint(idd_buf *b, uint64_t v)
{
	unsigned char t[10];
	size_t n = 0;
	do {
		unsigned char c = v & 0x7f;
		v >>= 7;
		t[n++] = c | (v ? 0x80 : 0);
	} while (v);
	idd_buf_put(b, t, n);
}

void idd_buf_put_str(idd_buf *b, const char *s)
{
	size_t n = strlen(s);
	idd_buf_put_varint(b, n);
	idd_buf_put(b, s, n);
}

void idd_reader_init(idd_reader *r, const void *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->pos = 0;
	r->bad = false;
}

const unsigned char *idd_get_span(idd_reader *r, size_t n)
{
	if (r->bad || r->len - r->pos < n) {
		r->bad = true;
		return NULL;
	}
	const unsigned char *s = r->p + r->pos;
	r->pos += n;
	return s;
}

bool idd_get_bytes(idd_reader *r, void *out, size_t n)
{
	const unsigned char *s = idd_get_span(r, n);
	if (s && n)
		memcpy(out, s, n);
	return s != NULL;
}

bool idd_get_u8(idd_reader *r, uint8_t *v) { return idd_get_bytes(r, v, 1); }

bool idd_get_u32(idd_reader *r, uint32_t *v)
{
	const unsigned char *s = idd_get_span(r, 4);
	if (s)
		*v = idd_le32(s);
	return s != NULL;
}

bool idd_get_u64(idd_reader *r, uint64_t *v)
{
	const unsigned char *s = idd_get_span(r, 8);
	if (s)
		*v = idd_le64(s);
	return s != NULL;
}

bool idd_get_varint(idd_reader *r, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 64; shift += 7) {
		uint8_t c;
		if (!idd_get_u8(r, &c))
			return false;
		if (shift == 63 && (c & 0x7e)) /* more than 64 bits */
			break;
		x |= (uint64_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*v = x;
			return true;
		}
	}
	r->bad = true;
	return false;
}

bool idd_get_str(idd_reader *r, char **out, size_t max)
{
	uint64_t n;
	if (!idd_get_varint(r, &n) || n > max) {
		r->bad = true;
		return false;
	}
	const unsigned char *s = idd_get_span(r, (size_t)n);
	if (!s || memchr(s, 0, (size_t)n)) {
		r->bad = true;
		return false;
	}
	char *d = malloc((size_t)n + 1);
	if (!d) {
		r->bad = true;
		return false;
	}
	memcpy(d, s, (size_t)n);
	d[n] = 0;
	*out = d;
	return true;
}

int idd_read_file_reuse(const char *path, size_t max, void **data, size_t *cap, size_t *len,
                        idd_error *err)
{
	/* O_NONBLOCK: a FIFO in place of an index file is refused below instead
	 * of waiting for a writer forever */
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		return idd_fail_errno(err, path, "cannot open");
	}
	struct stat st;
	if (fstat(fd, &st)) {
		int rc = idd_fail_errno(err, path, "stat");
		close(fd);
		return rc;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return idd_fail_code(err, IDD_EPERM, "%s: not a regular file; refused", path);
	}
	if ((uint64_t)st.st_size > max) {
		close(fd);
		return idd_fail_code(err, IDD_ECORRUPT, "%s: larger than %zu bytes", path, max);
	}
	size_t n = (size_t)st.st_size, got = 0;
	if (!*data || n > *cap) {
		free(*data);
		*cap = 0;
		if (!(*data = malloc(n ? n : 1))) {
			close(fd);
			return idd_fail_code(err, IDD_ENOMEM, "%s: out of memory reading its %zu bytes", path, n);
		}
		*cap = n;
	}
	unsigned char *buf = *data;
	while (got < n) {
		ssize_t r = pread(fd, buf + got, n - got, (off_t)got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			r < 0 ? idd_fail_errno(err, path, "read") : idd_fail(err, "%s: shrank while being read", path);
			close(fd);
			return IDD_ERR;
		}
		got += (size_t)r;
	}
	close(fd);
	*len = n;
	return IDD_OK;
}

int idd_read_file(const char *path, size_t max, void **data, size_t *len, idd_error *err)
{
	void *buf = NULL;
	size_t cap = 0;
	int rc = idd_read_file_reuse(path, max, &buf, &cap, len, err);
	if (rc)
		free(buf);
	else
		*data = buf;
	return rc;
}

bool idd_relpath_ok(const char *rel)
{
	if (!rel || !*rel || rel[0] == '/')
		return false;
	const char *p = rel;
	for (;;) {
		const char *slash = strchr(p, '/');
		size_t n = slash ? (size_t)(slash - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++)
			if (p[i] == '\\' || (unsigned char)p[i] < 0x20)
				return false;
		if (!slash)
			return true;
		p = slash + 1;
	}
}

char *idd_str_escape(const char *s, idd_error *err)
{
	size_t n = 0;
	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		n += *c == '\\' || *c == '\n' || *c == '\t' || *c == '\r' ? 2 : *c < 0x20 || *c == 0x7f ? 4 : 1;
	char *out = idd_malloc(n + 1, err);
	if (!out)
		return NULL;
	char *o = out;
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		switch (*c) {
		case '\\': *o++ = '\\'; *o++ = '\\'; break;
		case '\n': *o++ = '\\'; *o++ = 'n'; break;
		case '\t': *o++ = '\\'; *o++ = 't'; break;
		case '\r': *o++ = '\\'; *o++ = 'r'; break;
		default:
			if (*c < 0x20 || *c == 0x7f) {
				snprintf(o, 5, "\\x%02x", *c);
				o += 4;
			} else {
				*o++ = (char)*c;
			}
		}
	}
	*o = 0;
	return out;
}
