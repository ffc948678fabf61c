/* pack.c - the pack's files: views, decoding a frame, and checking a pack
 * (verify, info).  The index is pack_index.c, the builder pack_build.c.
 * Layout: docs/formats.md ("Pack"). */
#include "index/pack.h"
#include "index/indexfile.h"
#include "index/catalog.h"
#include "base/file.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <fcntl.h>
#include <unistd.h>

static const char PKV_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'K', 'V', 0};
#define PK_VERSION 1

/* ---- paths ---- */

char *idd_pack_view_relpath(const idd_digest *list_key, idd_error *err)
{
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(list_key, hex);
	return idd_asprintf(err, "%s/%s", IDD_PACK_VIEWS_DIR, hex);
}

char *idd_pack_data_relpath(const idd_digest *name, idd_error *err)
{
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(name, hex);
	return idd_asprintf(err, "%s/%s%s", IDD_PACK_DATA_DIR, hex, IDD_PACK_DATA_SUFFIX);
}

/* ---- frames ---- */

int idd_pack_frame_decode(ZSTD_DCtx *dctx, const char *name, const void *frame, size_t clen,
                          uint32_t nblocks, uint32_t bs, void *out, idd_error *err)
{
	uint64_t want = (uint64_t)nblocks * bs;
	if (!nblocks || !bs || want > SIZE_MAX)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt pack frame (%u blocks)", name, nblocks);
	unsigned long long cs = ZSTD_getFrameContentSize(frame, clen);
	if (cs == ZSTD_CONTENTSIZE_ERROR || cs == ZSTD_CONTENTSIZE_UNKNOWN || cs != want)
		return idd_fail_code(err, IDD_ECORRUPT,
		                     "%s: corrupt pack frame (not a zstd frame declaring %llu bytes)", name,
		                     (unsigned long long)want);
	size_t fl = ZSTD_findFrameCompressedSize(frame, clen);
	if (ZSTD_isError(fl) || fl != clen)
		return idd_fail_code(err, IDD_ECORRUPT,
		                     "%s: corrupt pack frame (%zu bytes are not exactly one zstd frame)",
		                     name, clen);
	if (ZSTD_getDictID_fromFrame(frame, clen) != 0)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt pack frame (needs a dictionary)", name);
	size_t r = ZSTD_decompressDCtx(dctx, out, (size_t)want, frame, clen);
	if (ZSTD_isError(r) || r != want)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt pack frame (%s)", name,
		                     ZSTD_isError(r) ? ZSTD_getErrorName(r) : "wrong length");
	return IDD_OK;
}

static int corrupt(idd_error *err, const char *name, const char *what)
{
	return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt pack %s", name, what);
}

static bool loc_of_ordinal(const idd_pack_frame *frames, size_t nframes, uint64_t p,
                           idd_pack_loc *loc)
{
	if (!nframes)
		return false;
	size_t f = idd_pack_frame_of(frames, nframes, p);
	const idd_pack_frame *fr = &frames[f];
	if (p < fr->first || p - fr->first >= fr->nblocks)
		return false;
	loc->frame = f;
	loc->file = fr->file;
	loc->nblocks = fr->nblocks;
	loc->off = fr->off;
	loc->clen = fr->clen;
	loc->slot = (uint32_t)(p - fr->first);
	return true;
}

/* ---- views ---- */

void idd_pack_view_free(idd_pack_view *v)
{
	if (!v)
		return;
	free(v->files);
	free(v->frames);
	free(v->slot);
	free(v);
}

int idd_pack_view_parse(const char *name, const void *file, size_t len, uint64_t max_payload,
                        idd_pack_view **out, idd_error *err)
{
	void *payload;
	size_t plen;
	int rc = idd_indexfile_parse_limit(name, file, len, PKV_MAGIC, PK_VERSION,
	                                   max_payload ? IDD_MIN(max_payload, IDD_PACK_MAX_VIEW)
	                                               : IDD_PACK_MAX_VIEW,
	                                   &payload, &plen, NULL, err);
	if (rc)
		return rc == IDD_ERR ? IDD_ECORRUPT : rc;
	idd_pack_view *v = idd_calloc(1, sizeof *v, err);
	if (!v) {
		free(payload);
		return IDD_ENOMEM;
	}
	idd_reader r;
	idd_reader_init(&r, payload, plen);
	uint32_t reserved;
	uint64_t nfiles, nframes;
	if (!idd_get_bytes(&r, v->list_key.b, 32) || !idd_get_u32(&r, &v->block_size) ||
	    !idd_get_u32(&r, &reserved) || !idd_get_u64(&r, &v->ndistinct) ||
	    !idd_get_u64(&r, &nfiles) || v->block_size < IDD_MIN_BLOCK_SIZE ||
	    v->block_size > IDD_MAX_BLOCK_SIZE || !idd_is_power_of_two(v->block_size) ||
	    reserved != 0 || nfiles > idd_reader_left(&r) / 40 ||
	    v->ndistinct > idd_reader_left(&r)) { /* every digest costs at least a byte */
		rc = corrupt(err, name, "view (header)");
		goto fail;
	}
	v->nfiles = (size_t)nfiles;
	if (nfiles && !(v->files = idd_calloc((size_t)nfiles, sizeof *v->files, err))) {
		rc = IDD_ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < v->nfiles; i++)
		if (!idd_get_bytes(&r, v->files[i].name.b, 32) || !idd_get_u64(&r, &v->files[i].size) ||
		    v->files[i].size < IDD_PACK_DATA_HEADER) {
			rc = corrupt(err, name, "view (file list)");
			goto fail;
		}
	if (!idd_get_u64(&r, &nframes) || nframes > idd_reader_left(&r) / 4) {
		rc = corrupt(err, name, "view (frame count)");
		goto fail;
	}
	v->nframes = (size_t)nframes;
	if (nframes && !(v->frames = idd_calloc((size_t)nframes, sizeof *v->frames, err))) {
		rc = IDD_ENOMEM;
		goto fail;
	}
	/* the most blocks a frame may hold, as the builder cuts them */
	uint64_t max_blocks = IDD_MAX(IDD_PACK_FRAME_BYTES / v->block_size, 1);
	uint64_t slots = 0, prev_file = 0, prev_end = IDD_PACK_DATA_HEADER;
	for (size_t i = 0; i < v->nframes; i++) {
		uint64_t fidx, gap, clen, nb;
		idd_pack_frame *f = &v->frames[i];
		if (!idd_get_varint(&r, &fidx) || !idd_get_varint(&r, &gap) ||
		    !idd_get_varint(&r, &clen) || !idd_get_varint(&r, &nb) || fidx >= v->nfiles ||
		    fidx < prev_file || clen == 0 || nb == 0 || nb > max_blocks) {
			rc = corrupt(err, name, "view (frame table)");
			goto fail;
		}
		if (fidx != prev_file)
			prev_end = IDD_PACK_DATA_HEADER;
		uint64_t off, end;
		if (!idd_add_ok(prev_end, gap, &off) || !idd_add_ok(off, clen, &end) ||
		    end > v->files[fidx].size) {
			rc = corrupt(err, name, "view (frame past the end of its data file)");
			goto fail;
		}
		f->file = (uint32_t)fidx;
		f->nblocks = (uint32_t)nb;
		f->off = off;
		f->clen = clen;
		f->first = slots;
		slots += nb;
		prev_file = fidx;
		prev_end = end;
	}
	v->nslots = slots;
	if (v->ndistinct && !(v->slot = idd_calloc((size_t)v->ndistinct, sizeof *v->slot, err))) {
		rc = IDD_ENOMEM;
		goto fail;
	}
	int64_t prev = -1;
	for (uint64_t k = 0; k < v->ndistinct; k++) {
		uint64_t code;
		if (!idd_get_varint(&r, &code)) {
			rc = corrupt(err, name, "view (slots truncated)");
			goto fail;
		}
		if (code == 0)
			continue;
		uint64_t zz = code - 1;
		/* zigzag: 0, -1, 1, -2, ... ; slot = prev + 1 + delta */
		int64_t delta = (int64_t)(zz >> 1) ^ -(int64_t)(zz & 1);
		int64_t s;
		if (__builtin_add_overflow(prev, 1, &s) || __builtin_add_overflow(s, delta, &s) || s < 0 ||
		    (uint64_t)s >= slots) {
			rc = corrupt(err, name, "view (slot out of range)");
			goto fail;
		}
		v->slot[k] = (uint64_t)s + 1;
		v->packed++;
		prev = s;
	}
	if (idd_reader_left(&r)) {
		rc = corrupt(err, name, "view (trailing bytes)");
		goto fail;
	}
	free(payload);
	*out = v;
	return IDD_OK;
fail:
	free(payload);
	idd_pack_view_free(v);
	return rc;
}

bool idd_pack_view_find(const idd_pack_view *v, uint64_t k, idd_pack_loc *loc)
{
	if (k >= v->ndistinct || !v->slot[k])
		return false;
	return loc_of_ordinal(v->frames, v->nframes, v->slot[k] - 1, loc);
}

/* ---- writing ---- */

static void put_zigzag_slot(idd_buf *b, int64_t delta)
{
	idd_buf_put_varint(b, (((uint64_t)delta << 1) ^ (uint64_t)(delta >> 63)) + 1);
}

int idd_pack_view_save(const char *index_dir, const idd_pack_view *v, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put(&b, v->list_key.b, 32);
	idd_buf_put_u32(&b, v->block_size);
	idd_buf_put_u32(&b, 0);
	idd_buf_put_u64(&b, v->ndistinct);
	idd_buf_put_u64(&b, v->nfiles);
	for (size_t i = 0; i < v->nfiles; i++) {
		idd_buf_put(&b, v->files[i].name.b, 32);
		idd_buf_put_u64(&b, v->files[i].size);
	}
	idd_buf_put_u64(&b, v->nframes);
	uint64_t prev_file = 0, prev_end = IDD_PACK_DATA_HEADER;
	for (size_t i = 0; i < v->nframes; i++) {
		const idd_pack_frame *f = &v->frames[i];
		if (f->file != prev_file)
			prev_end = IDD_PACK_DATA_HEADER;
		idd_buf_put_varint(&b, f->file);
		idd_buf_put_varint(&b, f->off - prev_end);
		idd_buf_put_varint(&b, f->clen);
		idd_buf_put_varint(&b, f->nblocks);
		prev_file = f->file;
		prev_end = f->off + f->clen;
	}
	int64_t prev = -1;
	for (uint64_t k = 0; k < v->ndistinct; k++) {
		if (!v->slot[k]) {
			idd_buf_put_varint(&b, 0);
			continue;
		}
		int64_t s = (int64_t)(v->slot[k] - 1);
		put_zigzag_slot(&b, s - prev - 1);
		prev = s;
	}
	char *rel = idd_pack_view_relpath(&v->list_key, err);
	char *path = rel ? idd_path_join(index_dir, rel, err) : NULL;
	int rc = b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory writing a pack view")
	         : !path  ? IDD_ENOMEM
	                  : idd_indexfile_write(path, PKV_MAGIC, PK_VERSION, b.data, b.len, true, err);
	free(rel);
	free(path);
	idd_buf_free(&b);
	return rc;
}

/* ---- verify ---- */

static void problem(idd_warn_fn warn, void *ctx, uint64_t *problems, const char *fmt, ...)
	IDD_PRINTF(4, 5);
static void problem(idd_warn_fn warn, void *ctx, uint64_t *problems, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	idd_vwarnf(warn, ctx, fmt, ap);
	va_end(ap);
	(*problems)++;
}

/* Decode every frame of one data file and check its packed blocks (and the
 * file's name, the SHA-256 of its content).  Returns false after the first
 * problem in the file. */
static bool verify_data_deep(const char *path, const idd_pack_index *x, uint32_t file,
                             const unsigned char *const *slot_digest, idd_warn_fn warn, void *ctx,
                             uint64_t *problems)
{
	idd_error e;
	idd_file *f = NULL;
	ZSTD_DCtx *dctx = ZSTD_createDCtx();
	idd_hasher *h = idd_hasher_new(&e);
	EVP_MD_CTX *sha = EVP_MD_CTX_new();
	uint64_t maxc = 0;
	for (size_t i = 0; i < x->nframes; i++)
		if (x->frames[i].file == file)
			maxc = IDD_MAX(maxc, x->frames[i].clen);
	size_t rawmax = (size_t)x->frame_blocks * x->block_size;
	unsigned char *cbuf = maxc <= SIZE_MAX ? malloc((size_t)IDD_MAX(maxc, IDD_PACK_DATA_HEADER)) : NULL;
	unsigned char *raw = malloc(rawmax);
	bool ok = false;
	if (!dctx || !h || !sha || !cbuf || !raw ||
	    EVP_DigestInit_ex(sha, EVP_sha256(), NULL) != 1) {
		problem(warn, ctx, problems, "%s: cannot check (out of memory)", path);
		goto out;
	}
	if (idd_file_open_local(path, &f, &e)) {
		problem(warn, ctx, problems, "%s", e.msg);
		goto out;
	}
	if (f->size != x->files[file].size) {
		problem(warn, ctx, problems, "%s: %llu bytes, the pack index says %llu", path,
		        (unsigned long long)f->size, (unsigned long long)x->files[file].size);
		goto out;
	}
	if (idd_file_pread(f, cbuf, IDD_PACK_DATA_HEADER, 0, &e)) {
		problem(warn, ctx, problems, "%s", e.msg);
		goto out;
	}
	if (idd_le32(cbuf) != IDD_PACK_SKIPPABLE_MAGIC || idd_le32(cbuf + 4) != 24 ||
	    memcmp(cbuf + 8, "IDD-PKD", 8) || idd_le32(cbuf + 16) != PK_VERSION ||
	    idd_le32(cbuf + 20) != x->block_size) {
		problem(warn, ctx, problems, "%s: not a pack data file of this pack (bad header)", path);
		goto out;
	}
	EVP_DigestUpdate(sha, cbuf, IDD_PACK_DATA_HEADER);
	for (size_t i = 0; i < x->nframes; i++) {
		const idd_pack_frame *fr = &x->frames[i];
		if (fr->file != file)
			continue;
		if (idd_file_pread(f, cbuf, (size_t)fr->clen, fr->off, &e) ||
		    idd_pack_frame_decode(dctx, path, cbuf, (size_t)fr->clen, fr->nblocks, x->block_size,
		                          raw, &e)) {
			problem(warn, ctx, problems, "%s (frame at offset %llu)", e.msg,
			        (unsigned long long)fr->off);
			goto out;
		}
		EVP_DigestUpdate(sha, cbuf, (size_t)fr->clen);
		for (uint32_t s = 0; s < fr->nblocks; s++) {
			const unsigned char *want = slot_digest[fr->first + s];
			if (!want)
				continue; /* a block no image holds any more */
			idd_digest got;
			if (idd_hasher_digest(h, raw + (size_t)s * x->block_size, x->block_size, &got, &e) ||
			    memcmp(got.b, want, 32)) {
				problem(warn, ctx, problems,
				        "%s: frame at offset %llu, block %u does not match its digest", path,
				        (unsigned long long)fr->off, s);
				goto out;
			}
		}
	}
	unsigned char sum[32];
	unsigned int n = 0;
	if (EVP_DigestFinal_ex(sha, sum, &n) != 1 || memcmp(sum, x->files[file].name.b, 32)) {
		problem(warn, ctx, problems, "%s: content does not match its name", path);
		goto out;
	}
	ok = true;
out:
	idd_file_close(f);
	free(cbuf);
	free(raw);
	EVP_MD_CTX_free(sha);
	idd_hasher_free(h);
	ZSTD_freeDCtx(dctx);
	return ok;
}

/* A view must list, in map order, every distinct digest of the image's
 * block list, each at the place the pack index gives it. */
static void verify_view_deep(const char *path, const idd_pack_view *v, idd_pack_index *x,
                             const char *index_dir, const idd_image_info *im, idd_warn_fn warn,
                             void *ctx, uint64_t *problems)
{
	idd_error e;
	/* the sparse list: only its non-zero blocks are visited */
	idd_blocklist *bl = NULL;
	if (idd_blocklist_open(index_dir, im, &bl, &e)) {
		problem(warn, ctx, problems, "%s", e.msg);
		return;
	}
	idd_digest_set seen;
	if (idd_digest_set_init(&seen, (size_t)IDD_MIN(im->distinct_blocks + 1, (uint64_t)1 << 24),
	                        false, &e)) {
		problem(warn, ctx, problems, "%s", e.msg);
		idd_blocklist_free(bl);
		return;
	}
	uint64_t k = 0;
	bool bad = false;
	size_t run = 0;
	for (uint64_t q = 0; q < bl->ndata && !bad; q++) {
		while (q >= bl->runs[run].first + bl->runs[run].count)
			run++;
		uint64_t b = bl->runs[run].block + (q - bl->runs[run].first);
		const idd_digest *d = &bl->digests[q];
		bool added;
		if (idd_digest_set_add(&seen, d, &added, &e) == (size_t)-1) {
			problem(warn, ctx, problems, "%s", e.msg);
			bad = true;
			break;
		}
		if (!added)
			continue;
		idd_pack_loc a, b2;
		bool in_view = idd_pack_view_find(v, k, &a), in_pack = idd_pack_lookup(x, d, &b2);
		if (in_view != in_pack ||
		    (in_view && (x->files[b2.file].size != v->files[a.file].size ||
		                 memcmp(x->files[b2.file].name.b, v->files[a.file].name.b, 32) ||
		                 a.off != b2.off || a.clen != b2.clen || a.slot != b2.slot ||
		                 a.nblocks != b2.nblocks))) {
			problem(warn, ctx, problems, "%s: disagrees with the pack index on block %llu of %s",
			        path, (unsigned long long)b, im->id);
			bad = true;
			break;
		}
		k++;
	}
	if (!bad && k != v->ndistinct)
		problem(warn, ctx, problems, "%s: lists %llu digests, %s has %llu", path,
		        (unsigned long long)v->ndistinct, im->id, (unsigned long long)k);
	idd_digest_set_free(&seen);
	idd_blocklist_free(bl);
}

void idd_pack_verify(const char *index_dir, const idd_catalog *cat, bool deep, idd_warn_fn warn,
                     void *ctx, uint64_t *problems)
{
	idd_error e;
	idd_pack_index *x = NULL;
	int rc = idd_pack_index_load(index_dir, &x, &e);
	if (rc == IDD_ENOENT)
		return; /* no pack: it is optional */
	if (rc) {
		problem(warn, ctx, problems, "%s (run 'imgdedup pack' to rebuild it)", e.msg);
		return;
	}
	const unsigned char **slot_digest = NULL;
	if (deep && x->nslots &&
	    !(slot_digest = idd_calloc((size_t)x->nslots, sizeof *slot_digest, &e))) {
		problem(warn, ctx, problems, "%s", e.msg);
		deep = false;
	}
	idd_pack_iter it;
	if (slot_digest && idd_pack_iter_init(&it, x, &e) == IDD_OK) {
		const unsigned char *d;
		uint64_t ord;
		while (idd_pack_iter_next(&it, &d, &ord) > 0)
			slot_digest[ord] = d;
		idd_pack_iter_free(&it);
	}
	/* version 2: the runs and frame tables whole (opening checked their
	 * headers and sizes, and in full those whose files changed), and the
	 * block list kept for each view */
	for (size_t i = 0; deep && x->version >= 2 && i < x->nruns; i++) {
		char *path = idd_pack_run_path(index_dir, x->runs[i].seq, &e);
		if (!path || idd_indexfile_verify(path, IDD_PACK_RUN_MAGIC, IDD_PACK_RUN_VERSION, NULL,
		                                  NULL, &e))
			problem(warn, ctx, problems, "%s (run 'imgdedup pack' to rebuild it)", e.msg);
		free(path);
	}
	for (size_t i = 0; deep && x->version >= 2 && i < x->nfiles; i++) {
		char *rel = idd_pack_ft_relpath(&x->files[i].name, &e);
		char *path = rel ? idd_path_join(index_dir, rel, &e) : NULL;
		if (!path || idd_indexfile_verify(path, IDD_PACK_FT_MAGIC, IDD_PACK_FT_VERSION, NULL,
		                                  NULL, &e))
			problem(warn, ctx, problems, "%s (run 'imgdedup pack' to rebuild it)", e.msg);
		free(rel);
		free(path);
	}
	for (size_t i = 0; x->version >= 2 && i < x->nlists; i++) {
		char *rel = idd_pack_list_relpath(&x->lists[i].list_key, &e);
		char *path = rel ? idd_path_join(index_dir, rel, &e) : NULL;
		struct stat st;
		if (!path)
			problem(warn, ctx, problems, "%s", e.msg);
		else if (stat(path, &st))
			problem(warn, ctx, problems, "%s: missing (run 'imgdedup pack')", path);
		else if (deep && idd_blocklist_check_path(path, &x->lists[i].list_key, NULL, &e))
			problem(warn, ctx, problems, "%s", e.msg);
		free(rel);
		free(path);
	}
	for (uint32_t i = 0; i < x->nfiles; i++) {
		char *rel = idd_pack_data_relpath(&x->files[i].name, &e);
		char *path = rel ? idd_path_join(index_dir, rel, &e) : NULL;
		struct stat st;
		if (!path)
			problem(warn, ctx, problems, "%s", e.msg);
		else if (stat(path, &st))
			problem(warn, ctx, problems, "%s: missing (run 'imgdedup pack')", path);
		else if ((uint64_t)st.st_size != x->files[i].size)
			problem(warn, ctx, problems, "%s: %llu bytes, the pack index says %llu", path,
			        (unsigned long long)st.st_size, (unsigned long long)x->files[i].size);
		else if (deep)
			verify_data_deep(path, x, i, slot_digest, warn, ctx, problems);
		free(rel);
		free(path);
	}
	/* every view the index lists; with deep, those of the catalog's images
	 * against their block lists (a catalog image without a view only means
	 * the pack is older than the index, which is no damage) */
	for (size_t i = 0; i < x->nlists; i++) {
		char *rel = idd_pack_view_relpath(&x->lists[i].list_key, &e);
		char *path = rel ? idd_path_join(index_dir, rel, &e) : NULL;
		void *data = NULL;
		size_t len;
		idd_pack_view *v = NULL;
		if (!path || idd_read_file(path, (size_t)IDD_PACK_MAX_VIEW + 64, &data, &len, &e) ||
		    idd_pack_view_parse(path, data, len, 0, &v, &e)) {
			problem(warn, ctx, problems, "%s (run 'imgdedup pack' to rebuild it)", e.msg);
		} else if (memcmp(v->list_key.b, x->lists[i].list_key.b, 32) || v->block_size != x->block_size) {
			problem(warn, ctx, problems, "%s: a view of another block list", path);
		} else if (deep) {
			for (size_t j = 0; j < cat->count; j++) {
				if (!memcmp(cat->images[j].list_key.b, v->list_key.b, 32)) {
					verify_view_deep(path, v, x, index_dir, &cat->images[j], warn, ctx, problems);
					break;
				}
			}
		}
		idd_pack_view_free(v);
		free(data);
		free(rel);
		free(path);
	}
	free(slot_digest);
	idd_pack_index_free(x);
}

/* ---- info ---- */

int idd_pack_image_summary_get(const char *index_dir, const idd_image_info *im,
                               idd_pack_image_summary *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	out->distinct = im->distinct_blocks;
	char *path = idd_path_join(index_dir, IDD_PACK_INDEX_FILE, err);
	if (!path)
		return IDD_ENOMEM;
	out->has_pack = access(path, F_OK) == 0;
	free(path);
	if (!out->has_pack)
		return IDD_OK;
	char *rel = idd_pack_view_relpath(&im->list_key, err);
	path = rel ? idd_path_join(index_dir, rel, err) : NULL;
	free(rel);
	if (!path)
		return IDD_ENOMEM;
	void *data;
	size_t len;
	int rc = idd_read_file(path, (size_t)IDD_PACK_MAX_VIEW + 64, &data, &len, err);
	if (rc == IDD_ENOENT) {
		free(path);
		return IDD_OK;
	}
	idd_pack_view *v = NULL;
	if (!rc) {
		rc = idd_pack_view_parse(path, data, len, 0, &v, err);
		free(data);
	}
	free(path);
	if (rc)
		return rc;
	if (!memcmp(v->list_key.b, im->list_key.b, 32)) {
		out->has_view = true;
		out->blocks = v->packed;
		out->frames = v->nframes;
		for (size_t i = 0; i < v->nframes; i++)
			out->frame_bytes += v->frames[i].clen;
	}
	idd_pack_view_free(v);
	return IDD_OK;
}
