/* test_metrics.c - serve's metrics as Prometheus text: the exact text for
 * given counters, label values escaped as the exposition format says
 * (backslash, double quote, line feed), latency histograms' bucket edges,
 * the metrics address: parse errors and a port in use; and the HTTP server
 * over a real server's counters: what GET /metrics answers (the same
 * counters as idd_server_stats), 404, 405, and a close that does not wait
 * for an idle client. */
#include "testutil.h"
#include "node/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BS 4096u
#define NB 64

static idd_serve_metrics totals(void)
{
	idd_serve_metrics m = {0};
	m.total.reads = 7;
	m.total.read_errors = 1;
	m.total.bytes_read = 28672;
	m.total.bytes_zero = 8192;
	m.total.bytes_from_cache = 4096;
	m.total.bytes_from_peers = 300;
	m.bytes_from_pack = 1200;
	m.bytes_from_repository = 5000;
	m.total.requests = 9;
	m.fetch_errors = 2;
	m.verify_failures_cache = 3;
	m.verify_failures_peer = 4;
	m.verify_failures_pack = 5;
	m.verify_failures_repository = 6;
	m.total.cache_write_errors = 8;
	m.total.blocks_filled = 10;
	m.total.exports_complete = 1;
	m.total.cache_evicted = 12;
	m.fetches_in_flight = 11;
	m.cache_bytes = 1234567;
	m.partial_images = 2;
	m.read_latency.bucket[0] = 2;
	m.read_latency.bucket[3] = 4;
	m.read_latency.bucket[IDD_LATENCY_BUCKETS] = 1; /* above 60 s */
	m.read_latency.sum_ns = 61234567890ULL;
	m.fetch_latency.bucket[10] = 3;
	m.fetch_latency.sum_ns = 2500000000ULL;
	return m;
}

static const char expected_totals[] =
	"# HELP imgdedup_reads_total Client read requests (failed ones included).\n"
	"# TYPE imgdedup_reads_total counter\n"
	"imgdedup_reads_total 7\n"
	"# HELP imgdedup_read_errors_total Client reads answered with an I/O error.\n"
	"# TYPE imgdedup_read_errors_total counter\n"
	"imgdedup_read_errors_total 1\n"
	"# HELP imgdedup_served_bytes_total Bytes the clients read.\n"
	"# TYPE imgdedup_served_bytes_total counter\n"
	"imgdedup_served_bytes_total 28672\n"
	"# HELP imgdedup_read_bytes_total Bytes by origin: zero and cache count the blocks of client reads answered without a fetch; peer, pack and repository the payload fetched from there, as transferred.\n"
	"# TYPE imgdedup_read_bytes_total counter\n"
	"imgdedup_read_bytes_total{origin=\"zero\"} 8192\n"
	"imgdedup_read_bytes_total{origin=\"cache\"} 4096\n"
	"imgdedup_read_bytes_total{origin=\"peer\"} 300\n"
	"imgdedup_read_bytes_total{origin=\"pack\"} 1200\n"
	"imgdedup_read_bytes_total{origin=\"repository\"} 5000\n"
	"# HELP imgdedup_fetch_requests_total Requests made to peers and the repository (index, pack, images).\n"
	"# TYPE imgdedup_fetch_requests_total counter\n"
	"imgdedup_fetch_requests_total 9\n"
	"# HELP imgdedup_fetch_errors_total Blocks a fetch could not deliver verified (no source, timeouts, failures).\n"
	"# TYPE imgdedup_fetch_errors_total counter\n"
	"imgdedup_fetch_errors_total 2\n"
	"# HELP imgdedup_verify_failures_total Blocks that failed verification against their digest, by origin.\n"
	"# TYPE imgdedup_verify_failures_total counter\n"
	"imgdedup_verify_failures_total{origin=\"cache\"} 3\n"
	"imgdedup_verify_failures_total{origin=\"peer\"} 4\n"
	"imgdedup_verify_failures_total{origin=\"pack\"} 5\n"
	"imgdedup_verify_failures_total{origin=\"repository\"} 6\n"
	"# HELP imgdedup_cache_write_errors_total Verified blocks served but not cached (a full disk, ...).\n"
	"# TYPE imgdedup_cache_write_errors_total counter\n"
	"imgdedup_cache_write_errors_total 8\n"
	"# HELP imgdedup_blocks_filled_total Blocks written into the node cache.\n"
	"# TYPE imgdedup_blocks_filled_total counter\n"
	"imgdedup_blocks_filled_total 10\n"
	"# HELP imgdedup_exports_completed_total Exports whose image became complete in the node cache.\n"
	"# TYPE imgdedup_exports_completed_total counter\n"
	"imgdedup_exports_completed_total 1\n"
	"# HELP imgdedup_cache_evicted_total Cache files removed to stay under --cache-max.\n"
	"# TYPE imgdedup_cache_evicted_total counter\n"
	"imgdedup_cache_evicted_total 12\n"
	"# HELP imgdedup_fetches_in_flight Blocks being fetched now.\n"
	"# TYPE imgdedup_fetches_in_flight gauge\n"
	"imgdedup_fetches_in_flight 11\n"
	"# HELP imgdedup_cache_bytes Bytes the node cache's images take on disk (allocated).\n"
	"# TYPE imgdedup_cache_bytes gauge\n"
	"imgdedup_cache_bytes 1234567\n"
	"# HELP imgdedup_partial_images Partial images in the node cache.\n"
	"# TYPE imgdedup_partial_images gauge\n"
	"imgdedup_partial_images 2\n"
	"# HELP imgdedup_exports Exports open.\n"
	"# TYPE imgdedup_exports gauge\n"
	"imgdedup_exports 0\n"
	"# HELP imgdedup_read_duration_seconds Time to answer a client read.\n"
	"# TYPE imgdedup_read_duration_seconds histogram\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.0005\"} 2\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.001\"} 2\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.0025\"} 2\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.005\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.01\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.025\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.05\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.1\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.25\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"0.5\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"1\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"2.5\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"5\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"10\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"30\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"60\"} 6\n"
	"imgdedup_read_duration_seconds_bucket{le=\"+Inf\"} 7\n"
	"imgdedup_read_duration_seconds_sum 61.234567890\n"
	"imgdedup_read_duration_seconds_count 7\n"
	"# HELP imgdedup_fetch_duration_seconds Time to fetch a batch of blocks (through peers, pack, repository).\n"
	"# TYPE imgdedup_fetch_duration_seconds histogram\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.0005\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.001\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.0025\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.005\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.01\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.025\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.05\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.1\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.25\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"0.5\"} 0\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"1\"} 3\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"2.5\"} 3\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"5\"} 3\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"10\"} 3\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"30\"} 3\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"60\"} 3\n"
	"imgdedup_fetch_duration_seconds_bucket{le=\"+Inf\"} 3\n"
	"imgdedup_fetch_duration_seconds_sum 2.500000000\n"
	"imgdedup_fetch_duration_seconds_count 3\n";

static void test_totals_exact_text(void **state)
{
	(void)state;
	idd_serve_metrics m = totals();
	char *text;
	size_t len;
	idd_error err;
	assert_int_equal(idd_metrics_render(&m, &text, &len, &err), IDD_OK);
	assert_int_equal(len, strlen(text));
	assert_string_equal(text, expected_totals);
	free(text);
}

/* Does text hold line (without its line feed) as a whole line? */
static bool has_line(const char *text, const char *line)
{
	size_t n = strlen(line);
	for (const char *p = text; (p = strstr(p, line)); p++)
		if ((p == text || p[-1] == '\n') && p[n] == '\n')
			return true;
	return false;
}

static void test_export_labels_escaped(void **state)
{
	(void)state;
	idd_serve_metrics m = totals();
	idd_export_metrics ex[2] = {{0}};
	ex[0].id = "a\\b\"c\nd";                 /* backslash, quote, line feed */
	ex[0].reads = 5;
	ex[0].bytes_zero = 4096;
	ex[0].bytes_from_repository = 777;
	ex[0].verify_failures_pack = 2;
	ex[0].complete = true;
	ex[0].read_latency.bucket[1] = 1;     /* 0.5 ms < t <= 1 ms */
	ex[0].read_latency.sum_ns = 750000;
	ex[1].id = "vm/d\xc3\xa9j\xc3\xa0.qcow2"; /* UTF-8 as it is */
	ex[1].reads = 2;
	ex[1].fetches_in_flight = 3;
	m.exports = ex;
	m.n_exports = 2;
	char *t;
	size_t len;
	idd_error err;
	assert_int_equal(idd_metrics_render(&m, &t, &len, &err), IDD_OK);
	assert_true(has_line(t, "imgdedup_exports 2"));
	assert_true(has_line(t, "# TYPE imgdedup_export_reads_total counter"));
	assert_true(has_line(t, "imgdedup_export_reads_total{export=\"a\\\\b\\\"c\\nd\"} 5"));
	assert_true(has_line(t, "imgdedup_export_reads_total{export=\"vm/d\xc3\xa9j\xc3\xa0.qcow2\"} 2"));
	assert_true(has_line(t, "imgdedup_export_read_bytes_total{export=\"a\\\\b\\\"c\\nd\",origin=\"zero\"} 4096"));
	assert_true(has_line(t, "imgdedup_export_read_bytes_total{export=\"a\\\\b\\\"c\\nd\",origin=\"repository\"} 777"));
	assert_true(has_line(t, "imgdedup_export_verify_failures_total{export=\"a\\\\b\\\"c\\nd\",origin=\"pack\"} 2"));
	assert_true(has_line(t, "imgdedup_export_complete{export=\"a\\\\b\\\"c\\nd\"} 1"));
	assert_true(has_line(t, "imgdedup_export_complete{export=\"vm/d\xc3\xa9j\xc3\xa0.qcow2\"} 0"));
	assert_true(has_line(t, "imgdedup_export_fetches_in_flight{export=\"vm/d\xc3\xa9j\xc3\xa0.qcow2\"} 3"));
	assert_true(has_line(t, "imgdedup_export_read_duration_seconds_bucket{export=\"a\\\\b\\\"c\\nd\",le=\"0.0005\"} 0"));
	assert_true(has_line(t, "imgdedup_export_read_duration_seconds_bucket{export=\"a\\\\b\\\"c\\nd\",le=\"0.001\"} 1"));
	assert_true(has_line(t, "imgdedup_export_read_duration_seconds_bucket{export=\"a\\\\b\\\"c\\nd\",le=\"+Inf\"} 1"));
	assert_true(has_line(t, "imgdedup_export_read_duration_seconds_sum{export=\"a\\\\b\\\"c\\nd\"} 0.000750000"));
	assert_true(has_line(t, "imgdedup_export_read_duration_seconds_count{export=\"a\\\\b\\\"c\\nd\"} 1"));
	/* the totals come first, as without exports but for their number */
	char *head = strdup(expected_totals);
	char *at = strstr(head, "imgdedup_exports 0\n");
	assert_non_null(at);
	at[strlen("imgdedup_exports ")] = '2';
	assert_int_equal(strncmp(t, head, strlen(head)), 0);
	free(head);
	/* every line is a comment or a sample: no raw line feed got through */
	size_t lines = 0, total_lines = 0;
	for (const char *p = t; *p; p = strchr(p, '\n') + 1) {
		assert_true(!strncmp(p, "# HELP imgdedup_", 16) || !strncmp(p, "# TYPE imgdedup_", 16) ||
		            !strncmp(p, "imgdedup_", 9));
		lines++;
	}
	for (const char *p = expected_totals; *p; p++)
		total_lines += *p == '\n';
	/* 11 per-export families of 15 samples per export, 2 histograms of 19
	 * lines per export; each family with its HELP and TYPE lines */
	assert_int_equal(lines, total_lines + 13 * 2 + 2 * 15 + 2 * 2 * 19);
	free(t);
}

static void test_histogram_edges(void **state)
{
	(void)state;
	idd_latency_hist h;
	memset(&h, 0, sizeof h);
	idd_latency_observe(&h, -5);            /* a clock step back counts as 0 */
	idd_latency_observe(&h, 500000);        /* on the bound: le="0.0005" */
	idd_latency_observe(&h, 500001);        /* just above: le="0.001" */
	idd_latency_observe(&h, 60000000000LL); /* le="60" */
	idd_latency_observe(&h, 60000000001LL); /* +Inf only */
	idd_latency l, sum = {{0}, 0};
	idd_latency_get(&h, &l);
	assert_int_equal(l.bucket[0], 2);
	assert_int_equal(l.bucket[1], 1);
	assert_int_equal(l.bucket[IDD_LATENCY_BUCKETS - 1], 1);
	assert_int_equal(l.bucket[IDD_LATENCY_BUCKETS], 1);
	assert_int_equal(idd_latency_count(&l), 5);
	assert_int_equal(l.sum_ns, 500000 + 500001 + 60000000000ULL + 60000000001ULL);
	idd_latency_add(&sum, &l);
	idd_latency_add(&sum, &l);
	assert_int_equal(idd_latency_count(&sum), 10);
	assert_int_equal(sum.sum_ns, 2 * l.sum_ns);

	idd_serve_metrics m = {0};
	m.fetch_latency = l;
	char *t;
	size_t len;
	idd_error err;
	assert_int_equal(idd_metrics_render(&m, &t, &len, &err), IDD_OK);
	assert_true(has_line(t, "imgdedup_fetch_duration_seconds_bucket{le=\"0.0005\"} 2"));
	assert_true(has_line(t, "imgdedup_fetch_duration_seconds_bucket{le=\"0.001\"} 3"));
	assert_true(has_line(t, "imgdedup_fetch_duration_seconds_bucket{le=\"30\"} 3"));
	assert_true(has_line(t, "imgdedup_fetch_duration_seconds_bucket{le=\"60\"} 4"));
	assert_true(has_line(t, "imgdedup_fetch_duration_seconds_bucket{le=\"+Inf\"} 5"));
	assert_true(has_line(t, "imgdedup_fetch_duration_seconds_sum 120.001000002"));
	assert_true(has_line(t, "imgdedup_fetch_duration_seconds_count 5"));
	free(t);
}

static void test_address_errors(void **state)
{
	(void)state;
	const char *bad[] = {"", "x", "0", "70000", "127.0.0.1:", "127.0.0.1:-1", "127.0.0.1:+80",
	                     "::1:80", "[::1]80", "[::1"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		idd_metrics_server *ms = NULL;
		idd_error err = {{0}, 0};
		assert_int_not_equal(idd_metrics_listen(bad[i], NULL, &ms, &err), IDD_OK);
		assert_null(ms);
		assert_non_null(strstr(err.msg, bad[i]));
	}
}

/* A port another socket listens on fails at once, naming the address and why. */
static void test_port_in_use(void **state)
{
	(void)state;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(listen(fd, 1), 0);
	socklen_t sl = sizeof sa;
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	char addr[64];
	snprintf(addr, sizeof addr, "127.0.0.1:%u", ntohs(sa.sin_port));
	const char *forms[] = {addr, strchr(addr, ':'), strchr(addr, ':') + 1}; /* ADDR:PORT, :PORT, PORT */
	for (size_t i = 0; i < 3; i++) {
		idd_metrics_server *ms = NULL;
		idd_error err = {{0}, 0};
		assert_int_not_equal(idd_metrics_listen(forms[i], NULL, &ms, &err), IDD_OK);
		assert_null(ms);
		assert_non_null(strstr(err.msg, forms[i]));
		assert_non_null(strstr(err.msg, "Address already in use"));
	}
	close(fd);
}

static void quiet(void *ctx, const char *msg) { (void)ctx; (void)msg; }

static int connect_port(unsigned port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa)) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One request, the whole answer (the server closes after it). */
static char *http(unsigned port, const char *request)
{
	int fd = connect_port(port);
	assert_true(fd >= 0);
	size_t n = strlen(request);
	assert_int_equal(write(fd, request, n), (ssize_t)n);
	size_t cap = 1 << 16, len = 0;
	char *out = malloc(cap + 1);
	ssize_t r;
	while ((r = read(fd, out + len, cap - len)) > 0) {
		len += (size_t)r;
		if (len == cap)
			out = realloc(out, (cap *= 2) + 1);
	}
	out[len] = 0;
	close(fd);
	return out;
}

/* A port nobody listens on now: the metrics server listens there (another
 * one is tried when something took it meanwhile). */
static idd_metrics_server *listen_free(idd_server *s, unsigned *port)
{
	for (int tries = 0; tries < 5; tries++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		socklen_t sl = sizeof sa;
		assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
		assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
		close(fd);
		*port = ntohs(sa.sin_port);
		char addr[32];
		snprintf(addr, sizeof addr, "%u", *port);
		idd_metrics_server *ms = NULL;
		idd_error err;
		if (!idd_metrics_listen(addr, s, &ms, &err))
			return ms;
		assert_non_null(strstr(err.msg, "Address already in use"));
	}
	fail_msg("no free port in 5 tries");
	return NULL;
}

static void test_http_server(void **state)
{
	(void)state;
	char *root = tu_mkdtemp();
	char *repo = idd_path_join(root, "repo", NULL);
	char *cache = idd_path_join(root, "cache", NULL);
	idd_mkdir_p(repo, NULL);
	unsigned char *img = calloc(NB, BS);
	for (size_t i = 0; i < NB; i += 2) /* every other block zero */
		tu_fill_random(img + i * BS, BS, 100 + i);
	free(tu_write(repo, "a.raw", img, NB * BS));
	idd_error err;
	idd_scan_opts so = {.repo = repo, .warn = quiet};
	idd_scan_stats ss;
	idd_map_opts mo = {.repo = repo, .warn = quiet};
	idd_map_stats mst;
	assert_int_equal(idd_scan(&so, &ss, &err), IDD_OK);
	assert_int_equal(idd_map_run(&mo, &mst, &err), IDD_OK);
	idd_serve_opts o = {.node = {.source = repo, .cache_dir = cache, .warn = quiet},
	                    .readahead_off = true};
	idd_server *s = NULL;
	assert_int_equal(idd_server_open(&o, &s, &err), IDD_OK);
	idd_export *e;
	assert_int_equal(idd_export_open(s, "a.raw", &e, &err), IDD_OK);
	unsigned char *buf = malloc(NB * BS);
	assert_int_equal(idd_export_read(e, buf, 8 * BS, 0, &err), IDD_OK);
	assert_int_equal(idd_export_read(e, buf, 8 * BS, 0, &err), IDD_OK); /* from the cache now */
	assert_memory_equal(buf, img, 8 * BS);

	unsigned port;
	idd_metrics_server *ms = listen_free(s, &port);
	assert_int_equal(idd_metrics_start(ms, &err), IDD_OK);
	char *got = http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
	assert_true(!strncmp(got, "HTTP/1.1 200 OK\r\n", 17));
	assert_non_null(strstr(got, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
	char *body = strstr(got, "\r\n\r\n") + 4;
	char clen[64];
	snprintf(clen, sizeof clen, "\r\nContent-Length: %zu\r\n", strlen(body));
	assert_non_null(strstr(got, clen));
	/* the same counters as idd_server_stats: 2 reads of 4 data blocks and
	 * 4 zero blocks each, the first fetching, the second from the cache */
	idd_serve_stats st;
	idd_server_stats(s, &st);
	assert_int_equal(st.reads, 2);
	assert_int_equal(st.bytes_zero, 8 * BS);
	assert_int_equal(st.bytes_from_cache, 4 * BS);
	char line[128];
	snprintf(line, sizeof line, "imgdedup_fetch_requests_total %llu", (unsigned long long)st.requests);
	assert_true(has_line(body, line));
	snprintf(line, sizeof line, "imgdedup_read_bytes_total{origin=\"repository\"} %llu",
	         (unsigned long long)st.bytes_fetched);
	assert_true(has_line(body, line));
	assert_true(has_line(body, "imgdedup_reads_total 2"));
	assert_true(has_line(body, "imgdedup_read_bytes_total{origin=\"zero\"} 32768"));
	assert_true(has_line(body, "imgdedup_read_bytes_total{origin=\"cache\"} 16384"));
	assert_true(has_line(body, "imgdedup_export_reads_total{export=\"a.raw\"} 2"));
	assert_true(has_line(body, "imgdedup_export_served_bytes_total{export=\"a.raw\"} 65536"));
	assert_true(has_line(body, "imgdedup_blocks_filled_total 4"));
	assert_true(has_line(body, "imgdedup_partial_images 1"));
	assert_true(has_line(body, "imgdedup_read_duration_seconds_count 2"));
	assert_true(has_line(body, "imgdedup_export_fetch_duration_seconds_count{export=\"a.raw\"} 1"));
	free(got);
	got = http(port, "HEAD /metrics?x HTTP/1.0\r\n\r\n");
	assert_true(!strncmp(got, "HTTP/1.1 200 OK\r\n", 17));
	assert_non_null(strstr(got, "\r\n\r\n"));
	assert_string_equal(strstr(got, "\r\n\r\n"), "\r\n\r\n"); /* no body */
	free(got);
	got = http(port, "GET /other HTTP/1.1\r\n\r\n");
	assert_true(!strncmp(got, "HTTP/1.1 404 ", 13));
	free(got);
	got = http(port, "DELETE /metrics HTTP/1.1\r\n\r\n");
	assert_true(!strncmp(got, "HTTP/1.1 405 ", 13));
	assert_non_null(strstr(got, "\r\nAllow: GET, HEAD\r\n"));
	free(got);
	got = http(port, "GET /metrics\r\n\r\n"); /* HTTP/0.9 */
	assert_true(!strncmp(got, "HTTP/1.1 400 ", 13));
	free(got);

	/* a client that connected and sends nothing does not hold up closing */
	int idle = connect_port(port);
	assert_true(idle >= 0);
	idd_metrics_close(ms);
	char c;
	assert_true(read(idle, &c, 1) <= 0); /* dropped, unanswered */
	close(idle);
	assert_int_equal(connect_port(port), -1); /* nothing listens any more */

	idd_server_close(s);
	free(buf);
	free(img);
	tu_rmtree(root);
	free(root);
	free(repo);
	free(cache);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_totals_exact_text),
	    cmocka_unit_test(test_export_labels_escaped),
	    cmocka_unit_test(test_histogram_edges),
	    cmocka_unit_test(test_address_errors),
	    cmocka_unit_test(test_port_in_use),
	    cmocka_unit_test(test_http_server),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
