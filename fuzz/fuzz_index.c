/* fuzz_index.c - libFuzzer target: the index-file container
 * (idd_indexfile_parse, including zstd decompression) and the catalog and
 * block map, block list and per-image entry parsers behind it.
 *
 * The first input byte is a mode, the rest the body:
 *   bit 0 clear: the body is a whole index file, parsed as a catalog and as
 *                a block map (the checksum stops most mutations early).
 *   bit 0 set:   the harness builds a valid container (magic, version,
 *                flags, lengths, SHA-256 trailer) so mutations reach what
 *                lies behind the checksum:
 *     bit 1      block map (IDD-MAP) instead of catalog (IDD-CAT)
 *     bit 5      (with bit 1) block list (IDD-BLK, version 2) instead of a map
 *     bit 6      (bit 1 clear) per-image catalog entry (IDD-ENT) and entries
 *                index (IDD-ENI) instead of a catalog
 *     bit 2      the body is the payload, zstd-compressed by the harness
 *     bit 3      the body is le64 declared payload length + stored zstd
 *                bytes, as is: lying lengths, corrupt frames, bombs
 *     neither    the body is the payload, stored uncompressed
 *     bit 4      (with bit 2) declare a payload length off by body[0]-128
 */
#include "fuzz_common.h"
#include "index/entries.h"
#include "index/map.h"

#include <zstd.h>

static const char CATALOG_MAGIC[8] = {'I', 'D', 'D', '-', 'C', 'A', 'T', 0};
static const char MAP_MAGIC[8] = {'I', 'D', 'D', '-', 'M', 'A', 'P', 0};
static const char BLK_MAGIC[8] = {'I', 'D', 'D', '-', 'B', 'L', 'K', 0};
static const char ENT_MAGIC[8] = {'I', 'D', 'D', '-', 'E', 'N', 'T', 0};

/* want: the payload a well-formed container must give back (NULL: any). */
static void parse_catalog_file(const unsigned char *file, size_t len, const void *want, size_t want_len)
{
	idd_error err;
	void *payload;
	size_t plen;
	uint32_t version;
	int rc = idd_indexfile_parse("fuzz-catalog", file, len, CATALOG_MAGIC, 1, &payload, &plen, &version,
	                             &err);
	if (want && (rc != 0 || plen != want_len || (plen && memcmp(payload, want, plen) != 0)))
		abort(); /* the container round trip lost or changed the payload */
	if (rc == 0) {
		idd_catalog *cat;
		if (idd_catalog_parse("fuzz-catalog", payload, plen, &cat, &err) == 0)
			idd_catalog_free(cat);
		free(payload);
	}
}

static void parse_map_file(const unsigned char *file, size_t len)
{
	idd_error err;
	idd_map *m;
	if (idd_map_parse("fuzz.map", file, len, &m, &err) == 0)
		idd_map_free(m);
}

/* A block list as the catalog would describe it: the counts come from the
 * payload's own header when it has one (so well-formed lists get through),
 * and the parser must still refuse every inconsistency. */
static void parse_blocklist_file(const unsigned char *file, size_t len)
{
	uint64_t nblocks = 1000, zero = 0;
	if (len >= IDD_IF_HEADER + 28 && !(idd_le32(file + 12) & IDD_IF_ZSTD)) {
		nblocks = idd_le64(file + IDD_IF_HEADER + 4) & (((uint64_t)1 << 40) - 1);
		uint64_t ndata = idd_le64(file + IDD_IF_HEADER + 12);
		zero = ndata <= nblocks ? nblocks - ndata : 0;
	}
	idd_error err;
	idd_blocklist *bl;
	if (idd_blocklist_parse("fuzz-blocks", file, len, nblocks, zero, &bl, &err) == 0) {
		for (size_t r = 0; r < bl->nruns; r++)
			if (bl->runs[r].count == 0 || idd_blocklist_get(bl, bl->runs[r].block) !=
			                                   &bl->digests[bl->runs[r].first])
				abort(); /* the runs say what get() answers */
		idd_blocklist_free(bl);
	}
}

/* An entry asked for under its own id (the parser's id check passes, so
 * what lies behind it is reached); the entries index. */
static void parse_entry_file(const unsigned char *file, size_t len)
{
	idd_error err;
	idd_image_info im;
	uint32_t bs;
	if (idd_entry_parse_file("fuzz-entry", file, len, "a.raw", &bs, &im, &err) == 0) {
		if (strcmp(im.id, "a.raw") || !bs)
			abort(); /* only a.raw's entry is a.raw's */
		idd_image_info_free(&im);
	}
	idd_entries_index x;
	(void)idd_entries_index_parse_file("fuzz-entries-index", file, len, &x, &err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	/* map refs cost 4 bytes per block: stay far below libFuzzer's malloc limit. */
	idd_map_parse_max_blocks = 1u << 24;
	if (len < 1)
		return 0;
	unsigned mode = data[0];
	const unsigned char *body = data + 1;
	size_t blen = len - 1;
	if (!(mode & 1)) {
		parse_catalog_file(body, blen, NULL, 0);
		parse_map_file(body, blen);
		parse_blocklist_file(body, blen);
		parse_entry_file(body, blen);
		return 0;
	}
	bool is_map = mode & 2, is_list = is_map && (mode & 32);
	bool is_entry = !is_map && (mode & 64);
	const char *magic = is_list ? BLK_MAGIC : is_map ? MAP_MAGIC : is_entry ? ENT_MAGIC : CATALOG_MAGIC;
	uint32_t version = is_list ? 2 : 1;
	unsigned char *file = NULL, *z = NULL;
	size_t flen;
	bool exact = false; /* a container the harness built honestly */
	if (mode & 8) {
		if (blen < 8)
			return 0;
		file = fz_container(magic, version, IDD_IF_ZSTD, idd_le64(body), body + 8, blen - 8, &flen);
	} else if (mode & 4) {
		size_t cap = ZSTD_compressBound(blen);
		z = malloc(cap ? cap : 1);
		if (!z)
			abort();
		size_t zl = ZSTD_compress(z, cap, body, blen, 1);
		if (ZSTD_isError(zl))
			abort();
		uint64_t declared = blen;
		if ((mode & 16) && blen)
			declared += (uint64_t)(int64_t)((int)body[0] - 128);
		file = fz_container(magic, version, IDD_IF_ZSTD, declared, z, zl, &flen);
		exact = declared == blen;
	} else {
		file = fz_wrap(magic, version, body, blen, &flen);
		exact = true;
	}
	if (is_list)
		parse_blocklist_file(file, flen);
	else if (is_entry)
		parse_entry_file(file, flen);
	else if (is_map)
		parse_map_file(file, flen);
	else
		parse_catalog_file(file, flen, exact ? body : NULL, blen);
	free(file);
	free(z);
	return 0;
}
