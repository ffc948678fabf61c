/* deploy.c - imgdedup deploy: materialise an image on this node from its
 * block map, the node cache and the repository. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char usage[] =
	"imgdedup deploy --from SOURCE --cache DIR [-o OUT] [--index DIR|URL] [--seed FILE]... "
	"[--peer URL]... [--no-pack] [--connections N] [--jobs N] [--timeout SECONDS] [--force] [--json] [-q] IMAGE";

struct prog {
	bool enabled;
	double last;
	bool drawn;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The bar shows where the bytes came from: local copies, fetches, holes. */
static void on_progress(void *ctx, const idd_deploy_stats *st)
{
	struct prog *p = ctx;
	if (!p->enabled)
		return;
	double t = now_s();
	if (st->bytes_done < st->bytes_total && t - p->last < 0.1)
		return;
	p->last = t;
	double frac = st->bytes_total ? (double)st->bytes_done / (double)st->bytes_total : 1;
	if (frac > 1)
		frac = 1;
	char bar[31];
	int fill = (int)(frac * 30);
	for (int i = 0; i < 30; i++)
		bar[i] = i < fill ? '#' : '.';
	bar[30] = 0;
	char a[32], b[32], c[32];
	fprintf(stderr, "\rdeploy [%s] %5.1f%%  local %s  fetched %s  zero %s   ", bar, frac * 100,
	        cli_human(st->bytes_from_cache, a), cli_human(st->bytes_fetched, b),
	        cli_human(st->bytes_zero, c));
	fflush(stderr);
	p->drawn = true;
}

static void on_warn(void *ctx, const char *msg)
{
	struct prog *p = ctx;
	if (p && p->drawn) {
		fputs("\r\033[K", stderr);
		p->drawn = false;
	}
	cli_warn(NULL, msg);
}

int cmd_deploy(int argc, char **argv)
{
	static const struct option opts[] = {
		{"from", required_argument, 0, 'f'},  {"cache", required_argument, 0, 'c'},
		{"output", required_argument, 0, 'o'}, {"index", required_argument, 0, 'i'},
		{"seed", required_argument, 0, 's'},  {"connections", required_argument, 0, 'n'},
		{"force", no_argument, 0, 'F'},       {"json", no_argument, 0, 'J'},
		{"quiet", no_argument, 0, 'q'},       {"help", no_argument, 0, 'h'},
		{"jobs", required_argument, 0, 'j'}, {"peer", required_argument, 0, 'P'},
		{"no-pack", no_argument, 0, 'K'},
		{"timeout", required_argument, 0, 'T'},
		{0, 0, 0, 0}};
	idd_deploy_opts o = {0};
	const char **seeds = NULL;
	size_t nseeds = 0;
	const char *peers[64];
	size_t npeers = 0;
	bool json = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "o:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'f': o.node.source = optarg; break;
		case 'c': o.node.cache_dir = optarg; break;
		case 'o': o.out = optarg; break;
		case 'i': o.node.index = optarg; break;
		case 's': {
			const char **n = realloc(seeds, (nseeds + 1) * sizeof *n);
			if (!n) {
				free(seeds);
				cli_error("out of memory");
				return EXIT_FAIL;
			}
			seeds = n;
			seeds[nseeds++] = optarg;
			break;
		}
		case 'n': {
			long v;
			if (!cli_parse_int(optarg, 1, 64, &v)) {
				free(seeds);
				return cli_usage(usage, "--connections must be 1 to 64, not '%s'", optarg);
			}
			o.node.connections = (int)v;
			break;
		}
		case 'j': {
			long v;
			if (!cli_parse_int(optarg, 1, 64, &v)) {
				free(seeds);
				return cli_usage(usage, "--jobs must be 1 to 64, not '%s'", optarg);
			}
			o.jobs = (int)v;
			break;
		}
		case 'P':
			if (npeers == 64) {
				free(seeds);
				return cli_usage(usage, "at most 64 --peer");
			}
			peers[npeers++] = optarg;
			break;
		case 'K': o.node.no_pack = true; break;
		case 'T': {
			long v;
			if (!cli_parse_int(optarg, 1, 3600, &v)) {
				free(seeds);
				return cli_usage(usage, "--timeout must be 1 to 3600 seconds, not '%s'", optarg);
			}
			o.node.timeout_s = v;
			break;
		}
		case 'F': o.force = true; break;
		case 'J': json = true; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); free(seeds); return EXIT_OK;
		default: free(seeds); return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1) {
		free(seeds);
		return cli_usage(usage, "expected one IMAGE");
	}
	if (!o.node.source || !o.node.cache_dir) {
		free(seeds);
		return cli_usage(usage, "--from SOURCE and --cache DIR are required");
	}
	o.image = argv[optind];
	o.seeds = seeds;
	o.n_seeds = nseeds;
	o.node.peers = peers;
	o.node.n_peers = npeers;
	struct prog p = {.enabled = !cli_quiet && isatty(STDERR_FILENO)};
	o.progress = on_progress;
	o.node.warn = on_warn;
	o.node.ctx = &p;
	idd_deploy_stats st;
	idd_error err = {{0}, 0};
	double t0 = now_s();
	int r = idd_deploy(&o, &st, &err);
	double secs = now_s() - t0;
	free(seeds);
	if (p.drawn)
		fputs("\r\033[K", stderr);
	if (r) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_str(&j, "image", o.image);
		cli_json_key_str(&j, "output", st.out_path);
		cli_json_key_u64(&j, "bytes_total", st.bytes_total);
		cli_json_key_u64(&j, "bytes_zero", st.bytes_zero);
		cli_json_key_u64(&j, "bytes_from_cache", st.bytes_from_cache);
		cli_json_key_u64(&j, "bytes_fetched", st.bytes_fetched);
		cli_json_key_u64(&j, "requests", st.requests);
		cli_json_key_u64(&j, "bytes_index", st.bytes_index);
		cli_json_key_u64(&j, "bytes_resumed", st.bytes_resumed);
		cli_json_key_u64(&j, "bytes_seed", st.bytes_seed);
		cli_json_key_u64(&j, "bytes_reflinked", st.bytes_reflinked);
		cli_json_key_u64(&j, "cache_damaged", st.cache_damaged);
		cli_json_key_u64(&j, "seeds_mapped", st.seeds_mapped);
		cli_json_key_u64(&j, "retries", st.retries);
		cli_json_key_u64(&j, "bytes_from_peers", st.bytes_from_peers);
		cli_json_key_double(&j, "seconds", secs);
		cli_json_end(&j);
	} else if (!cli_quiet) {
		char a[32], b[32], c2[32], d[32];
		uint64_t data = st.bytes_total - st.bytes_zero;
		double saved = data ? 100.0 * (1.0 - (double)st.bytes_fetched / (double)data) : 100.0;
		printf("%s -> %s: %s, %s zero, %s from local data, %s fetched in %llu requests "
		       "(%.1f%% of the data not transferred) in %.2f s\n",
		       o.image, st.out_path, cli_human(st.bytes_total, a), cli_human(st.bytes_zero, b),
		       cli_human(st.bytes_from_cache, c2), cli_human(st.bytes_fetched, d),
		       (unsigned long long)st.requests, saved, secs);
	}
	return EXIT_OK;
}
