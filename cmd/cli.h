/* cli.h - what the front ends share: exit codes, messages, progress, JSON. */
#ifndef IDD_CLI_H
#define IDD_CLI_H

/* the front ends are built with this very library: the block list's runs,
 * the output-file helper */
#define IDD_STATIC_LINKING_ONLY
#include "imgdedup.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

extern const char *cli_prog; /* "imgdedup" */
extern bool cli_quiet;

/* Standard output: every write checked.  init at start; close at exit
 * flushes and closes it and, on any write error, prints one line naming
 * stdout and the reason and turns rc into a failure. */
void cli_stdout_init(void);
int cli_stdout_close(int rc);

/* One line on stderr: "imgdedup: MSG". */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* idd_warn_fn that prints "imgdedup: warning: MSG" (or error for failures). */
void cli_warn(void *ctx, const char *msg);
/* Usage error: prints the message and the command's usage, returns 2. */
int cli_usage(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The index directory of REPO (--index or REPO/.imgdedup) and its catalog;
 * prints the error and returns false on failure. */
bool cli_open_catalog(const char *repo, const char *index_opt, char **index_dir, idd_catalog **cat);

/* Parse "4096", "64K", "1M", "2G" (binary units); false on junk/overflow. */
bool cli_parse_size(const char *s, uint64_t *out);
bool cli_parse_int(const char *s, long min, long max, long *out);
/* Human-readable size, e.g. "1.5 GiB". */
const char *cli_human(uint64_t bytes, char buf[32]);

/* Progress bar on stderr, only when stderr is a terminal and not quiet. */
typedef struct cli_progress {
	const char *label;
	bool enabled;
	int64_t last_ns;
	int64_t start_ns;
} cli_progress;
void cli_progress_init(cli_progress *p, const char *label, bool quiet);
void cli_progress_cb(void *ctx, uint64_t done, uint64_t total); /* ctx: cli_progress* */
void cli_progress_done(cli_progress *p);

/* Minimal JSON writer for the --json summaries. */
typedef struct cli_json {
	FILE *f;
	int depth;
	bool first[32];
} cli_json;
void cli_json_begin(cli_json *j, FILE *f);      /* { */
void cli_json_end(cli_json *j);                 /* } and newline */
void cli_json_key_u64(cli_json *j, const char *k, uint64_t v);
void cli_json_key_i64(cli_json *j, const char *k, int64_t v);
void cli_json_key_double(cli_json *j, const char *k, double v);
void cli_json_key_str(cli_json *j, const char *k, const char *v);
void cli_json_key_bool(cli_json *j, const char *k, bool v);
void cli_json_key_null(cli_json *j, const char *k);
void cli_json_key_open(cli_json *j, const char *k, char bracket); /* "k": { or [ ; k NULL inside arrays */
void cli_json_close(cli_json *j, char bracket);
void cli_json_str(FILE *f, const char *s); /* quoted, escaped */

/* The subcommands, one file each. */
int cmd_scan(int argc, char **argv);
int cmd_similarity(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_pack(int argc, char **argv);
int cmd_deploy(int argc, char **argv);
int cmd_ls(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_verify(int argc, char **argv);
int cmd_cache(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_publish(int argc, char **argv);
int cmd_profile(int argc, char **argv);

#endif
