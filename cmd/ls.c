/* ls.c - imgdedup ls: the indexed images, one line each. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>

static const char usage[] = "imgdedup ls [--index DIR] [--json] REPO";

int cmd_ls(int argc, char **argv)
{
	static const struct option opts[] = {{"index", required_argument, 0, 'i'},
	                                     {"json", no_argument, 0, 'J'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	const char *index_opt = NULL;
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'i': index_opt = optarg; break;
		case 'J': json = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage(usage, "expected one REPO");
	char *index_dir;
	idd_catalog *cat;
	if (!cli_open_catalog(argv[optind], index_opt, &index_dir, &cat))
		return EXIT_FAIL;
	free(index_dir);
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_u64(&j, "block_size", cat->block_size);
		cli_json_key_open(&j, "images", '[');
		for (size_t i = 0; i < cat->count; i++) {
			const idd_image_info *im = &cat->images[i];
			cli_json_key_open(&j, NULL, '{');
			cli_json_key_str(&j, "id", im->id);
			cli_json_key_str(&j, "format", im->format);
			cli_json_key_str(&j, "container", im->container);
			cli_json_key_u64(&j, "size", im->virtual_size);
			cli_json_key_u64(&j, "blocks", im->nblocks);
			cli_json_key_u64(&j, "zero_blocks", im->zero_blocks);
			cli_json_key_u64(&j, "distinct_blocks", im->distinct_blocks);
			cli_json_close(&j, '}');
		}
		cli_json_close(&j, ']');
		cli_json_end(&j);
	} else {
		printf("%-8s %12s %10s %10s %10s  %s\n", "FORMAT", "SIZE", "BLOCKS", "ZERO", "DISTINCT", "IMAGE");
		for (size_t i = 0; i < cat->count; i++) {
			const idd_image_info *im = &cat->images[i];
			char h[32];
			/* ids are file names: a newline or an escape sequence in one
			 * must not forge lines or drive the terminal */
			char *id = idd_str_escape(im->id, NULL);
			printf("%-8s %12s %10llu %10llu %10llu  %s\n", im->format, cli_human(im->virtual_size, h),
			       (unsigned long long)im->nblocks, (unsigned long long)im->zero_blocks,
			       (unsigned long long)im->distinct_blocks, id ? id : "?");
			free(id);
		}
	}
	idd_catalog_free(cat);
	return EXIT_OK;
}
