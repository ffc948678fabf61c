/* gen_seeds.c - writes seed inputs for fuzz_index and fuzz_map: a real
 * catalog and block map, each as a whole index file and as bare payload
 * (fuzz_index seeds carry its mode byte, see fuzz_index.c), and zstd
 * "bombs": tiny frames declaring a huge decompressed size.
 * With a third directory, seeds for fuzz_pack: a real pack index, view and
 * frame (a small repository scanned, mapped and packed), with its mode byte.
 * Usage: gen_seeds INDEX_CORPUS_DIR MAP_CORPUS_DIR [PACK_CORPUS_DIR] */
#include "base/util.h"
#include "base/digest.h"
#include "index/indexfile.h"
#include "index/catalog.h"
#include "index/entries.h"
#include "index/map.h"
#include "index/pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An index file holding stored zstd bytes that declare raw_len. */
static unsigned char *fz_bomb_file(const char magic[8], const void *z, size_t zl, uint64_t raw_len,
                                   size_t *flen)
{
	unsigned char *f = malloc(IDD_IF_HEADER + zl + IDD_IF_TRAILER);
	if (!f)
		exit(1);
	memcpy(f, magic, 8);
	idd_le32_put(f + 8, 1);
	idd_le32_put(f + 12, IDD_IF_ZSTD);
	idd_le64_put(f + 16, raw_len);
	idd_le64_put(f + 24, zl);
	memcpy(f + IDD_IF_HEADER, z, zl);
	if (idd_sha256(f, IDD_IF_HEADER + zl, f + IDD_IF_HEADER + zl, NULL))
		exit(1);
	*flen = IDD_IF_HEADER + zl + IDD_IF_TRAILER;
	return f;
}

static void die(const idd_error *err) { fprintf(stderr, "gen_seeds: %s\n", err->msg); exit(1); }

static void put(const char *dir, const char *name, const void *p, size_t n);

/* A fuzz_index input: mode byte, then body. */
static void put_mode(const char *dir, const char *name, unsigned char mode, const void *p, size_t n)
{
	unsigned char *b = malloc(n + 1);
	if (!b)
		exit(1);
	b[0] = mode;
	memcpy(b + 1, p, n);
	put(dir, name, b, n + 1);
	free(b);
}

/* A zstd frame of one small RLE block whose header declares `declared`
 * bytes of content (frame content size field, 8 bytes). */
static size_t zstd_bomb(unsigned char *out, uint64_t declared)
{
	size_t n = 0;
	idd_le32_put(out, 0xFD2FB528u);
	n += 4;
	out[n++] = 0xc0;      /* FCS field: 8 bytes; not single-segment; no checksum, no dict */
	out[n++] = 10u << 3;  /* window: 1 MiB */
	idd_le64_put(out + n, declared);
	n += 8;
	uint32_t bh = 1u | (1u << 1) | (1000u << 3); /* last block, RLE, 1000 bytes */
	out[n++] = (unsigned char)bh;
	out[n++] = (unsigned char)(bh >> 8);
	out[n++] = (unsigned char)(bh >> 16);
	out[n++] = 'x';
	return n;
}

static void put_bombs(const char *dir)
{
	static const char CAT[8] = {'I', 'D', 'D', '-', 'C', 'A', 'T', 0};
	static const uint64_t sizes[] = {(uint64_t)1 << 36, (uint64_t)3 << 30, (uint64_t)200 << 20};
	static const char *names[] = {"bomb-64g", "bomb-3g", "bomb-200m"};
	for (int i = 0; i < 3; i++) {
		unsigned char z[64], body[72], *file;
		size_t zl = zstd_bomb(z, sizes[i]), flen;
		char name[64];
		/* As a whole file with a valid checksum (mode 0)... */
		file = fz_bomb_file(CAT, z, zl, sizes[i], &flen);
		snprintf(name, sizeof name, "%s-file", names[i]);
		put_mode(dir, name, 0x00, file, flen);
		free(file);
		/* ...and as stored bytes the harness wraps (mode 9: catalog, as is). */
		idd_le64_put(body, sizes[i]);
		memcpy(body + 8, z, zl);
		snprintf(name, sizeof name, "%s-stored", names[i]);
		put_mode(dir, name, 0x09, body, 8 + zl);
		snprintf(name, sizeof name, "%s-stored-map", names[i]);
		put_mode(dir, name, 0x0b, body, 8 + zl);
	}
}

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

/* A repository of one small image, scanned, mapped and packed; its pack
 * index, a view and one frame become fuzz_pack seeds. */
static void put_pack_seeds(const char *tmp, const char *dir)
{
	idd_error err;
	char path[4096];
	unsigned char img[48 * 4096];
	for (size_t i = 0; i < sizeof img; i++)
		img[i] = i % 4096 < 2048 ? (unsigned char)"pack seed text "[i % 15]
		                         : (unsigned char)((i * 2654435761u) >> 13);
	memset(img + 10 * 4096, 0, 4096);
	memcpy(img + 20 * 4096, img + 3 * 4096, 4096);
	snprintf(path, sizeof path, "%s/repo", tmp);
	if (idd_mkdir_p(path, &err))
		die(&err);
	snprintf(path, sizeof path, "%s/repo/a.raw", tmp);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(img, 1, sizeof img - 100, f) != sizeof img - 100 || fclose(f))
		exit(1);
	snprintf(path, sizeof path, "%s/repo", tmp);
	idd_scan_opts so = {.repo = path, .jobs = 1};
	idd_scan_stats ss;
	idd_map_opts mo = {.repo = path};
	idd_map_stats ms;
	idd_pack_opts po = {.repo = path, .jobs = 1};
	idd_pack_stats ps;
	if (idd_scan(&so, &ss, &err) || idd_map_run(&mo, &ms, &err) || idd_pack_run(&po, &ps, &err))
		die(&err);
	char *idx = idd_asprintf(&err, "%s/repo/" IDD_INDEX_SUBDIR, tmp);
	if (!idx)
		die(&err);
	static const char PKI[8] = {'I', 'D', 'D', '-', 'P', 'K', 'I', 0};
	static const char PKV[8] = {'I', 'D', 'D', '-', 'P', 'K', 'V', 0};
	void *file, *payload;
	size_t flen, plen;
	char *ipath = idd_path_join(idx, IDD_PACK_INDEX_FILE, &err);
	if (!ipath || idd_read_file(ipath, 1 << 20, &file, &flen, &err) ||
	    idd_indexfile_parse(ipath, file, flen, PKI, 1, &payload, &plen, NULL, &err))
		die(&err);
	put_mode(dir, "index-file", 0x00, file, flen);
	put_mode(dir, "index-payload", 0x01, payload, plen);
	idd_pack_index *x;
	if (idd_pack_index_parse(ipath, file, flen, &x, &err))
		die(&err);
	free(ipath);
	free(file);
	free(payload);
	char *rel = idd_pack_view_relpath(&x->views[0], &err);
	char *vpath = rel ? idd_path_join(idx, rel, &err) : NULL;
	free(rel);
	if (!vpath || idd_read_file(vpath, 1 << 20, &file, &flen, &err) ||
	    idd_indexfile_parse(vpath, file, flen, PKV, 1, &payload, &plen, NULL, &err))
		die(&err);
	put_mode(dir, "view-file", 0x02, file, flen);
	put_mode(dir, "view-payload", 0x03, payload, plen);
	free(vpath);
	free(file);
	free(payload);
	/* the first frame, with its block count and size (512 << 3) */
	rel = idd_pack_data_relpath(&x->files[0].name, &err);
	char *dpath = rel ? idd_path_join(idx, rel, &err) : NULL;
	free(rel);
	if (!dpath || idd_read_file(dpath, 1 << 20, &file, &flen, &err))
		die(&err);
	free(dpath);
	unsigned char *fr = malloc(2 + x->frames[0].clen);
	if (!fr)
		exit(1);
	fr[0] = (unsigned char)(x->frames[0].nblocks - 1);
	fr[1] = 3;
	memcpy(fr + 2, (unsigned char *)file + x->frames[0].off, (size_t)x->frames[0].clen);
	put_mode(dir, "frame", 0x04, fr, 2 + (size_t)x->frames[0].clen);
	free(fr);
	free(file);
	free(idx);
	idd_pack_index_free(x);
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4)
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
	put_mode(argv[1], "catalog-file", 0x00, file, flen);
	static const char CAT[8] = {'I', 'D', 'D', '-', 'C', 'A', 'T', 0};
	if (idd_indexfile_parse(path, file, flen, CAT, 1, &payload, &plen, NULL, &err))
		die(&err);
	put_mode(argv[1], "catalog-payload", 0x01, payload, plen);
	put_mode(argv[1], "catalog-payload-zstd", 0x05, payload, plen);
	put_mode(argv[1], "catalog-payload-zstd-badlen", 0x15, payload, plen);
	free(file);
	free(payload);
	/* The entry of the first image, as a.raw (what fuzz_index asks for). */
	idd_image_info a = im[0];
	a.id = a.file = (char *)"a.raw";
	idd_buf eb = {0};
	idd_entry_payload(4096, &a, &eb);
	if (eb.failed)
		abort();
	put_mode(argv[1], "entry-payload", 0x41, eb.data, eb.len);
	idd_buf_free(&eb);

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
	put_mode(argv[1], "map-file", 0x00, file, flen);
	put_mode(argv[1], "map-payload", 0x03, payload, plen);
	put_mode(argv[1], "map-payload-zstd", 0x07, payload, plen);
	put_bombs(argv[1]);
	free(file);
	free(payload);
	idd_map_free(m);

	/* The same blocks as a (sparse, version 2) block list. */
	idd_digest key;
	if (idd_blocklist_save(tmpl, 4096, d, N, &key, &err))
		die(&err);
	char *lp = idd_blocks_path(tmpl, &key, &err);
	if (!lp || idd_read_file(lp, 1 << 20, &file, &flen, &err))
		die(&err);
	static const char BLK[8] = {'I', 'D', 'D', '-', 'B', 'L', 'K', 0};
	if (idd_indexfile_parse(lp, file, flen, BLK, 2, &payload, &plen, NULL, &err))
		die(&err);
	put_mode(argv[1], "blocklist-file", 0x00, file, flen);
	put_mode(argv[1], "blocklist-payload", 0x23, payload, plen);
	put_mode(argv[1], "blocklist-payload-zstd", 0x27, payload, plen);
	free(file);
	free(payload);
	free(lp);
	if (argc == 4)
		put_pack_seeds(tmpl, argv[3]);
	snprintf(path, sizeof path, "rm -rf %s", tmpl);
	return system(path) == 0 ? 0 : 1;
}
