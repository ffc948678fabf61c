/* imgdedup.c - the nbdkit plugin: images of a repository exported over NBD,
 * read block by block through the node cache (libimgdedup's serve API).
 *
 *   nbdkit imgdedup from=SOURCE cache=DIR image=ID [image=ID]... [key=value]...
 *   nbdkit imgdedup from=SOURCE cache=DIR all=true [refresh=SECONDS] [key=value]...
 *
 * Each image is an export named by its id; the first is the default export.
 * With all=true every image of SOURCE's catalog is, looked up when a client
 * connects, and there is no default export.
 * The plugin only parses nbdkit's configuration and forwards requests: the
 * library does the reading, verifying, fetching and caching.  Written against
 * nbdkit 1.32's plugin API, version 2.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "imgdedup.h"

#include <dlfcn.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/prctl.h>
#include <time.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

/* nbdkit 1.32.4 to 1.33.9 abort (assertion `sock >= 0' in raw_send_socket)
 * when a client hangs up while several of its requests are being answered
 * in parallel -- nbdcopy does after a read error, a killed VM may -- which
 * would take every other client's export down with it.  Built against those
 * versions (Debian 12 has 1.32.5), the plugin serves each connection's
 * requests one at a time unless parallel=true; connections still run in
 * parallel.  Fixed upstream by "server: Don't assert on send if client hangs
 * up early" (1.33.10). */
#define NBDKIT_AT_LEAST(a, b, c)                                                                  \
	(NBDKIT_VERSION_MAJOR > (a) ||                                                            \
	 (NBDKIT_VERSION_MAJOR == (a) &&                                                          \
	  (NBDKIT_VERSION_MINOR > (b) || (NBDKIT_VERSION_MINOR == (b) && NBDKIT_VERSION_MICRO >= (c)))))
#if NBDKIT_AT_LEAST(1, 32, 4) && !NBDKIT_AT_LEAST(1, 33, 10)
#define PARALLEL_DEFAULT false
#else
#define PARALLEL_DEFAULT true
#endif

#define MAX_IMAGES 256
/* as many as the library takes (IDD_MAX_PEERS, docs/peers.md) */
#define MAX_PEERS 64
/* The largest request a client may make, advertised as the maximum block
 * size and enforced (nbdkit 1.32 itself only refuses more than 64 MiB).
 * nbdkit keeps each connection's request buffer, zeroed, at the size of
 * its largest request: with many connections this is what bounds it. */
#define MAX_REQUEST (32u << 20)

static struct {
	const char *source, *index, *cache_dir, *record, *prefetch;
	const char *metrics; /* metrics=ADDR:PORT: Prometheus text at /metrics */
	char *stats_path; /* absolute: nbdkit may change directory */
	int stats_fd;     /* stats-fd=N, -1 when not given */
	int drop_fd;      /* drop-fd=N, -1 when not given */
	const char *images[MAX_IMAGES];
	size_t n_images;
	const char *peers[MAX_PEERS];
	size_t n_peers;
	bool fill, no_pack, no_profile;
	bool parallel, parallel_set;
	uint64_t readahead;
	bool readahead_off;
	uint64_t cache_max;
	int connections;
	long timeout_s, read_timeout_s;
	bool all;          /* all=true: every image of the catalog */
	long refresh_s;    /* refresh=SECONDS; 0: the library's default */
	bool refresh_set;
	char *owned[8 + MAX_PEERS]; /* absolute paths made here, freed on unload */
	size_t n_owned;
} cfg;

static idd_server *server;
static idd_metrics_server *metrics;

/* ---- start-up progress ----
 *
 * Opening the repository reads its catalog and the exports' block maps;
 * from a slow source that takes a while.  While it runs, a thread says
 * every few seconds what is being read and how much has arrived. */
#define PROGRESS_FIRST_S 2
#define PROGRESS_EVERY_S 5
static struct {
	pthread_mutex_t lock;
	pthread_cond_t wake;
	char stage[512];
	bool done;
	pthread_t thread;
	bool started;
} startup = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, "", false, 0, false};

static void startup_stage(void *ctx, const char *msg)
{
	(void)ctx;
	pthread_mutex_lock(&startup.lock);
	snprintf(startup.stage, sizeof startup.stage, "%s", msg);
	pthread_mutex_unlock(&startup.lock);
}

static void human(uint64_t v, char *out, size_t len)
{
	const char *unit[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double d = (double)v;
	size_t u = 0;
	while (d >= 1024 && u + 1 < sizeof unit / sizeof unit[0]) {
		d /= 1024;
		u++;
	}
	snprintf(out, len, u ? "%.1f %s" : "%.0f %s", d, unit[u]);
}

static void *startup_ticker(void *arg)
{
	(void)arg;
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	long next = PROGRESS_FIRST_S;
	pthread_mutex_lock(&startup.lock);
	while (!startup.done) {
		struct timespec until = {t0.tv_sec + next, t0.tv_nsec};
		if (pthread_cond_clockwait(&startup.wake, &startup.lock, CLOCK_MONOTONIC, &until) == 0)
			continue;
		if (startup.done)
			break;
		char got[32];
		human(idd_bytes_received(), got, sizeof got);
		nbdkit_error("starting (%ld s): %s; %s received so far", next, startup.stage, got);
		next += PROGRESS_EVERY_S;
	}
	pthread_mutex_unlock(&startup.lock);
	return NULL;
}

/* The ticker runs only while get_ready does: it is gone before nbdkit forks. */
static void startup_begin(void)
{
	startup.done = false;
	startup.started = pthread_create(&startup.thread, NULL, startup_ticker, NULL) == 0;
}

static void startup_end(void)
{
	pthread_mutex_lock(&startup.lock);
	startup.done = true;
	pthread_cond_broadcast(&startup.wake);
	pthread_mutex_unlock(&startup.lock);
	if (startup.started)
		pthread_join(startup.thread, NULL);
	startup.started = false;
}
static idd_export *exports[MAX_IMAGES];
static bool stats_written;

/* Library warnings (a damaged cache block, a peer skipped) go where nbdkit
 * sends its messages: stderr in the foreground, syslog once forked. */
static void plugin_warn(void *ctx, const char *msg)
{
	(void)ctx;
	nbdkit_error("%s", msg);
}

static bool is_url(const char *s)
{
	return strstr(s, "://") != NULL;
}

/* nbdkit changes to / when it forks: local paths are made absolute now. */
static const char *local_path(const char *value)
{
	if (is_url(value) || value[0] == '/')
		return value;
	if (cfg.n_owned == sizeof cfg.owned / sizeof cfg.owned[0]) {
		nbdkit_error("too many path parameters");
		return NULL;
	}
	char *p = nbdkit_absolute_path(value);
	if (p)
		cfg.owned[cfg.n_owned++] = p;
	return p;
}

/* nbdkit_parse_bool reports a bad value itself. */
static int parse_bool(const char *value, bool *out)
{
	int v = nbdkit_parse_bool(value);
	if (v == -1)
		return -1;
	*out = v;
	return 0;
}

/* The library keeps process-wide state that is never torn down (OpenSSL's
 * fetched digest, libcurl's global initialisation): the plugin stays mapped
 * until nbdkit exits instead of being unloaded under it. */
static void plugin_load(void)
{
	cfg.stats_fd = -1;
	cfg.drop_fd = -1;
	Dl_info info;
	if (dladdr((void *)plugin_load, &info) && info.dli_fname)
		dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
}

static int plugin_config(const char *key, const char *value)
{
	if (!strcmp(key, "from")) {
		return (cfg.source = local_path(value)) ? 0 : -1;
	} else if (!strcmp(key, "cache")) {
		return (cfg.cache_dir = local_path(value)) ? 0 : -1;
	} else if (!strcmp(key, "index")) {
		return (cfg.index = local_path(value)) ? 0 : -1;
	} else if (!strcmp(key, "record")) {
		return (cfg.record = local_path(value)) ? 0 : -1;
	} else if (!strcmp(key, "prefetch")) {
		return (cfg.prefetch = local_path(value)) ? 0 : -1;
	} else if (!strcmp(key, "metrics")) {
		if (!*value) {
			nbdkit_error("metrics=: ADDR:PORT is required");
			return -1;
		}
		cfg.metrics = value;
		return 0;
	} else if (!strcmp(key, "stats")) {
		if (is_url(value)) {
			nbdkit_error("stats=%s: must be a local file", value);
			return -1;
		}
		free(cfg.stats_path);
		cfg.stats_path = nbdkit_absolute_path(value);
		return cfg.stats_path ? 0 : -1;
	} else if (!strcmp(key, "stats-fd") || !strcmp(key, "drop-fd")) {
		int v;
		if (nbdkit_parse_int(key, value, &v) == -1)
			return -1;
		if (v < 0) {
			nbdkit_error("%s=%s: not a file descriptor", key, value);
			return -1;
		}
		*(key[0] == 's' ? &cfg.stats_fd : &cfg.drop_fd) = v;
		return 0;
	} else if (!strcmp(key, "image")) {
		if (!*value) {
			nbdkit_error("image=: an image id is required");
			return -1;
		}
		for (size_t i = 0; i < cfg.n_images; i++) {
			if (!strcmp(cfg.images[i], value)) {
				nbdkit_error("image=%s given twice", value);
				return -1;
			}
		}
		if (cfg.n_images == MAX_IMAGES) {
			nbdkit_error("image=%s: at most %d images per server", value, MAX_IMAGES);
			return -1;
		}
		cfg.images[cfg.n_images++] = value;
		return 0;
	} else if (!strcmp(key, "peer")) {
		if (cfg.n_peers == MAX_PEERS) {
			nbdkit_error("peer=%s: at most %d peers", value, MAX_PEERS);
			return -1;
		}
		cfg.peers[cfg.n_peers++] = value;
		return 0;
	} else if (!strcmp(key, "fill")) {
		return parse_bool(value, &cfg.fill);
	} else if (!strcmp(key, "no-pack")) {
		return parse_bool(value, &cfg.no_pack);
	} else if (!strcmp(key, "no-profile")) {
		return parse_bool(value, &cfg.no_profile);
	} else if (!strcmp(key, "parallel")) {
		cfg.parallel_set = true;
		return parse_bool(value, &cfg.parallel);
	} else if (!strcmp(key, "readahead")) {
		int64_t v = nbdkit_parse_size(value);
		if (v < 0)
			return -1;
		cfg.readahead = (uint64_t)v;
		cfg.readahead_off = v == 0;
		return 0;
	} else if (!strcmp(key, "cache-max")) {
		int64_t v = nbdkit_parse_size(value);
		if (v < 0)
			return -1;
		if (v == 0) {
			nbdkit_error("cache-max=%s: must be above 0", value);
			return -1;
		}
		cfg.cache_max = (uint64_t)v;
		return 0;
	} else if (!strcmp(key, "connections")) {
		int v;
		if (nbdkit_parse_int("connections", value, &v) == -1)
			return -1;
		if (v < 1 || v > 64) {
			nbdkit_error("connections=%s: must be 1 to 64", value);
			return -1;
		}
		cfg.connections = v;
		return 0;
	} else if (!strcmp(key, "timeout")) {
		int v;
		if (nbdkit_parse_int("timeout", value, &v) == -1)
			return -1;
		if (v < 1) {
			nbdkit_error("timeout=%s: must be at least 1 second", value);
			return -1;
		}
		cfg.timeout_s = v;
		return 0;
	} else if (!strcmp(key, "all")) {
		return parse_bool(value, &cfg.all);
	} else if (!strcmp(key, "refresh")) {
		int v;
		if (nbdkit_parse_int("refresh", value, &v) == -1)
			return -1;
		if (v < 0 || v > 86400) {
			nbdkit_error("refresh=%s: must be 0 to 86400 seconds", value);
			return -1;
		}
		cfg.refresh_s = v;
		cfg.refresh_set = true;
		return 0;
	} else if (!strcmp(key, "read-timeout")) {
		int v;
		if (nbdkit_parse_int("read-timeout", value, &v) == -1)
			return -1;
		if (v < 1) {
			nbdkit_error("read-timeout=%s: must be at least 1 second", value);
			return -1;
		}
		cfg.read_timeout_s = v;
		return 0;
	}
	nbdkit_error("unknown parameter '%s'", key);
	return -1;
}

static int plugin_thread_model(void)
{
	bool parallel = cfg.parallel_set ? cfg.parallel : PARALLEL_DEFAULT;
	return parallel ? NBDKIT_THREAD_MODEL_PARALLEL : NBDKIT_THREAD_MODEL_SERIALIZE_REQUESTS;
}

static int plugin_config_complete(void)
{
	if (!cfg.source || !cfg.cache_dir || (cfg.n_images == 0 && !cfg.all)) {
		nbdkit_error("from=SOURCE, cache=DIR and at least one image=ID (or all=true) are required");
		return -1;
	}
	if (cfg.all && cfg.n_images) {
		nbdkit_error("all=true exports every image of the catalog: no image= with it");
		return -1;
	}
	if (cfg.refresh_set && !cfg.all) {
		nbdkit_error("refresh= applies to all=true only");
		return -1;
	}
	return 0;
}

/* Open the repository, the cache and every export before nbdkit forks, so
 * that a missing image or an unreachable source is reported where the user
 * sees it; background threads wait for after_fork. */
static int plugin_get_ready(void)
{
	idd_serve_opts o = {
		.node = {
			.source = cfg.source,
			.index = cfg.index,
			.cache_dir = cfg.cache_dir,
			.peers = cfg.peers,
			.n_peers = cfg.n_peers,
			.connections = cfg.connections,
			.timeout_s = cfg.timeout_s,
			.no_pack = cfg.no_pack,
			.warn = plugin_warn,
		},
		.no_profile = cfg.no_profile,
		.fill = cfg.fill,
		.record = cfg.record,
		.prefetch = cfg.prefetch,
		.readahead = cfg.readahead,
		.readahead_off = cfg.readahead_off,
		.read_timeout_s = cfg.read_timeout_s,
		.all = cfg.all,
		.refresh_s = cfg.refresh_set && cfg.refresh_s == 0 ? IDD_REFRESH_ALWAYS : cfg.refresh_s,
		.cache_max = cfg.cache_max,
		.progress = startup_stage,
	};
	idd_error err = {{0}, 0};
	startup_begin();
	int rc = 0;
	if (idd_server_open(&o, &server, &err)) {
		nbdkit_error("%s", err.msg);
		rc = -1;
	}
	/* the port is taken before the exports are opened: one in use fails
	 * start-up at once */
	if (!rc && cfg.metrics && idd_metrics_listen(cfg.metrics, server, &metrics, &err)) {
		nbdkit_error("%s", err.msg);
		rc = -1;
	}
	for (size_t i = 0; !rc && i < cfg.n_images; i++) {
		if (idd_export_open(server, cfg.images[i], &exports[i], &err)) {
			nbdkit_error("%s", err.msg);
			rc = -1;
		}
	}
	startup_end();
	return rc;
}

/* ---- stopping ----
 *
 * On SIGTERM nbdkit stops accepting requests but waits for the ones in
 * progress; a read waiting for a stalled source would hold it up for its
 * whole read timeout.  nbdkit_nanosleep returns early once nbdkit is
 * shutting down: a thread sleeping in it tells the library to stop, which
 * ends every fetch and read in progress at once. */
static pthread_t watcher;
static bool watcher_started;
static pthread_t dropper; /* drop-fd, below */
static bool dropper_started;
static atomic_bool watcher_done;

static void *watch_shutdown(void *arg)
{
	(void)arg;
	while (!atomic_load(&watcher_done)) {
		if (nbdkit_nanosleep(0, 200000000) == -1) {
			idd_server_stop(server);
			break;
		}
	}
	return NULL;
}

static void stop_watcher(void)
{
	atomic_store(&watcher_done, true);
	if (watcher_started)
		pthread_join(watcher, NULL);
	watcher_started = false;
	if (dropper_started)
		pthread_join(dropper, NULL);
	dropper_started = false;
}

/* ---- dropping (drop-fd=N) ----
 *
 * On SIGTERM nbdkit answers every request it has not handed to the plugin
 * yet with ESHUTDOWN, and the reads the watcher above cancels fail too:
 * qemu passes an error reply to the guest as an I/O error, even with
 * reconnect-delay, which only covers a connection that is lost.  So a
 * stop that should not break clients ends the process instead: the
 * fetched data is made durable, --record and the counters are written,
 * then _exit.  The connections close
 * with their requests unanswered, and a client that reconnects sends them
 * again to the next server.  Cache and partial files are meant to survive
 * a kill -9 at any moment; this is no worse.
 *
 * DROP_FD is the read end of a pipe: a byte, or its writer closing (the
 * parent died), triggers it.  nbdkit's --exit-with-parent would send
 * SIGTERM, hence ESHUTDOWN replies, on the parent's death: SIGKILL instead. */
static void write_stats_fd(const idd_serve_stats *st);
static void write_stats(const idd_serve_stats *st);

static void *watch_drop(void *arg)
{
	(void)arg;
	struct pollfd pfd = {.fd = cfg.drop_fd, .events = POLLIN};
	for (;;) {
		int r = poll(&pfd, 1, 200);
		if (r > 0)
			break;
		if (r < 0 && errno != EINTR) {
			nbdkit_error("drop-fd=%d: %s", cfg.drop_fd, strerror(errno));
			return NULL;
		}
		if (atomic_load(&watcher_done))
			return NULL;
	}
	idd_error err = {{0}, 0};
	if (idd_server_checkpoint(server, &err))
		nbdkit_error("%s", err.msg);
	idd_serve_stats st;
	idd_server_stats(server, &st);
	if (cfg.stats_path)
		write_stats(&st);
	if (cfg.stats_fd >= 0)
		write_stats_fd(&st);
	nbdkit_debug("drop-fd: ending with the connections open");
	_exit(0);
}

static int plugin_after_fork(void)
{
	idd_error err = {{0}, 0};
	if (idd_server_start(server, &err)) {
		nbdkit_error("%s", err.msg);
		return -1;
	}
	if (metrics && idd_metrics_start(metrics, &err)) {
		nbdkit_error("%s", err.msg);
		return -1;
	}
	watcher_started = pthread_create(&watcher, NULL, watch_shutdown, NULL) == 0;
	if (!watcher_started)
		nbdkit_debug("no shutdown watcher: reads in progress finish before nbdkit stops");
	if (cfg.drop_fd >= 0) {
		/* after_fork runs on the thread that --exit-with-parent set up */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() == 1) {
			nbdkit_error("drop-fd: %s", getppid() == 1 ? "the parent is gone" : strerror(errno));
			return -1;
		}
		dropper_started = pthread_create(&dropper, NULL, watch_drop, NULL) == 0;
		if (!dropper_started) {
			nbdkit_error("drop-fd: cannot start its thread");
			return -1;
		}
	}
	return 0;
}

/* The serve counters as one JSON object and a newline (snprintf's
 * return convention: the length the whole line needs). */
static int format_stats(char *out, size_t len, const idd_serve_stats *st)
{
	size_t n = idd_record_json(&idd_serve_stats_record, st, out, len);
	if (n + 1 < len) {
		out[n] = '\n';
		out[n + 1] = 0;
	}
	return (int)(n + 1);
}

/* stats-fd=N: the counters into that file (serve passes an anonymous
 * memory file and reads it once nbdkit has exited). */
static void write_stats_fd(const idd_serve_stats *st)
{
	char text[2048];
	int n = format_stats(text, sizeof text, st);
	size_t done = 0;
	if (n < 0 || (size_t)n >= sizeof text || ftruncate(cfg.stats_fd, 0) != 0) {
		nbdkit_error("stats-fd=%d: %s", cfg.stats_fd, n < 0 ? "cannot format" : strerror(errno));
		return;
	}
	while (done < (size_t)n) {
		ssize_t w = pwrite(cfg.stats_fd, text + done, (size_t)n - done, (off_t)done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			nbdkit_error("stats-fd=%d: %s", cfg.stats_fd, w < 0 ? strerror(errno) : "short write");
			return;
		}
		done += (size_t)w;
	}
}

/* stats=FILE: written through a temporary file and renamed, so a reader
 * never sees half of it. */
static void write_stats(const idd_serve_stats *st)
{
	size_t n = strlen(cfg.stats_path) + 32;
	char *tmp = malloc(n);
	if (!tmp) {
		nbdkit_error("%s: out of memory", cfg.stats_path);
		return;
	}
	snprintf(tmp, n, "%s.tmp.%ld", cfg.stats_path, (long)getpid());
	FILE *f = fopen(tmp, "w");
	if (!f) {
		nbdkit_error("%s: %s", tmp, strerror(errno));
		free(tmp);
		return;
	}
	char text[2048];
	format_stats(text, sizeof text, st);
	fputs(text, f);
	bool ok = fflush(f) == 0 && !ferror(f) && fsync(fileno(f)) == 0;
	int e = errno;
	if (fclose(f) != 0 && ok) {
		ok = false;
		e = errno;
	}
	if (ok && rename(tmp, cfg.stats_path) != 0) {
		ok = false;
		e = errno;
	}
	if (!ok) {
		nbdkit_error("%s: %s", cfg.stats_path, strerror(e));
		unlink(tmp);
	}
	free(tmp);
}

/* Called from cleanup (every connection closed, background threads still
 * running) and again from unload; the second call finds nothing to do. */
static void shut_down(void)
{
	stop_watcher();
	idd_metrics_close(metrics); /* it reads the server's counters */
	metrics = NULL;
	for (size_t i = 0; i < cfg.n_images; i++) {
		if (exports[i]) {
			idd_export_close(exports[i]);
			exports[i] = NULL;
		}
	}
	if (server) {
		idd_serve_stats st;
		idd_server_stats(server, &st);
		idd_server_close(server);
		server = NULL;
		if (!stats_written) {
			if (cfg.stats_path)
				write_stats(&st);
			if (cfg.stats_fd >= 0)
				write_stats_fd(&st);
			stats_written = true;
		}
	}
}

static void plugin_cleanup(void)
{
	shut_down();
}

static void plugin_unload(void)
{
	shut_down();
	for (size_t i = 0; i < cfg.n_owned; i++)
		free(cfg.owned[i]);
	cfg.n_owned = 0;
	free(cfg.stats_path);
	cfg.stats_path = NULL;
}

/* nbdkit 1.32 refuses a list of more than 10000 exports (MAX_EXPORTS)
 * as a whole: the list stops there, every image can still be opened. */
#define MAX_LISTED 10000

struct listing {
	struct nbdkit_exports *list;
	size_t n;
	bool failed;
};

static int add_export_name(void *ctx, const char *id)
{
	struct listing *l = ctx;
	if (l->n == MAX_LISTED)
		return 1;
	if (nbdkit_add_export(l->list, id, NULL) == -1) {
		l->failed = true;
		return 1;
	}
	l->n++;
	return 0;
}

static int plugin_list_exports(int readonly, int is_tls, struct nbdkit_exports *list)
{
	if (cfg.all) {
		idd_error err = {{0}, 0};
		struct listing l = {list, 0, false};
		int rc = idd_server_list_images(server, add_export_name, &l, &err);
		if (rc < 0) {
			nbdkit_error("%s", err.msg);
			return -1;
		}
		if (rc && !l.failed)
			nbdkit_debug("export list cut at %d images (the most nbdkit lists)", MAX_LISTED);
		return l.failed ? -1 : 0;
	}
	for (size_t i = 0; i < cfg.n_images; i++) {
		if (nbdkit_add_export(list, cfg.images[i], NULL) == -1)
			return -1;
	}
	return 0;
}

/* all=true: none; the empty name is then refused like any name that is
 * not an image of the catalog. */
static const char *plugin_default_export(int readonly, int is_tls)
{
	return cfg.n_images ? cfg.images[0] : "";
}

/* all=true: the image of the catalog the client named, opened at the
 * first connection to it (exports live as long as the server, so a
 * connection to an image removed from the catalog since keeps working). */
static void *open_catalog_image(const char *name)
{
	idd_error err = {{0}, 0};
	idd_export *e;
	if (idd_server_find_image(server, name, &err) == IDD_OK &&
	    idd_export_open(server, name, &e, &err) == IDD_OK)
		return e;
	nbdkit_error("%s", err.msg);
	nbdkit_set_error(err.code == IDD_ENOENT || err.code == IDD_EPERM ? ENOENT : EIO);
	return NULL;
}

/* The handle is the export itself: exports live as long as the server. */
static void *plugin_open(int readonly)
{
	const char *name = nbdkit_export_name();
	if (cfg.all)
		return open_catalog_image(name ? name : "");
	if (!name || !*name)
		name = cfg.images[0];
	for (size_t i = 0; i < cfg.n_images; i++) {
		if (!strcmp(cfg.images[i], name) && exports[i])
			return exports[i];
	}
	nbdkit_error("no export named '%s' (this server exports the images given as image=)", name);
	return NULL;
}

static int64_t plugin_get_size(void *handle)
{
	return (int64_t)idd_export_size(handle);
}

static int plugin_block_size(void *handle, uint32_t *minimum, uint32_t *preferred,
                             uint32_t *maximum)
{
	*minimum = 1;
	*preferred = idd_export_block_size(handle);
	*maximum = MAX_REQUEST;
	return 0;
}

static int plugin_can_write(void *handle) { return 0; }
static int plugin_can_multi_conn(void *handle) { return 1; }
static int plugin_can_extents(void *handle) { return 1; }
static int plugin_can_cache(void *handle) { return NBDKIT_CACHE_NATIVE; }
static int plugin_is_rotational(void *handle) { return 0; }

static int fail_request(const idd_error *err)
{
	nbdkit_error("%s", err->msg);
	nbdkit_set_error(err->code == IDD_ENOMEM      ? ENOMEM
	                 : err->code == IDD_ECANCELED ? ESHUTDOWN /* the server is stopping */
	                                              : EIO);
	return -1;
}

/* A request above the advertised maximum is refused, as nbdkit refuses
 * what is above its own. */
static int too_large(const char *what, uint32_t count)
{
	if (count <= MAX_REQUEST)
		return 0;
	nbdkit_error("%s of %" PRIu32 " bytes refused: more than the maximum of %u bytes this server "
	             "advertises", what, count, MAX_REQUEST);
	nbdkit_set_error(EINVAL);
	return -1;
}

static int plugin_pread(void *handle, void *buf, uint32_t count, uint64_t offset, uint32_t flags)
{
	idd_error err = {{0}, 0};
	if (too_large("read", count))
		return -1;
	if (idd_export_read(handle, buf, count, offset, &err))
		return fail_request(&err);
	return 0;
}

static int add_extent(void *ctx, uint64_t off, uint64_t len, bool zero)
{
	return nbdkit_add_extent(ctx, off, len, zero ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0);
}

static int plugin_extents(void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                          struct nbdkit_extents *extents)
{
	idd_error err = {{0}, 0};
	if (idd_export_extents(handle, offset, count, add_extent, extents, &err))
		return fail_request(&err);
	return 0;
}

static int plugin_cache(void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
	idd_error err = {{0}, 0};
	if (too_large("cache request", count))
		return -1;
	if (idd_export_prefetch(handle, offset, count, &err))
		return fail_request(&err);
	return 0;
}

static struct nbdkit_plugin plugin = {
	.name = "imgdedup",
	.longname = "imgdedup: VM images read on demand through a de-duplicating node cache",
	.version = IDD_VERSION,
	.description = "Exports images of an imgdedup repository read-only: zero blocks answer as\n"
	               "holes, blocks the node cache holds under any image are read locally, the\n"
	               "rest is fetched, verified and cached.",
	.load = plugin_load,
	.config = plugin_config,
	.config_complete = plugin_config_complete,
	.thread_model = plugin_thread_model,
	.config_help = "from=SOURCE        repository: a directory, http(s):// or s3:// (required)\n"
	               "cache=DIR          the node cache (required)\n"
	               "image=ID           an image to export (repeatable; the first is the default)\n"
	               "all=BOOL           export every image of SOURCE's catalog (no image=)\n"
	               "refresh=SECONDS    all=true: check the catalog for changes at most this\n"
	               "                   often (default 30; 0: at every connection)\n"
	               "index=DIR|URL      SOURCE's index (default SOURCE/.imgdedup)\n"
	               "peer=URL           another node's cache over HTTP (repeatable)\n"
	               "fill=BOOL          fetch the rest of each image in the background\n"
	               "record=FILE        write the order of first reads (a boot profile)\n"
	               "prefetch=FILE      fetch a recorded profile's blocks ahead of the guest\n"
	               "readahead=SIZE     bytes fetched past a read that missed (default 2M, 0: none)\n"
	               "connections=N      remote requests in flight per export (default 4)\n"
	               "timeout=SECONDS    a stalled remote transfer fails after this (default 30)\n"
	               "read-timeout=SECONDS  a client read fails (EIO) after this (default 60)\n"
	               "cache-max=SIZE     keep the node cache under SIZE (cache gc by value, every\n"
	               "                   second; never a file an export or a deploy uses)\n"
	               "no-pack=BOOL       ignore SOURCE's pack\n"
	               "no-profile=BOOL    do not prefetch the boot profiles SOURCE publishes\n"
	               "parallel=BOOL      answer a connection's requests in parallel (default:\n"
	               "                   false with nbdkit 1.32.4 to 1.33.9, which can abort when\n"
	               "                   a client hangs up with requests in flight)\n"
	               "metrics=ADDR:PORT  serve Prometheus metrics at http://ADDR:PORT/metrics\n"
	               "                   (PORT alone: on the loopback address)\n"
	               "stats=FILE         on exit, write the serve counters to FILE as JSON\n"
	               "stats-fd=N         the same into the open file descriptor N\n"
	               "drop-fd=N          a pipe: when readable or closed, write the counters and\n"
	               "                   end at once, requests in progress unanswered (their\n"
	               "                   clients may reconnect and send them again); imgdedup\n"
	               "                   serve's SIGTERM",
	.get_ready = plugin_get_ready,
	.after_fork = plugin_after_fork,
	.cleanup = plugin_cleanup,
	.unload = plugin_unload,
	.list_exports = plugin_list_exports,
	.default_export = plugin_default_export,
	.open = plugin_open,
	.get_size = plugin_get_size,
	.block_size = plugin_block_size,
	.can_write = plugin_can_write,
	.can_multi_conn = plugin_can_multi_conn,
	.can_extents = plugin_can_extents,
	.can_cache = plugin_can_cache,
	.is_rotational = plugin_is_rotational,
	.pread = plugin_pread,
	.extents = plugin_extents,
	.cache = plugin_cache,
	.errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
