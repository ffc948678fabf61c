/* catalog.c - the catalog (one entry per indexed image) and the per-image
 * block lists that scan writes.  Layouts: docs/formats.md. */
#include "index/catalog.h"
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
#define BLOCKS_VERSION 1
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
		uint64_t mt, ct, at, nb;
		uint8_t flags;
		if (!idd_get_str(&r, &im->id, MAX_ID) || !idd_get_str(&r, &im->file, MAX_ID) ||
		    !idd_get_str(&r, &im->member, MAX_ID) || !idd_get_str(&r, &im->format, 64) ||
		    !idd_get_str(&r, &im->container, 64) || !idd_get_u8(&r, &flags) ||
		    !idd_get_u64(&r, &im->member_off) ||
		    !idd_get_u64(&r, &im->member_len) || !idd_get_u64(&r, &im->dev) ||
		    !idd_get_u64(&r, &im->ino) || !idd_get_u64(&r, &im->file_size) ||
		    !idd_get_u64(&r, &mt) || !idd_get_u64(&r, &ct) ||
		    !idd_get_u64(&r, &im->virtual_size) || !idd_get_u64(&r, &im->nblocks) ||
		    !idd_get_u64(&r, &im->zero_blocks) || !idd_get_u64(&r, &im->distinct_blocks) ||
		    !idd_get_u64(&r, &at) || !idd_get_bytes(&r, im->list_key.b, IDD_DIGEST_SIZE) ||
		    !idd_get_varint(&r, &nb) || nb > IDD_MAX_BACKING_DEPTH)
			goto corrupt;
		if (nb) {
			im->backing = calloc((size_t)nb, sizeof *im->backing);
			if (!im->backing)
				goto corrupt;
			for (uint64_t k = 0; k < nb; k++) {
				idd_file_ident *b = &im->backing[k];
				uint64_t bm, bc;
				im->nbacking = (size_t)k + 1;
				if (!idd_get_str(&r, &b->path, MAX_ID) || !idd_get_u64(&r, &b->dev) ||
				    !idd_get_u64(&r, &b->ino) || !idd_get_u64(&r, &b->size) ||
				    !idd_get_u64(&r, &bm) || !idd_get_u64(&r, &bc))
					goto corrupt;
				b->mtime_ns = (int64_t)bm;
				b->ctime_ns = (int64_t)bc;
			}
		}
		if (flags & ~1u)
			goto corrupt;
		im->streamed = flags & 1;
		im->mtime_ns = (int64_t)mt;
		im->ctime_ns = (int64_t)ct;
		im->scanned_at = (int64_t)at;
		uint64_t want = im->virtual_size / cat->block_size +
		                (im->virtual_size % cat->block_size != 0);
		if (!im->id[0] || im->nblocks != want || im->zero_blocks > im->nblocks ||
		    im->distinct_blocks > im->nblocks - im->zero_blocks)
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
	return rc;
}

int idd_catalog_save(const char *index_dir, const idd_catalog *cat, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u32(&b, cat->block_size);
	idd_buf_put_u64(&b, cat->generation);
	idd_buf_put_u64(&b, cat->unique_blocks);
	idd_buf_put_u64(&b, cat->count);
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		idd_buf_put_str(&b, im->id);
		idd_buf_put_str(&b, im->file);
		idd_buf_put_str(&b, im->member);
		idd_buf_put_str(&b, im->format);
		idd_buf_put_str(&b, im->container);
		idd_buf_put_u8(&b, im->streamed ? 1 : 0);
		idd_buf_put_u64(&b, im->member_off);
		idd_buf_put_u64(&b, im->member_len);
		idd_buf_put_u64(&b, im->dev);
		idd_buf_put_u64(&b, im->ino);
		idd_buf_put_u64(&b, im->file_size);
		idd_buf_put_u64(&b, (uint64_t)im->mtime_ns);
		idd_buf_put_u64(&b, (uint64_t)im->ctime_ns);
		idd_buf_put_u64(&b, im->virtual_size);
		idd_buf_put_u64(&b, im->nblocks);
		idd_buf_put_u64(&b, im->zero_blocks);
		idd_buf_put_u64(&b, im->distinct_blocks);
		idd_buf_put_u64(&b, (uint64_t)im->scanned_at);
		idd_buf_put(&b, im->list_key.b, IDD_DIGEST_SIZE);
		idd_buf_put_varint(&b, im->nbacking);
		for (size_t k = 0; k < im->nbacking; k++) {
			const idd_file_ident *f = &im->backing[k];
			idd_buf_put_str(&b, f->path);
			idd_buf_put_u64(&b, f->dev);
			idd_buf_put_u64(&b, f->ino);
			idd_buf_put_u64(&b, f->size);
			idd_buf_put_u64(&b, (uint64_t)f->mtime_ns);
			idd_buf_put_u64(&b, (uint64_t)f->ctime_ns);
		}
	}
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

/* Payload: u32 block size, u64 block count, count x 32-byte digests.  The
 * file is named by its own SHA-256 trailer (the list key), so identical
 * content (a renamed image, a copy) is stored once and an existing file is
 * reused; one SHA-256 pass both names and checksums it. */
int idd_blocklist_save(const char *index_dir, uint32_t block_size, const idd_digest *d,
                       uint64_t nblocks, idd_digest *key_out, idd_error *err)
{
	uint64_t bytes;
	if (!idd_mul_ok(nblocks, IDD_DIGEST_SIZE, &bytes) || bytes > IDD_IF_MAX_PAYLOAD - 12)
		return idd_fail(err, "block list too large (%llu blocks)", (unsigned long long)nblocks);
	size_t len = 12 + (size_t)bytes;
	unsigned char *p = idd_malloc(len, err);
	if (!p)
		return IDD_ERR;
	idd_le32_put(p, block_size);
	idd_le64_put(p + 4, nblocks);
	memcpy(p + 12, d, (size_t)bytes);
	char *dir = idd_path_join(index_dir, IDD_BLOCKS_DIR, err);
	int rc = dir ? idd_mkdir_p(dir, err) : IDD_ERR;
	if (!rc)
		rc = idd_indexfile_write_named(dir, BLOCKS_MAGIC, BLOCKS_VERSION, p, len, true, key_out, err);
	free(dir);
	free(p);
	return rc;
}

int idd_blocklist_load(const char *index_dir, const idd_image_info *img, idd_digest **digests,
                       idd_error *err)
{
	char *path = idd_blocks_path(index_dir, &img->list_key, err);
	if (!path)
		return IDD_ERR;
	void *file, *payload = NULL;
	size_t flen, len = 0;
	int rc = idd_read_file(path, (size_t)(IDD_IF_MAX_PAYLOAD + IDD_IF_HEADER + IDD_IF_TRAILER), &file,
	                       &flen, err);
	if (rc) {
		free(path);
		return IDD_ERR;
	}
	uint64_t want = 12;
	if (!idd_mul_ok(img->nblocks, IDD_DIGEST_SIZE, &want) || !idd_add_ok(want, 12, &want))
		want = IDD_IF_MAX_PAYLOAD;
	rc = idd_indexfile_parse_limit(path, file, flen, BLOCKS_MAGIC, BLOCKS_VERSION, want, &payload,
	                               &len, NULL, err);
	/* the name is the checksum: a file moved or copied under another name
	 * is not another image's list */
	if (!rc && memcmp((unsigned char *)file + flen - IDD_IF_TRAILER, img->list_key.b, IDD_DIGEST_SIZE))
		rc = idd_fail(err, "%s: block list is not the one the catalog names for %s", path, img->id);
	free(file);
	if (!rc && (len < 12 || idd_le64((unsigned char *)payload + 4) != img->nblocks ||
	            (len - 12) / IDD_DIGEST_SIZE != img->nblocks || (len - 12) % IDD_DIGEST_SIZE))
		rc = idd_fail(err, "%s: block list does not match the catalog entry of %s", path, img->id);
	if (!rc) {
		idd_digest *d = idd_malloc(len - 12, err);
		if (d) {
			memcpy(d, (unsigned char *)payload + 12, len - 12);
			*digests = d;
		} else {
			rc = IDD_ERR;
		}
	}
	free(payload);
	free(path);
	return rc;
}
