/* vmdk.c - reader for hosted sparse VMDK extents: streamOptimized (deflated
 * grains behind grain markers, what OVAs carry) and plain monolithicSparse.
 * Other subformats are recognised and refused by name.
 *
 * The grain directory and tables are read once at open into a sorted list
 * of allocated grains, so extents need no further I/O and no locking (reads
 * from many threads share only immutable state).  A compressed grain's
 * stored length is bounded by the next structure in the file instead of
 * reading its marker: one request less per grain when the file is remote,
 * and the deflate stream ends by itself (idd_extent_decode ignores the
 * trailing bytes). */
#include "base/util.h"
#include "base/error.h"
#include "base/file.h"
#include "formats/image.h"

#include <stdlib.h>
#include <string.h>

#define VMDK_MAGIC 0x564d444bu /* "KDMV" little-endian */
#define COWD_MAGIC 0x44574f43u /* "COWD": ESX vmfsSparse */
#define SECTOR 512u
#define GD_AT_END 0xffffffffffffffffull
#define FLAG_COMPRESSED (1u << 16)
#define FLAG_MARKERS (1u << 17)
#define COMPRESS_DEFLATE 1u
#define MAX_DESCRIPTOR ((uint64_t)1 << 20)
#define MAX_GRAIN_SECTORS 32768u /* 16 MiB grains: far above any real tool's */
#define MAX_GTES 65536u

struct grain {
	uint64_t idx;      /* grain number in the disk */
	uint64_t off;      /* file offset of the data (after the marker when compressed); 0: zero grain */
	uint64_t len;      /* stored bytes to read (an upper bound when compressed) */
};

struct vmdk {
	idd_file *f;
	uint64_t grain_bytes;
	bool compressed;
	struct grain *g;   /* allocated grains, sorted by idx */
	size_t ng;
};

static const char desc_magic[] = "# Disk DescriptorFile";

/* Sparse extents by magic, descriptor files by their first line (refused
 * when opened, by name: better than reading a descriptor as a raw disk). */
static int vmdk_probe(const unsigned char *head, size_t len)
{
	if (len >= 4 && (idd_le32(head) == VMDK_MAGIC || idd_le32(head) == COWD_MAGIC))
		return IDD_BID_MAGIC;
	if (len >= sizeof desc_magic - 1 && memcmp(head, desc_magic, sizeof desc_magic - 1) == 0)
		return IDD_BID_MAGIC;
	return 0;
}

static void vmdk_close(idd_image *img)
{
	struct vmdk *v = img->priv;
	if (v) {
		free(v->g);
		free(v);
	}
	img->priv = NULL;
}

static int vmdk_extent(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err)
{
	struct vmdk *v = img->priv;
	uint64_t gi = voff / v->grain_bytes;
	/* First allocated grain with idx >= gi. */
	size_t lo = 0, hi = v->ng;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (v->g[mid].idx < gi)
			lo = mid + 1;
		else
			hi = mid;
	}
	memset(ext, 0, sizeof *ext);
	if (lo == v->ng || v->g[lo].idx != gi || v->g[lo].off == 0) {
		/* Zeros up to the next stored grain. */
		uint64_t end_grain = lo == v->ng ? UINT64_MAX : v->g[lo].idx;
		if (lo < v->ng && v->g[lo].idx == gi) /* a zero grain: just this one */
			end_grain = gi + 1;
		ext->voff = gi * v->grain_bytes;
		ext->kind = IDD_EXT_ZERO;
		uint64_t end;
		if (end_grain == UINT64_MAX || !idd_mul_ok(end_grain, v->grain_bytes, &end) || end > img->size)
			end = img->size;
		ext->vlen = end - ext->voff;
		return IDD_OK;
	}
	const struct grain *g = &v->g[lo];
	ext->voff = gi * v->grain_bytes;
	ext->vlen = IDD_MIN(v->grain_bytes, img->size - ext->voff);
	ext->file_off = g->off;
	if (v->compressed) {
		ext->kind = IDD_EXT_COMPRESSED;
		ext->codec = IDD_CODEC_ZLIB;
		ext->file_len = g->len;
	} else {
		ext->kind = IDD_EXT_DATA;
		ext->file_len = ext->vlen;
		if (ext->file_len > g->len)
			return idd_fail(err, "%s: corrupt VMDK: grain %llu lies past the end of the file",
			                img->file->name, (unsigned long long)gi);
	}
	return IDD_OK;
}

static const struct idd_image_ops vmdk_ops = {vmdk_extent, NULL, vmdk_close};

/* Value of KEY="..." (or KEY=...) in the descriptor text, or NULL. */
static bool desc_value(const char *text, const char *key, char *out, size_t cap)
{
	size_t kl = strlen(key);
	for (const char *line = text; line && *line;) {
		const char *nl = strchr(line, '\n');
		size_t ll = nl ? (size_t)(nl - line) : strlen(line);
		while (ll && (*line == ' ' || *line == '\t'))
			line++, ll--;
		if (ll > kl && strncmp(line, key, kl) == 0) {
			const char *p = line + kl, *e = line + ll;
			while (p < e && (*p == ' ' || *p == '\t'))
				p++;
			if (p < e && *p == '=') {
				p++;
				while (p < e && (*p == ' ' || *p == '\t'))
					p++;
				while (e > p && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
					e--;
				if (e - p >= 2 && *p == '"' && e[-1] == '"')
					p++, e--;
				size_t n = IDD_MIN((size_t)(e - p), cap - 1);
				memcpy(out, p, n);
				out[n] = 0;
				return true;
			}
		}
		line = nl ? nl + 1 : NULL;
	}
	return false;
}

static int check_descriptor(idd_file *f, uint64_t off_sec, uint64_t len_sec, idd_error *err)
{
	if (!off_sec || !len_sec)
		return IDD_OK;
	uint64_t off, len, end;
	if (!idd_mul_ok(off_sec, SECTOR, &off) || !idd_mul_ok(len_sec, SECTOR, &len) ||
	    !idd_add_ok(off, len, &end) || end > f->size)
		return idd_fail(err, "%s: corrupt VMDK: embedded descriptor lies outside the file", f->name);
	len = IDD_MIN(len, MAX_DESCRIPTOR);
	char *text = idd_malloc((size_t)len + 1, err);
	if (!text)
		return IDD_ERR;
	if (idd_file_pread(f, text, (size_t)len, off, err)) {
		free(text);
		return IDD_ERR;
	}
	text[len] = 0;
	char type[64], parent[8];
	int rc = IDD_OK;
	if (desc_value(text, "createType", type, sizeof type) && strcmp(type, "streamOptimized") != 0 &&
	    strcmp(type, "monolithicSparse") != 0)
		rc = idd_fail(err, "%s: VMDK subformat '%s' is not supported (only streamOptimized and "
		              "monolithicSparse)", f->name, type);
	else if (desc_value(text, "parentFileNameHint", parent, sizeof parent))
		rc = idd_fail(err, "%s: VMDK delta disk (it has a parent) is not supported", f->name);
	free(text);
	return rc;
}

struct hdr {
	uint32_t version, flags, gtes;
	uint64_t capacity, grain, desc_off, desc_len, gd_off;
	uint16_t compress;
};

static void parse_hdr(const unsigned char *h, struct hdr *o)
{
	o->version = idd_le32(h + 4);
	o->flags = idd_le32(h + 8);
	o->capacity = idd_le64(h + 12);
	o->grain = idd_le64(h + 20);
	o->desc_off = idd_le64(h + 28);
	o->desc_len = idd_le64(h + 36);
	o->gtes = idd_le32(h + 44);
	o->gd_off = idd_le64(h + 56);
	o->compress = (uint16_t)(h[77] | h[78] << 8);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

/* Read the grain directory and tables into v->g, and bound each compressed
 * grain by the next structure after it.  footer_pos: file offset of the
 * footer header when the directory was found through it, else 0. */
static int load_grains(struct vmdk *v, const struct hdr *h, uint64_t ngrains, uint64_t footer_pos,
                       idd_error *err)
{
	idd_file *f = v->f;
	uint64_t ngd = ngrains / h->gtes + (ngrains % h->gtes != 0);
	uint64_t gd_bytes, gd_pos, gd_end, gt_bytes = (uint64_t)h->gtes * 4;
	if (!idd_mul_ok(ngd, 4, &gd_bytes) || !idd_mul_ok(h->gd_off, SECTOR, &gd_pos) ||
	    !idd_add_ok(gd_pos, gd_bytes, &gd_end) || gd_end > f->size)
		return idd_fail(err, "%s: corrupt VMDK: grain directory (%llu entries at sector %llu) lies "
		                "outside the file (%llu bytes)", f->name, (unsigned long long)ngd,
		                (unsigned long long)h->gd_off, (unsigned long long)f->size);
	/* Each stored grain takes at least a sector: more than that is a lie. */
	uint64_t max_grains = f->size / SECTOR + 1;
	uint32_t *gd = idd_malloc((size_t)gd_bytes, err);
	uint32_t *gt = idd_malloc((size_t)gt_bytes, err);
	uint32_t *gd_sorted = idd_malloc((size_t)gd_bytes, err);
	uint64_t *bounds = NULL;
	size_t cap = 0, nb = 0;
	int rc = IDD_ERR;
	if (!gd || !gt || !gd_sorted)
		goto out;
	if (idd_file_pread(f, gd, (size_t)gd_bytes, gd_pos, err))
		goto out;
	for (uint64_t i = 0; i < ngd; i++)
		gd[i] = idd_le32((unsigned char *)&gd[i]);
	/* Grain tables are disjoint from each other and from the header, footer
	 * and directory in any real file.  Overlapping ones would let a small
	 * file make us read the same bytes over and over (a 256 KiB table at
	 * every sector: 512 MiB of reads per MiB of file); disjoint ones bound
	 * what we read by the file size. */
	memcpy(gd_sorted, gd, (size_t)gd_bytes);
	qsort(gd_sorted, (size_t)ngd, sizeof *gd_sorted, cmp_u32);
	uint64_t prev_end = 0;
	for (uint64_t i = 0; i < ngd; i++) {
		if (!gd_sorted[i])
			continue;
		uint64_t gt_pos = (uint64_t)gd_sorted[i] * SECTOR, gt_end = gt_pos + gt_bytes; /* < 2^42 */
		const char *what = NULL;
		if (gt_pos < prev_end)
			what = "another grain table";
		else if (gt_pos < SECTOR)
			what = "the header";
		else if (gt_pos < gd_end && gd_pos < gt_end)
			what = "the grain directory";
		else if (footer_pos && gt_pos < footer_pos + SECTOR && footer_pos < gt_end)
			what = "the footer";
		if (what) {
			idd_fail(err, "%s: corrupt VMDK: grain table at sector %u (%llu bytes) overlaps %s",
			         f->name, gd_sorted[i], (unsigned long long)gt_bytes, what);
			goto out;
		}
		prev_end = gt_end;
	}
	for (uint64_t d = 0; d < ngd; d++) {
		if (!gd[d])
			continue;
		uint64_t gt_pos = (uint64_t)gd[d] * SECTOR, gt_end;
		if (!idd_add_ok(gt_pos, gt_bytes, &gt_end) || gt_end > f->size) {
			idd_fail(err, "%s: corrupt VMDK: grain table at sector %u lies outside the file", f->name,
			         gd[d]);
			goto out;
		}
		if (idd_file_pread(f, gt, (size_t)gt_bytes, gt_pos, err))
			goto out;
		for (uint32_t t = 0; t < h->gtes; t++) {
			uint32_t s = idd_le32((unsigned char *)&gt[t]);
			uint64_t idx = d * h->gtes + t;
			if (!s || idx >= ngrains)
				continue;
			if (v->ng + 1 > max_grains) {
				idd_fail(err, "%s: corrupt VMDK: more grains than the file can hold", f->name);
				goto out;
			}
			if (v->ng == cap) {
				cap = cap ? 2 * cap : 1024;
				struct grain *ng = idd_realloc_array(v->g, cap, sizeof *ng, err);
				if (!ng)
					goto out;
				v->g = ng;
			}
			struct grain *g = &v->g[v->ng++];
			g->idx = idx;
			g->off = s == 1 ? 0 : (uint64_t)s * SECTOR; /* 1: a zeroed grain */
			g->len = 0;
			if (g->off && g->off >= f->size) {
				idd_fail(err, "%s: corrupt VMDK: grain %llu at sector %u lies past the end of the file",
				         f->name, (unsigned long long)idx, s);
				goto out;
			}
		}
	}
	/* Structure starts, sorted: a grain's bytes end before the next one. */
	bounds = idd_calloc(v->ng + ngd + 2, sizeof *bounds, err);
	if (!bounds)
		goto out;
	for (size_t i = 0; i < v->ng; i++)
		if (v->g[i].off)
			bounds[nb++] = v->g[i].off;
	for (uint64_t d = 0; d < ngd; d++)
		if (gd[d])
			bounds[nb++] = (uint64_t)gd[d] * SECTOR;
	bounds[nb++] = gd_pos;
	bounds[nb++] = f->size;
	qsort(bounds, nb, sizeof *bounds, cmp_u64);
	uint64_t slack = v->grain_bytes + v->grain_bytes / 8 + 4096; /* deflate's worst expansion */
	for (size_t i = 0; i < v->ng; i++) {
		struct grain *g = &v->g[i];
		if (!g->off)
			continue;
		size_t lo = 0, hi = nb;
		while (lo < hi) { /* first bound > g->off */
			size_t mid = lo + (hi - lo) / 2;
			if (bounds[mid] <= g->off)
				lo = mid + 1;
			else
				hi = mid;
		}
		uint64_t next = lo < nb ? bounds[lo] : f->size;
		if (v->compressed) {
			if (next < g->off + 12 + 1) {
				idd_fail(err, "%s: corrupt VMDK: grain %llu has no room for its data", f->name,
				         (unsigned long long)g->idx);
				goto out;
			}
			g->off += 12; /* lba u64 + size u32 marker */
			g->len = IDD_MIN(next - g->off, slack);
		} else {
			g->len = f->size - g->off; /* checked against the grain size per extent */
		}
	}
	rc = IDD_OK;
out:
	free(gd);
	free(gt);
	free(gd_sorted);
	free(bounds);
	return rc;
}

static int vmdk_open(idd_image *img, idd_error *err)
{
	idd_file *f = img->file;
	unsigned char h[SECTOR];
	if (f->size < 4)
		return idd_fail(err, "%s: truncated VMDK", f->name);
	size_t hl = (size_t)IDD_MIN(f->size, (uint64_t)SECTOR);
	memset(h, 0, sizeof h);
	if (idd_file_pread(f, h, hl, 0, err))
		return IDD_ERR;
	if (idd_le32(h) == COWD_MAGIC)
		return idd_fail(err, "%s: VMDK subformat vmfsSparse (COWD) is not supported", f->name);
	if (idd_le32(h) != VMDK_MAGIC) {
		char type[64] = "?";
		char *text = idd_malloc(hl + 1, err);
		if (text) {
			memcpy(text, h, hl);
			text[hl] = 0;
			desc_value(text, "createType", type, sizeof type);
			free(text);
		}
		return idd_fail(err, "%s: VMDK descriptor file (subformat '%s') refers to separate extent "
		                "files; only streamOptimized and monolithicSparse single-file VMDKs are supported",
		                f->name, type);
	}
	if (hl < SECTOR)
		return idd_fail(err, "%s: truncated VMDK header (%llu bytes)", f->name,
		                (unsigned long long)f->size);
	struct hdr hd;
	parse_hdr(h, &hd);
	if (hd.version < 1 || hd.version > 3)
		return idd_fail(err, "%s: unsupported VMDK version %u", f->name, hd.version);
	uint64_t footer_pos = 0;
	if (hd.gd_off == GD_AT_END) {
		/* streamOptimized written as a stream: the real header is the footer,
		 * the second-to-last sector (before the end-of-stream marker). */
		unsigned char foot[SECTOR];
		if (f->size < 3 * SECTOR || idd_file_pread(f, foot, SECTOR, f->size - 2 * SECTOR, err))
			return idd_fail(err, "%s: corrupt VMDK: grain directory at the end but no footer", f->name);
		if (idd_le32(foot) != VMDK_MAGIC)
			return idd_fail(err, "%s: corrupt VMDK: bad footer magic", f->name);
		parse_hdr(foot, &hd);
		if (hd.gd_off == GD_AT_END)
			return idd_fail(err, "%s: corrupt VMDK: footer has no grain directory", f->name);
		footer_pos = f->size - 2 * SECTOR;
	}
	if (check_descriptor(f, hd.desc_off, hd.desc_len, err))
		return IDD_ERR;
	bool compressed = hd.flags & FLAG_COMPRESSED;
	if (compressed && hd.compress != COMPRESS_DEFLATE)
		return idd_fail(err, "%s: unsupported VMDK compression algorithm %u", f->name, hd.compress);
	if (compressed && !(hd.flags & FLAG_MARKERS))
		return idd_fail(err, "%s: compressed VMDK without grain markers is not supported", f->name);
	if (!hd.grain || hd.grain > MAX_GRAIN_SECTORS || !idd_is_power_of_two(hd.grain) || hd.grain < 8)
		return idd_fail(err, "%s: corrupt VMDK: grain size of %llu sectors", f->name,
		                (unsigned long long)hd.grain);
	if (!hd.gtes || hd.gtes > MAX_GTES)
		return idd_fail(err, "%s: corrupt VMDK: %u entries per grain table", f->name, hd.gtes);
	uint64_t size;
	if (!idd_mul_ok(hd.capacity, SECTOR, &size) || size > (uint64_t)INT64_MAX)
		return idd_fail(err, "%s: corrupt VMDK: capacity of %llu sectors is too large", f->name,
		                (unsigned long long)hd.capacity);
	struct vmdk *v = idd_calloc(1, sizeof *v, err);
	if (!v)
		return IDD_ERR;
	v->f = f;
	v->grain_bytes = hd.grain * SECTOR;
	v->compressed = compressed;
	uint64_t ngrains = hd.capacity / hd.grain + (hd.capacity % hd.grain != 0);
	if (ngrains && load_grains(v, &hd, ngrains, footer_pos, err)) {
		free(v->g);
		free(v);
		return IDD_ERR;
	}
	img->priv = v;
	img->ops = &vmdk_ops;
	img->size = size;
	return IDD_OK;
}

const idd_image_format idd_format_vmdk = {"vmdk", vmdk_probe, vmdk_open};
