/* profile.c - imgdedup profile: publish a recorded boot profile into the
 * index (by content), or remove one. */
#include "cli.h"

#include <getopt.h>
#include <string.h>

static const char usage[] = "imgdedup profile publish [--index DIR] [-q] FILE IMAGE REPO\n"
                            "       imgdedup profile remove [--index DIR] [-q] IMAGE REPO";

int cmd_profile(int argc, char **argv)
{
	static const struct option opts[] = {{"index", required_argument, 0, 'i'},
	                                     {"quiet", no_argument, 0, 'q'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	idd_profile_publish_opts o = {0};
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'i': o.index_dir = optarg; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	const char *verb = optind < argc ? argv[optind++] : NULL;
	bool publish = verb && !strcmp(verb, "publish");
	if (!verb || (!publish && strcmp(verb, "remove")))
		return cli_usage(usage, "expected 'publish' or 'remove'");
	if (argc - optind != (publish ? 3 : 2))
		return cli_usage(usage, publish ? "expected FILE IMAGE REPO" : "expected IMAGE REPO");
	if (publish)
		o.file = argv[optind++];
	o.image = argv[optind++];
	o.repo = argv[optind];
	idd_error err = {{0}, 0};
	uint64_t n = 0;
	int r = publish ? idd_profile_publish(&o, &n, &err) : idd_profile_unpublish(&o, &err);
	if (r) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (!cli_quiet) {
		if (publish)
			printf("published the boot profile of %s: %llu blocks\n", o.image,
			       (unsigned long long)n);
		else
			printf("removed the boot profile of %s\n", o.image);
	}
	return EXIT_OK;
}
