/* test_fetch.c - sources: path checks, local reads, and HTTP against an
 * in-process server on 127.0.0.1 that can fail, drop and redirect. */
#include "testutil.h"
#include "node/fetch.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
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
	bool ignore_range, redirect;
	int requests;                       /* requests for /f */
} srv = {.mu = PTHREAD_MUTEX_INITIALIZER};

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
		char method[8] = {0}, path[256] = {0};
		sscanf(buf, "%7s %255s", method, path);
		unsigned long long a = 0, b = FILE_SIZE - 1;
		char *rg = strcasestr(buf, "\r\nRange: bytes=");
		bool ranged = rg && sscanf(rg + 15, "%llu-%llu", &a, &b) >= 1;
		size_t used = (size_t)(end + 4 - buf);
		memmove(buf, buf + used, have - used);
		have -= used;
		char hdr[512];
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
		int status_override = srv.status_override;
		bool ignore = srv.ignore_range;
		pthread_mutex_unlock(&srv.mu);
		if (fault == 1) {
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 500 Oops\r\nContent-Length: 4\r\n\r\noops");
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (fault == 3) {
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 302 Found\r\nLocation: ftp://127.0.0.1/f\r\n"
			                 "Content-Length: 0\r\n\r\n");
			send_all(fd, hdr, (size_t)n);
			continue;
		}
		if (fault == 4) {
			int n = snprintf(hdr, sizeof hdr, "HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n", status_override);
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
			n = snprintf(hdr, sizeof hdr, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", len);
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
	srv.ignore_range = srv.redirect = false;
	srv.requests = 0;
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_relpath),
		cmocka_unit_test(test_local),
		cmocka_unit_test(test_http_coalesce),
		cmocka_unit_test(test_http_retries),
		cmocka_unit_test(test_http_errors),
	};
	return cmocka_run_group_tests(tests, server_setup, NULL);
}
