/* sim_recall.c - how good `imgdedup similarity --top K` is, on a random
 * sample of images: their exact rows against every image (one pass over
 * all block lists, lib/index/simcount.c's sim_rows), the exact top K of
 * each, compared with the csv the command wrote.
 *
 * usage: sim_recall INDEX_DIR K TOP_CSV SAMPLE [SEED]
 *
 * Prints the recall (reported seeds that belong to the exact top K, over
 * K per sampled image; a seed tied with the K-th on containment and jaccard
 * counts as belonging) and checks that every reported value of a sampled
 * image is the exact one; exits 1 when one is not.  Jaccard takes each
 * image's distinct count from the catalog (scan's count of distinct
 * digests). */
#include "index/catalog.h"
#include "index/simcount.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct exact {
	size_t b;
	double c, j;
} exact;

static const idd_catalog *g_cat;

static int cmp_exact(const void *x, const void *y)
{
	const exact *a = x, *b = y;
	if (a->c != b->c)
		return a->c > b->c ? -1 : 1;
	if (a->j != b->j)
		return a->j > b->j ? -1 : 1;
	return strcmp(g_cat->images[a->b].id, g_cat->images[b->b].id);
}

static size_t find(const idd_catalog *cat, const char *id)
{
	const idd_image_info *im = idd_catalog_find(cat, id);
	return im ? (size_t)(im - cat->images) : SIZE_MAX;
}

int main(int argc, char **argv)
{
	if (argc < 5) {
		fprintf(stderr, "usage: sim_recall INDEX_DIR K TOP_CSV SAMPLE [SEED]\n");
		return 2;
	}
	const char *index_dir = argv[1];
	size_t k = strtoull(argv[2], NULL, 10), want = strtoull(argv[4], NULL, 10);
	uint64_t seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
	idd_catalog *cat;
	idd_error err;
	if (idd_catalog_load(index_dir, &cat, &err)) {
		fprintf(stderr, "sim_recall: %s\n", err.msg);
		return 1;
	}
	g_cat = cat;
	size_t n = cat->count;
	if (want > n)
		want = n;
	/* a sample without repeats: a partial Fisher-Yates shuffle */
	size_t *perm = malloc(n * sizeof *perm), *sel = malloc((want + 1) * sizeof *sel);
	size_t *slot = malloc(n * sizeof *slot);
	for (size_t i = 0; i < n; i++) {
		perm[i] = i;
		slot[i] = SIZE_MAX;
	}
	uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
	for (size_t i = 0; i < want; i++) {
		s = sim_mix64(s + i);
		size_t r = i + (size_t)(s % (n - i)), t = perm[i];
		perm[i] = perm[r];
		perm[r] = t;
		sel[i] = perm[i];
	}
	/* sorted, so that each sampled image's position is easy to find */
	for (size_t i = 1; i < want; i++)
		for (size_t x = i; x && sel[x - 1] > sel[x]; x--) {
			size_t t = sel[x];
			sel[x] = sel[x - 1];
			sel[x - 1] = t;
		}
	for (size_t i = 0; i < want; i++)
		slot[sel[i]] = i;
	uint64_t *sh = calloc(want * n + 1, 8), *cab = calloc(want * n + 1, 8), *cba = calloc(want * n + 1, 8);
	if (sim_rows(index_dir, cat, sel, want, 2, sh, cab, cba, &err)) {
		fprintf(stderr, "sim_recall: %s\n", err.msg);
		return 1;
	}
	/* exact top k of each sampled image; the k-th's values decide ties */
	exact *row = malloc(n * sizeof *row), *kth = malloc((want + 1) * sizeof *kth);
	for (size_t i = 0; i < want; i++) {
		size_t a = sel[i], m = 0;
		uint64_t nz = cab[i * n + a], da = sh[i * n + a];
		for (size_t b = 0; b < n; b++) {
			if (b == a)
				continue;
			uint64_t inter = sh[i * n + b];
			uint64_t uni = da + cat->images[b].distinct_blocks - inter;
			row[m++] = (exact){b, nz ? (double)cab[i * n + b] / (double)nz : 0.0,
			                   uni ? (double)inter / (double)uni : 0.0};
		}
		qsort(row, m, sizeof *row, cmp_exact);
		kth[i] = m ? row[IDD_MIN(k, m) - 1] : (exact){0, 0, 0};
	}
	FILE *f = fopen(argv[3], "r");
	if (!f) {
		perror(argv[3]);
		return 1;
	}
	char line[8192];
	size_t *hits = calloc(want + 1, sizeof *hits), wrong = 0, reported = 0, lines = 0;
	if (!fgets(line, sizeof line, f)) {
		fprintf(stderr, "sim_recall: %s: empty\n", argv[3]);
		return 1;
	}
	while (fgets(line, sizeof line, f)) {
		char *img = strtok(line, ","), *rank = strtok(NULL, ","), *sd = strtok(NULL, ","),
		     *cs = strtok(NULL, ","), *js = strtok(NULL, ","), *shs = strtok(NULL, ",\n");
		if (!shs) {
			fprintf(stderr, "sim_recall: %s: bad line\n", argv[3]);
			return 1;
		}
		(void)rank;
		lines++;
		size_t a = find(cat, img), b = find(cat, sd);
		if (a == SIZE_MAX || b == SIZE_MAX || slot[a] == SIZE_MAX)
			continue;
		size_t i = slot[a];
		reported++;
		uint64_t nz = cab[i * n + a], da = sh[i * n + a], inter = sh[i * n + b];
		uint64_t uni = da + cat->images[b].distinct_blocks - inter;
		double c = nz ? (double)cab[i * n + b] / (double)nz : 0.0;
		double j = uni ? (double)inter / (double)uni : 0.0;
		char want_c[32], want_j[32];
		snprintf(want_c, sizeof want_c, "%.6f", c);
		snprintf(want_j, sizeof want_j, "%.6f", j);
		if (strcmp(want_c, cs) || strcmp(want_j, js) || strtoull(shs, NULL, 10) != inter) {
			if (wrong++ < 5)
				fprintf(stderr, "sim_recall: %s -> %s: reported %s %s %s, exact %s %s %llu\n", img, sd, cs,
				        js, shs, want_c, want_j, (unsigned long long)inter);
			continue;
		}
		if (c > kth[i].c || (c == kth[i].c && j >= kth[i].j))
			hits[i]++;
	}
	fclose(f);
	size_t got = 0, total = 0;
	for (size_t i = 0; i < want; i++) {
		size_t kk = IDD_MIN(k, n - 1);
		got += IDD_MIN(hits[i], kk);
		total += kk;
	}
	printf("recall %.4f (%zu of %zu seeds of %zu sampled images in their exact top %zu); "
	       "%zu reported values checked, %zu wrong; %zu lines\n",
	       total ? (double)got / (double)total : 1.0, got, total, want, k, reported, wrong, lines);
	free(perm);
	free(sel);
	free(slot);
	free(sh);
	free(cab);
	free(cba);
	free(row);
	free(kth);
	free(hits);
	idd_catalog_free(cat);
	return wrong ? 1 : 0;
}
