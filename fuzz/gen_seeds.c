/* gen_seeds.c - writes seed inputs for fuzz_index and fuzz_map: a real
 * catalog and block map, each as a whole index file and as bare payload.
 * Usage: gen_seeds INDEX_CORPUS_DIR MAP_CORPUS_DIR */
#include "internal.h"
#include "map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const idd_error *err) { fprintf(stderr, "gen_seeds: %s\n", err->msg); exit(1); }

static void put(const char *dir, const char *name, const void *p, size_t n)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f)) {
		perror(path);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	idd_error err;
	char tmpl[] = "/tmp/idd-seeds-XXXXXX";
	if (!mkdtemp(tmpl))
		return 1;
	idd_image_info im[2];
	memset(im, 0, sizeof im);
	const char *ids[] = {"a.qcow2", "box.ova/disk1.vmdk"};
	for (int i = 0; i < 2; i++) {
		im[i].id = (char *)ids[i];
		im[i].file = i ? "box.ova" : "a.qcow2";
		im[i].member = i ? "disk1.vmdk" : "";
		im[i].format = i ? "vmdk" : "qcow2";
		im[i].container = i ? "ova" : "";
		im[i].member_off = i ? 1536 : 0;
		im[i].member_len = i ? 70000 : 0;
		im[i].file_size = 123456;
		im[i].virtual_size = 1 << 20;
		im[i].nblocks = 256;
		im[i].zero_blocks = 100;
		im[i].distinct_blocks = 150;
		im[i].scanned_at = 1735689600;
		im[i].list_key.b[0] = (unsigned char)(i + 1);
	}
	idd_catalog cat = {.block_size = 4096, .generation = 3, .unique_blocks = 200, .count = 2,
	                   .images = im};
	if (idd_catalog_save(tmpl, &cat, &err))
		die(&err);
	char path[4096];
	snprintf(path, sizeof path, "%s/" IDD_CATALOG_FILE, tmpl);
	void *file, *payload;
	size_t flen, plen;
	if (idd_read_file(path, 1 << 20, &file, &flen, &err))
		die(&err);
	put(argv[1], "catalog-file", file, flen);
	static const char CAT[8] = {'I', 'D', 'D', '-', 'C', 'A', 'T', 0};
	if (idd_indexfile_parse(path, file, flen, CAT, 1, &payload, &plen, NULL, &err))
		die(&err);
	put(argv[1], "catalog-payload", payload, plen);
	free(file);
	free(payload);

	/* A map with zero runs, repeats and runs of new blocks. */
	enum { N = 64 };
	idd_digest d[N];
	memset(d, 0, sizeof d);
	for (int i = 0; i < N; i++)
		if (i % 7 != 3 && !(i >= 20 && i < 30))
			d[i].b[0] = (unsigned char)(i % 11 + 1), d[i].b[5] = (unsigned char)i;
	for (int i = 40; i < 50; i++)
		d[i] = d[i - 30];
	idd_map *m;
	if (idd_map_build(d, N, 4096, (uint64_t)N * 4096 - 100, &m, &err))
		die(&err);
	if (idd_map_encode(m, &file, &flen, &err))
		die(&err);
	put(argv[2], "map-file", file, flen);
	static const char MAP[8] = {'I', 'D', 'D', '-', 'M', 'A', 'P', 0};
	if (idd_indexfile_parse("map", file, flen, MAP, 1, &payload, &plen, NULL, &err))
		die(&err);
	put(argv[2], "map-payload", payload, plen);
	free(file);
	free(payload);
	idd_map_free(m);
	snprintf(path, sizeof path, "rm -rf %s", tmpl);
	return system(path) == 0 ? 0 : 1;
}
