/* qcow2.c - reader for qcow2 images (versions 2 and 3), as extents.
 *
 * Everything in the file is untrusted: each header field, table offset and
 * entry is checked against the file size before use, and nothing is
 * allocated from a field that has not been bounded first.  Layout per
 * qemu's docs/interop/qcow2.txt. */
#include "base/util.h"
#include "base/error.h"
#include "base/file.h"
#include "formats/image.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define QCOW2_MAGIC 0x514649fbu /* "QFI\xfb" */
#define QCOW2_V2_HEADER 72u
#define QCOW2_V3_HEADER 104u

#define INCOMPAT_DIRTY (1u << 0)
#define INCOMPAT_CORRUPT (1u << 1)
#define INCOMPAT_DATA_FILE (1u << 2)
#define INCOMPAT_COMPRESSION (1u << 3)
#define INCOMPAT_EXTL2 (1u << 4)
#define INCOMPAT_KNOWN 0x1fu

#define EXT_END 0u
#define EXT_BACKING_FORMAT 0xe2792acau
#define EXT_DATA_FILE 0x44415441u
#define EXT_CRYPTO 0x0537be77u

#define L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_COMPRESSED (1ull << 62)
#define L2E_ZERO 1ull

/* qemu's own limits: a 32 MiB L1 table, backing names under 1 KiB. */
#define MAX_L1_BYTES ((uint64_t)32 << 20)
#define MAX_BACKING_NAME 1023u
/* How many allocation units one extent call may merge: bounds the work per
 * call when callers walk a disk extent by extent. */
#define MAX_RUN_UNITS 256u

enum unit_kind { U_UNALLOC, U_ZERO, U_DATA, U_COMPRESSED };

struct l2_slot {
	uint64_t off;   /* file offset of the table; 0: empty slot */
	uint64_t *tab;  /* entries in host order (2 words per entry with extended L2) */
	uint64_t used;  /* LRU tick */
};

struct qcow2 {
	idd_file *f;
	uint32_t version;
	uint32_t cluster_bits, unit_bits; /* unit: a cluster, or a subcluster with extended L2 */
	uint64_t cluster_size;
	uint32_t l2_bits;                 /* log2(entries per L2 table) */
	bool extl2;
	uint64_t *l1;
	uint32_t l1_size;
	enum idd_codec codec;
	uint32_t csize_shift;             /* compressed descriptor: sector count field */
	uint64_t csize_mask, coff_mask;
	idd_image *backing;
	pthread_mutex_t lock;             /* guards the L2 cache: reads come from many threads */
	struct l2_slot *cache;
	size_t ncache;
	uint64_t tick;
};

static int qcow2_probe(const unsigned char *head, size_t len)
{
	return len >= 8 && idd_be32(head) == QCOW2_MAGIC ? IDD_BID_MAGIC : 0;
}

static void qcow2_free(struct qcow2 *q)
{
	if (!q)
		return;
	if (q->cache) {
		for (size_t i = 0; i < q->ncache; i++)
			free(q->cache[i].tab);
		free(q->cache);
	}
	free(q->l1);
	idd_image_close(q->backing);
	pthread_mutex_destroy(&q->lock);
	free(q);
}

static void qcow2_close(idd_image *img)
{
	qcow2_free(img->priv);
	img->priv = NULL;
}

/* The L2 table at off, from the cache or the file.  Called with q->lock held. */
static const uint64_t *l2_get(struct qcow2 *q, uint64_t off, idd_error *err)
{
	struct l2_slot *victim = &q->cache[0];
	for (size_t i = 0; i < q->ncache; i++) {
		struct l2_slot *s = &q->cache[i];
		if (s->tab && s->off == off) {
			s->used = ++q->tick;
			return s->tab;
		}
		if (!s->tab || (victim->tab && s->used < victim->used))
			victim = s;
	}
	uint64_t end;
	if ((off & (q->cluster_size - 1)) || !idd_add_ok(off, q->cluster_size, &end) ||
	    end > q->f->size) {
		idd_fail(err, "%s: corrupt qcow2: L2 table at offset %llu lies outside the file (%llu bytes)",
		         q->f->name, (unsigned long long)off, (unsigned long long)q->f->size);
		return NULL;
	}
	if (!victim->tab) {
		victim->tab = idd_malloc((size_t)q->cluster_size, err);
		if (!victim->tab)
			return NULL;
	}
	victim->off = 0; /* invalid until fully read */
	if (idd_file_pread(q->f, victim->tab, (size_t)q->cluster_size, off, err))
		return NULL;
	unsigned char *raw = (unsigned char *)victim->tab;
	for (size_t i = 0; i < q->cluster_size / 8; i++)
		victim->tab[i] = idd_be64(raw + 8 * i);
	victim->off = off;
	victim->used = ++q->tick;
	return victim->tab;
}

struct unit {
	enum unit_kind kind;
	uint64_t host;     /* DATA: file offset of the unit; COMPRESSED: of the data */
	uint64_t clen;     /* COMPRESSED: stored length */
};

/* Classify allocation unit u (cluster, or subcluster) of the L2 table tab. */
static int classify(struct qcow2 *q, const uint64_t *tab, uint64_t u, struct unit *out,
                    idd_error *err)
{
	uint32_t sub_bits = q->cluster_bits - q->unit_bits;
	uint64_t l2i = u >> sub_bits, sub = u & ((1ull << sub_bits) - 1);
	uint64_t e = q->extl2 ? tab[2 * l2i] : tab[l2i];
	memset(out, 0, sizeof *out);
	if (e & L2E_COMPRESSED) {
		uint64_t host = e & q->coff_mask;
		uint64_t nsec = (e >> q->csize_shift) & q->csize_mask;
		out->kind = U_COMPRESSED;
		out->host = host;
		out->clen = (nsec + 1) * 512 - (host & 511);
		if (host >= q->f->size)
			return idd_fail(err, "%s: corrupt qcow2: compressed cluster at offset %llu lies past the "
			                "end of the file (%llu bytes)", q->f->name, (unsigned long long)host,
			                (unsigned long long)q->f->size);
		/* The descriptor rounds to sectors; the stream ends by itself. */
		if (out->clen > q->f->size - host)
			out->clen = q->f->size - host;
		return IDD_OK;
	}
	uint64_t host = e & L2E_OFFSET_MASK;
	if (host & (q->cluster_size - 1))
		return idd_fail(err, "%s: corrupt qcow2: data cluster at unaligned offset %llu", q->f->name,
		                (unsigned long long)host);
	if (q->extl2) {
		uint64_t bm = tab[2 * l2i + 1];
		bool alloc = (bm >> sub) & 1, zero = (bm >> (32 + sub)) & 1;
		if (alloc && zero)
			return idd_fail(err, "%s: corrupt qcow2: subcluster both allocated and zero", q->f->name);
		if (zero) {
			out->kind = U_ZERO;
		} else if (alloc) {
			if (!host)
				return idd_fail(err, "%s: corrupt qcow2: allocated subcluster in a cluster "
				                "without an offset", q->f->name);
			out->kind = U_DATA;
			out->host = host + (sub << q->unit_bits);
		} else {
			out->kind = U_UNALLOC;
		}
		return IDD_OK;
	}
	if (q->version >= 3 && (e & L2E_ZERO))
		out->kind = U_ZERO;
	else if (host)
		out->kind = U_DATA, out->host = host;
	else
		out->kind = U_UNALLOC;
	return IDD_OK;
}

static int qcow2_extent(idd_image *img, uint64_t voff, idd_extent *ext, idd_error *err)
{
	struct qcow2 *q = img->priv;
	uint64_t unit_size = 1ull << q->unit_bits;
	uint64_t units_per_l2 = 1ull << (q->l2_bits + q->cluster_bits - q->unit_bits);
	uint64_t u_abs = voff >> q->unit_bits;
	uint64_t l1i = u_abs / units_per_l2, u = u_abs % units_per_l2;
	uint64_t units_left_disk = ((img->size - 1) >> q->unit_bits) - u_abs + 1;
	struct unit first;
	uint64_t run = 1;

	memset(ext, 0, sizeof *ext);
	uint64_t l2off = l1i < q->l1_size ? q->l1[l1i] & L1E_OFFSET_MASK : 0;
	if (!l2off) {
		/* The whole L2 range is unallocated. */
		first.kind = U_UNALLOC;
		run = IDD_MIN(units_per_l2 - u, units_left_disk);
	} else {
		pthread_mutex_lock(&q->lock);
		const uint64_t *tab = l2_get(q, l2off, err);
		int rc = tab ? classify(q, tab, u, &first, err) : IDD_ERR;
		uint64_t max = IDD_MIN(IDD_MIN(units_per_l2 - u, units_left_disk), (uint64_t)MAX_RUN_UNITS);
		while (!rc && first.kind != U_COMPRESSED && run < max) {
			struct unit nx;
			if (classify(q, tab, u + run, &nx, err)) {
				rc = IDD_ERR;
				break;
			}
			if (nx.kind != first.kind ||
			    (first.kind == U_DATA && nx.host != first.host + run * unit_size))
				break;
			run++;
		}
		pthread_mutex_unlock(&q->lock);
		if (rc)
			return IDD_ERR;
	}

	uint64_t start = u_abs << q->unit_bits;
	if (first.kind == U_COMPRESSED) {
		/* A compressed cluster decodes as a whole, whatever unit voff is in. */
		start = voff & ~(q->cluster_size - 1);
		ext->voff = start;
		ext->vlen = q->cluster_size;
		ext->kind = IDD_EXT_COMPRESSED;
		ext->file_off = first.host;
		ext->file_len = first.clen;
		ext->codec = q->codec;
		return IDD_OK;
	}
	ext->voff = start;
	ext->vlen = run * unit_size;
	if (ext->vlen > img->size - start)
		ext->vlen = img->size - start;
	if (first.kind == U_DATA) {
		uint64_t end;
		if (!idd_add_ok(first.host, ext->vlen, &end) || end > q->f->size)
			return idd_fail(err, "%s: corrupt qcow2: data cluster at offset %llu lies past the end "
			                "of the file (%llu bytes)", q->f->name, (unsigned long long)first.host,
			                (unsigned long long)q->f->size);
		ext->kind = IDD_EXT_DATA;
		ext->file_off = first.host;
		ext->file_len = ext->vlen;
		return IDD_OK;
	}
	ext->kind = IDD_EXT_ZERO;
	if (first.kind == U_ZERO || !q->backing)
		return IDD_OK;
	/* Unallocated: the backing image's content, or zeros past its end. */
	if (voff >= q->backing->size) {
		return IDD_OK;
	}
	uint64_t run_end = start + ext->vlen;
	if (run_end > q->backing->size) {
		ext->vlen = q->backing->size - start;
		run_end = q->backing->size;
	}
	/* A COMPRESSED extent from the backing image starts at its unit (the
	 * cluster start: decoding begins there) and may start before voff and
	 * before this run.  Its vlen is the unit's decompressed size, clipped at
	 * the disk end (idd_image_extent) and, below, where this image's own
	 * clusters take over (smaller overlay clusters or subclusters over a
	 * larger compressed backing cluster).  So vlen may be shorter than the
	 * unit: it is what the extent vouches for, and decoding vlen bytes
	 * yields that prefix of the unit.  Extents naming the same file and
	 * file_off are the same unit; decode the longest vlen seen. */
	idd_extent b;
	if (idd_image_extent(q->backing, voff, &b, err))
		return IDD_ERR;
	if (!b.file)
		b.file = q->backing->file;
	/* Keep the backing extent's start; cut its end where this image's own
	 * clusters take over (their bytes must not be read from the backing). */
	if (b.voff + b.vlen > run_end) {
		b.vlen = run_end - b.voff;
		if (b.kind == IDD_EXT_DATA)
			b.file_len = b.vlen;
	}
	*ext = b;
	return IDD_OK;
}

static const struct idd_image_ops qcow2_ops = {qcow2_extent, NULL, qcow2_close};

/* ---- opening: parse the header, check it, read the tables ---- */

/* The header fields, host order. */
struct qcow2_header {
	uint32_t version;
	uint64_t backing_off;
	uint32_t backing_len;
	uint32_t cluster_bits;
	uint64_t size;
	uint32_t crypt;
	uint32_t l1_size;
	uint64_t l1_off;
	uint64_t incompat;      /* v3 only */
	uint32_t header_len;    /* v2: QCOW2_V2_HEADER */
	uint8_t compression;    /* the compression type byte (0 past a short header) */
};

/* Read the fixed part of the header: magic, version, and the fields (no
 * field is trusted yet beyond what locating the rest needs). */
static int header_parse(idd_file *f, struct qcow2_header *hd, idd_error *err)
{
	const char *fn = f->name;
	unsigned char h[QCOW2_V3_HEADER + 8];
	if (f->size < QCOW2_V2_HEADER)
		return idd_fail(err, "%s: truncated qcow2 header (%llu bytes)", fn,
		                (unsigned long long)f->size);
	size_t hl = (size_t)IDD_MIN(f->size, (uint64_t)sizeof h);
	memset(h, 0, sizeof h);
	if (idd_file_pread(f, h, hl, 0, err))
		return IDD_ERR;
	if (idd_be32(h) != QCOW2_MAGIC)
		return idd_fail(err, "%s: not a qcow2 image", fn);
	memset(hd, 0, sizeof *hd);
	hd->version = idd_be32(h + 4);
	if (hd->version != 2 && hd->version != 3)
		return idd_fail(err, "%s: unsupported qcow2 version %u", fn, hd->version);
	hd->backing_off = idd_be64(h + 8);
	hd->backing_len = idd_be32(h + 16);
	hd->cluster_bits = idd_be32(h + 20);
	hd->size = idd_be64(h + 24);
	hd->crypt = idd_be32(h + 32);
	hd->l1_size = idd_be32(h + 36);
	hd->l1_off = idd_be64(h + 40);
	hd->header_len = QCOW2_V2_HEADER;
	if (hd->cluster_bits < 9 || hd->cluster_bits > 21)
		return idd_fail(err, "%s: corrupt qcow2: cluster_bits %u outside 9..21", fn,
		                hd->cluster_bits);
	if (hd->version == 3) {
		if (f->size < QCOW2_V3_HEADER)
			return idd_fail(err, "%s: truncated qcow2 v3 header (%llu bytes)", fn,
			                (unsigned long long)f->size);
		hd->incompat = idd_be64(h + 72);
		hd->header_len = idd_be32(h + 100);
		if (hd->header_len < QCOW2_V3_HEADER || hd->header_len > (1ull << hd->cluster_bits) ||
		    hd->header_len > f->size)
			return idd_fail(err, "%s: corrupt qcow2: header length %u", fn, hd->header_len);
	}
	hd->compression = h[104];
	return IDD_OK;
}

/* Refuse what this reader does not implement (encryption, external data
 * files, unknown incompatible features, images marked corrupt) and decide
 * the codec of compressed clusters. */
static int header_check_features(const char *fn, const struct qcow2_header *hd,
                                 enum idd_codec *codec, idd_error *err)
{
	if (hd->crypt != 0)
		return idd_fail(err, "%s: encrypted qcow2 images are not supported (crypt_method %u)", fn,
		                hd->crypt);
	if (hd->incompat & ~(uint64_t)INCOMPAT_KNOWN)
		return idd_fail(err, "%s: qcow2 uses unknown incompatible features 0x%llx; refused", fn,
		                (unsigned long long)(hd->incompat & ~(uint64_t)INCOMPAT_KNOWN));
	if (hd->incompat & INCOMPAT_CORRUPT)
		return idd_fail(err, "%s: qcow2 image is marked corrupt (run qemu-img check -r)", fn);
	if (hd->incompat & INCOMPAT_DATA_FILE)
		return idd_fail(err, "%s: qcow2 with an external data file is not supported", fn);
	*codec = IDD_CODEC_DEFLATE;
	if (hd->incompat & INCOMPAT_COMPRESSION) {
		if (hd->header_len < QCOW2_V3_HEADER + 1)
			return idd_fail(err, "%s: corrupt qcow2: compression type flag without the field", fn);
		if (hd->compression == 1)
			*codec = IDD_CODEC_ZSTD;
		else if (hd->compression != 0)
			return idd_fail(err, "%s: unsupported qcow2 compression type %u", fn, hd->compression);
	} else if (hd->header_len > QCOW2_V3_HEADER && hd->compression != 0) {
		return idd_fail(err, "%s: corrupt qcow2: compression type set without its feature bit", fn);
	}
	if ((hd->incompat & INCOMPAT_EXTL2) && hd->cluster_bits < 14)
		return idd_fail(err, "%s: corrupt qcow2: extended L2 entries need clusters of 16 KiB or more",
		                fn);
	return IDD_OK;
}

/* The virtual size is sane, and the L1 table covers the whole disk and lies
 * inside the file. */
static int header_check_geometry(const idd_file *f, const struct qcow2_header *hd, idd_error *err)
{
	const char *fn = f->name;
	if (hd->size > (uint64_t)INT64_MAX)
		return idd_fail(err, "%s: corrupt qcow2: virtual size %llu is too large", fn,
		                (unsigned long long)hd->size);
	bool extl2 = (hd->incompat & INCOMPAT_EXTL2) != 0;
	uint64_t cluster_size = 1ull << hd->cluster_bits;
	uint32_t l2_bits = hd->cluster_bits - (extl2 ? 4 : 3);
	uint64_t per_l1 = 1ull << (hd->cluster_bits + l2_bits); /* bytes covered by one L1 entry */
	uint64_t need = hd->size / per_l1 + (hd->size % per_l1 != 0);
	if (hd->l1_size < need)
		return idd_fail(err, "%s: corrupt qcow2: L1 table has %u entries, the %llu-byte disk needs %llu",
		                fn, hd->l1_size, (unsigned long long)hd->size, (unsigned long long)need);
	uint64_t l1_bytes = (uint64_t)hd->l1_size * 8, l1_end;
	if (l1_bytes > MAX_L1_BYTES)
		return idd_fail(err, "%s: corrupt qcow2: L1 table of %llu bytes is too large", fn,
		                (unsigned long long)l1_bytes);
	if (hd->l1_size && ((hd->l1_off & (cluster_size - 1)) ||
	                    !idd_add_ok(hd->l1_off, l1_bytes, &l1_end) || l1_end > f->size))
		return idd_fail(err, "%s: corrupt qcow2: L1 table (%llu bytes at offset %llu) lies outside "
		                "the file (%llu bytes)", fn, (unsigned long long)l1_bytes,
		                (unsigned long long)hd->l1_off, (unsigned long long)f->size);
	return IDD_OK;
}

/* The backing file's name (name[0] == 0: none); it lives in the first
 * cluster. */
static int backing_name_read(idd_file *f, const struct qcow2_header *hd,
                             char name[MAX_BACKING_NAME + 1], idd_error *err)
{
	name[0] = 0;
	if (!hd->backing_off)
		return IDD_OK;
	uint64_t bend;
	if (hd->backing_len == 0 || hd->backing_len > MAX_BACKING_NAME ||
	    !idd_add_ok(hd->backing_off, hd->backing_len, &bend) ||
	    bend > (1ull << hd->cluster_bits) || bend > f->size)
		return idd_fail(err, "%s: corrupt qcow2: backing file name (%u bytes at offset %llu)",
		                f->name, hd->backing_len, (unsigned long long)hd->backing_off);
	if (idd_file_pread(f, name, hd->backing_len, hd->backing_off, err))
		return IDD_ERR;
	name[hd->backing_len] = 0;
	if (strlen(name) != hd->backing_len)
		return idd_fail(err, "%s: corrupt qcow2: backing file name contains a NUL byte", f->name);
	return IDD_OK;
}

/* Walk the header extensions between the header and the end of the first
 * cluster: external data files and encryption headers are refused, the
 * backing format (if any) is returned. */
static int parse_extensions(const char *fn, const unsigned char *hdr, size_t hlen, size_t pos,
                            char *backing_fmt, size_t fmt_cap, idd_error *err)
{
	backing_fmt[0] = 0;
	for (int n = 0; n < 1024; n++) {
		if (pos + 8 > hlen)
			return IDD_OK; /* no end marker within the cluster: qemu tolerates it */
		uint32_t type = idd_be32(hdr + pos), len = idd_be32(hdr + pos + 4);
		pos += 8;
		if (type == EXT_END)
			return IDD_OK;
		if (len > hlen - pos)
			return idd_fail(err, "%s: corrupt qcow2: header extension 0x%08x overruns the header",
			                fn, type);
		if (type == EXT_DATA_FILE)
			return idd_fail(err, "%s: qcow2 with an external data file is not supported", fn);
		if (type == EXT_CRYPTO)
			return idd_fail(err, "%s: encrypted qcow2 images are not supported", fn);
		if (type == EXT_BACKING_FORMAT) {
			size_t k = IDD_MIN((size_t)len, fmt_cap - 1);
			memcpy(backing_fmt, hdr + pos, k);
			backing_fmt[k] = 0;
		}
		pos += ((size_t)len + 7) & ~(size_t)7;
	}
	return idd_fail(err, "%s: corrupt qcow2: too many header extensions", fn);
}

/* Read the first cluster and walk its header extensions. */
static int extensions_read(idd_file *f, const struct qcow2_header *hd, char *backing_fmt,
                           size_t fmt_cap, idd_error *err)
{
	size_t ext_len = (size_t)IDD_MIN(1ull << hd->cluster_bits, f->size);
	unsigned char *exts = idd_malloc(ext_len, err);
	if (!exts)
		return IDD_ERR;
	int rc = idd_file_pread(f, exts, ext_len, 0, err);
	if (!rc)
		rc = parse_extensions(f->name, exts, ext_len, hd->header_len, backing_fmt, fmt_cap, err);
	free(exts);
	return rc;
}

/* The reader's state: geometry, the L1 table in host order, an empty L2
 * cache. */
static int tables_build(idd_file *f, const struct qcow2_header *hd, enum idd_codec codec,
                        struct qcow2 **out, idd_error *err)
{
	struct qcow2 *q = idd_calloc(1, sizeof *q, err);
	if (!q)
		return IDD_ERR;
	pthread_mutex_init(&q->lock, NULL);
	bool extl2 = (hd->incompat & INCOMPAT_EXTL2) != 0;
	uint32_t cluster_bits = hd->cluster_bits;
	q->f = f;
	q->version = hd->version;
	q->cluster_bits = cluster_bits;
	q->cluster_size = 1ull << cluster_bits;
	q->unit_bits = extl2 ? cluster_bits - 5 : cluster_bits; /* 32 subclusters */
	q->l2_bits = cluster_bits - (extl2 ? 4 : 3);
	q->extl2 = extl2;
	q->codec = codec;
	/* Compressed descriptor: x = 62 - (cluster_bits - 8) offset bits, then
	 * the count of additional sectors up to bit 61. */
	q->csize_shift = 62 - (cluster_bits - 8);
	q->csize_mask = (1ull << (cluster_bits - 8)) - 1;
	q->coff_mask = (1ull << q->csize_shift) - 1;
	q->l1_size = hd->l1_size;
	q->l1 = idd_calloc(hd->l1_size ? hd->l1_size : 1, sizeof *q->l1, err);
	q->ncache = (size_t)IDD_MAX(4, IDD_MIN(16, ((uint64_t)32 << 20) / q->cluster_size));
	q->cache = idd_calloc(q->ncache, sizeof *q->cache, err);
	if (!q->l1 || !q->cache) {
		qcow2_free(q);
		return IDD_ERR;
	}
	if (hd->l1_size) {
		if (idd_file_pread(f, q->l1, (size_t)hd->l1_size * 8, hd->l1_off, err)) {
			qcow2_free(q);
			return IDD_ERR;
		}
		for (uint32_t i = 0; i < hd->l1_size; i++)
			q->l1[i] = idd_be64((unsigned char *)&q->l1[i]);
	}
	*out = q;
	return IDD_OK;
}

static int qcow2_open(idd_image *img, idd_error *err)
{
	idd_file *f = img->file;
	struct qcow2_header hd;
	enum idd_codec codec = IDD_CODEC_DEFLATE;
	char backing[MAX_BACKING_NAME + 1], backing_fmt[64];
	struct qcow2 *q;
	if (header_parse(f, &hd, err) || header_check_features(f->name, &hd, &codec, err) ||
	    header_check_geometry(f, &hd, err) || backing_name_read(f, &hd, backing, err) ||
	    extensions_read(f, &hd, backing_fmt, sizeof backing_fmt, err) ||
	    tables_build(f, &hd, codec, &q, err))
		return IDD_ERR;
	img->priv = q;
	img->ops = &qcow2_ops;
	img->size = hd.size;
	if (backing[0] && idd_image_open_backing(img, backing, backing_fmt, &q->backing, err)) {
		qcow2_free(q);
		img->priv = NULL;
		img->ops = NULL;
		return IDD_ERR;
	}
	return IDD_OK;
}

const idd_image_format idd_format_qcow2 = {"qcow2", qcow2_probe, qcow2_open};
