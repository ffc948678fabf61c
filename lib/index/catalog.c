/* catalog.c - the catalog (one entry per indexed image) and the per-image
 * block lists that scan writes.  Layouts: docs/formats.md. */
#include "index/catalog.h"
#include "base/digest.h"
#include "base/util.h"
#include "base/error.h"
#include "index/indexfile.h"
#include "index/repo.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char CATALOG_MAGIC[8] = {'I', 'D', 'D', '-', 'C', 'A', 'T', 0};
static const char BLOCKS_MAGIC[8] = {'I', 'D', 'D', '-', 'B', 'L', 'K', 0};
#define CATALOG_VERSION 1
#define BLOCKS_VERSION IDD_BLOCKLIST_VERSION
#define MAX_ID 4096

int idd_index_path(const char *repo, const char *index_opt, char **out, idd_error *err)
{
	if (!index_opt && !strncasecmp(repo, "s3://", 5)) {
		*out = NULL;
		return idd_fail(err, "%s: a repository in an object store keeps its index in a local "
		                "directory: give --index DIR", repo);
	}
	*out = index_opt ? idd_strdup(index_opt, err) : idd_path_join(repo, IDD_INDEX_SUBDIR, err);
	return *out ? IDD_OK : IDD_ERR;
}

void idd_image_info_free(idd_image_info *im)
{
	for (size_t i = 0; i < im->nbacking; i++)
		free(im->backing[i].path);
	free(im->backing);
	free(im->id);
	free(im->file);
	free(im->member);
	free(im->format);
	free(im->container);
	memset(im, 0, sizeof *im);
}

int idd_image_info_copy(idd_image_info *dst, const idd_image_info *src, idd_error *err)
{
	*dst = *src;
	dst->id = strdup(src->id);
	dst->file = strdup(src->file);
	dst->member = strdup(src->member);
	dst->format = strdup(src->format);
	dst->container = strdup(src->container);
	dst->backing = NULL;
	dst->nbacking = 0;
	bool ok = true;
	if (src->nbacking) {
		dst->backing = calloc(src->nbacking, sizeof *dst->backing);
		ok = dst->backing != NULL;
		for (size_t i = 0; ok && i < src->nbacking; i++) {
			dst->backing[i] = src->backing[i];
			dst->backing[i].path = strdup(src->backing[i].path);
			ok = dst->backing[i].path != NULL;
			dst->nbacking = i + 1;
		}
	}
	if (!ok || !dst->id || !dst->file || !dst->member || !dst->format || !dst->container) {
		idd_image_info_free(dst);
		return idd_fail(err, "out of memory");
	}
	return IDD_OK;
}

void idd_catalog_free(idd_catalog *cat)
{
	if (!cat)
		return;
	for (size_t i = 0; i < cat->count; i++)
		idd_image_info_free(&cat->images[i]);
	free(cat->images);
	free(cat);
}

static int cmp_id(const void *a, const void *b)
{
	return strcmp(((const idd_image_info *)a)->id, ((const idd_image_info *)b)->id);
}

const idd_image_info *idd_catalog_find(const idd_catalog *cat, const char *id)
{
	idd_image_info key = {.id = (char *)id};
	return cat->count ? bsearch(&key, cat->images, cat->count, sizeof key, cmp_id) : NULL;
}

bool idd_catalog_get_record(idd_reader *r, uint32_t block_size, idd_image_info *im)
{
	uint64_t mt, ct, at, nb;
	uint8_t flags;
	if (!idd_get_str(r, &im->id, MAX_ID) || !idd_get_str(r, &im->file, MAX_ID) ||
	    !idd_get_str(r, &im->member, MAX_ID) || !idd_get_str(r, &im->format, 64) ||
	    !idd_get_str(r, &im->container, 64) || !idd_get_u8(r, &flags) ||
	    !idd_get_u64(r, &im->member_off) ||
	    !idd_get_u64(r, &im->member_len) || !idd_get_u64(r, &im->dev) ||
	    !idd_get_u64(r, &im->ino) || !idd_get_u64(r, &im->file_size) ||
	    !idd_get_u64(r, &mt) || !idd_get_u64(r, &ct) ||
	    !idd_get_u64(r, &im->virtual_size) || !idd_get_u64(r, &im->nblocks) ||
	    !idd_get_u64(r, &im->zero_blocks) || !idd_get_u64(r, &im->distinct_blocks) ||
	    !idd_get_u64(r, &at) || !idd_get_bytes(r, im->list_key.b, IDD_DIGEST_SIZE) ||
	    !idd_get_varint(r, &nb) || nb > IDD_MAX_BACKING_DEPTH)
		return false;
	if (nb) {
		/* each backing record takes at least 41 bytes */
		if (nb > idd_reader_left(r) / 41 || !(im->backing = calloc((size_t)nb, sizeof *im->backing)))
			return false;
		for (uint64_t k = 0; k < nb; k++) {
			idd_file_ident *b = &im->backing[k];
			uint64_t bm, bc;
			im->nbacking = (size_t)k + 1;
			if (!idd_get_str(r, &b->path, MAX_ID) || !idd_get_u64(r, &b->dev) ||
			    !idd_get_u64(r, &b->ino) || !idd_get_u64(r, &b->size) ||
			    !idd_get_u64(r, &bm) || !idd_get_u64(r, &bc))
				return false;
			b->mtime_ns = (int64_t)bm;
			b->ctime_ns = (int64_t)bc;
		}
	}
	if (flags & ~1u)
		return false;
	im->streamed = flags & 1;
	im->mtime_ns = (int64_t)mt;
	im->ctime_ns = (int64_t)ct;
	im->scanned_at = (int64_t)at;
	uint64_t want = im->virtual_size / block_size + (im->virtual_size % block_size != 0);
	return im->id[0] && im->nblocks == want && im->zero_blocks <= im->nblocks &&
	       im->distinct_blocks <= im->nblocks - im->zero_blocks;
}

int idd_catalog_parse(const char *name, const void *payload, size_t len, idd_catalog **out,
                      idd_error *err)
{
	idd_reader r;
	idd_reader_init(&r, payload, len);
	idd_catalog *cat = idd_calloc(1, sizeof *cat, err);
	if (!cat)
		return IDD_ERR;
	uint64_t count = 0;
	if (!idd_get_u32(&r, &cat->block_size) || !idd_get_u64(&r, &cat->generation) ||
	    !idd_get_u64(&r, &cat->unique_blocks) || !idd_get_u64(&r, &count))
		goto corrupt;
	if (!idd_is_power_of_two(cat->block_size) || cat->block_size < IDD_MIN_BLOCK_SIZE ||
	    cat->block_size > IDD_MAX_BLOCK_SIZE) {
		uint32_t bs = cat->block_size;
		idd_catalog_free(cat);
		return idd_fail(err, "%s: corrupt catalog (block size %u)", name, bs);
	}
	/* each entry takes at least 130 bytes: bound count before allocating */
	if (count > idd_reader_left(&r) / 130 + 1)
		goto corrupt;
	cat->images = idd_calloc((size_t)count, sizeof *cat->images, err);
	if (!cat->images) {
		idd_catalog_free(cat);
		return IDD_ERR;
	}
	for (uint64_t i = 0; i < count; i++) {
		idd_image_info *im = &cat->images[i];
		cat->count = (size_t)i + 1;
		if (!idd_catalog_get_record(&r, cat->block_size, im))
			goto corrupt;
		if (i && strcmp(cat->images[i - 1].id, im->id) >= 0)
			goto corrupt; /* ids are sorted and unique */
	}
	if (idd_reader_left(&r))
		goto corrupt;
	*out = cat;
	return IDD_OK;
corrupt:
	idd_catalog_free(cat);
	return idd_fail(err, "%s: corrupt catalog (inconsistent contents)", name);
}

int idd_catalog_parse_file(const char *name, const void *file, size_t len, idd_catalog **out,
                           idd_error *err)
{
	void *payload;
	size_t plen;
	if (idd_indexfile_parse(name, file, len, CATALOG_MAGIC, CATALOG_VERSION, &payload, &plen, NULL, err))
		return IDD_ERR;
	int rc = idd_catalog_parse(name, payload, plen, out, err);
	free(payload);
	return rc;
}

void (*idd_catalog_load_hook)(void *ctx, const char *index_dir);
void *idd_catalog_load_hook_ctx;

int idd_catalog_load(const char *index_dir, idd_catalog **out, idd_error *err)
{
	char *path = idd_path_join(index_dir, IDD_CATALOG_FILE, err);
	if (!path)
		return IDD_ERR;
	void *payload;
	size_t len;
	int rc = idd_indexfile_read(path, CATALOG_MAGIC, CATALOG_VERSION, &payload, &len, NULL, err);
	if (rc == IDD_ENOENT) {
		idd_fail(err, "%s: no index here (run 'imgdedup scan' first)", index_dir);
	} else if (rc == IDD_OK) {
		rc = idd_catalog_parse(path, payload, len, out, err);
		free(payload);
	}
	free(path);
	if (!rc && idd_catalog_load_hook)
		idd_catalog_load_hook(idd_catalog_load_hook_ctx, index_dir);
	return rc;
}

int idd_blocklist_open_id(const char *index_dir, const char *id, idd_blocklist **out,
                          idd_error *err)
{
	for (int attempt = 0;; attempt++) {
		idd_catalog *cat;
		int rc = idd_catalog_load(index_dir, &cat, err);
		if (rc)
			return rc;
		const idd_image_info *im = idd_catalog_find(cat, id);
		if (!im) {
			idd_catalog_free(cat);
			return idd_fail_code(err, IDD_ENOENT, "%s: no image '%s' in the index", index_dir, id);
		}
		rc = idd_blocklist_open(index_dir, im, out, err);
		idd_catalog_free(cat);
		/* vanished: a scan replaced the catalog and collected the list
		 * after we read the catalog; the new catalog names the new list */
		if (rc != IDD_ENOENT || attempt == 2)
			return rc;
	}
}

void idd_catalog_put_record(idd_buf *b, const idd_image_info *im)
{
	idd_buf_put_str(b, im->id);
	idd_buf_put_str(b, im->file);
	idd_buf_put_str(b, im->member);
	idd_buf_put_str(b, im->format);
	idd_buf_put_str(b, im->container);
	idd_buf_put_u8(b, im->streamed ? 1 : 0);
	idd_buf_put_u64(b, im->member_off);
	idd_buf_put_u64(b, im->member_len);
	idd_buf_put_u64(b, im->dev);
	idd_buf_put_u64(b, im->ino);
	idd_buf_put_u64(b, im->file_size);
	idd_buf_put_u64(b, (uint64_t)im->mtime_ns);
	idd_buf_put_u64(b, (uint64_t)im->ctime_ns);
	idd_buf_put_u64(b, im->virtual_size);
	idd_buf_put_u64(b, im->nblocks);
	idd_buf_put_u64(b, im->zero_blocks);
	idd_buf_put_u64(b, im->distinct_blocks);
	idd_buf_put_u64(b, (uint64_t)im->scanned_at);
	idd_buf_put(b, im->list_key.b, IDD_DIGEST_SIZE);
	idd_buf_put_varint(b, im->nbacking);
	for (size_t k = 0; k < im->nbacking; k++) {
		const idd_file_ident *f = &im->backing[k];
		idd_buf_put_str(b, f->path);
		idd_buf_put_u64(b, f->dev);
		idd_buf_put_u64(b, f->ino);
		idd_buf_put_u64(b, f->size);
		idd_buf_put_u64(b, (uint64_t)f->mtime_ns);
		idd_buf_put_u64(b, (uint64_t)f->ctime_ns);
	}
}

int idd_catalog_save(const char *index_dir, const idd_catalog *cat, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u32(&b, cat->block_size);
	idd_buf_put_u64(&b, cat->generation);
	idd_buf_put_u64(&b, cat->unique_blocks);
	idd_buf_put_u64(&b, cat->count);
	for (size_t i = 0; i < cat->count; i++)
		idd_catalog_put_record(&b, &cat->images[i]);
	if (b.failed) {
		idd_buf_free(&b);
		return idd_fail(err, "out of memory building the catalog");
	}
	char *path = idd_path_join(index_dir, IDD_CATALOG_FILE, err);
	int rc = path ? idd_indexfile_write(path, CATALOG_MAGIC, CATALOG_VERSION, b.data, b.len, true, err)
	              : IDD_ERR;
	free(path);
	idd_buf_free(&b);
	return rc;
}

char *idd_blocks_path(const char *index_dir, const idd_digest *key, idd_error *err)
{
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(key, hex);
	return idd_asprintf(err, "%s/%s/%s", index_dir, IDD_BLOCKS_DIR, hex);
}

/* ---- block lists: sparse in memory and on disk ---- */

void idd_blocklist_init(idd_blocklist *bl, uint32_t block_size)
{
	memset(bl, 0, sizeof *bl);
	bl->block_size = block_size;
}

void idd_blocklist_clear(idd_blocklist *bl)
{
	if (bl->storage)
		free(bl->storage);
	else if (!bl->borrowed)
		free(bl->digests);
	free(bl->runs);
	uint32_t bs = bl->block_size;
	idd_blocklist_init(bl, bs);
}

void idd_blocklist_free(idd_blocklist *bl)
{
	if (!bl)
		return;
	idd_blocklist_clear(bl);
	free(bl);
}

int idd_blocklist_append(idd_blocklist *bl, uint64_t block, const idd_digest *d, uint64_t n,
                         idd_error *err)
{
	uint64_t end;
	if (block < bl->nblocks || !idd_add_ok(block, n, &end))
		return idd_fail(err, "block list: blocks appended out of order (%llu after %llu)",
		                (unsigned long long)block, (unsigned long long)bl->nblocks);
	for (uint64_t i = 0; i < n; i++) {
		if (idd_digest_is_zero(&d[i]))
			continue;
		uint64_t b = block + i;
		idd_block_run *last = bl->nruns ? &bl->runs[bl->nruns - 1] : NULL;
		if (!last || last->block + last->count != b) {
			if (bl->nruns == bl->runs_cap) {
				size_t nc = bl->runs_cap ? bl->runs_cap * 2 : 16;
				idd_block_run *v = idd_realloc_array(bl->runs, nc, sizeof *v, err);
				if (!v)
					return IDD_ENOMEM;
				bl->runs = v;
				bl->runs_cap = nc;
			}
			bl->runs[bl->nruns++] = (idd_block_run){b, 0, bl->ndata};
			last = &bl->runs[bl->nruns - 1];
		}
		if (bl->ndata == bl->digests_cap) {
			size_t nc = bl->digests_cap ? bl->digests_cap * 2 : 256;
			idd_digest *v = idd_realloc_array(bl->digests, nc, sizeof *v, err);
			if (!v)
				return IDD_ENOMEM;
			bl->digests = v;
			bl->digests_cap = nc;
		}
		bl->digests[bl->ndata++] = d[i];
		last->count++;
	}
	bl->nblocks = end;
	return IDD_OK;
}

int idd_blocklist_finish(idd_blocklist *bl, uint64_t nblocks, idd_error *err)
{
	if (nblocks < bl->nblocks)
		return idd_fail(err, "block list: %llu blocks appended to an image of %llu",
		                (unsigned long long)bl->nblocks, (unsigned long long)nblocks);
	bl->nblocks = nblocks;
	return IDD_OK;
}

uint64_t idd_blocklist_nblocks(const idd_blocklist *bl)
{
	return bl->nblocks;
}

uint32_t idd_blocklist_block_size(const idd_blocklist *bl)
{
	return bl->block_size;
}

size_t idd_blocklist_run_after(const idd_blocklist *bl, uint64_t b)
{
	size_t lo = 0, hi = bl->nruns;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (bl->runs[mid].block + bl->runs[mid].count <= b)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

const idd_digest *idd_blocklist_get(const idd_blocklist *bl, uint64_t b)
{
	size_t r = idd_blocklist_run_after(bl, b);
	if (r == bl->nruns || bl->runs[r].block > b)
		return NULL;
	return &bl->digests[bl->runs[r].first + (b - bl->runs[r].block)];
}

/* Version 2 payload (docs/formats.md): u32 block size, u64 blocks, u64
 * non-zero blocks, u64 runs, per run varint gap (zero blocks before it) and
 * varint count, then the non-zero blocks' digests in block order.  A zero
 * run costs two varints, whatever its length.  The file is named by its
 * own SHA-256 trailer (the list key), so identical content (a renamed
 * image, a copy) is stored once and an existing file is reused; one
 * SHA-256 pass both names and checksums it. */
int idd_blocklist_write(const char *index_dir, const idd_blocklist *bl, idd_digest *key_out,
                        idd_error *err)
{
	uint64_t bytes;
	if (!idd_mul_ok(bl->ndata, IDD_DIGEST_SIZE, &bytes) || bytes > IDD_IF_MAX_PAYLOAD / 2)
		return idd_fail(err, "block list too large (%llu non-zero blocks)", (unsigned long long)bl->ndata);
	idd_buf b = {0};
	if (idd_buf_reserve(&b, (size_t)bytes + 28 + bl->nruns * 4))
		return idd_fail(err, "out of memory writing a block list of %llu non-zero blocks",
		                (unsigned long long)bl->ndata);
	idd_buf_put_u32(&b, bl->block_size);
	idd_buf_put_u64(&b, bl->nblocks);
	idd_buf_put_u64(&b, bl->ndata);
	idd_buf_put_u64(&b, bl->nruns);
	uint64_t end = 0;
	for (size_t i = 0; i < bl->nruns; i++) {
		idd_buf_put_varint(&b, bl->runs[i].block - end);
		idd_buf_put_varint(&b, bl->runs[i].count);
		end = bl->runs[i].block + bl->runs[i].count;
	}
	idd_buf_put(&b, bl->digests, (size_t)bytes);
	if (b.failed) {
		idd_buf_free(&b);
		return idd_fail(err, "out of memory writing a block list of %llu non-zero blocks",
		                (unsigned long long)bl->ndata);
	}
	char *dir = idd_path_join(index_dir, IDD_BLOCKS_DIR, err);
	int rc = dir ? idd_mkdir_p(dir, err) : IDD_ERR;
	if (!rc)
		rc = idd_indexfile_write_named(dir, BLOCKS_MAGIC, BLOCKS_VERSION, b.data, b.len, true,
		                               key_out, err);
	free(dir);
	idd_buf_free(&b);
	return rc;
}

int idd_blocklist_save(const char *index_dir, uint32_t block_size, const idd_digest *d,
                       uint64_t nblocks, idd_digest *key_out, idd_error *err)
{
	idd_blocklist bl;
	idd_blocklist_init(&bl, block_size);
	int rc = idd_blocklist_append(&bl, 0, d, nblocks, err);
	if (!rc)
		rc = idd_blocklist_write(index_dir, &bl, key_out, err);
	idd_blocklist_clear(&bl);
	return rc;
}

/* Version 1 (dense, written by imgdedup before 0.2): u32 block size, u64
 * blocks, one digest per block.  Read into the sparse form. */
static int parse_v1(const char *name, const unsigned char *p, size_t len, idd_blocklist *bl,
                    idd_error *err)
{
	if (len < 12 || (len - 12) % IDD_DIGEST_SIZE || idd_le64(p + 4) != (len - 12) / IDD_DIGEST_SIZE)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block list (length)", name);
	idd_blocklist_init(bl, idd_le32(p));
	int rc = idd_blocklist_append(bl, 0, (const idd_digest *)(p + 12), idd_le64(p + 4), err);
	if (rc)
		idd_error_prefix(err, "%s", name);
	return rc;
}

static int parse_v2(const char *name, unsigned char *p, size_t len, idd_blocklist *bl,
                    idd_error *err)
{
	idd_reader r;
	idd_reader_init(&r, p, len);
	uint64_t nblocks, ndata, nruns;
	const char *why = "short header";
	idd_blocklist_init(bl, 0);
	if (!idd_get_u32(&r, &bl->block_size) || !idd_get_u64(&r, &nblocks) ||
	    !idd_get_u64(&r, &ndata) || !idd_get_u64(&r, &nruns))
		goto corrupt;
	why = "counts larger than the file";
	if (ndata > nblocks || nruns > ndata || nruns > idd_reader_left(&r) / 2 ||
	    ndata > idd_reader_left(&r) / IDD_DIGEST_SIZE)
		goto corrupt;
	if (nruns && !(bl->runs = idd_calloc((size_t)nruns, sizeof *bl->runs, err))) {
		idd_error_prefix(err, "%s", name);
		return IDD_ENOMEM;
	}
	uint64_t end = 0, sum = 0;
	for (uint64_t i = 0; i < nruns; i++) {
		uint64_t gap, count, block;
		why = "truncated run";
		if (!idd_get_varint(&r, &gap) || !idd_get_varint(&r, &count))
			goto corrupt;
		why = "run empty, touching the previous one, or past the end";
		if (count == 0 || (i && gap == 0) || !idd_add_ok(end, gap, &block) ||
		    !idd_add_ok(block, count, &end) || end > nblocks || count > ndata - sum)
			goto corrupt;
		bl->runs[i] = (idd_block_run){block, count, sum};
		sum += count;
	}
	bl->nruns = (size_t)nruns;
	why = "digest count disagrees with the runs";
	if (sum != ndata || idd_reader_left(&r) != ndata * IDD_DIGEST_SIZE)
		goto corrupt;
	bl->digests = (idd_digest *)(p + r.pos);
	why = "zero digest for a non-zero block";
	for (uint64_t k = 0; k < ndata; k++) {
		uint64_t w[4]; /* inline: this runs for every block of every list read */
		memcpy(w, bl->digests[k].b, sizeof w);
		if (!(w[0] | w[1] | w[2] | w[3]))
			goto corrupt;
	}
	bl->nblocks = nblocks;
	bl->ndata = ndata;
	bl->storage = p;
	return IDD_OK;
corrupt:
	free(bl->runs);
	idd_blocklist_init(bl, 0);
	return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block list (%s)", name, why);
}

/* Parse into bl; with pbuf, the payload goes into the caller's reusable
 * buffer and a version 2 list borrows it (bl->borrowed). */
static int blocklist_parse(const char *name, const void *file, size_t flen, uint64_t nblocks,
                           uint64_t zero_blocks, void **pbuf, size_t *pcap, idd_blocklist *bl,
                           idd_error *err)
{
	/* The payload a list of this image can need, by version, so that a
	 * header declaring more is refused before anything is allocated. */
	uint64_t ndata = zero_blocks <= nblocks ? nblocks - zero_blocks : nblocks, limit;
	uint32_t ver = flen >= 12 ? idd_le32((const unsigned char *)file + 8) : 0;
	if (ver == 1) {
		if (!idd_mul_ok(nblocks, IDD_DIGEST_SIZE, &limit) || !idd_add_ok(limit, 12, &limit))
			limit = IDD_IF_MAX_PAYLOAD;
	} else if (!idd_mul_ok(ndata, IDD_DIGEST_SIZE + 20, &limit) || !idd_add_ok(limit, 28, &limit)) {
		limit = IDD_IF_MAX_PAYLOAD;
	}
	void *own = NULL;
	size_t own_cap = 0, len = 0;
	unsigned char *p;
	int rc;
	if (pbuf) {
		/* uncompressed (digests do not compress): read in place, no copy */
		const void *view;
		rc = idd_indexfile_parse_view(name, file, flen, BLOCKS_MAGIC, BLOCKS_VERSION, IDD_MAX(limit, 1),
		                              pbuf, pcap, &view, &len, &ver, err);
		p = (unsigned char *)(uintptr_t)view;
	} else {
		rc = idd_indexfile_parse_reuse(name, file, flen, BLOCKS_MAGIC, BLOCKS_VERSION, IDD_MAX(limit, 1),
		                               &own, &own_cap, &len, &ver, err);
		p = own;
	}
	if (rc) {
		free(own);
		return rc;
	}
	memset(bl, 0, sizeof *bl);
	if (ver == 1) {
		rc = parse_v1(name, p, len, bl, err);
		free(own);
	} else {
		rc = parse_v2(name, p, len, bl, err);
		if (rc)
			free(own);
		else if (pbuf) {
			bl->storage = NULL;
			bl->borrowed = true;
		}
	}
	if (!rc && (bl->nblocks != nblocks || bl->nblocks - bl->ndata != zero_blocks ||
	            !idd_is_power_of_two(bl->block_size)))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: block list does not match its catalog entry "
		                   "(%llu blocks, %llu zero; the catalog says %llu, %llu)", name,
		                   (unsigned long long)bl->nblocks,
		                   (unsigned long long)(bl->nblocks - bl->ndata),
		                   (unsigned long long)nblocks, (unsigned long long)zero_blocks);
	if (rc)
		idd_blocklist_clear(bl);
	return rc;
}

int idd_blocklist_parse(const char *name, const void *file, size_t flen, uint64_t nblocks,
                        uint64_t zero_blocks, idd_blocklist **out, idd_error *err)
{
	idd_blocklist *bl = idd_calloc(1, sizeof *bl, err);
	if (!bl) {
		idd_error_prefix(err, "%s", name);
		return IDD_ENOMEM;
	}
	int rc = blocklist_parse(name, file, flen, nblocks, zero_blocks, NULL, NULL, bl, err);
	if (rc) {
		free(bl);
		return rc;
	}
	*out = bl;
	return IDD_OK;
}

int idd_blocklist_open_reuse(const char *index_dir, const idd_image_info *img,
                             idd_blocklist_buffers *bufs, idd_blocklist *bl, idd_error *err)
{
	memset(bl, 0, sizeof *bl);
	char *path = idd_blocks_path(index_dir, &img->list_key, err);
	if (!path)
		return IDD_ERR;
	size_t flen;
	int rc = idd_read_file_reuse(path, (size_t)(IDD_IF_MAX_PAYLOAD + IDD_IF_HEADER + IDD_IF_TRAILER),
	                             &bufs->file, &bufs->file_cap, &flen, err);
	if (rc) {
		free(path);
		return rc;
	}
	if (flen < IDD_IF_TRAILER ||
	    memcmp((unsigned char *)bufs->file + flen - IDD_IF_TRAILER, img->list_key.b, IDD_DIGEST_SIZE))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: block list is not the one the catalog names for %s",
		                   path, img->id);
	if (!rc)
		rc = blocklist_parse(path, bufs->file, flen, img->nblocks, img->zero_blocks, &bufs->payload,
		                     &bufs->payload_cap, bl, err);
	if (rc && rc != IDD_ENOENT)
		idd_error_prefix(err, "%s", img->id);
	free(path);
	return rc;
}

void idd_blocklist_buffers_free(idd_blocklist_buffers *b)
{
	free(b->file);
	free(b->payload);
	memset(b, 0, sizeof *b);
}

int idd_blocklist_open_path(const char *path, const idd_image_info *img, idd_blocklist **out,
                            idd_error *err)
{
	void *file;
	size_t flen;
	int rc = idd_read_file(path, (size_t)(IDD_IF_MAX_PAYLOAD + IDD_IF_HEADER + IDD_IF_TRAILER), &file,
	                       &flen, err);
	if (rc)
		return rc;
	/* the name is the checksum: a file moved or copied under another name
	 * is not another image's list */
	if (flen < IDD_IF_TRAILER ||
	    memcmp((unsigned char *)file + flen - IDD_IF_TRAILER, img->list_key.b, IDD_DIGEST_SIZE))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: block list is not the one the catalog names for %s",
		                   path, img->id);
	if (!rc)
		rc = idd_blocklist_parse(path, file, flen, img->nblocks, img->zero_blocks, out, err);
	if (rc && rc != IDD_ENOENT)
		idd_error_prefix(err, "%s", img->id);
	free(file);
	return rc;
}

int idd_blocklist_open(const char *index_dir, const idd_image_info *img, idd_blocklist **out,
                       idd_error *err)
{
	char *path = idd_blocks_path(index_dir, &img->list_key, err);
	if (!path)
		return IDD_ERR;
	int rc = idd_blocklist_open_path(path, img, out, err);
	free(path);
	return rc;
}

int idd_blocklist_check_path(const char *path, const idd_digest *list_key, uint32_t *version,
                             idd_error *err)
{
	idd_digest sum;
	int rc = idd_indexfile_verify(path, BLOCKS_MAGIC, BLOCKS_VERSION, &sum, version, err);
	if (!rc && memcmp(sum.b, list_key->b, IDD_DIGEST_SIZE))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: not the block list it is named after", path);
	return rc;
}

int idd_blocklist_check(const char *index_dir, const idd_image_info *img, uint32_t *version,
                        idd_error *err)
{
	char *path = idd_blocks_path(index_dir, &img->list_key, err);
	if (!path)
		return IDD_ERR;
	idd_digest sum;
	int rc = idd_indexfile_verify(path, BLOCKS_MAGIC, BLOCKS_VERSION, &sum, version, err);
	if (!rc && memcmp(sum.b, img->list_key.b, IDD_DIGEST_SIZE))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: block list is not the one the catalog names for %s",
		                   path, img->id);
	free(path);
	return rc;
}

int idd_blocklist_load(const char *index_dir, const idd_image_info *img, idd_digest **digests,
                       idd_error *err)
{
	idd_blocklist *bl;
	int rc = idd_blocklist_open(index_dir, img, &bl, err);
	if (rc)
		return rc;
	idd_digest *d = idd_calloc((size_t)IDD_MAX(bl->nblocks, 1), sizeof *d, err);
	if (!d || bl->nblocks > SIZE_MAX / sizeof *d) {
		free(d);
		idd_blocklist_free(bl);
		return idd_fail_code(err, IDD_ENOMEM, "%s: out of memory expanding its %llu blocks",
		                     img->id, (unsigned long long)img->nblocks);
	}
	for (size_t i = 0; i < bl->nruns; i++)
		memcpy(&d[bl->runs[i].block], &bl->digests[bl->runs[i].first],
		       (size_t)bl->runs[i].count * sizeof *d);
	idd_blocklist_free(bl);
	*digests = d;
	return IDD_OK;
}

int idd_catalog_key(const idd_catalog *cat, idd_digest *key, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u32(&b, cat->block_size);
	for (size_t i = 0; i < cat->count; i++) {
		idd_buf_put_str(&b, cat->images[i].id);
		idd_buf_put(&b, cat->images[i].list_key.b, 32);
	}
	int rc = b.failed ? idd_fail(err, "out of memory") : idd_sha256(b.data, b.len, key->b, err);
	idd_buf_free(&b);
	return rc;
}
