/* pack.c - imgdedup pack: a compressed copy of the repository's distinct
 * blocks beside the index, for deploy and serve to transfer fewer bytes. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>

static const char usage[] =
	"imgdedup pack [--index DIR] [--jobs N] [--level N] [--no-wait] [--json] [-q] REPO";

int cmd_pack(int argc, char **argv)
{
	static const struct option opts[] = {
		{"index", required_argument, 0, 'i'}, {"jobs", required_argument, 0, 'j'},
		{"level", required_argument, 0, 'L'},
		{"no-wait", no_argument, 0, 'W'},     {"json", no_argument, 0, 'J'},
		{"quiet", no_argument, 0, 'q'},       {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0}};
	idd_pack_opts o = {0};
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:j:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'i': o.index_dir = optarg; break;
		case 'j': {
			long v;
			if (!cli_parse_int(optarg, 1, 64, &v))
				return cli_usage(usage, "--jobs must be 1 to 64, not '%s'", optarg);
			o.jobs = (int)v;
			break;
		}
		case 'L': {
			long v;
			if (!cli_parse_int(optarg, 1, 19, &v))
				return cli_usage(usage, "--level must be 1 to 19, not '%s'", optarg);
			o.level = (int)v;
			break;
		}
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
	cli_progress_init(&prog, "pack", cli_quiet);
	o.progress = cli_progress_cb;
	o.warn = cli_warn;
	o.ctx = &prog;
	idd_pack_stats st;
	idd_error err = {{0}, 0};
	int r = idd_pack_run(&o, &st, &err);
	cli_progress_done(&prog);
	if (!st.committed) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_u64(&j, "blocks", st.blocks);
		cli_json_key_u64(&j, "pack_bytes", st.pack_bytes);
		cli_json_key_u64(&j, "raw_bytes", st.raw_bytes);
		cli_json_key_u64(&j, "added", st.added);
		cli_json_key_u64(&j, "removed", st.removed);
		cli_json_key_u64(&j, "failed", st.failed);
		cli_json_key_u64(&j, "views_written", st.views_written);
		cli_json_key_u64(&j, "data_bytes_written", st.data_bytes_written);
		cli_json_key_u64(&j, "index_bytes_written", st.index_bytes_written);
		cli_json_key_u64(&j, "maps_read", st.maps_read);
		cli_json_key_u64(&j, "lists_read", st.lists_read);
		cli_json_key_u64(&j, "runs", st.runs);
		cli_json_key_u64(&j, "runs_merged", st.runs_merged);
		cli_json_key_bool(&j, "upgraded", st.upgraded);
		cli_json_key_bool(&j, "compacted", st.compacted);
		cli_json_key_bool(&j, "changed", st.changed);
		cli_json_end(&j);
	} else if (!cli_quiet) {
		char h1[32], h2[32];
		printf("%llu blocks packed (%llu added, %llu removed%s%s): %s holding %s\n",
		       (unsigned long long)st.blocks, (unsigned long long)st.added,
		       (unsigned long long)st.removed, st.compacted ? ", compacted" : "",
		       st.changed ? "" : ", nothing to do", cli_human(st.pack_bytes, h1),
		       cli_human(st.raw_bytes, h2));
	}
	if (r) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	return EXIT_OK;
}
