/* scan.c - imgdedup scan: index every block of every image of a repository. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
	"imgdedup scan [--index DIR] [--block-size N] [--jobs N] [--include GLOB]... [--shard K/N | --merge] [--no-wait] [--json] [-q] REPO";

int cmd_scan(int argc, char **argv)
{
	static const struct option opts[] = {
		{"index", required_argument, 0, 'i'}, {"block-size", required_argument, 0, 'b'},
		{"jobs", required_argument, 0, 'j'},  {"include", required_argument, 0, 'I'},
		{"no-wait", no_argument, 0, 'W'},     {"json", no_argument, 0, 'J'},
		{"shard", required_argument, 0, 'S'}, {"merge", no_argument, 0, 'M'},
		{"quiet", no_argument, 0, 'q'},       {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0}};
	idd_scan_opts o = {0};
	const char **includes = NULL;
	size_t ninc = 0;
	bool json = false;
	int c, rc = EXIT_FAIL;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:b:j:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'i': o.index_dir = optarg; break;
		case 'b': {
			uint64_t v;
			if (!cli_parse_size(optarg, &v) || v < IDD_MIN_BLOCK_SIZE || v > IDD_MAX_BLOCK_SIZE ||
			    (v & (v - 1)))
				return cli_usage(usage, "--block-size must be a power of two from 512 to 1M, not '%s'", optarg);
			o.block_size = (uint32_t)v;
			break;
		}
		case 'j': {
			long v;
			if (!cli_parse_int(optarg, 1, 64, &v))
				return cli_usage(usage, "--jobs must be 1 to 64, not '%s'", optarg);
			o.jobs = (int)v;
			break;
		}
		case 'I': {
			const char **n = realloc(includes, (ninc + 1) * sizeof *n);
			if (!n) {
				cli_error("out of memory");
				free(includes);
				return EXIT_FAIL;
			}
			includes = n;
			includes[ninc++] = optarg;
			break;
		}
		case 'W': o.no_wait = true; break;
		case 'S': {
			unsigned k, n;
			char tail;
			if (sscanf(optarg, "%u/%u%c", &k, &n, &tail) != 2 || !n || !k || k > n || n > 1000000) {
				free(includes);
				return cli_usage(usage, "--shard takes K/N with 1 <= K <= N");
			}
			o.shard_k = k;
			o.shard_n = n;
			break;
		}
		case 'M': o.merge = true; break;
		case 'J': json = true; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); free(includes); return EXIT_OK;
		default: free(includes); return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1) {
		free(includes);
		return cli_usage(usage, "expected one REPO");
	}
	o.repo = argv[optind];
	o.includes = includes;
	o.n_includes = ninc;
	cli_progress prog;
	cli_progress_init(&prog, "scan", cli_quiet);
	o.progress = cli_progress_cb;
	o.warn = cli_warn;
	o.ctx = &prog;
	idd_scan_stats st;
	idd_error err = {{0}, 0};
	int r = idd_scan(&o, &st, &err);
	cli_progress_done(&prog);
	free(includes);
	if (!st.committed) { /* nothing was indexed: no summary to give */
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_u64(&j, "images", st.images);
		cli_json_key_u64(&j, "scanned", st.scanned);
		cli_json_key_u64(&j, "unchanged", st.unchanged);
		cli_json_key_u64(&j, "renamed", st.renamed);
		cli_json_key_u64(&j, "removed", st.removed);
		cli_json_key_u64(&j, "failed", st.failed);
		cli_json_key_u64(&j, "repaired", st.repaired);
		cli_json_key_u64(&j, "bytes_hashed", st.bytes_hashed);
		cli_json_key_u64(&j, "blocks", st.blocks);
		cli_json_key_u64(&j, "zero_blocks", st.zero_blocks);
		if (st.unique_blocks == IDD_UNIQUE_UNKNOWN) /* a shard: the merge counts */
			cli_json_key_null(&j, "unique_blocks");
		else
			cli_json_key_u64(&j, "unique_blocks", st.unique_blocks);
		cli_json_end(&j);
	} else if (!cli_quiet) {
		char h[32];
		char rep[48] = "";
		if (st.repaired)
			snprintf(rep, sizeof rep, ", %llu repaired", (unsigned long long)st.repaired);
		printf("%llu images (%llu scanned, %llu unchanged, %llu renamed, %llu removed%s%s), %s hashed\n",
		       (unsigned long long)st.images, (unsigned long long)st.scanned,
		       (unsigned long long)st.unchanged, (unsigned long long)st.renamed,
		       (unsigned long long)st.removed, rep, st.failed ? ", some failed" : "",
		       cli_human(st.bytes_hashed, h));
		if (st.unique_blocks == IDD_UNIQUE_UNKNOWN)
			printf("%llu blocks: %llu zero (shard %u of %u: 'imgdedup scan --merge' counts the rest)\n",
			       (unsigned long long)st.blocks, (unsigned long long)st.zero_blocks, o.shard_k,
			       o.shard_n);
		else
			printf("%llu blocks: %llu zero, %llu distinct non-zero\n", (unsigned long long)st.blocks,
			       (unsigned long long)st.zero_blocks, (unsigned long long)st.unique_blocks);
	}
	rc = r ? EXIT_FAIL : EXIT_OK;
	if (r)
		cli_error("%s", err.msg);
	return rc;
}
