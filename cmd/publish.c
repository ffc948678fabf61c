/* publish.c - imgdedup publish: copy an index into an object store, where
 * nodes read it (SOURCE/.imgdedup). */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>

static const char usage[] =
	"imgdedup publish [--index DIR] [--to s3://BUCKET/PREFIX] [--keep-stale] [--no-wait] [--json] [-q] REPO";

int cmd_publish(int argc, char **argv)
{
	static const struct option opts[] = {
		{"index", required_argument, 0, 'i'}, {"to", required_argument, 0, 't'},
		{"keep-stale", no_argument, 0, 'k'},  {"no-wait", no_argument, 0, 'W'},
		{"json", no_argument, 0, 'J'},        {"quiet", no_argument, 0, 'q'},
		{"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
	idd_publish_opts o = {0};
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:t:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'i': o.index_dir = optarg; break;
		case 't': o.to = optarg; break;
		case 'k': o.keep_stale = true; break;
		case 'W': o.no_wait = true; break;
		case 'J': json = true; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage(usage, "expected one REPO");
	o.repo = argv[optind];
	cli_progress prog;
	cli_progress_init(&prog, "publish", cli_quiet);
	o.progress = cli_progress_cb;
	o.warn = cli_warn;
	o.ctx = &prog;
	idd_publish_stats st;
	idd_error err = {{0}, 0};
	int r = idd_publish(&o, &st, &err);
	cli_progress_done(&prog);
	if (r) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_u64(&j, "files", st.files);
		cli_json_key_u64(&j, "uploaded", st.uploaded);
		cli_json_key_u64(&j, "unchanged", st.unchanged);
		cli_json_key_u64(&j, "deleted", st.deleted);
		cli_json_key_u64(&j, "bytes_uploaded", st.bytes_uploaded);
		cli_json_end(&j);
	} else if (!cli_quiet) {
		char h[32];
		printf("%llu index files: %llu uploaded (%s), %llu unchanged, %llu stale removed\n",
		       (unsigned long long)st.files, (unsigned long long)st.uploaded,
		       cli_human(st.bytes_uploaded, h), (unsigned long long)st.unchanged,
		       (unsigned long long)st.deleted);
	}
	return EXIT_OK;
}
