/* map.c - imgdedup map: a compact block map per image, incrementally. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] = "imgdedup map [--index DIR] [--no-wait] [--json] [-q] REPO [IMAGE...]";

int cmd_map(int argc, char **argv)
{
	static const struct option opts[] = {
		{"index", required_argument, 0, 'i'}, {"no-wait", no_argument, 0, 'W'},
		{"json", no_argument, 0, 'J'},        {"quiet", no_argument, 0, 'q'},
		{"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
	idd_map_opts o = {0};
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'i': o.index_dir = optarg; break;
		case 'W': o.no_wait = true; break;
		case 'J': json = true; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind >= argc)
		return cli_usage(usage, "expected REPO");
	o.repo = argv[optind];
	o.images = (const char *const *)argv + optind + 1;
	o.n_images = (size_t)(argc - optind - 1);
	cli_progress prog;
	cli_progress_init(&prog, "map", cli_quiet);
	o.progress = cli_progress_cb;
	o.warn = cli_warn;
	o.ctx = &prog;
	idd_map_stats st;
	idd_error err = {{0}, 0};
	int r = idd_map_run(&o, &st, &err);
	cli_progress_done(&prog);
	if (r) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_u64(&j, "images", st.images);
		cli_json_key_u64(&j, "map_bytes", st.map_bytes);
		cli_json_key_u64(&j, "written", st.written);
		cli_json_key_u64(&j, "unchanged", st.unchanged);
		cli_json_key_u64(&j, "removed", st.removed);
		cli_json_key_u64(&j, "repaired", st.repaired);
		cli_json_key_u64(&j, "blocktable_entries", st.blocktable_entries);
		cli_json_key_u64(&j, "blocktable_bytes", st.blocktable_bytes);
		cli_json_key_bool(&j, "blocktable_rebuilt", st.blocktable_rebuilt);
		cli_json_end(&j);
	} else if (!cli_quiet) {
		char h1[32], h2[32];
		char rep[48] = "";
		if (st.repaired)
			snprintf(rep, sizeof rep, " (%llu repaired)", (unsigned long long)st.repaired);
		printf("%llu images: %llu maps written%s, %llu unchanged, %llu removed; maps %s, "
		       "block table %llu digests (%s)\n",
		       (unsigned long long)st.images, (unsigned long long)st.written, rep,
		       (unsigned long long)st.unchanged, (unsigned long long)st.removed,
		       cli_human(st.map_bytes, h1), (unsigned long long)st.blocktable_entries,
		       cli_human(st.blocktable_bytes, h2));
	}
	return EXIT_OK;
}
