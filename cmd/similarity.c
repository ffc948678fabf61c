/* similarity.c - imgdedup similarity: the pairwise similarity matrix (csv,
 * json, svg heatmap) or, with --top K, each image's best cache seeds. */
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] =
	"imgdedup similarity [--index DIR] [--metric jaccard|containment] [--format csv|json|svg]\n"
	"       [--order id|cluster] [--top K] [--jobs N] [--no-cache] [-o FILE] [-q] REPO";

static void csv_field(FILE *f, const char *s)
{
	if (!strpbrk(s, ",\"\r\n")) {
		fputs(s, f);
		return;
	}
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', f);
		fputc(*s, f);
	}
	fputc('"', f);
}

/* v with 6 decimals, as printf("%.6f") writes it, without printf's cost
 * (a 10,000-image matrix has 10^8 values): the value times 10^6 is rounded
 * here unless it lies so close to a half that the product's own rounding
 * could decide, where printf itself is asked. */
static size_t put_fixed6(char *out, double v)
{
	double x = v * 1e6;
	if (!(v >= 0.0 && v <= 1.0) || fabs(x - floor(x) - 0.5) < 1e-6)
		return (size_t)snprintf(out, 16, "%.6f", v);
	unsigned long r = (unsigned long)(x + 0.5);
	out[0] = (char)('0' + r / 1000000);
	out[1] = '.';
	r %= 1000000;
	for (int i = 7; i >= 2; i--) {
		out[i] = (char)('0' + r % 10);
		r /= 10;
	}
	return 8;
}

static void write_csv(FILE *f, const idd_similarity *s, idd_metric m, const size_t *order)
{
	fputs("image", f);
	for (size_t c = 0; c < s->n; c++) {
		fputc(',', f);
		csv_field(f, s->ids[order[c]]);
	}
	fputc('\n', f);
	char buf[4096 + 32];
	for (size_t r = 0; r < s->n; r++) {
		csv_field(f, s->ids[order[r]]);
		size_t len = 0;
		for (size_t c = 0; c < s->n; c++) {
			buf[len++] = ',';
			len += put_fixed6(buf + len, idd_similarity_value(s, m, order[r], order[c]));
			if (len > 4096) {
				fwrite(buf, 1, len, f);
				len = 0;
			}
		}
		buf[len++] = '\n';
		fwrite(buf, 1, len, f);
	}
}

static const char *metric_name(idd_metric m)
{
	return m == IDD_METRIC_CONTAINMENT ? "containment" : "jaccard";
}

static void write_json(FILE *f, const idd_similarity *s, idd_metric m, const size_t *order,
                       bool clustered)
{
	cli_json j;
	cli_json_begin(&j, f);
	cli_json_key_str(&j, "metric", metric_name(m));
	cli_json_key_str(&j, "order", clustered ? "cluster" : "id");
	cli_json_key_bool(&j, "from_cache", s->from_cache);
	/* what this run computed: every image, none (cached), or the rows of
	 * the images added or changed since the cache was written */
	cli_json_key_u64(&j, "rows_computed", s->rows_computed);
	cli_json_key_u64(&j, "rows_dropped", s->rows_dropped);
	cli_json_key_open(&j, "images", '[');
	for (size_t i = 0; i < s->n; i++) {
		fputs(i ? "," : "", f);
		cli_json_str(f, s->ids[order[i]]);
	}
	cli_json_close(&j, ']');
	cli_json_key_open(&j, "matrix", '[');
	for (size_t r = 0; r < s->n; r++) {
		fputs(r ? ",[" : "[", f);
		for (size_t c = 0; c < s->n; c++)
			fprintf(f, "%s%.6f", c ? "," : "", idd_similarity_value(s, m, order[r], order[c]));
		fputc(']', f);
	}
	cli_json_close(&j, ']');
	cli_json_end(&j);
}

static void write_top(FILE *f, const idd_top_seeds *t, bool json)
{
	cli_json j;
	if (json) {
		cli_json_begin(&j, f);
		cli_json_key_u64(&j, "k", t->k);
		cli_json_key_open(&j, "top", '[');
	} else {
		fputs("image,rank,seed,containment,jaccard,shared_blocks\n", f);
	}
	for (size_t a = 0; a < t->n; a++) {
		if (json) {
			cli_json_key_open(&j, NULL, '{');
			cli_json_key_str(&j, "image", t->ids[a]);
			cli_json_key_open(&j, "seeds", '[');
		}
		for (size_t i = 0; i < t->count[a]; i++) {
			const idd_seed *sd = &t->seeds[a * t->k + i];
			if (json) {
				cli_json_key_open(&j, NULL, '{');
				cli_json_key_str(&j, "image", t->ids[sd->image]);
				cli_json_key_double(&j, "containment", sd->containment);
				cli_json_key_double(&j, "jaccard", sd->jaccard);
				cli_json_key_u64(&j, "shared_blocks", sd->shared);
				cli_json_close(&j, '}');
			} else {
				csv_field(f, t->ids[a]);
				fprintf(f, ",%zu,", i + 1);
				csv_field(f, t->ids[sd->image]);
				fprintf(f, ",%.6f,%.6f,%llu\n", sd->containment, sd->jaccard,
				        (unsigned long long)sd->shared);
			}
		}
		if (json) {
			cli_json_close(&j, ']');
			cli_json_close(&j, '}');
		}
	}
	if (json) {
		cli_json_close(&j, ']');
		cli_json_end(&j);
	}
}

/* --top: seeds without the matrix (lib/index/simtop.c) */
static int run_top(idd_similarity_opts *o, size_t k, bool json, const char *out)
{
	idd_top_seeds *t = NULL;
	idd_error err = {{0}, 0};
	cli_progress prog;
	cli_progress_init(&prog, "similarity", cli_quiet);
	o->progress = cli_progress_cb;
	o->warn = cli_warn;
	o->ctx = &prog;
	int r = idd_similarity_top_compute(o, k, &t, &err);
	cli_progress_done(&prog);
	if (r) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	idd_outfile out_file = {.f = stdout};
	if (out && idd_outfile_open(&out_file, out, &err)) {
		cli_error("%s", err.msg);
		idd_top_seeds_free(t);
		return EXIT_FAIL;
	}
	write_top(out_file.f, t, json);
	int rc = EXIT_OK;
	if (out && idd_outfile_commit(&out_file, &err)) {
		cli_error("%s", err.msg);
		rc = EXIT_FAIL;
	}
	idd_top_seeds_free(t);
	return rc;
}

int cmd_similarity(int argc, char **argv)
{
	static const struct option opts[] = {
		{"index", required_argument, 0, 'i'}, {"metric", required_argument, 0, 'm'},
		{"format", required_argument, 0, 'f'}, {"order", required_argument, 0, 'O'},
		{"top", required_argument, 0, 't'},   {"jobs", required_argument, 0, 'j'},
		{"no-cache", no_argument, 0, 'N'},    {"output", required_argument, 0, 'o'},
		{"quiet", no_argument, 0, 'q'},       {"help", no_argument, 0, 'h'},
		{0, 0, 0, 0}};
	idd_similarity_opts o = {0};
	idd_metric metric = IDD_METRIC_JACCARD;
	const char *format = "csv", *out = NULL;
	bool cluster = false, order_given = false;
	long topk = 0;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:o:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'i': o.index_dir = optarg; break;
		case 'm':
			if (!strcmp(optarg, "jaccard"))
				metric = IDD_METRIC_JACCARD;
			else if (!strcmp(optarg, "containment"))
				metric = IDD_METRIC_CONTAINMENT;
			else
				return cli_usage(usage, "--metric must be jaccard or containment, not '%s'", optarg);
			break;
		case 'f':
			if (strcmp(optarg, "csv") && strcmp(optarg, "json") && strcmp(optarg, "svg"))
				return cli_usage(usage, "--format must be csv, json or svg, not '%s'", optarg);
			format = optarg;
			break;
		case 'O':
			if (strcmp(optarg, "id") && strcmp(optarg, "cluster"))
				return cli_usage(usage, "--order must be id or cluster, not '%s'", optarg);
			cluster = !strcmp(optarg, "cluster");
			order_given = true;
			break;
		case 't':
			if (!cli_parse_int(optarg, 1, 1000000, &topk))
				return cli_usage(usage, "--top must be a positive count, not '%s'", optarg);
			break;
		case 'j': {
			long v;
			if (!cli_parse_int(optarg, 1, 64, &v))
				return cli_usage(usage, "--jobs must be 1 to 64, not '%s'", optarg);
			o.jobs = (int)v;
			break;
		}
		case 'N': o.no_cache = true; break;
		case 'o': out = optarg; break;
		case 'q': cli_quiet = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 1)
		return cli_usage(usage, "expected one REPO");
	bool svg = !strcmp(format, "svg");
	if (topk && svg)
		return cli_usage(usage, "--top lists seeds as csv or json, not svg");
	if (topk && cluster)
		return cli_usage(usage, "--top lists images by id: --order cluster needs the whole matrix");
	if (svg && !order_given)
		cluster = true; /* the heatmap shows families as blocks */
	o.repo = argv[optind];
	if (topk)
		return run_top(&o, (size_t)topk, !strcmp(format, "json"), out);
	cli_progress prog;
	cli_progress_init(&prog, "similarity", cli_quiet);
	o.progress = cli_progress_cb;
	o.warn = cli_warn;
	o.ctx = &prog;
	idd_similarity *s = NULL;
	idd_error err = {{0}, 0};
	int r = idd_similarity_compute(&o, &s, &err);
	cli_progress_done(&prog);
	if (r) {
		cli_error("%s", err.msg);
		return EXIT_FAIL;
	}
	size_t *order = calloc(s->n + 1, sizeof *order);
	if (!order) {
		idd_similarity_free(s);
		cli_error("out of memory");
		return EXIT_FAIL;
	}
	for (size_t i = 0; i < s->n; i++)
		order[i] = i;
	if (cluster && idd_similarity_cluster_order(s, metric, order, &err)) {
		cli_error("%s", err.msg);
		free(order);
		idd_similarity_free(s);
		return EXIT_FAIL;
	}
	/* -o FILE: through an exclusive temporary and a rename (a device or a
	 * FIFO directly, a link through to its target); see base/outfile.h */
	idd_outfile out_file = {.f = stdout};
	if (out && idd_outfile_open(&out_file, out, &err)) {
		cli_error("%s", err.msg);
		free(order);
		idd_similarity_free(s);
		return EXIT_FAIL;
	}
	FILE *f = out_file.f;
	int rc = EXIT_OK;
	if (svg) {
		size_t len;
		char *doc = idd_similarity_svg(s, metric, order, &len, &err);
		if (!doc) {
			cli_error("%s", err.msg);
			rc = EXIT_FAIL;
		} else {
			fwrite(doc, 1, len, f);
			free(doc);
		}
	} else if (!strcmp(format, "json")) {
		write_json(f, s, metric, order, cluster);
	} else {
		write_csv(f, s, metric, order);
	}
	/* stdout itself is flushed and checked once, at exit (main.c) */
	if (out && rc != EXIT_OK) {
		idd_outfile_abort(&out_file);
	} else if (out && idd_outfile_commit(&out_file, &err)) {
		cli_error("%s", err.msg);
		rc = EXIT_FAIL;
	}
	free(order);
	idd_similarity_free(s);
	return rc;
}
