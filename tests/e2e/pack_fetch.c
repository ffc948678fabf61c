/* pack_fetch.c - the fetch phase of a deploy, with or without the pack:
 * reads SOURCE's catalog and TARGET's block map over HTTP (or from a
 * directory), takes every distinct block of TARGET that the node's cached
 * image (CACHED, known from a local index; "-" for none) does not hold, and fetches them
 * either from the pack (node/source_pack.c) or as raw ranges of the image
 * (what deploy does for a raw image), verifying every block.  Prints one
 * JSON line.  Used by tests/e2e/test_pack.sh and bench/bench_pack.sh.
 * With BATCH, the pack is asked BATCH blocks at a time in image order (as
 * a caller reading the image piece by piece would).
 * usage: pack_fetch SOURCE TARGET LOCAL_INDEX CACHED pack|raw [BATCH] */
#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "index/catalog.h"
#include "index/map.h"
#include "base/fetch.h"
#include "node/source_pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what, const idd_error *err)
{
	fprintf(stderr, "pack_fetch: %s: %s\n", what, err->msg);
	exit(1);
}

static void warn(void *ctx, const char *msg) { fprintf(stderr, "pack_fetch: warning: %s\n", msg); }

int main(int argc, char **argv)
{
	if ((argc != 6 && argc != 7) || (strcmp(argv[5], "pack") && strcmp(argv[5], "raw"))) {
		fprintf(stderr, "usage: pack_fetch SOURCE TARGET LOCAL_INDEX CACHED pack|raw [BATCH]\n");
		return 2;
	}
	size_t batch = argc == 7 ? (size_t)strtoull(argv[6], NULL, 10) : 0;
	const char *source = argv[1], *target = argv[2], *local = argv[3], *cached = argv[4];
	bool use_pack = !strcmp(argv[5], "pack");
	idd_error err;
	int64_t t0 = idd_now_ns();
	idd_fetch_opts fo = {.connections = 4, .warn = warn};
	idd_source *src;
	if (idd_source_open(source, &fo, &src, &err))
		die(source, &err);
	void *file;
	size_t len;
	idd_catalog *cat;
	if (idd_source_get(src, ".imgdedup/catalog", 1u << 30, &file, &len, &err) ||
	    idd_catalog_parse_file("catalog", file, len, &cat, &err))
		die("catalog", &err);
	free(file);
	const idd_image_info *im = idd_catalog_find(cat, target);
	if (!im) {
		fprintf(stderr, "pack_fetch: no image %s\n", target);
		return 1;
	}
	char *mrel = idd_map_relpath(target, &err);
	char *mpath = mrel ? idd_asprintf(&err, ".imgdedup/%s", mrel) : NULL;
	idd_map *map;
	if (!mpath || idd_source_get(src, mpath, 1u << 30, &file, &len, &err) ||
	    idd_map_parse(mpath, file, len, &map, &err))
		die("map", &err);
	free(file);
	/* what the node holds: the cached image's digests (local); "-": nothing */
	idd_catalog *lcat = NULL;
	idd_digest *cd = NULL;
	idd_digest_set have;
	if (idd_digest_set_init(&have, 1024, false, &err))
		die("set", &err);
	if (strcmp(cached, "-")) {
		if (idd_catalog_load(local, &lcat, &err))
			die(local, &err);
		const idd_image_info *ci = idd_catalog_find(lcat, cached);
		if (!ci || idd_blocklist_load(local, ci, &cd, &err))
			die(cached, &err);
		for (uint64_t b = 0; b < ci->nblocks; b++)
			if (!idd_digest_is_zero(&cd[b]) &&
			    idd_digest_set_add(&have, &cd[b], &(bool){0}, &err) == (size_t)-1)
				die("set", &err);
	}
	/* the missing distinct blocks, each with its first block in TARGET */
	uint32_t bs = map->block_size;
	uint64_t *first = calloc(map->ndistinct + 1, sizeof *first);
	bool *seen = calloc(map->ndistinct + 1, 1);
	for (uint64_t b = 0; b < map->nblocks; b++) {
		uint32_t ref = idd_map_ref(map, b);
		if (ref && !seen[ref - 1]) {
			seen[ref - 1] = true;
			first[ref - 1] = b;
		}
	}
	idd_block_req *reqs = calloc(map->ndistinct + 1, sizeof *reqs);
	unsigned char *bufs = malloc((size_t)(map->ndistinct + 1) * bs);
	size_t n = 0;
	for (uint64_t k = 0; k < map->ndistinct; k++) {
		if (idd_digest_set_find(&have, &map->digests[k]) != (size_t)-1)
			continue;
		reqs[n] = (idd_block_req){.digest = map->digests[k], .block = first[k], .len = bs,
		                          .buf = bufs + n * bs, .status = IDD_ENOENT, .origin_fd = -1};
		n++;
	}
	uint64_t delivered = 0, payload = 0, index_bytes = 0;
	idd_fetch_stats st0;
	idd_source_stats(src, &st0);
	if (use_pack) {
		idd_block_source *ps;
		if (idd_pack_source_open(src, ".imgdedup/", map, warn, NULL, &ps, &err))
			die("pack", &err);
		size_t step = batch ? batch : n;
		for (size_t i = 0; i < n; i += step)
			if (ps->ops->read(ps, reqs + i, IDD_MIN(step, n - i), &err))
				die("pack read", &err);
		idd_block_source_counters c;
		idd_block_source_counters_get(ps, &c);
		payload = c.bytes;
		index_bytes = idd_pack_source_index_bytes(ps);
		idd_block_source_close(ps);
	} else {
		idd_file *f;
		if (strcmp(im->format, "raw") || im->member[0] ||
		    idd_source_open_file(src, im->file, im->file_size, &f, &err))
			die("raw image", &err);
		idd_range *r = calloc(n + 1, sizeof *r);
		for (size_t i = 0; i < n; i++) {
			uint64_t off = reqs[i].block * bs;
			r[i] = (idd_range){off, IDD_MIN((uint64_t)bs, f->size - off), reqs[i].buf};
			memset(reqs[i].buf, 0, bs);
			payload += r[i].len;
		}
		if (idd_source_read_ranges(src, f, r, n, &err))
			die("raw read", &err);
		idd_hasher *h = idd_hasher_new(&err);
		for (size_t i = 0; i < n; i++)
			if (idd_block_verify(h, reqs[i].buf, bs, &reqs[i].digest))
				reqs[i].status = IDD_OK;
		idd_hasher_free(h);
		idd_file_close(f);
		free(r);
	}
	for (size_t i = 0; i < n; i++)
		delivered += reqs[i].status == IDD_OK;
	idd_fetch_stats st1;
	idd_source_stats(src, &st1);
	double secs = (double)(idd_now_ns() - t0) / 1e9;
	bool all = delivered == n;
	free(first);
	free(seen);
	free(reqs);
	free(bufs);
	free(cd);
	free(mrel);
	free(mpath);
	idd_digest_set_free(&have);
	idd_map_free(map);
	idd_catalog_free(lcat);
	idd_catalog_free(cat);
	idd_source_close(src);
	printf("{\"mode\":\"%s\",\"missing\":%zu,\"delivered\":%llu,\"payload_bytes\":%llu,"
	       "\"view_bytes\":%llu,\"block_requests\":%llu,\"requests\":%llu,\"seconds\":%.3f}\n",
	       argv[5], n, (unsigned long long)delivered, (unsigned long long)payload,
	       (unsigned long long)index_bytes, (unsigned long long)(st1.requests - st0.requests),
	       (unsigned long long)st1.requests, secs);
	return all ? 0 : 1;
}
