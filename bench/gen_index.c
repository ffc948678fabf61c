/* gen_index.c - write a synthetic imgdedup index (catalog + block lists)
 * directly, so the similarity benchmark needs no terabyte of images.
 *
 * usage: gen_index INDEX_DIR IMAGES BLOCKS_PER_IMAGE [FAMILY_SIZE [SEED]]
 *
 * Model of a repository (docs/similarity.md):
 *  - every image: 10% zero blocks and 5% blocks common to all images
 *    (same OS files), at the same offsets;
 *  - images come in families of FAMILY_SIZE (default 10); the first member
 *    derives from the family's base, each further member from a random
 *    earlier member, replacing 10-40% of its blocks (so it shares 60-90%)
 *    in 8-32 contiguous runs with content of its own;
 *  - 1% of each image's blocks repeat content from elsewhere in the image.
 * Digests are pseudo-random 32-byte values (no hashing needed).
 *
 * With GEN_INDEX_WITHOUT=K in the environment, INDEX_DIR/without-K/catalog
 * is also written: the same catalog less its last K images (their lists
 * stay), so a benchmark can time "K images added" and "K removed". */
#include "index/indexfile.h"
#include "index/catalog.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static void digest_of(uint64_t content, idd_digest *d)
{
	if (!content) {
		memset(d, 0, sizeof *d);
		return;
	}
	uint64_t s = content * 0xd1b54a32d192ed03ULL;
	for (int i = 0; i < 4; i++) {
		uint64_t v = splitmix(&s);
		memcpy(d->b + 8 * i, &v, 8);
	}
}

static const char *index_dir;
static uint64_t nimages, nblocks, family, seed;
static idd_image_info *infos;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t next_family;
static int failed;

/* content ids: kind in the top byte so kinds never collide */
#define CID(kind, a, k) (((uint64_t)(kind) << 56) | ((uint64_t)(a) << 28) | (uint64_t)(k))

static void *worker(void *arg)
{
	(void)arg;
	uint64_t nfam = (nimages + family - 1) / family;
	uint64_t **members = calloc(family, sizeof *members);
	idd_digest *d = malloc(nblocks * sizeof *d);
	for (uint64_t m = 0; m < family; m++)
		members[m] = malloc(nblocks * sizeof **members);
	for (;;) {
		pthread_mutex_lock(&mu);
		uint64_t f = next_family++;
		pthread_mutex_unlock(&mu);
		if (f >= nfam || failed)
			break;
		uint64_t rs = seed ^ (f * 0x9e3779b97f4a7c15ULL);
		for (uint64_t m = 0; m < family && f * family + m < nimages; m++) {
			uint64_t img = f * family + m, *c = members[m];
			if (m == 0) {
				for (uint64_t k = 0; k < nblocks; k++)
					c[k] = CID(1, f, k); /* family base */
			} else {
				memcpy(c, members[splitmix(&rs) % m], nblocks * sizeof *c);
			}
			/* replace 10-40% in 8-32 runs */
			uint64_t replace = nblocks * (10 + splitmix(&rs) % 31) / 100;
			uint64_t runs = 8 + splitmix(&rs) % 25, per = replace / runs + 1;
			for (uint64_t r = 0; r < runs; r++) {
				uint64_t start = splitmix(&rs) % nblocks;
				for (uint64_t k = start; k < start + per && k < nblocks; k++)
					c[k] = CID(2, img, k);
			}
			for (uint64_t k = 0; k < nblocks; k++) {
				uint64_t pos = k * 100 / nblocks;
				if (pos < 10)
					c[k] = 0;             /* zero blocks */
				else if (pos < 15)
					c[k] = CID(3, 0, k);  /* in every image */
			}
			for (uint64_t r = 0; r < nblocks / 100; r++) /* internal duplicates */
				c[splitmix(&rs) % nblocks] = c[splitmix(&rs) % nblocks];
			uint64_t zero = 0;
			for (uint64_t k = 0; k < nblocks; k++) {
				digest_of(c[k], &d[k]);
				zero += c[k] == 0;
			}
			/* distinct count: sort a copy of the content ids */
			uint64_t *tmp = malloc(nblocks * sizeof *tmp), distinct = 0;
			memcpy(tmp, c, nblocks * sizeof *tmp);
			int cmp(const void *a, const void *b);
			qsort(tmp, nblocks, sizeof *tmp, cmp);
			for (uint64_t k = 0; k < nblocks; k++)
				distinct += tmp[k] && (k == 0 || tmp[k] != tmp[k - 1]);
			free(tmp);
			idd_image_info *im = &infos[img];
			char id[64];
			snprintf(id, sizeof id, "fam%05llu/img%06llu.raw", (unsigned long long)f,
			         (unsigned long long)img);
			im->id = strdup(id);
			im->file = strdup(id);
			im->member = strdup("");
			im->format = strdup("raw");
			im->container = strdup("");
			im->virtual_size = nblocks * 4096;
			im->file_size = im->virtual_size;
			im->nblocks = nblocks;
			im->zero_blocks = zero;
			im->distinct_blocks = distinct;
			idd_error err;
			if (idd_blocklist_save(index_dir, 4096, d, nblocks, &im->list_key, &err)) {
				fprintf(stderr, "gen_index: %s\n", err.msg);
				failed = 1;
				break;
			}
		}
	}
	for (uint64_t m = 0; m < family; m++)
		free(members[m]);
	free(members);
	free(d);
	return NULL;
}

int cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int cmp_info(const void *a, const void *b)
{
	return strcmp(((const idd_image_info *)a)->id, ((const idd_image_info *)b)->id);
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: gen_index INDEX_DIR IMAGES BLOCKS_PER_IMAGE [FAMILY_SIZE [SEED]]\n");
		return 2;
	}
	index_dir = argv[1];
	nimages = strtoull(argv[2], NULL, 10);
	nblocks = strtoull(argv[3], NULL, 10);
	family = argc > 4 ? strtoull(argv[4], NULL, 10) : 10;
	seed = argc > 5 ? strtoull(argv[5], NULL, 10) : 1;
	if (!nimages || nblocks < 100 || !family) {
		fprintf(stderr, "gen_index: need IMAGES >= 1, BLOCKS >= 100, FAMILY_SIZE >= 1\n");
		return 2;
	}
	idd_error err;
	if (idd_mkdir_p(index_dir, &err)) {
		fprintf(stderr, "gen_index: %s\n", err.msg);
		return 1;
	}
	infos = calloc(nimages, sizeof *infos);
	pthread_t th[2];
	for (int t = 0; t < 2; t++)
		pthread_create(&th[t], NULL, worker, NULL);
	for (int t = 0; t < 2; t++)
		pthread_join(th[t], NULL);
	if (failed)
		return 1;
	qsort(infos, nimages, sizeof *infos, cmp_info);
	idd_catalog cat = {.block_size = 4096, .generation = 1, .count = nimages, .images = infos};
	for (uint64_t i = 0; i < nimages; i++)
		cat.unique_blocks += infos[i].distinct_blocks; /* an upper bound; scan stores the exact value */
	if (idd_catalog_save(index_dir, &cat, &err)) {
		fprintf(stderr, "gen_index: %s\n", err.msg);
		return 1;
	}
	const char *without = getenv("GEN_INDEX_WITHOUT");
	uint64_t k = without ? strtoull(without, NULL, 10) : 0;
	if (k && k < nimages) {
		char sub[4096];
		snprintf(sub, sizeof sub, "%s/without-%llu", index_dir, (unsigned long long)k);
		idd_catalog less = cat;
		less.count = nimages - k;
		less.unique_blocks = 0;
		for (uint64_t i = 0; i < less.count; i++)
			less.unique_blocks += infos[i].distinct_blocks;
		if (idd_mkdir_p(sub, &err) || idd_catalog_save(sub, &less, &err)) {
			fprintf(stderr, "gen_index: %s\n", err.msg);
			return 1;
		}
	}
	printf("wrote %llu images x %llu blocks to %s\n", (unsigned long long)nimages,
	       (unsigned long long)nblocks, index_dir);
	return 0;
}
