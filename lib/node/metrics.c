/* metrics.c - serve's live counters for Prometheus: latency histograms, the
 * text exposition format (version 0.0.4), and a small HTTP/1.1 server that
 * answers GET /metrics, and GET /estimate for a scheduler (what the node
 * lacks of an image, as `cache estimate --json` prints it).
 *
 * The server is one thread answering one connection at a time: a scrape is
 * a few kilobytes, and a client that is slow to send its request or to
 * read the answer is dropped after IO_TIMEOUT_MS, so it cannot hold the
 * next one up for long.  Each answer closes its connection. */
#include "node/metrics.h"
#include "base/error.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <poll.h>
#include <stddef.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- latency histograms ---- */

static const int64_t bound_ns[IDD_LATENCY_BUCKETS] = {
	500000,    1000000,    2500000,    5000000,    10000000,   25000000,
	50000000,  100000000,  250000000,  500000000,  1000000000, 2500000000,
	5000000000, 10000000000, 30000000000, 60000000000};
/* the same bounds as the exposition format writes them */
static const char *const bound_text[IDD_LATENCY_BUCKETS + 1] = {
	"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
	"0.5",    "1",     "2.5",    "5",     "10",   "30",    "60",   "+Inf"};

void idd_latency_observe(idd_latency_hist *h, int64_t ns)
{
	if (ns < 0)
		ns = 0;
	size_t i = 0;
	while (i < IDD_LATENCY_BUCKETS && ns > bound_ns[i])
		i++;
	atomic_fetch_add(&h->bucket[i], 1);
	atomic_fetch_add(&h->sum_ns, (uint64_t)ns);
}

void idd_latency_get(idd_latency_hist *h, idd_latency *out)
{
	for (size_t i = 0; i <= IDD_LATENCY_BUCKETS; i++)
		out->bucket[i] = atomic_load(&h->bucket[i]);
	out->sum_ns = atomic_load(&h->sum_ns);
}

void idd_latency_add(idd_latency *to, const idd_latency *from)
{
	for (size_t i = 0; i <= IDD_LATENCY_BUCKETS; i++)
		to->bucket[i] += from->bucket[i];
	to->sum_ns += from->sum_ns;
}

uint64_t idd_latency_count(const idd_latency *l)
{
	uint64_t n = 0;
	for (size_t i = 0; i <= IDD_LATENCY_BUCKETS; i++)
		n += l->bucket[i];
	return n;
}

/* ---- rendering ---- */

static void put(idd_buf *b, const char *fmt, ...) IDD_PRINTF(2, 3);
static void put(idd_buf *b, const char *fmt, ...)
{
	if (b->failed)
		return;
	char small[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->failed = true;
		return;
	}
	if ((size_t)n < sizeof small) {
		idd_buf_put(b, small, (size_t)n);
		return;
	}
	if (idd_buf_reserve(b, (size_t)n + 1))
		return;
	va_start(ap, fmt);
	vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

/* A label value as the format wants it: backslash, double quote and line
 * feed escaped; everything else (UTF-8 included) as it is. */
static void put_label_value(idd_buf *b, const char *v)
{
	for (const char *p = v; *p; p++) {
		switch (*p) {
		case '\\': idd_buf_put(b, "\\\\", 2); break;
		case '"': idd_buf_put(b, "\\\"", 2); break;
		case '\n': idd_buf_put(b, "\\n", 2); break;
		default: idd_buf_put(b, p, 1);
		}
	}
}

static void family(idd_buf *b, const char *name, const char *type, const char *help)
{
	put(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{labels} v, labels already escaped ("" for none) */
static void sample(idd_buf *b, const char *name, const char *labels, uint64_t v)
{
	if (*labels)
		put(b, "%s{%s} %" PRIu64 "\n", name, labels, v);
	else
		put(b, "%s %" PRIu64 "\n", name, v);
}

static void histogram(idd_buf *b, const char *name, const char *labels, const idd_latency *l)
{
	uint64_t cum = 0;
	for (size_t i = 0; i <= IDD_LATENCY_BUCKETS; i++) {
		cum += l->bucket[i];
		put(b, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", name, labels, *labels ? "," : "",
		    bound_text[i], cum);
	}
	const char *open = *labels ? "{" : "", *close = *labels ? "}" : "";
	put(b, "%s_sum%s%s%s %" PRIu64 ".%09" PRIu64 "\n", name, open, labels, close,
	    l->sum_ns / 1000000000, l->sum_ns % 1000000000);
	put(b, "%s_count%s%s%s %" PRIu64 "\n", name, open, labels, close, cum);
}

/* Each export's label: export="ID", escaped. */
struct labels {
	char **v;
	size_t n;
};

/* One row per sample line (or histogram): a row with a name opens a
 * family (HELP and TYPE lines), a row without one adds a sample of the
 * family above it.  A new metric is one row. */
enum value_kind { V_U64, V_BOOL, V_SIZE, V_HISTOGRAM };
struct metric_row {
	const char *name, *type, *help;
	const char *labels; /* escaped; "" for none */
	size_t offset;      /* of the value in idd_serve_metrics or idd_export_metrics */
	enum value_kind kind;
};

#define SRV(field) offsetof(idd_serve_metrics, field)
#define FAM(name, type, help, labels, field, kind) {name, type, help, labels, SRV(field), kind}
#define MORE(labels, field) {NULL, NULL, NULL, labels, SRV(field), V_U64}
static const struct metric_row server_rows[] = {
	FAM("imgdedup_reads_total", "counter", "Client read requests (failed ones included).", "",
	    total.reads, V_U64),
	FAM("imgdedup_read_errors_total", "counter", "Client reads answered with an I/O error.", "",
	    total.read_errors, V_U64),
	FAM("imgdedup_served_bytes_total", "counter", "Bytes the clients read.", "",
	    total.bytes_read, V_U64),
	FAM("imgdedup_read_bytes_total", "counter",
	    "Bytes by origin: zero and cache count the blocks of client reads answered without "
	    "a fetch; peer, pack and repository the payload fetched from there, as transferred.",
	    "origin=\"zero\"", total.bytes_zero, V_U64),
	MORE("origin=\"cache\"", total.bytes_from_cache),
	MORE("origin=\"peer\"", total.bytes_from_peers),
	MORE("origin=\"pack\"", bytes_from_pack),
	MORE("origin=\"repository\"", bytes_from_repository),
	FAM("imgdedup_fetch_requests_total", "counter",
	    "Requests made to peers and the repository (index, pack, images).", "", total.requests,
	    V_U64),
	FAM("imgdedup_fetch_errors_total", "counter",
	    "Blocks a fetch could not deliver verified (no source, timeouts, failures).", "",
	    fetch_errors, V_U64),
	FAM("imgdedup_verify_failures_total", "counter",
	    "Blocks that failed verification against their digest, by origin.", "origin=\"cache\"",
	    verify_failures_cache, V_U64),
	MORE("origin=\"peer\"", verify_failures_peer),
	MORE("origin=\"pack\"", verify_failures_pack),
	MORE("origin=\"repository\"", verify_failures_repository),
	FAM("imgdedup_cache_write_errors_total", "counter",
	    "Verified blocks served but not cached (a full disk, ...).", "", total.cache_write_errors,
	    V_U64),
	FAM("imgdedup_blocks_filled_total", "counter", "Blocks written into the node cache.", "",
	    total.blocks_filled, V_U64),
	FAM("imgdedup_exports_completed_total", "counter",
	    "Exports whose image became complete in the node cache.", "", total.exports_complete,
	    V_U64),
	FAM("imgdedup_cache_evicted_total", "counter", "Cache files removed to stay under --cache-max.",
	    "", total.cache_evicted, V_U64),
	FAM("imgdedup_fetches_in_flight", "gauge", "Blocks being fetched now.", "", fetches_in_flight,
	    V_U64),
	FAM("imgdedup_cache_bytes", "gauge", "Bytes the node cache's images take on disk (allocated).",
	    "", cache_bytes, V_U64),
	FAM("imgdedup_partial_images", "gauge", "Partial images in the node cache.", "",
	    partial_images, V_U64),
	FAM("imgdedup_exports", "gauge", "Exports open.", "", n_exports, V_SIZE),
	FAM("imgdedup_read_duration_seconds", "histogram", "Time to answer a client read.", "",
	    read_latency, V_HISTOGRAM),
	FAM("imgdedup_fetch_duration_seconds", "histogram",
	    "Time to fetch a batch of blocks (through peers, pack, repository).", "", fetch_latency,
	    V_HISTOGRAM),
};
#undef FAM
#undef MORE
#undef SRV

/* The same per export, each sample labelled export="ID" (before labels). */
#define EXP(field) offsetof(idd_export_metrics, field)
#define FAM(name, type, help, labels, field, kind) {name, type, help, labels, EXP(field), kind}
#define MORE(labels, field) {NULL, NULL, NULL, labels, EXP(field), V_U64}
static const struct metric_row export_rows[] = {
	FAM("imgdedup_export_reads_total", "counter", "Client read requests of the export.", "",
	    reads, V_U64),
	FAM("imgdedup_export_read_errors_total", "counter",
	    "Client reads of the export answered with an I/O error.", "", read_errors, V_U64),
	FAM("imgdedup_export_served_bytes_total", "counter", "Bytes the clients read from the export.",
	    "", bytes_read, V_U64),
	FAM("imgdedup_export_read_bytes_total", "counter",
	    "The export's bytes by origin (as imgdedup_read_bytes_total; peers are shared by the "
	    "exports and counted there only).", "origin=\"zero\"", bytes_zero, V_U64),
	MORE("origin=\"cache\"", bytes_from_cache),
	MORE("origin=\"pack\"", bytes_from_pack),
	MORE("origin=\"repository\"", bytes_from_repository),
	FAM("imgdedup_export_fetch_requests_total", "counter",
	    "Requests made for the export's blocks to the pack and the image.", "", requests, V_U64),
	FAM("imgdedup_export_fetch_errors_total", "counter",
	    "Blocks of the export a fetch could not deliver verified.", "", fetch_errors, V_U64),
	FAM("imgdedup_export_verify_failures_total", "counter",
	    "Blocks fetched for the export that failed verification, by origin.", "origin=\"pack\"",
	    verify_failures_pack, V_U64),
	MORE("origin=\"repository\"", verify_failures_repository),
	FAM("imgdedup_export_cache_write_errors_total", "counter",
	    "Verified blocks of the export served but not cached.", "", cache_write_errors, V_U64),
	FAM("imgdedup_export_blocks_filled_total", "counter",
	    "Blocks of the export written into the node cache.", "", blocks_filled, V_U64),
	FAM("imgdedup_export_fetches_in_flight", "gauge", "Blocks of the export being fetched now.",
	    "", fetches_in_flight, V_U64),
	FAM("imgdedup_export_complete", "gauge",
	    "1 when the export's image is complete in the node cache, else 0.", "", complete, V_BOOL),
	FAM("imgdedup_export_read_duration_seconds", "histogram",
	    "Time to answer a client read of the export.", "", read_latency, V_HISTOGRAM),
	FAM("imgdedup_export_fetch_duration_seconds", "histogram",
	    "Time to fetch a batch of the export's blocks.", "", fetch_latency, V_HISTOGRAM),
};
#undef FAM
#undef MORE
#undef EXP

static uint64_t row_value(const struct metric_row *r, const void *rec)
{
	const char *p = (const char *)rec + r->offset;
	switch (r->kind) {
	case V_BOOL: return *(const bool *)p;
	case V_SIZE: return *(const size_t *)p;
	default: return *(const uint64_t *)p;
	}
}

static void render(idd_buf *b, const idd_serve_metrics *m, const struct labels *lb)
{
	const char *name = NULL;
	for (size_t k = 0; k < IDD_ARRAY_LEN(server_rows); k++) {
		const struct metric_row *r = &server_rows[k];
		if (r->name) {
			name = r->name;
			family(b, name, r->type, r->help);
		}
		if (r->kind == V_HISTOGRAM)
			histogram(b, name, r->labels, (const idd_latency *)((const char *)m + r->offset));
		else
			sample(b, name, r->labels, row_value(r, m));
	}
	if (!m->n_exports)
		return;
	for (size_t k = 0; k < IDD_ARRAY_LEN(export_rows); k++) {
		const struct metric_row *r = &export_rows[k];
		if (r->name) {
			name = r->name;
			family(b, name, r->type, r->help);
		}
		for (size_t i = 0; i < m->n_exports; i++) {
			const idd_export_metrics *e = &m->exports[i];
			if (r->kind == V_HISTOGRAM)
				histogram(b, name, lb->v[i],
				          (const idd_latency *)((const char *)e + r->offset));
			else
				put(b, "%s{%s%s%s} %" PRIu64 "\n", name, lb->v[i], *r->labels ? "," : "",
				    r->labels, row_value(r, e));
		}
	}
}

int idd_metrics_render(const idd_serve_metrics *m, char **text, size_t *len, idd_error *err)
{
	struct labels lb = {0};
	idd_buf b = {0};
	int rc = IDD_OK;
	if (m->n_exports && !(lb.v = calloc(m->n_exports, sizeof *lb.v)))
		rc = IDD_ENOMEM;
	for (size_t i = 0; !rc && i < m->n_exports; i++) {
		idd_buf l = {0};
		idd_buf_put(&l, "export=\"", 8);
		put_label_value(&l, m->exports[i].id);
		idd_buf_put(&l, "\"", 2); /* with its NUL */
		if (l.failed) {
			idd_buf_free(&l);
			rc = IDD_ENOMEM;
			break;
		}
		lb.v[lb.n++] = (char *)l.data;
	}
	if (!rc) {
		render(&b, m, &lb);
		idd_buf_put(&b, "", 1);
		if (b.failed)
			rc = IDD_ENOMEM;
	}
	for (size_t i = 0; i < lb.n; i++)
		free(lb.v[i]);
	free(lb.v);
	if (rc) {
		idd_buf_free(&b);
		return idd_fail_code(err, IDD_ENOMEM, "metrics: out of memory");
	}
	*text = (char *)b.data;
	*len = b.len - 1;
	return IDD_OK;
}

/* ---- the HTTP server ---- */

#define MAX_REQUEST 8192        /* request line and headers */
#define IO_TIMEOUT_MS 5000      /* for a whole request, and again for its answer */
#define DRAIN_MS 1000           /* after the answer, for the client to close */
#define DRAIN_MAX (1u << 20)
#define ESTIMATE_MAX_IMAGES 64 /* image= parameters of one /estimate request */

struct idd_metrics_server {
	idd_server *srv;
	char *name;     /* ADDR:PORT as given, for messages */
	int fd;
	int wake[2];    /* closing wake[1] stops the thread */
	pthread_t thread;
	bool started;
};

/* Split ADDR:PORT (PORT, :PORT, [V6]:PORT) into host and port. */
static int parse_addr(const char *s, char *host, size_t hostlen, char *port, size_t portlen,
                      idd_error *err)
{
	const char *p;
	size_t hl;
	const char *h;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		if (!close || close[1] != ':')
			return idd_fail(err, "metrics address '%s': expected [IPV6]:PORT", s);
		h = s + 1;
		hl = (size_t)(close - h);
		p = close + 2;
	} else {
		const char *colon = strrchr(s, ':');
		if (colon && memchr(s, ':', (size_t)(colon - s)))
			return idd_fail(err, "metrics address '%s': an IPv6 address goes in brackets, "
			                "[ADDR]:PORT", s);
		h = colon ? s : "127.0.0.1";
		hl = colon ? (size_t)(colon - s) : strlen(h);
		p = colon ? colon + 1 : s;
		if (colon && hl == 0) {
			h = "127.0.0.1";
			hl = strlen(h);
		}
	}
	char *end;
	errno = 0;
	unsigned long v = strtoul(p, &end, 10);
	if (!*p || *end || errno || v < 1 || v > 65535 || *p == '+' || *p == '-')
		return idd_fail(err, "metrics address '%s': the port must be 1 to 65535", s);
	if (hl == 0 || hl >= hostlen)
		return idd_fail(err, "metrics address '%s': bad address", s);
	memcpy(host, h, hl);
	host[hl] = 0;
	snprintf(port, portlen, "%lu", v);
	return IDD_OK;
}

int idd_metrics_listen(const char *addr_port, idd_server *s, idd_metrics_server **out,
                       idd_error *err)
{
	char host[256], port[8];
	int rc = parse_addr(addr_port, host, sizeof host, port, sizeof port, err);
	if (rc)
		return rc;
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
	struct addrinfo *ai;
	int g = getaddrinfo(host, port, &hints, &ai);
	if (g)
		return idd_fail(err, "metrics address '%s': %s", addr_port,
		                g == EAI_SYSTEM ? strerror(errno) : gai_strerror(g));
	idd_metrics_server *m = idd_calloc(1, sizeof *m, err);
	if (!m) {
		freeaddrinfo(ai);
		return IDD_ENOMEM;
	}
	m->srv = s;
	m->fd = m->wake[0] = m->wake[1] = -1;
	if (!(m->name = idd_strdup(addr_port, err)))
		rc = IDD_ENOMEM;
	if (!rc && (m->fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		rc = idd_fail(err, "metrics %s: socket: %s", addr_port, strerror(errno));
	if (!rc) {
		int one = 1;
		/* a restarted serve can take the port back from its old
		 * connections at once; a port someone listens on stays taken */
		(void)setsockopt(m->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
		if (bind(m->fd, ai->ai_addr, ai->ai_addrlen) || listen(m->fd, 16))
			rc = idd_fail(err, "metrics: cannot listen on %s (%s port %s): %s%s", addr_port, host, port,
			              strerror(errno),
			              errno == EADDRINUSE ? " (another program listens on this port)" : "");
	}
	if (!rc && pipe2(m->wake, O_CLOEXEC))
		rc = idd_fail(err, "metrics: pipe: %s", strerror(errno));
	freeaddrinfo(ai);
	if (rc) {
		idd_metrics_close(m);
		return rc;
	}
	*out = m;
	return IDD_OK;
}

/* Wait for fd to be ready for events until deadline (mono ns); false on
 * a timeout, an error or a stop. */
static bool wait_fd(idd_metrics_server *m, int fd, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = (deadline - idd_mono_ns()) / 1000000;
		if (left <= 0)
			return false;
		struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = m->wake[0], .events = POLLIN}};
		int r = poll(p, 2, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || p[1].revents)
			return false;
		if (r > 0)
			return true;
	}
}

static void send_all(idd_metrics_server *m, int c, const char *p, size_t n, int64_t deadline)
{
	while (n) {
		ssize_t w = send(c, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!wait_fd(m, c, POLLOUT, deadline))
				return;
			continue;
		}
		if (w <= 0)
			return;
		p += w;
		n -= (size_t)w;
	}
}

static void respond(idd_metrics_server *m, int c, int status, const char *reason,
                    const char *type, const char *body, size_t len, bool head, const char *extra)
{
	char hdr[512];
	int n = snprintf(hdr, sizeof hdr,
	                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s"
	                 "Connection: close\r\n\r\n",
	                 status, reason, type, len, extra);
	int64_t deadline = idd_mono_ns() + (int64_t)IO_TIMEOUT_MS * 1000000;
	send_all(m, c, hdr, (size_t)n, deadline);
	if (!head)
		send_all(m, c, body, len, deadline);
}

static void plain(idd_metrics_server *m, int c, int status, const char *reason, bool head,
                  const char *extra)
{
	char body[128];
	int n = snprintf(body, sizeof body, "%d %s\n", status, reason);
	respond(m, c, status, reason, "text/plain; charset=utf-8", body, (size_t)n, head, extra);
}

/* An error with its reason in the body, for a client to show. */
static void plain_msg(idd_metrics_server *m, int c, int status, const char *reason, bool head,
                      const char *msg)
{
	char body[sizeof ((idd_error *)0)->msg + 160];
	int n = snprintf(body, sizeof body, "%d %s: %s\n", status, reason, msg);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof body)
		n = (int)sizeof body - 1;
	respond(m, c, status, reason, "text/plain; charset=utf-8", body, (size_t)n, head, "");
}

/* Decode a query component in place as HTML forms encode it ('+' is a
 * space, %XX a byte); false on a bad escape or an encoded NUL. */
static bool form_decode(char *s)
{
	char *w = s;
	for (const char *r = s; *r; r++) {
		if (*r == '+') {
			*w++ = ' ';
		} else if (*r == '%') {
			int hi = idd_hex_value(r[1]), lo = hi < 0 ? -1 : idd_hex_value(r[2]);
			if (lo < 0 || (hi == 0 && lo == 0))
				return false;
			*w++ = (char)(hi * 16 + lo);
			r += 2;
		} else {
			*w++ = *r;
		}
	}
	*w = 0;
	return true;
}

/* GET /estimate?image=ID[&image=ID...][&bandwidth=BYTES_PER_SECOND]: what
 * `cache estimate --json` would print for this server's SOURCE and cache.
 * It reads index data from SOURCE, so it can take as long as the server's
 * transfer timeout; scrapes of /metrics wait behind it meanwhile. */
static void answer_estimate(idd_metrics_server *m, int c, char *query, bool head)
{
	const char *images[ESTIMATE_MAX_IMAGES];
	size_t n = 0;
	uint64_t bandwidth = 0;
	char msg[160];
	char *save = NULL;
	for (char *tok = strtok_r(query, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(tok, '=');
		if (eq)
			*eq = 0;
		if (!eq || !form_decode(tok) || !form_decode(eq + 1)) {
			plain_msg(m, c, 400, "Bad Request", head, "expected NAME=VALUE parameters, "
			          "percent-encoded");
			return;
		}
		const char *val = eq + 1;
		if (!strcmp(tok, "image")) {
			if (n == ESTIMATE_MAX_IMAGES) {
				snprintf(msg, sizeof msg, "at most %d images per request",
				         ESTIMATE_MAX_IMAGES);
				plain_msg(m, c, 400, "Bad Request", head, msg);
				return;
			}
			images[n++] = val;
		} else if (!strcmp(tok, "bandwidth")) {
			char *end;
			errno = 0;
			unsigned long long v = strtoull(val, &end, 10);
			if (*val < '0' || *val > '9' || *end || errno || v == 0) {
				plain_msg(m, c, 400, "Bad Request", head,
				          "bandwidth takes a whole number of bytes per second above 0");
				return;
			}
			bandwidth = v;
		} else {
			snprintf(msg, sizeof msg, "unknown parameter '%.64s' (expected image, bandwidth)",
			         tok);
			plain_msg(m, c, 400, "Bad Request", head, msg);
			return;
		}
	}
	if (!n) {
		plain_msg(m, c, 400, "Bad Request", head, "expected image=ID");
		return;
	}
	idd_image_estimate *v;
	idd_error err = {{0}, 0};
	int rc = idd_server_estimate(m->srv, images, n, bandwidth, &v, &err);
	if (rc) {
		if (rc == IDD_ENOENT)
			plain_msg(m, c, 404, "Not Found", head, err.msg);
		else if (rc == IDD_EPERM)
			plain_msg(m, c, 400, "Bad Request", head, err.msg);
		else if (rc == IDD_ENET || rc == IDD_ETIMEDOUT)
			plain_msg(m, c, 502, "Bad Gateway", head, err.msg);
		else
			plain_msg(m, c, 500, "Internal Server Error", head, err.msg);
		return;
	}
	char *text = NULL;
	size_t tlen = 0;
	rc = idd_cache_estimate_json(v, n, &text, &tlen, &err);
	idd_cache_estimate_free(v);
	if (rc) {
		plain_msg(m, c, 500, "Internal Server Error", head, err.msg);
		return;
	}
	respond(m, c, 200, "OK", "application/json", text, tlen, head, "");
	free(text);
}

/* One connection: the request line and headers (bounded in size and time),
 * then the answer.  False when the client was dropped unanswered. */
static bool serve_connection(idd_metrics_server *m, int c)
{
	char req[MAX_REQUEST + 1];
	size_t len = 0;
	int64_t deadline = idd_mono_ns() + (int64_t)IO_TIMEOUT_MS * 1000000;
	for (;;) {
		req[len] = 0;
		if (strstr(req, "\r\n\r\n") || strstr(req, "\n\n"))
			break;
		if (len == MAX_REQUEST) {
			plain(m, c, 431, "Request Header Fields Too Large", false, "");
			return true;
		}
		ssize_t r = recv(c, req + len, MAX_REQUEST - len, MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!wait_fd(m, c, POLLIN, deadline))
				return false; /* too slow, or stopping: dropped */
			continue;
		}
		if (r <= 0)
			return false; /* the client went away */
		if (memchr(req + len, 0, (size_t)r)) {
			plain(m, c, 400, "Bad Request", false, "");
			return true;
		}
		len += (size_t)r;
	}
	/* METHOD SP TARGET SP HTTP/x.y */
	char *eol = strpbrk(req, "\r\n");
	*eol = 0;
	char *sp1 = strchr(req, ' ');
	char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) || strchr(sp2 + 1, ' ')) {
		plain(m, c, 400, "Bad Request", false, "");
		return true;
	}
	*sp1 = *sp2 = 0;
	const char *method = req, *target = sp1 + 1;
	bool head = !strcmp(method, "HEAD");
	if (!head && strcmp(method, "GET")) {
		plain(m, c, 405, "Method Not Allowed", false, "Allow: GET, HEAD\r\n");
		return true;
	}
	size_t plen = strcspn(target, "?");
	if (plen == 9 && !strncmp(target, "/estimate", 9)) {
		answer_estimate(m, c, target[plen] ? (char *)target + plen + 1 : (char *)"", head);
		return true;
	}
	if (plen != 8 || strncmp(target, "/metrics", 8)) {
		plain(m, c, 404, "Not Found", head, "");
		return true;
	}
	idd_serve_metrics sm;
	idd_error err = {{0}, 0};
	char *text = NULL;
	size_t tlen = 0;
	if (idd_server_metrics(m->srv, &sm, &err)) {
		plain(m, c, 500, "Internal Server Error", head, "");
		return true;
	}
	int rc = idd_metrics_render(&sm, &text, &tlen, &err);
	idd_serve_metrics_free(&sm);
	if (rc) {
		plain(m, c, 500, "Internal Server Error", head, "");
		return true;
	}
	respond(m, c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", text, tlen, head, "");
	free(text);
	return true;
}

/* After an answer: what the client still sends (the rest of a request too
 * large) is read and dropped until it closes, so that closing does not
 * reset the connection before the client has read the answer. */
static void drain(idd_metrics_server *m, int c)
{
	char sink[4096];
	int64_t deadline = idd_mono_ns() + (int64_t)DRAIN_MS * 1000000;
	for (size_t total = 0; total < DRAIN_MAX;) {
		ssize_t r = recv(c, sink, sizeof sink, MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (!wait_fd(m, c, POLLIN, deadline))
				return;
			continue;
		}
		if (r <= 0)
			return;
		total += (size_t)r;
	}
}

static void *metrics_main(void *arg)
{
	idd_metrics_server *m = arg;
	for (;;) {
		struct pollfd p[2] = {{.fd = m->fd, .events = POLLIN}, {.fd = m->wake[0], .events = POLLIN}};
		int r = poll(p, 2, -1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 || p[1].revents)
			break;
		if (!(p[0].revents & POLLIN))
			continue;
		int c = accept4(m->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (c < 0)
			continue; /* the client gave up already, or out of descriptors for now */
		bool answered = serve_connection(m, c);
		shutdown(c, SHUT_WR);
		if (answered)
			drain(m, c);
		close(c);
	}
	return NULL;
}

int idd_metrics_start(idd_metrics_server *m, idd_error *err)
{
	if (m->started)
		return IDD_OK;
	int e = pthread_create(&m->thread, NULL, metrics_main, m);
	if (e)
		return idd_fail(err, "metrics %s: cannot start its thread: %s", m->name, strerror(e));
	m->started = true;
	return IDD_OK;
}

void idd_metrics_close(idd_metrics_server *m)
{
	if (!m)
		return;
	if (m->wake[1] >= 0) {
		close(m->wake[1]);
		m->wake[1] = -1;
	}
	if (m->started)
		pthread_join(m->thread, NULL);
	if (m->wake[0] >= 0)
		close(m->wake[0]);
	if (m->fd >= 0)
		close(m->fd);
	free(m->name);
	free(m);
}
