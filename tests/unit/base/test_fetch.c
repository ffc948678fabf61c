/* test_fetch.c - sources: path checks, local reads, and HTTP and S3
 * requests against an in-process server on 127.0.0.1 that can fail, drop,
 * redirect, throttle, deny, list and take uploads. */
#include "testutil.h"
#include "base/fetch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- a tiny HTTP/1.1 server ---- */

#define FILE_SIZE (1u << 20)
static unsigned char file_data[FILE_SIZE];

static struct {
	int lfd, port;
	pthread_t thr;
	pthread_mutex_t mu;
	int fail500, drop, status_override; /* faults for /f */
	bool stall;                         /* /f: headers, then nothing until the client hangs up */
	bool ignore_range, redirect;
	int requests;                       /* requests for /f */
	/* S3: /bkt/pre/f is /f; /bkt/?... lists; PUT and DELETE /bkt/pre/up */
	int slowdown;                       /* 503 SlowDown answers still to give */
	char last_hdr[4096];                /* the last request's header block */
	char last_query[1024];              /* ... and its query string */
	int list_requests;
	unsigned char put_buf[65536];
	size_t put_len;
	int deletes;
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER};

static const char *const list_page1 =
	"<?xml version='1.0' encoding='UTF-8'?><ListBucketResult><Name>bkt</Name>"
	"<IsTruncated>true</IsTruncated><NextContinuationToken>tok/1+=</NextContinuationToken>"
	"<Contents><Key>pre/a%20b.raw</Key><LastModified>2024-01-31T12:34:56.000Z</LastModified>"
	"<ETag>&quot;e1&quot;</ETag><Size>10</Size></Contents>"
	"<Contents><Key>pre/d/c.qcow2</Key><LastModified>2024-01-31T12:34:57.000Z</LastModified>"
	"<ETag>&quot;e2&quot;</ETag><Size>20</Size></Contents></ListBucketResult>";
static const char *const list_page2 =
	"<?xml version='1.0' encoding='UTF-8'?><ListBucketResult><Name>bkt</Name>"
	"<IsTruncated>false</IsTruncated>"
	"<Contents><Key>pre/z.img</Key><LastModified>2024-01-31T12:34:58.000Z</LastModified>"
	"<ETag>&quot;e3&quot;</ETag><Size>30</Size></Contents></ListBucketResult>";

static void send_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
		if (w <= 0)
			return;
		c += w;
		n -= (size_t)w;
	}
}

static void *conn_main(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char buf[8192];
	size_t have = 0;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	for (;;) {
		char *end;
		while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
			if (have == sizeof buf)
				goto done;
			ssize_t r = recv(fd, buf + have, sizeof buf - have, 0);
			if (r <= 0)
				goto done;
			have += (size_t)r;
		}
		*end = 0;
		char method[8] = {0}, path[1024] = {0};
		sscanf(buf, "%7s %1023s", method, path);
		pthread_mutex_lock(&srv.mu);
		snprintf(srv.last_hdr, sizeof srv.last_hdr, "%.4000s", buf);
		char *qm = strchr(path, '?');
		snprintf(srv.last_query, sizeof srv.last_query, "%s", qm ? qm + 1 : "");
		if (qm)
			*qm = 0;
		int slowdown = srv.slowdown > 0 ? srv.slowdown-- : 0;
		pthread_mutex_unlock(&srv.mu);
		if (!strncmp(path, "/bkt/pre/", 9)) /* S3, path-style: the same files */
			memmove(path, path + 8, strlen(path + 8) + 1);
		unsigned long long a = 0, b = FILE_SIZE - 1;
		char *rg = strcasestr(buf, "\r\nRange: bytes=");
		bool ranged = rg && sscanf(rg + 15, "%llu-%llu", &a, &b) >= 1;
		unsigned long long clen = 0;
		char *cl = strcasestr(buf, "\r\nContent-Length:");
		if (cl)
			sscanf(cl + 17, " %llu", &clen);
		bool expect = strcasestr(buf, "\r\nExpect: 100-continue") != NULL;
		size_t used = (size_t)(end + 4 - buf);
		memmove(buf, buf + used, have - used);
		have -= used;
		char hdr[512];
		if (slowdown) {
			const char *body = "<Error><Code>SlowDown</Code><Message>Reduce your request rate."
			                   "</Message></Error>";
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 503 Slow Down\r\nContent-Length: %zu\r\n\r\n%s",
			                 strlen(body), body);
			send_all(fd, hdr, (size_t)n);
			if (clen) /* an upload refused before its body: the connection is done */
				goto done;
			continue;
		}
		if (!strcmp(method, "PUT") && !strcmp(path, "/up")) {
			if (expect)
				send_all(fd, "HTTP/1.1 100 Continue\r\n\r\n", 25);
			size_t got = 0;
			while (got < clen && clen <= sizeof srv.put_buf) {
				size_t take = IDD_MIN(have, (size_t)clen - got);
				memcpy(srv.put_buf + got, buf, take);
				memmove(buf, buf + take, have - take);
				have -= take;
				got += take;
				if (got < clen) {
					ssize_t r = recv(fd, buf, sizeof buf, 0);
					if (r <= 0)
						goto done;
					have = (size_t)r;
				}
			}
			srv.put_len = got;
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nETag: \"up\"\r\nContent-Length: 0\r\n\r\n");
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (!strcmp(method, "DELETE")) {
			srv.deletes++;
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 204 No Content\r\n\r\n");
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (!strcmp(path, "/bkt/")) {
			srv.list_requests++;
			const char *body = strstr(srv.last_query, "continuation-token=") ? list_page2 : list_page1;
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n",
			                 strlen(body));
			send_all(fd, hdr, (size_t)n);
			send_all(fd, body, strlen(body));
			continue;
		}
		if (!strcmp(path, "/.imgdedup/x")) {
			const char *body = "hello index";
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s",
			                 strlen(body), body);
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (strcmp(path, "/f")) {
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno");
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		pthread_mutex_lock(&srv.mu);
		srv.requests++;
		int fault = 0;
		if (srv.redirect)
			fault = 3;
		else if (srv.status_override)
			fault = 4;
		else if (srv.fail500 > 0)
			srv.fail500--, fault = 1;
		else if (srv.drop > 0 && !strcmp(method, "GET"))
			srv.drop--, fault = 2;
		else if (srv.stall && !strcmp(method, "GET"))
			fault = 5;
		int status_override = srv.status_override;
		bool ignore = srv.ignore_range;
		pthread_mutex_unlock(&srv.mu);
		if (fault == 1) {
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops");
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (fault == 5) {
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nContent-Length: %u\r\n\r\n",
			                 FILE_SIZE);
			send_all(fd, hdr, (size_t)n);
			char c;
			while (recv(fd, &c, 1, 0) > 0)
				;
			break;
		}
		if (fault == 3) {
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/f\r\n"
			                 "Content-Length: 0\r\n\r\n");
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (fault == 4) {
			const char *body = status_override == 403 ? "<Error><Code>AccessDenied</Code>"
			                                            "<Message>Access Denied</Message></Error>"
			                                          : "";
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\n\r\n%s",
			                 status_override, strlen(body), body);
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (!ranged || ignore) {
			a = 0;
			b = FILE_SIZE - 1;
		}
		if (b >= FILE_SIZE)
			b = FILE_SIZE - 1;
		size_t len = (size_t)(b - a + 1);
		int n;
		if (ranged && !ignore)
			n = snprintf(hdr, sizeof hdr, "HTTP/1.1 206 Partial\r\nContent-Length: %zu\r\n"
			             "Content-Range: bytes %llu-%llu/%u\r\n\r\n", len, a, b, FILE_SIZE);
		else
			n = snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nETag: \"etag-f\"\r\n"
			             "Last-Modified: Wed, 31 Jan 2024 12:34:56 GMT\r\n\r\n", len);
		send_all(fd, hdr, (size_t)n);
		if (!strcmp(method, "HEAD"))
			continue;
		if (fault == 2) { /* half the body, then the connection dies */
			send_all(fd, file_data + a, len / 2);
			goto done;
		}
		send_all(fd, file_data + a, len);
	}
done:
	close(fd);
	return NULL;
}

static void *accept_main(void *arg)
{
	(void)arg;
	for (;;) {
		int fd = accept(srv.lfd, NULL, NULL);
		if (fd < 0)
			return NULL;
		pthread_t t;
		if (pthread_create(&t, NULL, conn_main, (void *)(intptr_t)fd) == 0)
			pthread_detach(t);
		else
			close(fd);
	}
}

static int server_setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	tu_fill_random(file_data, sizeof file_data, 42);
	srv.lfd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (srv.lfd < 0 || bind(srv.lfd, (struct sockaddr *)&sa, sizeof sa) || listen(srv.lfd, 64))
		return -1;
	socklen_t sl = sizeof sa;
	getsockname(srv.lfd, (struct sockaddr *)&sa, &sl);
	srv.port = ntohs(sa.sin_port);
	return pthread_create(&srv.thr, NULL, accept_main, NULL);
}

static void reset_faults(void)
{
	pthread_mutex_lock(&srv.mu);
	srv.fail500 = srv.drop = srv.status_override = 0;
	srv.ignore_range = srv.redirect = srv.stall = false;
	srv.requests = srv.slowdown = srv.list_requests = srv.deletes = 0;
	srv.put_len = 0;
	pthread_mutex_unlock(&srv.mu);
}

static idd_source *open_http(int connections)
{
	char url[64];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/", srv.port);
	idd_fetch_opts o = {.connections = connections, .backoff_ms = 5};
	idd_source *s;
	idd_error err;
	assert_int_equal(idd_source_open(url, &o, &s, &err), IDD_OK);
	assert_true(idd_source_is_remote(s));
	reset_faults();
	return s;
}

/* ---- tests ---- */

static void test_relpath(void **state)
{
	(void)state;
	assert_true(idd_relpath_ok("a.raw"));
	assert_true(idd_relpath_ok("dir/a.raw"));
	assert_true(idd_relpath_ok(".imgdedup/catalog"));
	assert_true(idd_relpath_ok("a..b"));
	assert_false(idd_relpath_ok(""));
	assert_false(idd_relpath_ok("/etc/passwd"));
	assert_false(idd_relpath_ok("../x"));
	assert_false(idd_relpath_ok("a/../../x"));
	assert_false(idd_relpath_ok("a/./b"));
	assert_false(idd_relpath_ok("a//b"));
	assert_false(idd_relpath_ok("a/"));
	assert_false(idd_relpath_ok(".."));
	assert_true(idd_is_url("http://x/"));
	assert_true(idd_is_url("HTTPS://x/"));
	assert_false(idd_is_url("ftp://x/"));
	assert_false(idd_is_url("/srv/repo"));
}

static void test_local(void **state)
{
	(void)state;
	char *dir = tu_mkdtemp();
	char *outside = tu_mkdtemp();
	char *sub = idd_path_join(dir, "sub", NULL);
	assert_int_equal(idd_mkdir_p(sub, NULL), IDD_OK);
	free(tu_write(sub, "f", file_data, 65536));
	char *secret = tu_write(outside, "secret", "s3cret", 6);
	char *link = idd_path_join(dir, "link", NULL);
	assert_int_equal(symlink(secret, link), 0);
	idd_source *s;
	idd_error err;
	assert_int_equal(idd_source_open(dir, NULL, &s, &err), IDD_OK);
	assert_false(idd_source_is_remote(s));
	void *data;
	size_t len;
	assert_int_equal(idd_source_get(s, "sub/f", 1 << 20, &data, &len, &err), IDD_OK);
	assert_int_equal(len, 65536);
	assert_memory_equal(data, file_data, 65536);
	free(data);
	assert_int_equal(idd_source_get(s, "nope", 100, &data, &len, &err), IDD_ENOENT);
	assert_int_not_equal(idd_source_get(s, "link", 100, &data, &len, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "outside the source"));
	assert_int_not_equal(idd_source_get(s, "../x", 100, &data, &len, &err), IDD_OK);
	idd_file *f;
	assert_int_equal(idd_source_open_file(s, "sub/f", UINT64_MAX, &f, &err), IDD_OK);
	unsigned char a[100], b[200];
	idd_range r[2] = {{1000, sizeof b, b}, {900, sizeof a, a}};
	assert_int_equal(idd_source_read_ranges(s, f, r, 2, &err), IDD_OK);
	assert_memory_equal(a, file_data + 900, sizeof a);
	assert_memory_equal(b, file_data + 1000, sizeof b);
	idd_file_close(f);
	assert_int_not_equal(idd_source_open_file(s, "link", UINT64_MAX, &f, &err), IDD_OK);
	idd_source_close(s);
	tu_rmtree(dir);
	tu_rmtree(outside);
	free(dir);
	free(outside);
	free(sub);
	free(secret);
	free(link);
}

/* Many ranges, some adjacent: adjacent ones share a request, data exact;
 * overlapping and nearby ranges share one too. */
static void test_http_coalesce(void **state)
{
	(void)state;
	idd_source *s = open_http(4);
	idd_error err;
	idd_file *f;
	assert_int_equal(idd_source_open_file(s, "f", UINT64_MAX, &f, &err), IDD_OK); /* HEAD */
	assert_int_equal(f->size, FILE_SIZE);
	enum { N = 32 };
	idd_range r[N];
	unsigned char *buf = malloc((size_t)N * 4096);
	size_t groups = 0;
	uint64_t off = 0;
	for (int i = 0; i < N; i++) {
		/* runs of 4 adjacent blocks separated by gaps */
		if (i % 4 == 0) {
			off += IDD_FETCH_MERGE_GAP + 4096; /* too far apart to merge */
			groups++;
		}
		r[i] = (idd_range){off, 4096, buf + (size_t)i * 4096};
		off += 4096;
	}
	/* hand them over shuffled: order must not matter */
	for (int i = 0; i < N; i++) {
		int j = (i * 37) % N;
		idd_range t = r[i];
		r[i] = r[j];
		r[j] = t;
	}
	idd_fetch_stats before, after;
	idd_source_stats(s, &before);
	assert_int_equal(idd_source_read_ranges(s, f, r, N, &err), IDD_OK);
	idd_source_stats(s, &after);
	for (int i = 0; i < N; i++)
		assert_memory_equal(r[i].buf, file_data + r[i].off, 4096);
	assert_int_equal(after.requests - before.requests, groups);
	assert_int_equal(after.bytes - before.bytes, N * 4096);
	assert_int_equal(srv.requests, 1 + groups);
	/* overlapping (sector-padded compressed units) and close ranges: one
	 * request for the first three, one for the far one, each range exact */
	unsigned char o1[5000], o2[4000], o3[100], o4[10];
	idd_range ov[4] = {{200000, 10, o4}, {3000, 4000, o2}, {1000, 5000, o1}, {7300, 100, o3}};
	idd_source_stats(s, &before);
	assert_int_equal(idd_source_read_ranges(s, f, ov, 4, &err), IDD_OK);
	idd_source_stats(s, &after);
	for (int i = 0; i < 4; i++)
		assert_memory_equal(ov[i].buf, file_data + ov[i].off, ov[i].len);
	assert_int_equal(after.requests - before.requests, 2);
	assert_int_equal(after.bytes - before.bytes, (7400 - 1000) + 10);
	assert_int_equal(srv.requests, 1 + groups + 2);
	/* a big range is split so several requests can be in flight */
	unsigned char *all = malloc(FILE_SIZE);
	idd_range big = {0, FILE_SIZE, all};
	assert_int_equal(idd_source_read_ranges(s, f, &big, 1, &err), IDD_OK);
	assert_memory_equal(all, file_data, FILE_SIZE);
	/* single preads reuse the connection (keep-alive) */
	unsigned char one[10];
	assert_int_equal(idd_file_pread(f, one, sizeof one, 12345, &err), IDD_OK);
	assert_memory_equal(one, file_data + 12345, sizeof one);
	assert_int_not_equal(idd_file_pread(f, one, sizeof one, FILE_SIZE - 5, &err), IDD_OK);
	free(all);
	free(buf);
	idd_file_close(f);
	idd_source_close(s);
}

static void test_http_retries(void **state)
{
	(void)state;
	idd_source *s = open_http(2);
	idd_error err;
	idd_file *f;
	assert_int_equal(idd_source_open_file(s, "f", FILE_SIZE, &f, &err), IDD_OK); /* no HEAD */
	srv.fail500 = 3;
	srv.drop = 2;
	unsigned char *buf = malloc(FILE_SIZE / 2);
	idd_range r[2] = {{0, 100000, buf}, {300000, 200000, buf + 100000}};
	assert_int_equal(idd_source_read_ranges(s, f, r, 2, &err), IDD_OK);
	assert_memory_equal(buf, file_data, 100000);
	assert_memory_equal(buf + 100000, file_data + 300000, 200000);
	idd_fetch_stats st;
	idd_source_stats(s, &st);
	assert_int_equal(st.retries, 5);
	/* payload counted once although dropped transfers were resumed */
	assert_int_equal(st.bytes, 300000);
	/* too many failures: a clear error naming the URL */
	srv.fail500 = 100;
	assert_int_not_equal(idd_source_read_ranges(s, f, r, 1, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "/f"));
	assert_non_null(strstr(err.msg, "HTTP 500"));
	free(buf);
	idd_file_close(f);
	idd_source_close(s);
}

/* A deadline (idd_fetch_set_deadline) ends a stalled transfer, and a retry
 * that could only start after it; the cancel flag ends one at once. */
static void *cancel_later(void *arg)
{
	usleep(200000);
	atomic_store((atomic_bool *)arg, true);
	return NULL;
}

static void test_http_deadline_and_cancel(void **state)
{
	(void)state;
	char url[64];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/", srv.port);
	atomic_bool cancel = false;
	/* 30 s without progress would be the stall timeout, 2 s the first retry */
	idd_fetch_opts o = {.connections = 2, .timeout_s = 30, .backoff_ms = 2000, .cancel = &cancel};
	idd_source *s;
	idd_error err;
	assert_int_equal(idd_source_open(url, &o, &s, &err), IDD_OK);
	reset_faults();
	idd_file *f;
	assert_int_equal(idd_source_open_file(s, "f", FILE_SIZE, &f, &err), IDD_OK);
	unsigned char *buf = malloc(FILE_SIZE);
	idd_range r = {0, 4096, buf};

	srv.stall = true;
	int64_t old = idd_fetch_set_deadline(idd_mono_ns() + 300000000);
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_ETIMEDOUT);
	assert_non_null(strstr(err.msg, "no answer in time"));
	idd_fetch_set_deadline(old);
	assert_int_equal(idd_fetch_deadline(), old);

	srv.stall = false;
	srv.fail500 = 100;
	idd_fetch_set_deadline(idd_mono_ns() + 500000000);
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_ETIMEDOUT);
	assert_non_null(strstr(err.msg, "HTTP 500"));
	assert_non_null(strstr(err.msg, "no time left to retry"));
	idd_fetch_set_deadline(0);

	srv.fail500 = 0;
	srv.stall = true;
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, cancel_later, &cancel), 0);
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_ECANCELED);
	pthread_join(t, NULL);
	/* a stopped source stays stopped */
	srv.stall = false;
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_ECANCELED);
	reset_faults();
	free(buf);
	idd_file_close(f);
	idd_source_close(s);
}

static void test_http_errors(void **state)
{
	(void)state;
	idd_source *s = open_http(2);
	idd_error err;
	void *data;
	size_t len;
	assert_int_equal(idd_source_get(s, ".imgdedup/x", 100, &data, &len, &err), IDD_OK);
	assert_int_equal(len, 11);
	assert_memory_equal(data, "hello index", 11);
	free(data);
	assert_int_equal(idd_source_get(s, ".imgdedup/x", 5, &data, &len, &err), IDD_ERR); /* too big */
	/* announced larger than allowed: refused at its headers, not read up
	 * to the limit first */
	uint64_t before = idd_bytes_received();
	assert_int_equal(idd_source_get(s, "f", FILE_SIZE / 2, &data, &len, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "too large"));
	assert_true(idd_bytes_received() - before < FILE_SIZE / 4);
	reset_faults();
	assert_int_equal(idd_source_get(s, "missing", 100, &data, &len, &err), IDD_ENOENT);
	assert_non_null(strstr(err.msg, "404"));
	idd_file *f;
	assert_int_equal(idd_source_open_file(s, "f", FILE_SIZE, &f, &err), IDD_OK);
	unsigned char b[16];
	idd_range r = {100, sizeof b, b};
	/* 403: no retry, a clear error */
	srv.status_override = 403;
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_EPERM);
	assert_non_null(strstr(err.msg, "HTTP 403"));
	assert_int_equal(srv.requests, 1);
	reset_faults();
	/* a redirect to another scheme is not followed */
	srv.redirect = true;
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "redirect"));
	reset_faults();
	/* a server ignoring Range is refused, not misread */
	srv.ignore_range = true;
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_ERR);
	assert_non_null(strstr(err.msg, "Range"));
	reset_faults();
	/* paths escaping the root never reach the server */
	assert_int_not_equal(idd_source_open_file(s, "../etc/passwd", 10, &f, &err), IDD_OK);
	assert_int_equal(srv.requests, 0);
	idd_file_close(f);
	idd_source_close(s);
}

/* ---- S3 ---- */

static char *warnings;
static void collect_warning(void *ctx, const char *msg)
{
	(void)ctx;
	size_t a = warnings ? strlen(warnings) : 0;
	char *n = realloc(warnings, a + strlen(msg) + 2);
	if (!n)
		return;
	warnings = n;
	strcpy(warnings + a, msg);
	strcat(warnings, "\n");
}

static idd_source *open_s3(const char *loc, int connections)
{
	char url[64];
	snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
	unsetenv("AWS_ENDPOINT_URL_S3");
	unsetenv("AWS_SESSION_TOKEN");
	unsetenv("AWS_PROFILE");
	setenv("AWS_ENDPOINT_URL", url, 1);
	setenv("AWS_REGION", "us-east-1", 1);
	setenv("AWS_ACCESS_KEY_ID", "test:tester", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SECRETVALUE", 1);
	idd_fetch_opts o = {.connections = connections, .backoff_ms = 5, .warn = collect_warning};
	idd_source *s;
	idd_error err;
	assert_int_equal(idd_source_open(loc, &o, &s, &err), IDD_OK);
	assert_true(idd_source_is_remote(s));
	assert_true(idd_source_is_s3(s));
	reset_faults();
	free(warnings);
	warnings = NULL;
	return s;
}

/* Signed requests: SigV4 through libcurl with the key's colon intact, the
 * payload hash header signed, HEAD identity, ranges exact. */
static void test_s3_requests(void **state)
{
	(void)state;
	idd_source *s = open_s3("s3://bkt/pre/", 4);
	assert_string_equal(idd_source_root(s), "s3://bkt/pre");
	idd_error err;
	idd_remote_stat st;
	assert_int_equal(idd_source_stat(s, "f", &st, &err), IDD_OK);
	assert_int_equal(st.size, FILE_SIZE);
	assert_string_equal(st.etag, "etag-f");
	assert_int_equal(st.mtime, 1706704496);
	assert_non_null(strstr(srv.last_hdr, "HEAD /bkt/pre/f HTTP/1.1"));
	assert_non_null(strstr(srv.last_hdr, "Authorization: AWS4-HMAC-SHA256 Credential=test:tester/"));
	assert_non_null(strstr(srv.last_hdr, "/us-east-1/s3/aws4_request"));
	assert_non_null(strstr(srv.last_hdr, "x-amz-content-sha256: UNSIGNED-PAYLOAD"));
	assert_non_null(strstr(srv.last_hdr, "SignedHeaders=host;x-amz-content-sha256;x-amz-date"));
	assert_null(strstr(srv.last_hdr, "SECRETVALUE"));
	idd_file *f;
	assert_int_equal(idd_source_open_file(s, "f", FILE_SIZE, &f, &err), IDD_OK);
	assert_string_equal(f->name, "s3://bkt/pre/f");
	unsigned char a[5000], b[300];
	idd_range r[2] = {{70000, sizeof a, a}, {1000, sizeof b, b}};
	assert_int_equal(idd_source_read_ranges(s, f, r, 2, &err), IDD_OK);
	assert_memory_equal(a, file_data + 70000, sizeof a);
	assert_memory_equal(b, file_data + 1000, sizeof b);
	assert_non_null(strstr(srv.last_hdr, "Range: bytes="));
	/* keys are URI-encoded once, '/' kept */
	assert_int_equal(idd_source_stat(s, "dir/a b+c.raw", &st, &err), IDD_ENOENT);
	assert_non_null(strstr(srv.last_hdr, "HEAD /bkt/pre/dir/a%20b%2Bc.raw HTTP/1.1"));
	assert_non_null(strstr(err.msg, "s3://bkt/pre/dir/a b+c.raw"));
	idd_file_close(f);
	idd_source_close(s);
}

/* 503 SlowDown is throttling: retried with backoff, exact data; 403 is
 * access denied at once, naming bucket and key, never the secret. */
static void test_s3_throttle_and_deny(void **state)
{
	(void)state;
	idd_source *s = open_s3("s3://bkt/pre", 2);
	idd_error err;
	idd_file *f;
	assert_int_equal(idd_source_open_file(s, "f", FILE_SIZE, &f, &err), IDD_OK);
	unsigned char *buf = malloc(200000);
	srv.slowdown = 3;
	idd_range r = {12345, 200000, buf};
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_OK);
	assert_memory_equal(buf, file_data + 12345, 200000);
	idd_fetch_stats st;
	idd_source_stats(s, &st);
	assert_int_equal(st.retries, 3);
	assert_non_null(warnings);
	assert_non_null(strstr(warnings, "HTTP 503 SlowDown: Reduce your request rate."));
	assert_non_null(strstr(warnings, "s3://bkt/pre/f"));
	reset_faults();
	srv.status_override = 403;
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_EPERM);
	assert_int_equal(srv.requests, 1); /* no retry */
	assert_non_null(strstr(err.msg, "s3://bkt/pre/f: access denied (HTTP 403: AccessDenied"));
	assert_non_null(strstr(err.msg, "AWS_SECRET_ACCESS_KEY"));
	assert_null(strstr(err.msg, "SECRETVALUE"));
	reset_faults();
	srv.slowdown = 100;
	assert_int_equal(idd_source_read_ranges(s, f, &r, 1, &err), IDD_ENET);
	assert_non_null(strstr(err.msg, "gave up after 6 retries"));
	reset_faults();
	free(buf);
	idd_file_close(f);
	idd_source_close(s);
}

/* ListObjectsV2 page after page, the query canonical (sorted, encoded),
 * keys relative to the source. */
static void test_s3_list(void **state)
{
	(void)state;
	idd_source *s = open_s3("s3://bkt/pre", 2);
	idd_error err;
	idd_s3_object_list l;
	assert_int_equal(idd_source_list(s, "", &l, &err), IDD_OK);
	assert_int_equal(srv.list_requests, 2);
	assert_string_equal(srv.last_query, "continuation-token=tok%2F1%2B%3D&encoding-type=url&"
	                                    "list-type=2&max-keys=1000&prefix=pre%2F");
	assert_int_equal(l.n, 3);
	assert_string_equal(l.v[0].key, "a b.raw");
	assert_int_equal(l.v[0].size, 10);
	assert_string_equal(l.v[0].etag, "e1");
	assert_string_equal(l.v[1].key, "d/c.qcow2");
	assert_string_equal(l.v[2].key, "z.img");
	assert_int_equal(l.v[2].mtime, 1706704498);
	idd_s3_object_list_free(&l);
	assert_int_not_equal(idd_source_list(s, "no-slash", &l, &err), IDD_OK);
	/* an answer with keys outside the prefix asked for is refused */
	assert_int_equal(idd_source_list(s, "d/", &l, &err), IDD_ECORRUPT);
	idd_source_close(s);
	/* listing, upload and delete are S3's: refused over plain HTTP */
	idd_source *h = open_http(1);
	assert_int_not_equal(idd_source_list(h, "", &l, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "s3://"));
	idd_source_close(h);
}

static void test_s3_put_delete(void **state)
{
	(void)state;
	idd_source *s = open_s3("s3://bkt/pre", 2);
	idd_error err;
	char *dir = tu_mkdtemp();
	char *path = tu_write(dir, "up", file_data, 50000);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	srv.slowdown = 1; /* refused once: sent again from the start */
	assert_int_equal(idd_source_put_fd(s, "up", fd, 50000, &err), IDD_OK);
	assert_int_equal(srv.put_len, 50000);
	assert_memory_equal(srv.put_buf, file_data, 50000);
	assert_non_null(strstr(srv.last_hdr, "PUT /bkt/pre/up HTTP/1.1"));
	assert_non_null(strstr(srv.last_hdr, "x-amz-content-sha256: UNSIGNED-PAYLOAD"));
	/* a file shorter than said is an error, not a short object */
	assert_int_not_equal(idd_source_put_fd(s, "up", fd, 60000, &err), IDD_OK);
	close(fd);
	assert_int_equal(idd_source_delete(s, "up", &err), IDD_OK);
	assert_int_equal(srv.deletes, 1);
	assert_non_null(strstr(srv.last_hdr, "DELETE /bkt/pre/up HTTP/1.1"));
	tu_rmtree(dir);
	free(dir);
	free(path);
	idd_source_close(s);
}

/* Read-ahead: small reads within a window cost one request; threads
 * reading the same file at once get exact bytes. */
struct ra_arg {
	idd_file *f;
	unsigned seed;
	int bad;
};

static void *ra_main(void *arg)
{
	struct ra_arg *a = arg;
	unsigned char b[700];
	idd_error err;
	for (int i = 0; i < 200; i++) {
		a->seed = a->seed * 1103515245u + 12345u;
		uint64_t off = a->seed % (FILE_SIZE - sizeof b);
		if (idd_file_pread(a->f, b, sizeof b, off, &err) || memcmp(b, file_data + off, sizeof b))
			a->bad++;
	}
	return NULL;
}

static void test_readahead(void **state)
{
	(void)state;
	idd_source *s = open_http(4);
	idd_error err;
	idd_file *f;
	assert_int_equal(idd_source_open_file_readahead(s, "f", FILE_SIZE, 65536, &f, &err), IDD_OK);
	unsigned char b[100];
	for (uint64_t off = 65536; off < 65536 + 60000; off += 1000) {
		assert_int_equal(idd_file_pread(f, b, sizeof b, off, &err), IDD_OK);
		assert_memory_equal(b, file_data + off, sizeof b);
	}
	assert_int_equal(srv.requests, 1);
	/* a read across two windows, and one as large as a window, go as they are */
	unsigned char big[65536];
	assert_int_equal(idd_file_pread(f, big, 200, 65536 * 3 - 100, &err), IDD_OK);
	assert_memory_equal(big, file_data + 65536 * 3 - 100, 200);
	assert_int_equal(idd_file_pread(f, big, sizeof big, 5, &err), IDD_OK);
	assert_memory_equal(big, file_data + 5, sizeof big);
	assert_int_equal(srv.requests, 3);
	pthread_t t[4];
	struct ra_arg a[4];
	for (int i = 0; i < 4; i++) {
		a[i] = (struct ra_arg){f, (unsigned)i * 7919u + 1, 0};
		assert_int_equal(pthread_create(&t[i], NULL, ra_main, &a[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		assert_int_equal(a[i].bad, 0);
	}
	idd_file_close(f);
	idd_source_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_relpath),
		cmocka_unit_test(test_local),
		cmocka_unit_test(test_http_coalesce),
		cmocka_unit_test(test_http_retries),
		cmocka_unit_test(test_http_deadline_and_cancel),
		cmocka_unit_test(test_http_errors),
		cmocka_unit_test(test_s3_requests),
		cmocka_unit_test(test_s3_throttle_and_deny),
		cmocka_unit_test(test_s3_list),
		cmocka_unit_test(test_s3_put_delete),
		cmocka_unit_test(test_readahead),
	};
	return cmocka_run_group_tests(tests, server_setup, NULL);
}
