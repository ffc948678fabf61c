/* verify.c - imgdedup verify: check the index (and with --deep, the images). */
#include "cli.h"

#include <getopt.h>

static const char usage[] = "imgdedup verify [--index DIR] [--deep] [-q] REPO";

int cmd_verify(int argc, char **argv)
{
	static const struct option opts[] = {{"index", required_argument, 0, 'i'},
	                                     {"deep", no_argument, 0, 'd'},
	                                     {"quiet", no_argument, 0, 'q'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	idd_verify_opts o = {0};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'i': o.index_dir = optarg; break;
		case 'd': o.deep = true; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage(usage, "expected one REPO");
	o.repo = argv[optind];
	cli_progress prog;
	cli_progress_init(&prog, "verify", cli_quiet);
	o.progress = cli_progress_cb;
	o.warn = cli_warn;
	o.ctx = &prog;
	uint64_t problems = 0;
	idd_error err = {{0}, 0};
	int r = idd_verify(&o, &problems, &err);
	cli_progress_done(&prog);
	if (r && !problems) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (problems) {
		cli_error("%llu problem(s) found", (unsigned long long)problems);
		return EXIT_FAIL;
	}
	if (!cli_quiet)
		printf("index OK%s\n", o.deep ? " (images re-read and match)" : "");
	return EXIT_OK;
}
