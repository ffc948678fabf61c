/* test_source_peer.c - other nodes' caches as a block source, served by a
 * real nginx on 127.0.0.1: blocks spread over the peers holding them and
 * verified, what no peer holds left to the next source, and every way a
 * peer can fail (down, no index, damaged index, a tampered file, dying in
 * the middle) a warning and a fallback, never a wrong byte or an error. */
#include "testutil.h"
#include "node/source_peer.h"
#include "node/cache.h"
#include "index/map.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BS 4096u
#define NPAT 40 /* block contents: pattern p is tu_fill_random(seed 1000 + p) */

static char *warnings;
static int nwarn;
static void warn_cb(void *ctx, const char *msg)
{
	(void)ctx;
	nwarn++;
	size_t a = warnings ? strlen(warnings) : 0;
	char *n = realloc(warnings, a + strlen(msg) + 2);
	if (!n)
		return;
	warnings = n;
	strcpy(warnings + a, msg);
	strcat(warnings, "\n");
}

static void reset_warnings(void)
{
	free(warnings);
	warnings = NULL;
	nwarn = 0;
}

/* Pattern SHORT_PAT ends b's image, which stops SHORT_LEN bytes into it. */
#define SHORT_PAT 29
#define SHORT_LEN 1000

static void pattern(unsigned p, unsigned char *buf)
{
	tu_fill_random(buf, BS, 1000 + p);
	if (p == SHORT_PAT)
		memset(buf + SHORT_LEN, 0, BS - SHORT_LEN);
}

static void pattern_digest(idd_hasher *h, unsigned p, idd_digest *d)
{
	unsigned char buf[BS];
	pattern(p, buf);
	assert_int_equal(idd_hasher_digest(h, buf, BS, d, NULL), IDD_OK);
}

/* A node cache at DIR holding one image NAME made of the given patterns
 * (-1: a zero block), registered as deploy does.  tail: bytes of the last
 * block (an image whose size is not a multiple of the block size). */
static void make_cache(const char *dir, const char *name, const int *pats, size_t n, uint32_t tail)
{
	idd_hasher *h = idd_hasher_new(NULL);
	unsigned char *img = calloc(n, BS);
	idd_digest *d = calloc(n, sizeof *d);
	uint64_t size = (uint64_t)(n - 1) * BS + (tail ? tail : BS);
	for (size_t i = 0; i < n; i++) {
		if (pats[i] < 0)
			continue;
		pattern((unsigned)pats[i], img + i * BS);
		if (i == n - 1 && tail)
			memset(img + i * BS + tail, 0, BS - tail);
		assert_int_equal(idd_hasher_digest(h, img + i * BS, BS, &d[i], NULL), IDD_OK);
	}
	idd_map *m;
	assert_int_equal(idd_map_build(d, n, BS, size, &m, NULL), IDD_OK);
	char *imgdir = idd_path_join(dir, IDD_CACHE_IMAGES, NULL);
	assert_int_equal(idd_mkdir_p(imgdir, NULL), IDD_OK);
	char *path = tu_write(imgdir, name, img, (size_t)size);
	char *real = realpath(path, NULL);
	idd_cache *c;
	idd_error err;
	assert_int_equal(idd_cache_open(dir, NULL, NULL, &c, &err), IDD_OK);
	assert_int_equal(idd_cache_register(c, real, m, &err), IDD_OK);
	idd_cache_close(c);
	idd_map_free(m);
	free(real);
	free(path);
	free(imgdir);
	free(img);
	free(d);
	idd_hasher_free(h);
}

/* ---- nginx ---- */

static struct {
	char *prefix;
	int port;
} ngx;

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof sa;
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	close(fd);
	return ntohs(sa.sin_port);
}

static bool port_open(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	                         .sin_port = htons((uint16_t)port)};
	bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
	if (fd >= 0)
		close(fd);
	return ok;
}

/* nginx serving ROOT read-only, as docs/peers.md configures it. */
static void nginx_start(const char *root)
{
	ngx.prefix = tu_mkdtemp();
	char *logs = idd_path_join(ngx.prefix, "logs", NULL);
	assert_int_equal(idd_mkdir_p(logs, NULL), IDD_OK);
	for (int attempt = 0; attempt < 5; attempt++) {
		ngx.port = free_port();
		char conf[4096];
		int n = snprintf(conf, sizeof conf,
		                 "%s\nworker_processes 1;\npid %s/nginx.pid;\nerror_log %s/error.log;\n"
		                 "events { worker_connections 64; }\n"
		                 "http {\n  access_log off;\n  client_body_temp_path %s/body;\n"
		                 "  proxy_temp_path %s/proxy;\n  fastcgi_temp_path %s/fcgi;\n"
		                 "  uwsgi_temp_path %s/uwsgi;\n  scgi_temp_path %s/scgi;\n"
		                 "  types { }\n  default_type application/octet-stream;\n"
		                 "  server {\n    listen 127.0.0.1:%d;\n    root %s;\n"
		                 "    location / { autoindex off; limit_except GET { deny all; } }\n  }\n}\n",
		                 getuid() == 0 ? "user root;" : "", ngx.prefix, logs, ngx.prefix, ngx.prefix,
		                 ngx.prefix, ngx.prefix, ngx.prefix, ngx.port, root);
		free(tu_write(ngx.prefix, "nginx.conf", conf, (size_t)n));
		char cmd[2048];
		snprintf(cmd, sizeof cmd, "nginx -p %s -c %s/nginx.conf 2>%s/start.err", ngx.prefix,
		         ngx.prefix, ngx.prefix);
		if (system(cmd) == 0)
			break;
	}
	free(logs);
	for (int i = 0; i < 100 && !port_open(ngx.port); i++)
		usleep(50000);
	assert_true(port_open(ngx.port));
}

static void nginx_stop(void)
{
	if (!ngx.prefix)
		return;
	char *pidf = idd_path_join(ngx.prefix, "nginx.pid", NULL);
	FILE *f = fopen(pidf, "r");
	int pid = 0;
	if (f) {
		if (fscanf(f, "%d", &pid) != 1)
			pid = 0;
		fclose(f);
	}
	if (pid > 0) {
		kill(pid, SIGTERM);
		for (int i = 0; i < 100 && kill(pid, 0) == 0; i++)
			usleep(50000);
	}
	free(pidf);
	tu_rmtree(ngx.prefix);
	free(ngx.prefix);
	ngx.prefix = NULL;
}

/* ---- the tests ---- */

static char *root; /* caches a, b (and broken ones) under one directory */
static idd_hasher *hasher;

static int setup(void **state)
{
	(void)state;
	signal(SIGPIPE, SIG_IGN);
	hasher = idd_hasher_new(NULL);
	root = tu_mkdtemp();
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	nginx_stop();
	tu_rmtree(root);
	free(root);
	idd_hasher_free(hasher);
	reset_warnings();
	return 0;
}

static char *peer_url(const char *name)
{
	return idd_asprintf(NULL, "http://127.0.0.1:%d/%s", ngx.port, name);
}

/* Requests for patterns first..last-1, each with its own buffer. */
static idd_block_req *make_reqs(unsigned first, unsigned last)
{
	size_t n = last - first;
	idd_block_req *r = calloc(n, sizeof *r);
	for (size_t k = 0; k < n; k++) {
		pattern_digest(hasher, first + (unsigned)k, &r[k].digest);
		r[k].len = BS;
		r[k].block = k;
		r[k].buf = malloc(BS);
		r[k].status = IDD_ENOENT;
		r[k].origin_fd = -1;
	}
	return r;
}

static void free_reqs(idd_block_req *r, size_t n)
{
	for (size_t k = 0; k < n; k++)
		free(r[k].buf);
	free(r);
}

static void check_block(const idd_block_req *r, unsigned p)
{
	unsigned char want[BS];
	pattern(p, want);
	assert_int_equal(r->status, IDD_OK);
	assert_memory_equal(r->buf, want, BS);
}

static void build_caches(void)
{
	/* a: patterns 0..19 (a zero block and a repeat inside); b: 10..29, its
	 * last block short (image size not a multiple of the block size) */
	int pa[24], pb[20];
	for (int i = 0; i < 20; i++)
		pa[i] = i;
	pa[20] = -1;
	pa[21] = 5;
	pa[22] = 19;
	pa[23] = 0;
	for (int i = 0; i < 20; i++)
		pb[i] = 10 + i;
	char *a = idd_path_join(root, "a", NULL), *b = idd_path_join(root, "b", NULL);
	make_cache(a, "img-a.raw", pa, 24, 0);
	make_cache(b, "img-b.raw", pb, 20, SHORT_LEN);
	/* c: an index that is not one; d: a directory without an index */
	char *c = idd_path_join(root, "c", NULL), *d = idd_path_join(root, "d", NULL);
	assert_int_equal(idd_mkdir_p(c, NULL), IDD_OK);
	assert_int_equal(idd_mkdir_p(d, NULL), IDD_OK);
	free(tu_write(c, IDD_CACHE_INDEX, "IDD-CIX\0garbage garbage garbage garbage", 40));
	free(a);
	free(b);
	free(c);
	free(d);
}

static void test_peers_serve_what_they_hold(void **state)
{
	(void)state;
	build_caches();
	nginx_start(root);
	char *ua = peer_url("a"), *ub = peer_url("b");
	const char *urls[] = {ua, ub};
	idd_block_source *s;
	idd_error err;
	reset_warnings();
	assert_int_equal(idd_peer_source_open(urls, 2, BS, NULL, warn_cb, NULL, &s, &err), IDD_OK);
	assert_int_equal(nwarn, 0);
	assert_int_equal(idd_peer_source_live(s), 2);
	assert_string_equal(s->ops->kind, "peer");
	idd_digest d;
	pattern_digest(hasher, 3, &d);
	assert_true(s->ops->has(s, &d));
	pattern_digest(hasher, 35, &d);
	assert_false(s->ops->has(s, &d));

	/* patterns 0..39: 0..29 from the peers, exact; 30..39 left to the next source */
	idd_block_req *r = make_reqs(0, NPAT);
	r[7].status = IDD_OK; /* already served by an earlier source: not touched */
	memset(r[7].buf, 0xAB, BS);
	assert_int_equal(s->ops->read(s, r, NPAT, &err), IDD_OK);
	for (unsigned p = 0; p < 30; p++)
		if (p != 7)
			check_block(&r[p], p);
	assert_int_equal(r[7].buf[0], 0xAB);
	for (unsigned p = 30; p < NPAT; p++)
		assert_int_equal(r[p].status, IDD_ENOENT);
	/* b's last block is short on disk: read as stored, zero padded, verified */
	check_block(&r[29], 29);
	idd_block_source_counters cn;
	idd_block_source_counters_get(s, &cn);
	assert_int_equal(cn.blocks, 29);
	assert_int_equal(cn.damaged, 0);
	/* payload: 28 whole blocks and b's 1000-byte tail, gaps coalesced away
	 * at most once per request */
	assert_true(cn.bytes >= 28 * BS + SHORT_LEN);
	assert_true(cn.bytes <= 29 * BS + cn.requests * 512);
	/* both peers worked (10..19 is on both: spread by load) */
	assert_true(cn.requests >= 2);
	free_reqs(r, NPAT);
	assert_int_equal(nwarn, 0);
	idd_block_source_close(s);
	free(ua);
	free(ub);
}

/* Unusable peers are warnings; the usable ones serve. */
static void test_bad_peers_skipped(void **state)
{
	(void)state;
	char *ua = peer_url("a"), *uc = peer_url("c"), *ud = peer_url("d");
	char dead[64];
	snprintf(dead, sizeof dead, "http://127.0.0.1:%d/x", free_port());
	const char *urls[] = {dead, uc, ud, ua};
	idd_block_source *s;
	idd_error err;
	reset_warnings();
	assert_int_equal(idd_peer_source_open(urls, 4, BS, NULL, warn_cb, NULL, &s, &err), IDD_OK);
	assert_int_equal(idd_peer_source_live(s), 1);
	assert_int_equal(nwarn, 3);
	assert_non_null(strstr(warnings, dead));
	assert_non_null(strstr(warnings, "peer not used: http"));
	assert_non_null(strstr(warnings, "/c: "));
	assert_non_null(strstr(warnings, "no cache index"));
	idd_block_req *r = make_reqs(0, 20);
	assert_int_equal(s->ops->read(s, r, 20, &err), IDD_OK);
	for (unsigned p = 0; p < 20; p++)
		check_block(&r[p], p);
	free_reqs(r, 20);
	idd_block_source_close(s);
	/* a peer with another block size holds nothing for us */
	const char *one[] = {ua};
	reset_warnings();
	assert_int_equal(idd_peer_source_open(one, 1, 2 * BS, NULL, warn_cb, NULL, &s, &err), IDD_OK);
	idd_digest d;
	pattern_digest(hasher, 3, &d);
	assert_false(s->ops->has(s, &d));
	idd_block_source_close(s);
	/* arguments: none, too many, an s3:// location */
	assert_int_not_equal(idd_peer_source_open(one, 0, BS, NULL, warn_cb, NULL, &s, &err), IDD_OK);
	const char *s3[] = {"s3://bkt/x"};
	assert_int_not_equal(idd_peer_source_open(s3, 1, BS, NULL, warn_cb, NULL, &s, &err), IDD_OK);
	free(ua);
	free(uc);
	free(ud);
}

/* A tampered file: its block fails verification (a warning, counted), the
 * file is not used again, blocks another peer holds come from there, the
 * rest are IDD_ECORRUPT for the next source. */
static void test_tampered_peer(void **state)
{
	(void)state;
	char *ua = peer_url("a"), *ub = peer_url("b");
	const char *urls[] = {ua, ub};
	idd_block_source *s;
	idd_error err;
	reset_warnings();
	assert_int_equal(idd_peer_source_open(urls, 2, BS, NULL, warn_cb, NULL, &s, &err), IDD_OK);
	char *img = idd_path_join(root, "a/images/img-a.raw", NULL);
	tu_flip_byte(img, 3 * BS + 17); /* pattern 3: only a holds it */
	idd_block_req *r = make_reqs(0, 20);
	assert_int_equal(s->ops->read(s, r, 20, &err), IDD_OK);
	assert_int_equal(r[3].status, IDD_ECORRUPT);
	for (unsigned p = 10; p < 20; p++) /* also on b */
		check_block(&r[p], p);
	idd_block_source_counters cn;
	idd_block_source_counters_get(s, &cn);
	assert_true(cn.damaged >= 1);
	assert_non_null(strstr(warnings, "does not match its digest"));
	assert_non_null(strstr(warnings, "images/img-a.raw"));
	/* a's file is out: its other blocks are not asked of it any more */
	idd_digest d;
	pattern_digest(hasher, 4, &d);
	assert_false(s->ops->has(s, &d));
	pattern_digest(hasher, 12, &d);
	assert_true(s->ops->has(s, &d));
	free_reqs(r, 20);
	idd_block_source_close(s);
	tu_flip_byte(img, 3 * BS + 17);
	free(img);
	free(ua);
	free(ub);
}

/* A peer that goes away after its index was read: a warning, requests left
 * for the next source, no error. */
static void test_peer_dies(void **state)
{
	(void)state;
	char *ua = peer_url("a");
	const char *urls[] = {ua};
	idd_block_source *s;
	idd_error err;
	reset_warnings();
	idd_fetch_opts fo = {.max_retries = 1, .backoff_ms = 5, .timeout_s = 2};
	assert_int_equal(idd_peer_source_open(urls, 1, BS, &fo, warn_cb, NULL, &s, &err), IDD_OK);
	nginx_stop();
	idd_block_req *r = make_reqs(0, 20);
	assert_int_equal(s->ops->read(s, r, 20, &err), IDD_OK);
	for (unsigned p = 0; p < 20; p++)
		assert_int_equal(r[p].status, IDD_ENOENT);
	assert_non_null(strstr(warnings, "not used any more"));
	assert_int_equal(idd_peer_source_live(s), 0);
	idd_digest d;
	pattern_digest(hasher, 3, &d);
	assert_false(s->ops->has(s, &d));
	free_reqs(r, 20);
	idd_block_source_close(s);
	free(ua);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_peers_serve_what_they_hold),
		cmocka_unit_test(test_bad_peers_skipped),
		cmocka_unit_test(test_tampered_peer),
		cmocka_unit_test(test_peer_dies),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
