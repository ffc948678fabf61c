/* cache.c - imgdedup cache ls|gc|estimate: inspect and trim a node cache,
 * and say what it still lacks of images. */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] =
	"imgdedup cache ls [--json] DIR\n"
	"       imgdedup cache gc --max-size SIZE [--policy value|lru] [--json] DIR\n"
	"       imgdedup cache estimate --cache DIR --from SOURCE [--index DIR|URL] [--bandwidth B/s] "
	"[--no-pack] [--json] IMAGE...";

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
	                                     {"policy", required_argument, 0, 'p'},
	                                     {"json", no_argument, 0, 'J'},
	                                     {"quiet", no_argument, 0, 'q'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	bool json = false, have_max = false;
	uint64_t max = 0;
	idd_gc_policy policy = IDD_GC_VALUE;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "qh", opts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (!cli_parse_size(optarg, &max))
				return cli_usage(usage, "--max-size takes a size such as 10G, not '%s'", optarg);
			have_max = true;
			break;
		case 'p':
			if (!strcmp(optarg, "value"))
				policy = IDD_GC_VALUE;
			else if (!strcmp(optarg, "lru"))
				policy = IDD_GC_LRU;
			else
				return cli_usage(usage, "--policy is 'value' or 'lru', not '%s'", optarg);
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
	if (idd_cache_gc_policy(argv[optind], max, policy, &st, cli_warn, NULL, &err)) {
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

/* A rate such as 100M, 1.5G or 12500k, optionally followed by "/s". */
static bool parse_rate(const char *s, uint64_t *out)
{
	char buf[64];
	size_t l = strlen(s);
	if (l >= sizeof buf)
		return false;
	memcpy(buf, s, l + 1);
	if (l > 2 && !strcmp(buf + l - 2, "/s"))
		buf[l - 2] = 0;
	return cli_parse_size(buf, out) && *out > 0;
}

static int cache_estimate(int argc, char **argv)
{
	static const struct option opts[] = {{"cache", required_argument, 0, 'c'},
	                                     {"from", required_argument, 0, 'f'},
	                                     {"index", required_argument, 0, 'i'},
	                                     {"bandwidth", required_argument, 0, 'b'},
	                                     {"no-pack", no_argument, 0, 'K'},
	                                     {"json", no_argument, 0, 'J'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	idd_estimate_opts o = {.node = {.warn = cli_warn}};
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': o.node.cache_dir = optarg; break;
		case 'f': o.node.source = optarg; break;
		case 'i': o.node.index = optarg; break;
		case 'b':
			if (!parse_rate(optarg, &o.bandwidth))
				return cli_usage(usage, "--bandwidth takes bytes per second such as 100M or 1G/s, "
				                 "not '%s'", optarg);
			break;
		case 'K': o.node.no_pack = true; break;
		case 'J': json = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (!o.node.source || !o.node.cache_dir)
		return cli_usage(usage, "--cache DIR and --from SOURCE are required");
	if (optind >= argc)
		return cli_usage(usage, "expected at least one IMAGE");
	o.images = (const char *const *)argv + optind;
	o.n_images = (size_t)(argc - optind);
	idd_image_estimate *v;
	idd_error err = {{0}, 0};
	if (idd_cache_estimate(&o, &v, &err)) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (json) {
		char *text;
		size_t len;
		if (idd_cache_estimate_json(v, o.n_images, &text, &len, &err)) {
			idd_cache_estimate_free(v);
			cli_error("%s", err.msg);
			return EXIT_FAIL;
		}
		fwrite(text, 1, len, stdout);
		free(text);
	} else {
		printf("%10s %10s %10s  %s\n", "MISSING", "BOOT", "SECONDS", "IMAGE");
		for (size_t i = 0; i < o.n_images; i++) {
			char a[32], b[32], s[32];
			if (v[i].has_seconds)
				snprintf(s, sizeof s, "%.1f", v[i].seconds);
			else
				snprintf(s, sizeof s, "-");
			printf("%10s %10s %10s  %s\n", cli_human(v[i].bytes_missing, a),
			       v[i].has_boot ? cli_human(v[i].boot_bytes_missing, b) : "-", s, v[i].image);
		}
	}
	idd_cache_estimate_free(v);
	return EXIT_OK;
}

int cmd_cache(int argc, char **argv)
{
	if (argc < 2)
		return cli_usage(usage, "expected 'ls', 'gc' or 'estimate'");
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		printf("usage: %s\n", usage);
		return EXIT_OK;
	}
	if (!strcmp(argv[1], "ls"))
		return cache_ls(argc - 1, argv + 1);
	if (!strcmp(argv[1], "gc"))
		return cache_gc(argc - 1, argv + 1);
	if (!strcmp(argv[1], "estimate"))
		return cache_estimate(argc - 1, argv + 1);
	return cli_usage(usage, "unknown cache command '%s'", argv[1]);
}
