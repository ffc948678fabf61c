/* info.c - imgdedup info: what the index knows about one image. */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char usage[] = "imgdedup info [--index DIR] [--json] [--blocks] REPO IMAGE";

/* One line per block, zero blocks as 64 zeros; the list is held sparsely,
 * so a thin image costs its data in memory (the output is its size). */
static int print_blocks(idd_catalog *cat, char *index_dir, const idd_image_info *im)
{
	idd_error err;
	idd_blocklist *bl;
	int rc = EXIT_OK;
	if (idd_blocklist_open_id(index_dir, im->id, &bl, &err)) {
		cli_error("%s", err.msg);
		rc = EXIT_FAIL;
	} else {
		char hex[2 * IDD_DIGEST_SIZE + 1], zero[2 * IDD_DIGEST_SIZE + 1];
		memset(zero, '0', 2 * IDD_DIGEST_SIZE);
		zero[2 * IDD_DIGEST_SIZE] = 0;
		uint64_t b = 0;
		for (size_t r = 0; r <= bl->nruns; r++) {
			uint64_t next = r < bl->nruns ? bl->runs[r].block : bl->nblocks;
			for (; b < next && !((b & 0xffff) == 0 && ferror(stdout)); b++)
				puts(zero);
			if (r == bl->nruns)
				break;
			for (uint64_t k = 0; k < bl->runs[r].count; k++, b++) {
				idd_digest_hex(&bl->digests[bl->runs[r].first + k], hex);
				puts(hex);
			}
			if (ferror(stdout))
				break; /* reported at exit */
		}
		idd_blocklist_free(bl);
	}
	idd_catalog_free(cat);
	free(index_dir);
	return rc;
}

/* The image in the pack (pack.h): one JSON object, or one text line.
 * Nothing when the index has no pack. */
static void print_pack(const char *index_dir, const idd_image_info *im, cli_json *j)
{
	idd_pack_image_summary ps;
	idd_error err;
	if (idd_pack_image_summary_get(index_dir, im, &ps, &err) != IDD_OK) {
		if (!j)
			printf("pack:                damaged (%s)\n", err.msg);
		return;
	}
	if (!ps.has_pack)
		return;
	if (j) {
		cli_json_key_open(j, "pack", '{');
		cli_json_key_bool(j, "current", ps.has_view);
		cli_json_key_u64(j, "blocks", ps.blocks);
		cli_json_key_u64(j, "frames", ps.frames);
		cli_json_key_u64(j, "frame_bytes", ps.frame_bytes);
		cli_json_close(j, '}');
	} else if (!ps.has_view) {
		printf("pack:                not packed yet (run 'imgdedup pack')\n");
	} else {
		char h[32];
		printf("pack:                %llu of %llu distinct blocks, in %llu frames (%s compressed)\n",
		       (unsigned long long)ps.blocks, (unsigned long long)ps.distinct,
		       (unsigned long long)ps.frames, cli_human(ps.frame_bytes, h));
	}
}

int cmd_info(int argc, char **argv)
{
	static const struct option opts[] = {{"index", required_argument, 0, 'i'},
	                                     {"json", no_argument, 0, 'J'},
	                                     {"blocks", no_argument, 0, 'B'},
	                                     {"help", no_argument, 0, 'h'},
	                                     {0, 0, 0, 0}};
	const char *index_opt = NULL;
	bool json = false, blocks = false;
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "i:h", opts, NULL)) != -1) {
		switch (c) {
		case 'i': index_opt = optarg; break;
		case 'J': json = true; break;
		case 'B': blocks = true; break;
		case 'h': printf("usage: %s\n", usage); return EXIT_OK;
		default: return cli_usage(usage, "bad option");
		}
	}
	if (optind != argc - 2)
		return cli_usage(usage, "expected REPO and IMAGE");
	const char *id = argv[optind + 1];
	idd_error err;
	char *index_dir;
	idd_catalog *cat;
	if (!cli_open_catalog(argv[optind], index_opt, &index_dir, &cat))
		return EXIT_FAIL;
	const idd_image_info *im = idd_catalog_find(cat, id);
	if (!im) {
		cli_error("%s: no image '%s' in the index (see 'imgdedup ls')", index_dir, id);
		idd_catalog_free(cat);
		free(index_dir);
		return EXIT_FAIL;
	}
	if (blocks) /* one line per block: its digest, zeros for a zero block */
		return print_blocks(cat, index_dir, im);
	char when[64] = "?";
	time_t t = (time_t)im->scanned_at;
	struct tm tm;
	if (gmtime_r(&t, &tm))
		strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
	char key[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(&im->list_key, key);
	uint64_t nonzero = im->nblocks - im->zero_blocks;
	/* The map summary and the best cache seeds are extras: an index without
	 * maps or with one image still gets its basic answer. */
	idd_image_summary sum;
	bool have_sum = idd_image_summary_get(index_dir, im->id, &sum, &err) == IDD_OK;
	idd_similar *sim = NULL;
	size_t nsim = 0;
	if (cat->count > 1 && idd_image_top_similar(index_dir, im->id, 3, &sim, &nsim, &err) != IDD_OK) {
		sim = NULL;
		nsim = 0;
	}
	if (json) {
		cli_json j;
		cli_json_begin(&j, stdout);
		cli_json_key_str(&j, "id", im->id);
		cli_json_key_str(&j, "format", im->format);
		cli_json_key_str(&j, "container", im->container);
		cli_json_key_u64(&j, "size", im->virtual_size);
		cli_json_key_u64(&j, "file_size", im->file_size);
		cli_json_key_u64(&j, "block_size", cat->block_size);
		cli_json_key_u64(&j, "blocks", im->nblocks);
		cli_json_key_u64(&j, "zero_blocks", im->zero_blocks);
		cli_json_key_u64(&j, "distinct_blocks", im->distinct_blocks);
		cli_json_key_u64(&j, "internal_duplicates", nonzero - im->distinct_blocks);
		cli_json_key_str(&j, "scanned_at", when);
		cli_json_key_str(&j, "block_list", key);
		if (have_sum) {
			cli_json_key_bool(&j, "has_map", sum.has_map);
			cli_json_key_u64(&j, "map_bytes", sum.map_bytes);
			if (sum.has_blocktable)
				cli_json_key_u64(&j, "exclusive_blocks", sum.exclusive_blocks);
		}
		print_pack(index_dir, im, &j);
		cli_json_key_open(&j, "shares_most_with", '[');
		for (size_t i = 0; i < nsim; i++) {
			cli_json_key_open(&j, NULL, '{');
			cli_json_key_str(&j, "id", sim[i].id);
			cli_json_key_double(&j, "containment", sim[i].containment);
			cli_json_key_double(&j, "jaccard", sim[i].jaccard);
			cli_json_key_u64(&j, "shared_blocks", sim[i].shared);
			cli_json_close(&j, '}');
		}
		cli_json_close(&j, ']');
		cli_json_end(&j);
	} else {
		char h1[32], h2[32];
		char *shown = idd_str_escape(im->id, NULL);
		printf("image:               %s\n", shown ? shown : "?");
		free(shown);
		printf("format:              %s%s%s\n", im->format, im->container[0] ? " inside " : "",
		       im->container);
		printf("virtual size:        %s (%llu bytes)\n", cli_human(im->virtual_size, h1),
		       (unsigned long long)im->virtual_size);
		printf("file size:           %s\n", cli_human(im->file_size, h2));
		printf("block size:          %u\n", cat->block_size);
		printf("blocks:              %llu\n", (unsigned long long)im->nblocks);
		printf("zero blocks:         %llu\n", (unsigned long long)im->zero_blocks);
		printf("distinct blocks:     %llu (non-zero)\n", (unsigned long long)im->distinct_blocks);
		printf("internal duplicates: %llu\n", (unsigned long long)(nonzero - im->distinct_blocks));
		printf("scanned:             %s\n", when);
		if (have_sum && sum.has_map) {
			char h3[32];
			printf("block map:           %s\n", cli_human(sum.map_bytes, h3));
		} else {
			printf("block map:           none (run 'imgdedup map')\n");
		}
		if (have_sum && sum.has_blocktable)
			printf("exclusive blocks:    %llu (content no other image holds)\n",
			       (unsigned long long)sum.exclusive_blocks);
		print_pack(index_dir, im, NULL);
		if (nsim) {
			printf("shares most with:    (containment: share of this image's blocks the other holds)\n");
			for (size_t i = 0; i < nsim; i++) {
				char *sid = idd_str_escape(sim[i].id, NULL);
				printf("  %6.2f%%  %s  (jaccard %.4f, %llu blocks in common)\n",
				       sim[i].containment * 100, sid ? sid : "?", sim[i].jaccard,
				       (unsigned long long)sim[i].shared);
				free(sid);
			}
		}
	}
	idd_similar_free(sim, nsim);
	idd_catalog_free(cat);
	free(index_dir);
	return EXIT_OK;
}
