/* fuzz_pack.c - libFuzzer target: the pack's index and view parsers
 * (index/pack.c), lookups in what they accept, and the frame decoder
 * (exactly one zstd frame of the stated size, no bombs).
 *
 * The first input byte is a mode (mod 5), the rest the body:
 *   0  a whole pack index file (container included)
 *   1  a pack index payload: the harness adds a valid container
 *   2  a whole view file
 *   3  a view payload in a valid container
 *   4  a frame: body[0] % 64 + 1 blocks of 512 << (body[1] % 8) bytes
 *      (at most 1 MiB), then the frame's bytes
 */
#include "fuzz_common.h"
#include "index/pack.h"

static const char PKI_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'K', 'I', 0};
static const char PKV_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'K', 'V', 0};

static void index_file(const unsigned char *file, size_t len)
{
	idd_error err;
	idd_pack_index *x;
	if (idd_pack_index_parse("fuzz-index", file, len, &x, &err))
		return;
	/* look up every entry of the runs the file holds (version 1: one, in
	 * the payload; version 2 names runs of other files, not opened here):
	 * each must be found where it says, and a few others */
	uint64_t looked = 0;
	for (size_t r = 0; r < x->nruns && x->frames; r++) {
		const idd_pack_idxrun *run = &x->runs[r];
		for (uint64_t i = 0; run->recs && i < run->entries && looked < 4096; i++, looked++) {
			idd_digest d;
			memcpy(d.b, run->recs + i * IDD_PACK_ENTRY, 32);
			idd_pack_loc loc;
			if (!idd_pack_lookup(x, &d, &loc) || loc.slot >= loc.nblocks || loc.frame >= x->nframes)
				abort();
			d.b[31] ^= 1;
			idd_pack_lookup(x, &d, &loc);
		}
	}
	for (size_t f = 0; x->frames && f < x->nframes; f++) /* frames hold >= 1 block: firsts increase */
		if (idd_pack_frame_of(x->frames, x->nframes, x->frames[f].first) != f)
			abort();
	idd_pack_index_free(x);
}

static void view_file(const unsigned char *file, size_t len)
{
	idd_error err;
	idd_pack_view *v;
	if (idd_pack_view_parse("fuzz-view", file, len, (uint64_t)1 << 20, &v, &err))
		return;
	for (uint64_t k = 0; k <= v->ndistinct && k < 4096; k++) {
		idd_pack_loc loc;
		if (idd_pack_view_find(v, k, &loc) &&
		    (loc.slot >= loc.nblocks || loc.frame >= v->nframes ||
		     loc.off + loc.clen > v->files[loc.file].size))
			abort();
	}
	idd_pack_view_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (len < 1)
		return 0;
	unsigned mode = data[0] % 5;
	const unsigned char *body = data + 1;
	size_t blen = len - 1;
	size_t flen;
	unsigned char *file;
	switch (mode) {
	case 0: index_file(body, blen); break;
	case 1:
		file = fz_wrap(PKI_MAGIC, 1, body, blen, &flen);
		index_file(file, flen);
		free(file);
		break;
	case 2: view_file(body, blen); break;
	case 3:
		file = fz_wrap(PKV_MAGIC, 1, body, blen, &flen);
		view_file(file, flen);
		free(file);
		break;
	case 4: {
		if (blen < 2)
			return 0;
		uint32_t nb = body[0] % 64 + 1, bs = 512u << (body[1] % 8);
		while ((uint64_t)nb * bs > (1u << 20))
			nb /= 2;
		unsigned char *out = malloc((size_t)nb * bs);
		ZSTD_DCtx *d = ZSTD_createDCtx();
		if (!out || !d)
			abort();
		idd_error err;
		idd_pack_frame_decode(d, "fuzz-frame", body + 2, blen - 2, nb, bs, out, &err);
		ZSTD_freeDCtx(d);
		free(out);
		break;
	}
	}
	return 0;
}
