/* pack_layouts.c - the prototype that chose the pack's layout
 * (docs/formats.md, "Layout"): for an indexed repository, the compressed
 * bytes of the frames a deploy of TARGET onto a node holding CACHED needs,
 * under one layout: frames of G blocks, zstd level L, blocks in signature
 * order ("sig": grouped by the set of images holding them, then by image
 * and position) or in image order ("image"), optionally with a dictionary
 * trained on every 8th block (DICT bytes, 0: none).  With "all", every
 * frame is compressed and the whole pack's size reported too.  Holds every
 * distinct block in memory (513 MB for the corpus).
 *   cc -O2 -std=c11 -D_GNU_SOURCE -Ilib bench/pack_layouts.c build/libimgdedup.a \
 *      $(pkg-config --libs libcrypto libzstd libarchive libcurl zlib) -pthread -lm -o pack_layouts
 *   pack_layouts REPO INDEX TARGET CACHED G L sig|image DICT [all] */
#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "index/catalog.h"
#include "index/repo.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zdict.h>
#include <zstd.h>

typedef struct blk {
	uint64_t sig;   /* bit i: image i holds it (the prototype allows 64 images) */
	uint32_t src;   /* image read from: the first raw one holding it */
	uint64_t block;
	bool need;      /* in TARGET, not in CACHED */
} blk;

static blk *B;
static unsigned char *data;
static size_t N, *order, *fstart, nframes, *fsize;
static bool *fneed;
static int level, all;
static ZSTD_CDict *cdict;
static size_t next_frame;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static const uint32_t BS = 4096;

static int cmp_sig(const void *a, const void *b)
{
	const blk *x = &B[*(const size_t *)a], *y = &B[*(const size_t *)b];
	if (x->sig != y->sig)
		return x->sig < y->sig ? -1 : 1;
	if (x->src != y->src)
		return x->src < y->src ? -1 : 1;
	return x->block < y->block ? -1 : x->block > y->block;
}

static int cmp_image(const void *a, const void *b)
{
	const blk *x = &B[*(const size_t *)a], *y = &B[*(const size_t *)b];
	if (x->src != y->src)
		return x->src < y->src ? -1 : 1;
	return x->block < y->block ? -1 : x->block > y->block;
}

static void *worker(void *arg)
{
	(void)arg;
	ZSTD_CCtx *c = ZSTD_createCCtx();
	size_t cap = ZSTD_compressBound((size_t)BS * 1024);
	unsigned char *in = malloc((size_t)BS * 1024), *out = malloc(cap);
	ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
	ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
	ZSTD_CCtx_setParameter(c, ZSTD_c_dictIDFlag, 0);
	for (;;) {
		pthread_mutex_lock(&mu);
		size_t f = next_frame++;
		pthread_mutex_unlock(&mu);
		if (f >= nframes)
			break;
		if (!all && !fneed[f])
			continue;
		size_t n = fstart[f + 1] - fstart[f];
		for (size_t k = 0; k < n; k++)
			memcpy(in + k * BS, data + order[fstart[f] + k] * BS, BS);
		if (cdict)
			ZSTD_CCtx_refCDict(c, cdict);
		size_t z = ZSTD_compress2(c, out, cap, in, n * BS);
		if (ZSTD_isError(z))
			abort();
		fsize[f] = z;
	}
	ZSTD_freeCCtx(c);
	free(in);
	free(out);
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 9) {
		fprintf(stderr, "usage: pack_layouts REPO INDEX TARGET CACHED G L sig|image DICT [all]\n");
		return 2;
	}
	const char *repo = argv[1], *idx = argv[2];
	size_t G = strtoul(argv[5], NULL, 10);
	level = atoi(argv[6]);
	bool sig = !strcmp(argv[7], "sig");
	size_t dict = strtoul(argv[8], NULL, 10);
	all = argc > 9 && !strcmp(argv[9], "all");
	if (G < 1 || G > 1024)
		return 2;
	idd_error err;
	idd_catalog *cat;
	if (idd_catalog_load(idx, &cat, &err) || cat->count > 64 || cat->block_size != BS) {
		fprintf(stderr, "pack_layouts: %s\n", cat ? "at most 64 images of 4 KiB blocks" : err.msg);
		return 1;
	}
	int target = -1, cached = -1;
	for (size_t i = 0; i < cat->count; i++) {
		if (!strcmp(cat->images[i].id, argv[3]))
			target = (int)i;
		if (!strcmp(cat->images[i].id, argv[4]))
			cached = (int)i;
	}
	if (target < 0 || cached < 0)
		return 1;
	idd_digest_set set;
	idd_digest_set_init(&set, (size_t)cat->unique_blocks + 1, true, &err);
	B = calloc((size_t)cat->unique_blocks + 1024, sizeof *B);
	/* raw files first: a block is read from the first raw image holding it */
	for (int pass = 0; pass < 2; pass++)
		for (size_t i = 0; i < cat->count; i++) {
			const idd_image_info *im = &cat->images[i];
			bool raw = !strcmp(im->format, "raw") && !im->streamed;
			if (raw != (pass == 0))
				continue;
			idd_digest *d;
			if (idd_blocklist_load(idx, im, &d, &err))
				return fprintf(stderr, "%s\n", err.msg), 1;
			for (uint64_t k = 0; k < im->nblocks; k++) {
				if (idd_digest_is_zero(&d[k]))
					continue;
				bool added;
				size_t s = idd_digest_set_add(&set, &d[k], &added, &err);
				if (added) {
					set.aux[s] = N;
					B[N] = (blk){.src = (uint32_t)i, .block = k};
					N++;
				}
				B[set.aux[s]].sig |= 1ull << i;
			}
			free(d);
		}
	size_t need = 0;
	for (size_t j = 0; j < N; j++) {
		B[j].need = (B[j].sig >> target & 1) && !(B[j].sig >> cached & 1);
		need += B[j].need;
	}
	/* read every block from its image */
	data = malloc(N * BS);
	idd_image **imgs = calloc(cat->count, sizeof *imgs);
	for (size_t j = 0; j < N; j++) {
		uint32_t i = B[j].src;
		if (!imgs[i]) {
			const idd_image_info *im = &cat->images[i];
			char *path = idd_path_join(repo, im->file, &err);
			idd_repo_entry e = {.id = im->id, .path = path,
			                    .member = im->member[0] ? im->member : NULL,
			                    .container = im->container, .member_off = im->member_off,
			                    .member_len = im->member_len, .streamed = im->streamed};
			if (idd_repo_open_image(repo, &e, &imgs[i], &err))
				return fprintf(stderr, "%s\n", err.msg), 1;
			free(path);
		}
		uint64_t off = B[j].block * BS;
		size_t len = (size_t)IDD_MIN((uint64_t)BS, imgs[i]->size - off);
		memset(data + j * BS, 0, BS);
		if (idd_image_read(imgs[i], off, data + j * BS, len, &err))
			return fprintf(stderr, "%s\n", err.msg), 1;
	}
	order = malloc(N * sizeof *order);
	for (size_t j = 0; j < N; j++)
		order[j] = j;
	qsort(order, N, sizeof *order, sig ? cmp_sig : cmp_image);
	fstart = malloc((N + 1) * sizeof *fstart);
	fneed = calloc(N, sizeof *fneed);
	fsize = calloc(N, sizeof *fsize);
	for (size_t i = 0; i < N;) {
		size_t j = i + 1;
		while (j < N && j - i < G && (!sig || B[order[j]].sig == B[order[i]].sig))
			j++;
		fstart[nframes] = i;
		for (size_t k = i; k < j; k++)
			fneed[nframes] |= B[order[k]].need;
		nframes++;
		i = j;
	}
	fstart[nframes] = N;
	if (dict) {
		size_t ns = N / 8, *sizes = malloc(ns * sizeof *sizes);
		unsigned char *samples = malloc(ns * BS);
		for (size_t i = 0; i < ns; i++) {
			memcpy(samples + i * BS, data + i * 8 * BS, BS);
			sizes[i] = BS;
		}
		void *d = malloc(dict);
		size_t dl = ZDICT_trainFromBuffer(d, dict, samples, sizes, (unsigned)ns);
		if (ZDICT_isError(dl))
			return fprintf(stderr, "dictionary: %s\n", ZDICT_getErrorName(dl)), 1;
		cdict = ZSTD_createCDict(d, dl, level);
		free(d);
		free(samples);
		free(sizes);
	}
	int64_t t0 = idd_now_ns();
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		pthread_create(&th[i], NULL, worker, NULL);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	double secs = (double)(idd_now_ns() - t0) / 1e9;
	size_t needed_bytes = 0, needed_frames = 0, extra = 0, total = 0;
	for (size_t f = 0; f < nframes; f++) {
		total += fsize[f];
		if (!fneed[f])
			continue;
		needed_bytes += fsize[f];
		needed_frames++;
		for (size_t k = fstart[f]; k < fstart[f + 1]; k++)
			extra += !B[order[k]].need;
	}
	printf("G=%zu level=%d order=%s dict=%zu: %zu distinct blocks, %zu needed; frames needed %zu "
	       "holding %zu blocks not needed: %zu bytes; compressed in %.1f s",
	       G, level, argv[7], dict, N, need, needed_frames, extra, needed_bytes, secs);
	if (all)
		printf("; whole pack %zu bytes", total);
	printf("\n");
	return 0;
}
