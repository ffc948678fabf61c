/* image.c - images as virtual disks: format detection, the raw format, and
 * reading virtual bytes through any format's extents. */
#include "formats/image.h"
#include "base/util.h"
#include "base/error.h"
#include "base/file.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>

static const char *const disk_suffixes[] = {".raw", ".img", ".qcow2", ".qcow"};

bool idd_image_name_matches(const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < IDD_ARRAY_LEN(disk_suffixes); i++) {
		size_t k = strlen(disk_suffixes[i]);
		if (n > k && strcmp(name + n - k, disk_suffixes[i]) == 0)
			return true;
	}
	return false;
}

/* ---- raw: the file is the disk; holes are zero extents ---- */

static int raw_extent(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err)
{
	uint64_t d, e;
	if (idd_file_next_data(img->file, voff, &d, &e, err))
		return IDD_ERR;
	memset(ext, 0, sizeof *ext);
	ext->voff = voff;
	if (d > voff) { /* in a hole up to d */
		ext->kind = IDD_EXT_ZERO;
		ext->vlen = d - voff;
	} else {
		ext->kind = IDD_EXT_DATA;
		ext->vlen = e - voff;
		ext->file_off = voff;
		ext->file_len = ext->vlen;
	}
	return IDD_OK;
}

static int raw_read(idd_image *img, uint64_t voff, void *buf, size_t len, idd_error *err)
{
	/* Holes read as zeros from the kernel too; one pread is the fast path. */
	return idd_file_pread(img->file, buf, len, voff, err);
}

static const struct idd_image_ops raw_ops = {raw_extent, raw_read, NULL};

static int raw_probe(const unsigned char *head, size_t len)
{
	(void)head;
	(void)len;
	return IDD_BID_ANYTHING;
}

static int raw_open(idd_image *img, idd_error *err)
{
	(void)err;
	img->ops = &raw_ops;
	img->size = img->file->size;
	return IDD_OK;
}

const idd_image_format idd_format_raw = {"raw", raw_probe, raw_open};

/* ---- the format table ---- */

static const idd_image_format *const formats[] = {
	&idd_format_qcow2,
	&idd_format_vmdk,
	&idd_format_raw,
};

const idd_image_format *const *idd_image_formats(size_t *n)
{
	*n = IDD_ARRAY_LEN(formats);
	return formats;
}

const idd_image_format *idd_image_format_detect(const unsigned char *head, size_t len)
{
	const idd_image_format *best = &idd_format_raw;
	int best_bid = 0;
	for (size_t i = 0; i < IDD_ARRAY_LEN(formats); i++) {
		int bid = formats[i]->probe(head, len);
		if (bid > best_bid) {
			best = formats[i];
			best_bid = bid;
		}
	}
	return best;
}

/* Open f at chain depth `depth` (0: the image asked for). */
static int image_open(idd_file *f, bool owns_file, idd_backing_open_fn backing_open,
                      void *backing_ctx, int depth, idd_image **out, idd_error *err)
{
	unsigned char head[IDD_PROBE_BYTES];
	size_t hl = (size_t)IDD_MIN(f->size, (uint64_t)sizeof head);
	if (hl && idd_file_pread(f, head, hl, 0, err)) {
		if (owns_file)
			idd_file_close(f);
		return IDD_ERR;
	}
	idd_image *img = idd_calloc(1, sizeof *img, err);
	if (!img) {
		if (owns_file)
			idd_file_close(f);
		return IDD_ERR;
	}
	const idd_image_format *fmt = idd_image_format_detect(head, hl);
	img->file = f;
	img->owns_file = owns_file;
	img->format = fmt->name;
	img->depth = depth;
	img->backing_open = backing_open;
	img->backing_ctx = backing_ctx;
	int rc = fmt->open(img, err);
	if (rc) {
		if (owns_file)
			idd_file_close(f);
		free(img);
		return rc;
	}
	*out = img;
	return IDD_OK;
}

int idd_image_open(idd_file *f, bool owns_file, idd_backing_open_fn backing_open, void *backing_ctx,
                   idd_image **out, idd_error *err)
{
	return image_open(f, owns_file, backing_open, backing_ctx, 0, out, err);
}

int idd_image_open_backing(idd_image *img, const char *name, const char *format, idd_image **out,
                           idd_error *err)
{
	const char *fn = img->file->name;
	if (!img->backing_open)
		return idd_fail(err, "%s: %s has a backing file '%s', which cannot be resolved here "
		                "(images inside archives must be self-contained)", fn, img->format, name);
	if (img->depth >= IDD_MAX_BACKING_DEPTH)
		return idd_fail(err, "%s: backing chain longer than %d images (a cycle?)", fn,
		                IDD_MAX_BACKING_DEPTH);
	/* Only the top of the chain names its file: inner levels already did. */
	idd_file *bf;
	if (img->backing_open(img->backing_ctx, name, &bf, err)) {
		if (!img->depth)
			idd_error_prefix(err, "%s: backing file", fn);
		return IDD_ERR;
	}
	idd_image *b;
	if (image_open(bf, true, img->backing_open, img->backing_ctx, img->depth + 1, &b, err)) {
		if (!img->depth)
			idd_error_prefix(err, "%s: backing file %s", fn, name);
		return IDD_ERR;
	}
	if (format && format[0] && strcmp(format, b->format) != 0) {
		idd_fail(err, "%s: backing file %s is %s but the image says %s; refused", fn, name,
		         b->format, format);
		idd_image_close(b);
		return IDD_ERR;
	}
	*out = b;
	return IDD_OK;
}

void idd_image_close(idd_image *img)
{
	if (!img)
		return;
	if (img->ops && img->ops->close)
		img->ops->close(img);
	if (img->owns_file)
		idd_file_close(img->file);
	free(img);
}

int idd_image_extent(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err)
{
	if (voff >= img->size)
		return idd_fail(err, "%s: offset %llu is past the end of the disk", img->file->name,
		                (unsigned long long)voff);
	if (img->ops->extent(img, voff, ext, err))
		return IDD_ERR;
	/* Formats are untrusted code paths over untrusted data: insist on
	 * progress and on staying inside the disk. */
	if (ext->voff > voff || ext->vlen == 0 || ext->voff + ext->vlen <= voff ||
	    ext->voff + ext->vlen < ext->voff)
		return idd_fail(err, "%s: corrupt image (bad extent at offset %llu)", img->file->name,
		                (unsigned long long)voff);
	if (ext->voff + ext->vlen > img->size)
		ext->vlen = img->size - ext->voff;
	return IDD_OK;
}

int idd_extent_decode(const idd_extent *ext, const void *stored, size_t stored_len, void *out,
                      idd_error *err)
{
	if (ext->codec == IDD_CODEC_ZSTD) {
		/* qcow2 stores zstd clusters in sector-rounded slots: stop at the
		 * end of the frame, ignore the padding. */
		ZSTD_DCtx *dc = ZSTD_createDCtx();
		if (!dc)
			return idd_fail(err, "zstd: out of memory");
		ZSTD_inBuffer in = {stored, stored_len, 0};
		ZSTD_outBuffer o = {out, (size_t)ext->vlen, 0};
		size_t r;
		do {
			r = ZSTD_decompressStream(dc, &o, &in);
		} while (!ZSTD_isError(r) && r != 0 && o.pos < o.size && in.pos < in.size);
		ZSTD_freeDCtx(dc);
		if (ZSTD_isError(r) || o.pos != o.size)
			return idd_fail(err, "corrupt zstd-compressed extent at virtual offset %llu",
			                (unsigned long long)ext->voff);
		return IDD_OK;
	}
	if (ext->codec == IDD_CODEC_DEFLATE || ext->codec == IDD_CODEC_ZLIB) {
		z_stream zs;
		memset(&zs, 0, sizeof zs);
		if (inflateInit2(&zs, ext->codec == IDD_CODEC_DEFLATE ? -15 : 15) != Z_OK)
			return idd_fail(err, "zlib: cannot initialise");
		int zr = Z_OK;
		size_t left_in = stored_len;
		const unsigned char *pin = stored;
		zs.next_out = out;
		zs.avail_out = 0;
		uint64_t want = ext->vlen, done = 0;
		while (done < want) {
			if (!zs.avail_in && left_in) {
				uInt chunk = (uInt)IDD_MIN(left_in, (size_t)1 << 30);
				zs.next_in = (unsigned char *)pin;
				zs.avail_in = chunk;
				pin += chunk;
				left_in -= chunk;
			}
			uInt ochunk = (uInt)IDD_MIN(want - done, (uint64_t)1 << 30);
			zs.next_out = (unsigned char *)out + done;
			zs.avail_out = ochunk;
			zr = inflate(&zs, Z_NO_FLUSH);
			done += ochunk - zs.avail_out;
			if (zr == Z_STREAM_END || (zr != Z_OK && zr != Z_BUF_ERROR))
				break;
			if (zr == Z_BUF_ERROR && !zs.avail_in && !left_in)
				break;
		}
		inflateEnd(&zs);
		if (done != want)
			return idd_fail(err, "corrupt compressed extent at virtual offset %llu (%s)",
			                (unsigned long long)ext->voff, zs.msg ? zs.msg : "short output");
		return IDD_OK;
	}
	return idd_fail(err, "unsupported codec %d", (int)ext->codec);
}

int idd_image_read(idd_image *img, uint64_t voff, void *buf, size_t len, idd_error *err)
{
	uint64_t end;
	if (!idd_add_ok(voff, len, &end) || end > img->size)
		return idd_fail(err, "%s: read past the end of the virtual disk", img->file->name);
	if (img->ops->read)
		return img->ops->read(img, voff, buf, len, err);
	unsigned char *p = buf;
	while (len) {
		idd_extent ext;
		if (idd_image_extent(img, voff, &ext, err))
			return IDD_ERR;
		uint64_t skip = voff - ext.voff;
		size_t n = (size_t)IDD_MIN((uint64_t)len, ext.vlen - skip);
		idd_file *src = ext.file ? ext.file : img->file;
		if (ext.kind == IDD_EXT_ZERO) {
			memset(p, 0, n);
		} else if (ext.kind == IDD_EXT_DATA) {
			if (idd_file_pread(src, p, n, ext.file_off + skip, err))
				return IDD_ERR;
		} else {
			if (ext.vlen > IDD_MAX_COMPRESSED_UNIT || ext.file_len > IDD_MAX_COMPRESSED_UNIT)
				return idd_fail(err, "%s: compressed unit too large", img->file->name);
			unsigned char *stored = idd_malloc((size_t)ext.file_len, err);
			unsigned char *plain = stored ? idd_malloc((size_t)ext.vlen, err) : NULL;
			int rc = (!stored || !plain) ? IDD_ERR
			         : idd_file_pread(src, stored, (size_t)ext.file_len, ext.file_off, err);
			if (!rc)
				rc = idd_extent_decode(&ext, stored, (size_t)ext.file_len, plain, err);
			if (!rc)
				memcpy(p, plain + skip, n);
			else if (stored && plain)
				idd_error_prefix(err, "%s", img->file->name);
			free(stored);
			free(plain);
			if (rc)
				return rc;
		}
		p += n;
		voff += n;
		len -= n;
	}
	return IDD_OK;
}
