/* cache.c - imgdedup cache ls|gc: inspect and trim a node cache. */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] = "imgdedup cache ls [--json] DIR\n"
                            "       imgdedup cache gc --max-size SIZE [--json] DIR";

static int cache_ls(int argc, char **argv)
{
	static const struct option opts[] = {
		{"json", no_argument, 0, 'J'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'J': json = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage(usage, "expected one cache DIR");
	idd_cache_image *v;
	size_t n;
	idd_error err = {{0}, 0};
	if (idd_cache_list(argv[optind], &v, &n, cli_warn, NULL, &err)) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	uint64_t total = 0;
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_open(&j, "images", '[');
		for (size_t i = 0; i < n; i++) {
			cli_json_key_open(&j, NULL, '{');
			cli_json_key_str(&j, "path", v[i].path);
			cli_json_key_bool(&j, "owned", v[i].owned);
			cli_json_key_bool(&j, "present", v[i].present);
			cli_json_key_u64(&j, "block_size", v[i].block_size);
			cli_json_key_u64(&j, "size", v[i].size);
			cli_json_key_u64(&j, "disk_bytes", v[i].disk_bytes);
			cli_json_key_u64(&j, "blocks", v[i].blocks);
			cli_json_key_i64(&j, "last_used", v[i].last_used / 1000000000);
			cli_json_key_bool(&j, "partial", v[i].partial);
			if (v[i].partial) {
				cli_json_key_u64(&j, "present_blocks", v[i].present_blocks);
				cli_json_key_u64(&j, "data_blocks", v[i].data_blocks);
			}
			cli_json_key_bool(&j, "in_use", v[i].in_use);
			cli_json_close(&j, '}');
			total += v[i].disk_bytes;
		}
		cli_json_close(&j, ']');
		cli_json_key_u64(&j, "disk_bytes", total);
		cli_json_end(&j);
	} else {
		printf("%-19s %10s %10s %10s  %s\n", "LAST USED", "SIZE", "ON DISK", "BLOCKS", "IMAGE");
		for (size_t i = 0; i < n; i++) {
			char when[32], a[32], b[32];
			time_t t = (time_t)(v[i].last_used / 1000000000);
			struct tm tm;
			strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime_r(&t, &tm));
			char part[96] = "";
			if (v[i].partial) {
				/* rounded down: 100% only when every data block is there */
				uint64_t d = v[i].data_blocks, p = v[i].present_blocks;
				unsigned pct = d ? (unsigned)(p >= d ? 100 : (double)p * 100.0 / (double)d) : 100;
				if (pct == 100 && p < d)
					pct = 99;
				snprintf(part, sizeof part,
				         " (partial: %" PRIu64 " of %" PRIu64 " data blocks present, %u%%)", p, d, pct);
			}
			printf("%-19s %10s %10s %10" PRIu64 "  %s%s%s%s%s\n", when, cli_human(v[i].size, a),
			       cli_human(v[i].disk_bytes, b), v[i].blocks, v[i].path,
			       v[i].owned ? "" : " (registered from outside the cache)",
			       v[i].present ? "" : " (missing)", part, v[i].in_use ? " (in use)" : "");
			total += v[i].disk_bytes;
		}
		char t[32];
		printf("%zu images, %s on disk\n", n, cli_human(total, t));
	}
	idd_cache_list_free(v, n);
	return EXIT_OK;
}

static int cache_gc(int argc, char **argv)
{
	static const struct option opts[] = {{"max-size", required_argument, 0, 'm'},
	                                     {"json", no_argument, 0, 'J'},
	                                     {"quiet", no_argument, 0, 'q'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	bool json = false, have_max = false;
	uint64_t max = 0;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (!cli_parse_size(optarg, &max))
				return cli_usage(usage, "--max-size takes a size such as 10G, not '%s'", optarg);
			have_max = true;
			break;
		case 'J': json = true; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage(usage, "expected one cache DIR");
	if (!have_max)
		return cli_usage(usage, "--max-size SIZE is required");
	idd_cache_gc_stats st;
	idd_error err = {{0}, 0};
	if (idd_cache_gc(argv[optind], max, &st, cli_warn, NULL, &err)) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_u64(&j, "images_before", st.images_before);
		cli_json_key_u64(&j, "images_removed", st.images_removed);
		cli_json_key_u64(&j, "bytes_before", st.bytes_before);
		cli_json_key_u64(&j, "bytes_after", st.bytes_after);
		cli_json_end(&j);
	} else if (!cli_quiet) {
		char a[32], b[32];
		printf("removed %" PRIu64 " of %" PRIu64 " images: %s -> %s on disk\n", st.images_removed,
		       st.images_before, cli_human(st.bytes_before, a), cli_human(st.bytes_after, b));
	}
	return EXIT_OK;
}

int cmd_cache(int argc, char **argv)
{
	if (argc < 2)
		return cli_usage(usage, "expected 'ls' or 'gc'");
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		printf("usage: %s\n", usage);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "ls"))
		return cache_ls(argc - 1, argv + 1);
	if (!strcmp(argv[1], "gc"))
		return cache_gc(argc - 1, argv + 1);
	return cli_usage(usage, "unknown cache command '%s'", argv[1]);
}
