/* cli.c - messages, size parsing, progress bar and JSON output. */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *cli_prog = "imgdedup";
bool cli_quiet;

/* Standard output goes through a stream that keeps the first write error,
 * so that cli_stdout_close can name the reason even when the failing write
 * happened long before the end (a full disk half-way through a listing). */
static int stdout_errno;

static ssize_t stdout_write(void *c, const char *buf, size_t len)
{
	(void)c;
	size_t done = 0;
	while (done < len) {
		ssize_t w = write(STDOUT_FILENO, buf + done, len - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			if (!stdout_errno)
				stdout_errno = w < 0 ? errno : EIO;
			return -1;
		}
		done += (size_t)w;
	}
	return (ssize_t)len;
}

static int stdout_close(void *c)
{
	(void)c;
	return close(STDOUT_FILENO) && errno != EBADF ? -1 : 0;
}

void cli_stdout_init(void)
{
	cookie_io_functions_t io = {.write = stdout_write, .close = stdout_close};
	FILE *f = fopencookie(NULL, "w", io);
	if (!f)
		return; /* keep the plain stream: errors are still seen, without a reason */
	setvbuf(f, NULL, isatty(STDOUT_FILENO) ? _IOLBF : _IOFBF, BUFSIZ);
	stdout = f; /* glibc: stdout is an ordinary variable */
}

int cli_stdout_close(int rc)
{
	bool failed = ferror(stdout) != 0;
	int e = stdout_errno;
	if (fflush(stdout) != 0) {
		failed = true;
		e = stdout_errno ? stdout_errno : errno;
	}
	if (fclose(stdout) != 0 && !failed) {
		failed = true;
		e = stdout_errno ? stdout_errno : errno;
	}
	if (!failed)
		return rc;
	cli_error("stdout: %s", e ? strerror(e) : "write error");
	return rc == EXIT_USAGE ? rc : EXIT_FAIL;
}

/* One line on stderr: messages quote file names, which may hold newlines
 * or escape sequences; those are shown escaped (\n, \xNN). */
static void put_line(const char *msg)
{
	char *safe = idd_str_escape(msg, NULL);
	fprintf(stderr, "%s: %s\n", cli_prog, safe ? safe : msg);
	free(safe);
}

void cli_error(const char *fmt, ...)
{
	char msg[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	put_line(msg);
}

void cli_warn(void *ctx, const char *msg)
{
	(void)ctx;
	put_line(msg);
}

int cli_usage(const char *usage, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "%s: ", cli_prog);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	fprintf(stderr, "usage: %s\n", usage);
	return EXIT_USAGE;
}

bool cli_open_catalog(const char *repo, const char *index_opt, char **index_dir, idd_catalog **cat)
{
	idd_error err;
	*index_dir = NULL;
	if (idd_index_path(repo, index_opt, index_dir, &err) || idd_catalog_load(*index_dir, cat, &err)) {
		cli_error("%s", err.msg);
		free(*index_dir);
		*index_dir = NULL;
		return false;
	}
	return true;
}

bool cli_parse_size(const char *s, uint64_t *out)
{
	if (!s || !*s || *s == '-')
		return false;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s)
		return false;
	unsigned shift = 0;
	switch (*end) {
	case 0: break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: return false;
	}
	if (shift && (*end == 'i' || *end == 'I'))
		end++;
	if (shift && (*end == 'b' || *end == 'B'))
		end++;
	if (*end)
		return false;
	if (shift && v > (UINT64_MAX >> shift))
		return false;
	*out = (uint64_t)v << shift;
	return true;
}

bool cli_parse_int(const char *s, long min, long max, long *out)
{
	if (!s || !*s)
		return false;
	errno = 0;
	char *end;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

const char *cli_human(uint64_t b, char buf[32])
{
	static const char *const u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double v = (double)b;
	int i = 0;
	while (v >= 1024 && i < 5) {
		v /= 1024;
		i++;
	}
	if (i == 0)
		snprintf(buf, 32, "%" PRIu64 " B", b);
	else
		snprintf(buf, 32, "%.1f %s", v, u[i]);
	return buf;
}

static int64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void cli_progress_init(cli_progress *p, const char *label, bool quiet)
{
	p->label = label;
	p->enabled = !quiet && isatty(STDERR_FILENO);
	p->last_ns = 0;
	p->start_ns = mono_ns();
}

void cli_progress_cb(void *ctx, uint64_t done, uint64_t total)
{
	cli_progress *p = ctx;
	if (!p || !p->enabled)
		return;
	int64_t now = mono_ns();
	if (done < total && now - p->last_ns < 100000000) /* 10 redraws a second */
		return;
	p->last_ns = now;
	double frac = total ? (double)done / (double)total : 1.0;
	if (frac > 1)
		frac = 1;
	int width = 30, fill = (int)(frac * width);
	char bar[64], h1[32], h2[32];
	for (int i = 0; i < width; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[width] = 0;
	double secs = (double)(now - p->start_ns) / 1e9;
	double rate = secs > 0 ? (double)done / secs : 0;
	fprintf(stderr, "\r%s [%s] %5.1f%% %s/%s %s/s   ", p->label, bar, frac * 100,
	        cli_human(done, h1), cli_human(total, h2), cli_human((uint64_t)rate, (char[32]){0}));
	fflush(stderr);
}

void cli_progress_done(cli_progress *p)
{
	if (p->enabled && p->last_ns) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
	}
}

void cli_json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		switch (*c) {
		case '"': fputs("\\\"", f); break;
		case '\\': fputs("\\\\", f); break;
		case '\n': fputs("\\n", f); break;
		case '\t': fputs("\\t", f); break;
		case '\r': fputs("\\r", f); break;
		default:
			if (*c < 0x20)
				fprintf(f, "\\u%04x", *c);
			else
				fputc(*c, f);
		}
	}
	fputc('"', f);
}

static void json_sep(cli_json *j, const char *k)
{
	if (!j->first[j->depth])
		fputc(',', j->f);
	j->first[j->depth] = false;
	if (k) {
		cli_json_str(j->f, k);
		fputc(':', j->f);
	}
}

void cli_json_begin(cli_json *j, FILE *f)
{
	j->f = f;
	j->depth = 0;
	j->first[0] = true;
	fputc('{', f);
}

void cli_json_end(cli_json *j)
{
	fputs("}\n", j->f);
	fflush(j->f);
}

void cli_json_key_u64(cli_json *j, const char *k, uint64_t v) { json_sep(j, k); fprintf(j->f, "%" PRIu64, v); }
void cli_json_key_i64(cli_json *j, const char *k, int64_t v) { json_sep(j, k); fprintf(j->f, "%" PRId64, v); }
void cli_json_key_double(cli_json *j, const char *k, double v) { json_sep(j, k); fprintf(j->f, "%.6f", v); }
void cli_json_key_bool(cli_json *j, const char *k, bool v) { json_sep(j, k); fputs(v ? "true" : "false", j->f); }

void cli_json_key_null(cli_json *j, const char *k) { json_sep(j, k); fputs("null", j->f); }

void cli_json_key_str(cli_json *j, const char *k, const char *v)
{
	json_sep(j, k);
	cli_json_str(j->f, v);
}

void cli_json_key_open(cli_json *j, const char *k, char bracket)
{
	json_sep(j, k);
	fputc(bracket, j->f);
	if (j->depth < 31)
		j->depth++;
	j->first[j->depth] = true;
}

void cli_json_close(cli_json *j, char bracket)
{
	fputc(bracket, j->f);
	if (j->depth > 0)
		j->depth--;
}
