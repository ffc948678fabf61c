/* serve.c - imgdedup serve: export images over NBD, read on demand.
 *
 * The NBD server is nbdkit running imgdedup's plugin; this command only
 * builds its command line, runs it in the foreground, relays its messages,
 * forwards SIGTERM/SIGINT/SIGHUP, and prints the plugin's counters when it
 * stops.  The plugin is looked for, in order:
 *   1. $IMGDEDUP_NBDKIT_PLUGIN (a path to the .so);
 *   2. nbdkit-imgdedup-plugin.so next to this executable (the build tree);
 *   3. IDD_NBDKIT_PLUGINDIR/nbdkit-imgdedup-plugin.so, nbdkit's plugin
 *      directory at build time (where `make install` puts it).
 */
#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IDD_NBDKIT_PLUGINDIR
#define IDD_NBDKIT_PLUGINDIR "/usr/lib/x86_64-linux-gnu/nbdkit/plugins"
#endif
#define PLUGIN_FILE "nbdkit-imgdedup-plugin.so"

static const char usage[] =
	"imgdedup serve --from SOURCE --cache DIR [--index DIR|URL] [--peer URL]... "
	"(--socket PATH | --port N) [--fill] [--record FILE] [--prefetch FILE] [--no-profile] "
	"[--readahead SIZE] [--connections N] [--timeout S] [--read-timeout S] [--cache-max SIZE] "
	"[--no-pack] [--metrics [ADDR:]PORT] [--json] [-q] "
	"(IMAGE... | --all [--refresh S])";

static volatile sig_atomic_t stop_signal;
static volatile pid_t child_pid;

/* The first stop signal is passed on to nbdkit, which closes its clients,
 * lets the plugin write its counters, and exits. */
/* Once nbdkit serves, a stop goes through the plugin's drop-fd (a byte into
 * the pipe): nbdkit's own SIGTERM handling would answer the requests in
 * progress with errors, which qemu hands to its guest even when it is set
 * to reconnect.  Before, the signal is forwarded. */
static volatile sig_atomic_t child_ready;
static int drop_fd = -1;

static void on_stop(int sig)
{
	stop_signal = sig;
	if (child_ready && drop_fd >= 0) {
		char c = 0;
		ssize_t w = write(drop_fd, &c, 1);
		(void)w;
	} else if (child_pid > 0) {
		kill(child_pid, sig);
	}
}

struct serve_args {
	const char *source, *cache, *index, *socket_path, *record, *prefetch, *readahead;
	uint64_t cache_max;
	const char *metrics; /* [ADDR:]PORT for Prometheus (the plugin's metrics=) */
	const char **peers;
	size_t n_peers;
	long port, timeout_s, read_timeout_s, connections;
	bool fill, no_pack, no_profile, json;
	bool all;           /* --all: every image of the catalog */
	const char *refresh; /* --refresh S, checked */
	long activated;     /* sockets passed by systemd (LISTEN_FDS), 0: none */
	char **images;
	size_t n_images;
};

/* The plugin .so to load, or NULL (with the places tried in msg). */
static char *find_plugin(char *msg, size_t msglen)
{
	const char *env = getenv("IMGDEDUP_NBDKIT_PLUGIN");
	if (env && *env) {
		if (access(env, R_OK) == 0)
			return strdup(env);
		snprintf(msg, msglen, "%s (from IMGDEDUP_NBDKIT_PLUGIN): %s", env, strerror(errno));
		return NULL;
	}
	char exe[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
	char *here = NULL;
	if (n > 0) {
		exe[n] = 0;
		char *slash = strrchr(exe, '/');
		if (slash) {
			*slash = 0;
			size_t len = strlen(exe) + sizeof PLUGIN_FILE + 2;
			here = malloc(len);
			if (here) {
				snprintf(here, len, "%s/%s", exe, PLUGIN_FILE);
				if (access(here, R_OK) == 0)
					return here;
			}
		}
	}
	const char *installed = IDD_NBDKIT_PLUGINDIR "/" PLUGIN_FILE;
	if (access(installed, R_OK) == 0) {
		free(here);
		return strdup(installed);
	}
	snprintf(msg, msglen, "the nbdkit plugin is not installed: looked for %s%s%s",
	         here ? here : "", here ? " and " : "", installed);
	free(here);
	return NULL;
}

enum sock_state { SOCK_NONE, SOCK_LIVE, SOCK_DEAD, SOCK_OTHER };

/* What is at PATH: nothing, a socket someone listens on, a socket nobody
 * listens on (left by a killed server), or something else. */
static enum sock_state socket_state(const char *path, int *err)
{
	struct stat st;
	*err = 0;
	if (lstat(path, &st) != 0)
		return SOCK_NONE;
	if (!S_ISSOCK(st.st_mode))
		return SOCK_OTHER;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		*err = errno;
		return SOCK_OTHER;
	}
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, path, strlen(path) + 1);
	int r = connect(fd, (struct sockaddr *)&sa, sizeof sa);
	*err = errno;
	close(fd);
	if (r == 0)
		return SOCK_LIVE;
	return *err == ECONNREFUSED ? SOCK_DEAD : SOCK_OTHER;
}

/* nbdkit leaves its socket behind: a dead one is removed, a live one, or
 * anything that is not a socket, is left alone and is an error. */
static bool prepare_socket_path(const char *path)
{
	int e;
	switch (socket_state(path, &e)) {
	case SOCK_NONE:
		return true;
	case SOCK_LIVE:
		cli_error("%s: another server is listening on this socket", path);
		return false;
	case SOCK_DEAD:
		if (unlink(path) == 0)
			return true;
		cli_error("%s: cannot remove the stale socket: %s", path, strerror(errno));
		return false;
	case SOCK_OTHER:
		break;
	}
	if (e)
		cli_error("%s: %s", path, strerror(e));
	else
		cli_error("%s: exists and is not a socket; not replacing it", path);
	return false;
}

struct argv_buf {
	char **v;
	size_t n, cap;
	bool failed;
};

static void argv_add(struct argv_buf *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void argv_add(struct argv_buf *a, const char *fmt, ...)
{
	if (a->failed)
		return;
	if (a->n + 2 > a->cap) {
		size_t cap = a->cap ? 2 * a->cap : 32;
		char **v = realloc(a->v, cap * sizeof *v);
		if (!v) {
			a->failed = true;
			return;
		}
		a->v = v;
		a->cap = cap;
	}
	va_list ap;
	va_start(ap, fmt);
	char *s;
	if (vasprintf(&s, fmt, ap) < 0) {
		a->failed = true;
		va_end(ap);
		return;
	}
	va_end(ap);
	a->v[a->n++] = s;
	a->v[a->n] = NULL;
}

static void argv_free(struct argv_buf *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->v[i]);
	free(a->v);
}

/* nbdkit's message lines ("nbdkit: imgdedup[3]: error: MSG") are printed
 * as this tool's ("imgdedup: MSG"); anything else passes unchanged. */
static void relay_line(const char *line)
{
	const char *p = line;
	/* the plugin's shutdown watcher sleeps in nbdkit_nanosleep, which says
	 * this when nbdkit stops it: nothing is wrong */
	if (strstr(line, "aborting sleep because of server shut down"))
		return;
	if (!strncmp(p, "nbdkit: ", 8)) {
		p += 8;
		const char *sep = strstr(p, ": ");
		const char *sp = strchr(p, ' ');
		if (sep && sp == sep + 1 && strncmp(p, "error: ", 7) && strncmp(p, "debug: ", 7))
			p = sep + 2; /* the thread's name */
		if (!strncmp(p, "error: ", 7) || !strncmp(p, "debug: ", 7)) {
			fprintf(stderr, "%s: %s\n", cli_prog, p + 7);
			return;
		}
	}
	fprintf(stderr, "%s\n", line);
}

struct relay {
	char buf[8192];
	size_t len;
	bool any; /* a line was relayed */
};

/* Read what is there; false at end of file. */
static bool relay_read(struct relay *r, int fd)
{
	for (;;) {
		ssize_t n = read(fd, r->buf + r->len, sizeof r->buf - 1 - r->len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return errno == EAGAIN;
		if (n == 0) {
			if (r->len) {
				r->buf[r->len] = 0;
				relay_line(r->buf);
				r->len = 0;
				r->any = true;
			}
			return false;
		}
		r->len += (size_t)n;
		char *start = r->buf, *nl;
		while ((nl = memchr(start, '\n', r->len - (size_t)(start - r->buf)))) {
			*nl = 0;
			relay_line(start);
			r->any = true;
			start = nl + 1;
		}
		r->len -= (size_t)(start - r->buf);
		memmove(r->buf, start, r->len);
		if (r->len == sizeof r->buf - 1) { /* a line longer than the buffer */
			r->buf[r->len] = 0;
			relay_line(r->buf);
			r->len = 0;
		}
	}
}

/* The plugin's counters (stats-fd): one flat JSON object, read by the
 * library's table of idd_serve_stats. */
static bool read_stats(int fd, idd_serve_stats *st)
{
	char text[4096];
	ssize_t n;
	while ((n = pread(fd, text, sizeof text - 1, 0)) < 0 && errno == EINTR)
		;
	if (n <= 0) {
		cli_error("nbdkit stopped without writing the plugin's counters%s%s",
		          n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
		return false;
	}
	text[n] = 0;
	idd_error err;
	if (idd_record_parse(&idd_serve_stats_record, text, st, &err)) {
		cli_error("%s in the plugin's statistics", err.msg);
		return false;
	}
	return true;
}

/* An export's URI: the id percent-encoded (RFC 3986 path characters kept). */
static void print_uri(const struct serve_args *a, const char *id)
{
	if (a->socket_path)
		fputs("nbd+unix:///", stdout);
	else
		printf("nbd://127.0.0.1:%ld/", a->port);
	for (const unsigned char *c = (const unsigned char *)id; *c; c++) {
		if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
		    strchr("-._~/", *c))
			putchar(*c);
		else
			printf("%%%02X", *c);
	}
	if (a->socket_path)
		printf("?socket=%s", a->socket_path);
}

/* Once the server accepts connections: where the exports are. */
static void print_ready(const struct serve_args *a)
{
	if (a->activated) {
		printf("serving %s on the sockets passed by systemd\n",
		       a->all ? "every image of the catalog" : "the images given");
	} else if (a->all) {
		printf("serving every image of %s at ", a->source);
		print_uri(a, "ID");
		putchar('\n');
	} else {
		for (size_t i = 0; i < a->n_images; i++) {
			printf("serving %s at ", a->images[i]);
			print_uri(a, a->images[i]);
			putchar('\n');
		}
	}
	fflush(stdout);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* systemd socket activation: how many listening sockets (from fd 3) were
 * passed to this very process, else 0. */
static long activation_fds(void)
{
	const char *pid = getenv("LISTEN_PID"), *fds = getenv("LISTEN_FDS");
	long p, n;
	if (!pid || !fds || !cli_parse_int(pid, 1, LONG_MAX, &p) || p != (long)getpid() ||
	    !cli_parse_int(fds, 1, 1024, &n))
		return 0;
	return n;
}

static int parse_args(int argc, char **argv, struct serve_args *a)
{
	static const struct option opts[] = {
		{"from", required_argument, 0, 'f'},     {"cache", required_argument, 0, 'c'},
		{"index", required_argument, 0, 'i'},    {"peer", required_argument, 0, 'P'},
		{"socket", required_argument, 0, 'U'},   {"port", required_argument, 0, 'p'},
		{"fill", no_argument, 0, 'F'},           {"record", required_argument, 0, 'r'},
		{"prefetch", required_argument, 0, 'R'}, {"readahead", required_argument, 0, 'a'},
		{"connections", required_argument, 0, 'n'}, {"timeout", required_argument, 0, 't'},
		{"read-timeout", required_argument, 0, 'T'}, {"cache-max", required_argument, 0, 'C'},
		{"no-pack", no_argument, 0, 'N'},        {"json", no_argument, 0, 'J'},
		{"no-profile", no_argument, 0, 'Z'},
		{"metrics", required_argument, 0, 'M'},
		{"quiet", no_argument, 0, 'q'},          {"help", no_argument, 0, 'h'},
		{"all", no_argument, 0, 'A'},            {"refresh", required_argument, 0, 'G'},
		{0, 0, 0, 0}};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
		switch (c) {
		case 'f': a->source = optarg; break;
		case 'c': a->cache = optarg; break;
		case 'i': a->index = optarg; break;
		case 'P': {
			const char **n = realloc(a->peers, (a->n_peers + 1) * sizeof *n);
			if (!n) {
				cli_error("out of memory");
				return EXIT_FAIL;
			}
			a->peers = n;
			a->peers[a->n_peers++] = optarg;
			break;
		}
		case 'U': a->socket_path = optarg; break;
		case 'p':
			if (!cli_parse_int(optarg, 1, 65535, &a->port))
				return cli_usage(usage, "--port must be 1 to 65535, not '%s'", optarg);
			break;
		case 'F': a->fill = true; break;
		case 'Z': a->no_profile = true; break;
		case 'r': a->record = optarg; break;
		case 'R': a->prefetch = optarg; break;
		case 'a': {
			uint64_t v;
			if (!cli_parse_size(optarg, &v) || v > (4u << 20))
				return cli_usage(usage, "--readahead must be a size up to 4M, not '%s'", optarg);
			a->readahead = optarg;
			break;
		}
		case 'n':
			if (!cli_parse_int(optarg, 1, 64, &a->connections))
				return cli_usage(usage, "--connections must be 1 to 64, not '%s'", optarg);
			break;
		case 't':
			if (!cli_parse_int(optarg, 1, 86400, &a->timeout_s))
				return cli_usage(usage, "--timeout must be 1 to 86400 seconds, not '%s'", optarg);
			break;
		case 'T':
			if (!cli_parse_int(optarg, 1, 86400, &a->read_timeout_s))
				return cli_usage(usage, "--read-timeout must be 1 to 86400 seconds, not '%s'",
				                 optarg);
			break;
		case 'C': {
			if (!cli_parse_size(optarg, &a->cache_max) || a->cache_max == 0)
				return cli_usage(usage, "--cache-max must be a size above 0, not '%s'", optarg);
			break;
		}
		case 'N': a->no_pack = true; break;
		case 'A': a->all = true; break;
		case 'G': {
			long v;
			if (!cli_parse_int(optarg, 0, 86400, &v))
				return cli_usage(usage, "--refresh must be 0 to 86400 seconds, not '%s'", optarg);
			a->refresh = optarg;
			break;
		}
		case 'M':
			if (!*optarg)
				return cli_usage(usage, "--metrics needs [ADDR:]PORT");
			a->metrics = optarg;
			break;
		case 'J': a->json = true; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); return -1;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (!a->source || !a->cache)
		return cli_usage(usage, "--from SOURCE and --cache DIR are required");
	a->activated = activation_fds();
	if (a->activated && (a->socket_path || a->port))
		return cli_usage(usage, "started with sockets passed by systemd (LISTEN_FDS): no --socket "
		                 "or --port");
	if (!a->activated && !a->socket_path == !a->port)
		return cli_usage(usage, "give one of --socket PATH or --port N");
	if (a->socket_path) {
		if (!*a->socket_path || strlen(a->socket_path) >= sizeof ((struct sockaddr_un *)0)->sun_path)
			return cli_usage(usage, "--socket: '%s' is too long for a unix socket path (%zu bytes at most)",
			                 a->socket_path, sizeof ((struct sockaddr_un *)0)->sun_path - 1);
	}
	if (a->refresh && !a->all)
		return cli_usage(usage, "--refresh applies to --all only");
	if (a->all && optind < argc)
		return cli_usage(usage, "--all exports every image of the catalog: no IMAGE with it");
	if (a->all)
		return EXIT_OK;
	if (optind >= argc)
		return cli_usage(usage, "expected at least one IMAGE (or --all)");
	a->images = argv + optind;
	a->n_images = (size_t)(argc - optind);
	for (size_t i = 0; i < a->n_images; i++) {
		if (!*a->images[i])
			return cli_usage(usage, "an IMAGE id is empty");
		for (size_t j = 0; j < i; j++)
			if (!strcmp(a->images[i], a->images[j]))
				return cli_usage(usage, "IMAGE '%s' given twice", a->images[i]);
	}
	return EXIT_OK;
}

static void build_argv(struct argv_buf *av, const struct serve_args *a, const char *plugin,
                       int pid_fd, int stats_fd, int drop_read_fd)
{
	argv_add(av, "nbdkit");
	argv_add(av, "--foreground");
	argv_add(av, "--exit-with-parent");
	argv_add(av, "--log=stderr");
	argv_add(av, "--readonly");
	argv_add(av, "--pidfile=/dev/fd/%d", pid_fd);
	if (a->activated) {
		/* nbdkit takes the inherited sockets (LISTEN_PID set in the child) */
	} else if (a->socket_path) {
		argv_add(av, "--unix=%s", a->socket_path);
	} else {
		argv_add(av, "--ipaddr=127.0.0.1");
		argv_add(av, "--port=%ld", a->port);
	}
	argv_add(av, "%s", plugin);
	argv_add(av, "from=%s", a->source);
	argv_add(av, "cache=%s", a->cache);
	for (size_t i = 0; i < a->n_images; i++)
		argv_add(av, "image=%s", a->images[i]);
	if (a->all)
		argv_add(av, "all=true");
	if (a->refresh)
		argv_add(av, "refresh=%s", a->refresh);
	if (a->index)
		argv_add(av, "index=%s", a->index);
	for (size_t i = 0; i < a->n_peers; i++)
		argv_add(av, "peer=%s", a->peers[i]);
	if (a->fill)
		argv_add(av, "fill=true");
	if (a->no_pack)
		argv_add(av, "no-pack=true");
	if (a->no_profile)
		argv_add(av, "no-profile=true");
	if (a->record)
		argv_add(av, "record=%s", a->record);
	if (a->prefetch)
		argv_add(av, "prefetch=%s", a->prefetch);
	if (a->readahead)
		argv_add(av, "readahead=%s", a->readahead);
	if (a->connections)
		argv_add(av, "connections=%ld", a->connections);
	if (a->timeout_s)
		argv_add(av, "timeout=%ld", a->timeout_s);
	if (a->read_timeout_s)
		argv_add(av, "read-timeout=%ld", a->read_timeout_s);
	if (a->cache_max)
		argv_add(av, "cache-max=%" PRIu64, a->cache_max);
	if (a->metrics)
		argv_add(av, "metrics=%s", a->metrics);
	argv_add(av, "stats-fd=%d", stats_fd);
	argv_add(av, "drop-fd=%d", drop_read_fd);
}

/* In the child: nbdkit with stdout and stderr into the relay pipe.  An exec
 * failure is reported through the close-on-exec errno pipe. */
static void exec_nbdkit(char **argv, int out_fd, int errno_fd, const int *keep, size_t nkeep,
                        const sigset_t *oldmask, bool activated)
{
	if (activated) { /* the sockets systemd passed are now nbdkit's */
		char pid[32];
		snprintf(pid, sizeof pid, "%ld", (long)getpid());
		setenv("LISTEN_PID", pid, 1);
	}
	for (size_t i = 0; i < nkeep; i++) /* inherited by nbdkit, and only by it */
		fcntl(keep[i], F_SETFD, 0);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	sigprocmask(SIG_SETMASK, oldmask, NULL);
	int devnull = open("/dev/null", O_RDONLY);
	if (devnull >= 0) {
		dup2(devnull, STDIN_FILENO);
		close(devnull);
	}
	dup2(out_fd, STDOUT_FILENO);
	dup2(out_fd, STDERR_FILENO);
	close(out_fd);
	execvp(argv[0], argv);
	int e = errno;
	ssize_t w = write(errno_fd, &e, sizeof e);
	(void)w;
	_exit(127);
}

int cmd_serve(int argc, char **argv)
{
	struct serve_args a = {0};
	int r = parse_args(argc, argv, &a);
	if (r) {
		free(a.peers);
		return r < 0 ? EXIT_OK : r;
	}
	char msg[8192];
	char *plugin = find_plugin(msg, sizeof msg);
	if (!plugin) {
		cli_error("%s", msg);
		free(a.peers);
		return EXIT_FAIL;
	}
	if (a.socket_path && !prepare_socket_path(a.socket_path)) {
		free(plugin);
		free(a.peers);
		return EXIT_FAIL;
	}
	/* Nothing on disk that a kill -9 would leave behind: nbdkit writes its
	 * pid file (the sign it is ready) into a pipe, and the plugin its
	 * counters into an anonymous memory file, both inherited. */
	int ret = EXIT_FAIL;
	int out_pipe[2] = {-1, -1}, errno_pipe[2] = {-1, -1}, pid_pipe[2] = {-1, -1};
	int drop_pipe[2] = {-1, -1};
	int stats_fd = memfd_create("imgdedup-serve-stats", MFD_CLOEXEC);
	struct argv_buf av = {0};
	if (stats_fd < 0) {
		cli_error("memfd_create: %s", strerror(errno));
		free(plugin);
		goto out;
	}
	if (pipe2(out_pipe, O_CLOEXEC) || pipe2(errno_pipe, O_CLOEXEC) || pipe2(pid_pipe, O_CLOEXEC) ||
	    pipe2(drop_pipe, O_CLOEXEC)) {
		cli_error("pipe: %s", strerror(errno));
		free(plugin);
		goto out;
	}
	build_argv(&av, &a, plugin, pid_pipe[1], stats_fd, drop_pipe[0]);
	free(plugin);
	if (av.failed) {
		cli_error("out of memory");
		goto out;
	}

	/* Stop signals are held until the child's pid is known, so none is lost. */
	sigset_t stopset, oldmask;
	sigemptyset(&stopset);
	sigaddset(&stopset, SIGTERM);
	sigaddset(&stopset, SIGINT);
	sigaddset(&stopset, SIGHUP);
	sigprocmask(SIG_BLOCK, &stopset, &oldmask);
	struct sigaction sa = {.sa_handler = on_stop};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	pid_t pid = fork();
	if (pid < 0) {
		cli_error("fork: %s", strerror(errno));
		sigprocmask(SIG_SETMASK, &oldmask, NULL);
		goto out;
	}
	if (pid == 0) {
		int keep[] = {pid_pipe[1], stats_fd, drop_pipe[0]};
		exec_nbdkit(av.v, out_pipe[1], errno_pipe[1], keep, 3, &oldmask, a.activated > 0);
	}
	child_pid = pid;
	/* the write end stays here: when serve dies, its closing tells the
	 * plugin to go the same way */
	fcntl(drop_pipe[1], F_SETFL, O_NONBLOCK);
	drop_fd = drop_pipe[1];
	close(drop_pipe[0]);
	drop_pipe[0] = -1;
	sigprocmask(SIG_SETMASK, &oldmask, NULL);
	close(out_pipe[1]);
	out_pipe[1] = -1;
	close(errno_pipe[1]);
	errno_pipe[1] = -1;
	close(pid_pipe[1]);
	pid_pipe[1] = -1;
	int exec_errno = 0;
	ssize_t got;
	while ((got = read(errno_pipe[0], &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR)
		;
	if (got == (ssize_t)sizeof exec_errno) {
		cli_error("cannot run nbdkit: %s (is the nbdkit package installed?)", strerror(exec_errno));
		waitpid(pid, NULL, 0);
		child_pid = 0;
		goto out;
	}
	fcntl(out_pipe[0], F_SETFL, O_NONBLOCK);
	fcntl(pid_pipe[0], F_SETFL, O_NONBLOCK);

	/* Relay nbdkit's messages until it exits; it is ready once it wrote
	 * its pid file, which it does after its socket accepts connections. */
	struct relay rl = {.len = 0};
	bool ready = false, pipe_open = true, exited = false;
	int status = 0;
	double t_ready = 0;
	while (pipe_open || !exited) {
		if (pipe_open) {
			struct pollfd pfd = {.fd = out_pipe[0], .events = POLLIN};
			if (poll(&pfd, 1, 50) > 0)
				pipe_open = relay_read(&rl, out_pipe[0]);
		} else {
			struct timespec ts = {0, 50000000};
			nanosleep(&ts, NULL);
		}
		if (!exited) {
			pid_t w = waitpid(pid, &status, WNOHANG);
			if (w == pid)
				exited = true;
		}
		if (!ready && !exited) {
			char pidbuf[32];
			if (read(pid_pipe[0], pidbuf, sizeof pidbuf) > 0) {
				ready = true;
				child_ready = 1;
				t_ready = now_s();
				if (!cli_quiet && !a.json)
					print_ready(&a);
			}
		}
	}
	child_pid = 0;
	child_ready = 0;
	int sock_err;
	if (a.socket_path && socket_state(a.socket_path, &sock_err) == SOCK_DEAD)
		unlink(a.socket_path);
	double served = ready ? now_s() - t_ready : 0;

	bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
	if (!ready && !stop_signal) {
		if (!rl.any || clean)
			cli_error("nbdkit exited before it was ready (%s %d)",
			          WIFSIGNALED(status) ? "signal" : "status",
			          WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
		goto out;
	}
	if (!clean && !(stop_signal && WIFSIGNALED(status) && WTERMSIG(status) == stop_signal)) {
		cli_error("nbdkit failed (%s %d)", WIFSIGNALED(status) ? "signal" : "exit status",
		          WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
		goto out;
	}
	idd_serve_stats st;
	memset(&st, 0, sizeof st);
	/* stopped while opening SOURCE: nbdkit had no handler yet and nothing
	 * was served (the counters stay zero) */
	if ((ready || !stop_signal) && !read_stats(stats_fd, &st))
		goto out;
	if (a.json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		const idd_record_type *t = &idd_serve_stats_record;
		for (size_t i = 0; i < t->n_fields; i++)
			cli_json_key_u64(&j, t->fields[i].name, idd_field_u64(&t->fields[i], &st));
		cli_json_key_double(&j, "seconds", served);
		cli_json_end(&j);
	} else if (!cli_quiet) {
		char h[6][32];
		printf("%s%s: %llu reads, %s read (%s zero, %s from local data), %s fetched in %llu "
		       "requests, %s from peers, %llu blocks cached, in %.1f s\n",
		       a.all ? "all images" : a.images[0], a.n_images > 1 ? " and others" : "",
		       (unsigned long long)st.reads, cli_human(st.bytes_read, h[0]),
		       cli_human(st.bytes_zero, h[1]), cli_human(st.bytes_from_cache, h[2]),
		       cli_human(st.bytes_fetched, h[3]), (unsigned long long)st.requests,
		       cli_human(st.bytes_from_peers, h[4]), (unsigned long long)st.blocks_filled, served);
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		cli_error("stdout: %s", strerror(errno));
		goto out;
	}
	ret = EXIT_OK;
out:
	for (int i = 0; i < 2; i++) {
		int *fds[] = {out_pipe, errno_pipe, pid_pipe, drop_pipe};
		for (size_t k = 0; k < 4; k++)
			if (fds[k][i] >= 0)
				close(fds[k][i]);
	}
	if (stats_fd >= 0)
		close(stats_fd);
	argv_free(&av);
	free(a.peers);
	return ret;
}
