/* blocktable.c - the repository-wide block table: for each distinct non-zero
 * digest, how many images hold it and one canonical (image, block) to read it
 * from.  Sharded by the digest's top bits so that building it needs memory
 * for one shard only.  Layout: docs/formats.md ("Block maps"). */
#include "index/map.h"
#include "index/indexfile.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char BTI_MAGIC[8] = {'I', 'D', 'D', '-', 'B', 'T', 'I', 0};
static const char BTS_MAGIC[8] = {'I', 'D', 'D', '-', 'B', 'T', 'S', 0};
#define BT_VERSION 1
#define BT_ENTRY 48
#define BT_INDEX_FILE "index"
#define BT_MAX_SHARD_BITS 8
/* Memory for one shard while building: about 128 bytes per distinct digest
 * (hash slot, aux, entry), so 1 GiB holds 8M digests. */
#define BT_SHARD_ENTRIES (8u << 20)

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

void idd_blocktable_free(idd_blocktable *bt)
{
	if (!bt)
		return;
	for (size_t i = 0; i < bt->nids; i++)
		free(bt->ids[i]);
	free(bt->ids);
	free(bt);
}

static char *shard_path(const char *index_dir, uint32_t s, idd_error *err)
{
	return idd_asprintf(err, "%s/%s/%02x", index_dir, IDD_BLOCKTABLE_DIR, s);
}

int idd_blocktable_open(const char *index_dir, idd_blocktable **out, idd_error *err)
{
	char *path = idd_asprintf(err, "%s/%s/%s", index_dir, IDD_BLOCKTABLE_DIR, BT_INDEX_FILE);
	if (!path)
		return IDD_ERR;
	void *p;
	size_t len;
	int rc = idd_indexfile_read(path, BTI_MAGIC, BT_VERSION, &p, &len, NULL, err);
	if (rc) {
		free(path);
		return rc;
	}
	idd_reader r;
	idd_reader_init(&r, p, len);
	idd_blocktable *bt = idd_calloc(1, sizeof *bt, err);
	uint64_t nids = 0;
	rc = bt ? IDD_OK : IDD_ERR;
	if (!rc && (!idd_get_bytes(&r, bt->key.b, 32) || !idd_get_u32(&r, &bt->shard_bits) ||
	            !idd_get_u64(&r, &bt->entries) || !idd_get_u64(&r, &nids) ||
	            bt->shard_bits > BT_MAX_SHARD_BITS || nids > idd_reader_left(&r)))
		rc = idd_fail(err, "%s: corrupt block table index", path);
	if (!rc && !(bt->ids = idd_calloc((size_t)nids, sizeof *bt->ids, err)))
		rc = IDD_ERR;
	for (uint64_t i = 0; !rc && i < nids; i++) {
		bt->nids = (size_t)i + 1;
		if (!idd_get_str(&r, &bt->ids[i], 4096))
			rc = idd_fail(err, "%s: corrupt block table index", path);
	}
	if (!rc && idd_reader_left(&r))
		rc = idd_fail(err, "%s: corrupt block table index (trailing bytes)", path);
	free(p);
	free(path);
	if (rc) {
		idd_blocktable_free(bt);
		return rc;
	}
	*out = bt;
	return IDD_OK;
}

int idd_blocktable_shard(const char *index_dir, const idd_blocktable *bt, uint32_t s,
                         idd_bt_entry **entries, size_t *n, idd_error *err)
{
	if (s >= (1u << bt->shard_bits))
		return idd_fail(err, "block table: no shard %u", s);
	char *path = shard_path(index_dir, s, err);
	if (!path)
		return IDD_ERR;
	void *p;
	size_t len;
	int rc = idd_indexfile_read(path, BTS_MAGIC, BT_VERSION, &p, &len, NULL, err);
	if (rc) {
		free(path);
		return IDD_ERR;
	}
	idd_reader r;
	idd_reader_init(&r, p, len);
	idd_digest key;
	uint32_t bits, shard;
	uint64_t cnt;
	if (!idd_get_bytes(&r, key.b, 32) || !idd_get_u32(&r, &bits) || !idd_get_u32(&r, &shard) ||
	    !idd_get_u64(&r, &cnt) || bits != bt->shard_bits || shard != s ||
	    cnt != idd_reader_left(&r) / BT_ENTRY || idd_reader_left(&r) % BT_ENTRY) {
		rc = idd_fail(err, "%s: corrupt block table shard", path);
	} else if (memcmp(key.b, bt->key.b, 32)) {
		rc = idd_fail(err, "%s: block table shard from another build (run 'imgdedup map')", path);
	} else {
		idd_bt_entry *v = idd_calloc((size_t)cnt, sizeof *v, err);
		rc = v ? IDD_OK : IDD_ERR;
		const unsigned char *q = r.p + r.pos;
		for (uint64_t i = 0; !rc && i < cnt; i++, q += BT_ENTRY) {
			memcpy(v[i].digest.b, q, 32);
			v[i].images = idd_le32(q + 32);
			v[i].image = idd_le32(q + 36);
			v[i].block = idd_le64(q + 40);
			if (v[i].images == 0 || v[i].image >= bt->nids ||
			    (i && memcmp(v[i - 1].digest.b, v[i].digest.b, 32) >= 0))
				rc = idd_fail(err, "%s: corrupt block table shard (entry %llu)", path,
				              (unsigned long long)i);
		}
		if (rc) {
			free(v);
		} else {
			*entries = v;
			*n = (size_t)cnt;
		}
	}
	free(p);
	free(path);
	return rc;
}

uint64_t idd_blocktable_bytes(const char *index_dir)
{
	char *dir = idd_path_join(index_dir, IDD_BLOCKTABLE_DIR, NULL);
	if (!dir)
		return 0;
	uint64_t total = 0;
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char *p = idd_path_join(dir, de->d_name, NULL);
		struct stat st;
		if (p && stat(p, &st) == 0 && S_ISREG(st.st_mode))
			total += (uint64_t)st.st_size;
		free(p);
	}
	if (d)
		closedir(d);
	free(dir);
	return total;
}

typedef struct bt_build {
	idd_digest_set set; /* aux: index into the arrays below */
	uint32_t *images, *image, *last;
	uint64_t *block;
	size_t n, cap;
} bt_build;

static int cmp_digest_ptr(const void *a, const void *b, void *ctx)
{
	const idd_digest *slots = ctx;
	return memcmp(slots[*(const size_t *)a].b, slots[*(const size_t *)b].b, 32);
}

static int build_shard(const char *index_dir, const idd_catalog *cat, const idd_digest *key,
                       uint32_t bits, uint32_t s, uint64_t *entries, idd_error *err)
{
	bt_build b = {0};
	uint64_t expect = cat->unique_blocks >> bits;
	if (idd_digest_set_init(&b.set, (size_t)IDD_MIN(expect, (uint64_t)BT_SHARD_ENTRIES * 2), true, err))
		return IDD_ERR;
	int rc = IDD_OK;
	for (size_t i = 0; !rc && i < cat->count; i++) {
		idd_blocklist *bl = NULL;
		if ((rc = idd_blocklist_open(index_dir, &cat->images[i], &bl, err)))
			break;
		/* only the non-zero blocks are visited */
		for (uint64_t q = 0, r = 0; !rc && q < bl->ndata; q++) {
			const idd_digest *dk = &bl->digests[q];
			while (q >= bl->runs[r].first + bl->runs[r].count)
				r++;
			uint64_t k = bl->runs[r].block + (q - bl->runs[r].first);
			if (bits && (idd_be32(dk->b) >> (32 - bits)) != s)
				continue;
			bool added;
			size_t slot = idd_digest_set_add(&b.set, dk, &added, err);
			if (slot == (size_t)-1) {
				rc = IDD_ERR;
				break;
			}
			if (added) {
				if (b.n == b.cap) {
					size_t nc = b.cap ? b.cap * 2 : 4096;
					uint32_t *a1 = idd_realloc_array(b.images, nc, 4, err);
					if (a1) b.images = a1;
					uint32_t *a2 = a1 ? idd_realloc_array(b.image, nc, 4, err) : NULL;
					if (a2) b.image = a2;
					uint32_t *a3 = a2 ? idd_realloc_array(b.last, nc, 4, err) : NULL;
					if (a3) b.last = a3;
					uint64_t *a4 = a3 ? idd_realloc_array(b.block, nc, 8, err) : NULL;
					if (!a4) {
						rc = IDD_ERR;
						break;
					}
					b.block = a4;
					b.cap = nc;
				}
				b.set.aux[slot] = b.n;
				b.images[b.n] = 1;
				b.image[b.n] = (uint32_t)i;
				b.last[b.n] = (uint32_t)i;
				b.block[b.n] = k;
				b.n++;
			} else {
				size_t e = (size_t)b.set.aux[slot];
				if (b.last[e] != (uint32_t)i) {
					b.last[e] = (uint32_t)i;
					b.images[e]++;
				}
			}
		}
		idd_blocklist_free(bl);
	}
	size_t *order = NULL;
	if (!rc && !(order = idd_calloc(b.n + 1, sizeof *order, err)))
		rc = IDD_ERR;
	if (!rc) {
		size_t m = 0;
		for (size_t j = 0; j < b.set.cap; j++)
			if (!idd_digest_is_zero(&b.set.slots[j]))
				order[m++] = j;
		qsort_r(order, m, sizeof *order, cmp_digest_ptr, b.set.slots);
		idd_buf out = {0};
		idd_buf_put(&out, key->b, 32);
		idd_buf_put_u32(&out, bits);
		idd_buf_put_u32(&out, s);
		idd_buf_put_u64(&out, m);
		for (size_t j = 0; j < m; j++) {
			size_t e = (size_t)b.set.aux[order[j]];
			idd_buf_put(&out, b.set.slots[order[j]].b, 32);
			idd_buf_put_u32(&out, b.images[e]);
			idd_buf_put_u32(&out, b.image[e]);
			idd_buf_put_u64(&out, b.block[e]);
		}
		char *path = shard_path(index_dir, s, err);
		if (out.failed)
			rc = idd_fail(err, "out of memory building the block table");
		else if (!path)
			rc = IDD_ERR;
		else
			rc = idd_indexfile_write(path, BTS_MAGIC, BT_VERSION, out.data, out.len, true, err);
		free(path);
		idd_buf_free(&out);
		*entries += m;
	}
	free(order);
	free(b.images);
	free(b.image);
	free(b.last);
	free(b.block);
	idd_digest_set_free(&b.set);
	return rc;
}

int idd_blocktable_update(const char *index_dir, const idd_catalog *cat, bool force, bool *rebuilt,
                          bool *repaired, idd_warn_fn warn, void *ctx, idd_error *err)
{
	*rebuilt = false;
	if (repaired)
		*repaired = false;
	idd_digest key;
	if (idd_catalog_key(cat, &key, err))
		return IDD_ERR;
	idd_blocktable *old = NULL;
	idd_error e2;
	int orc = idd_blocktable_open(index_dir, &old, &e2);
	if (orc && orc != IDD_ENOENT) {
		if (warn)
			warn(ctx, e2.msg);
		if (repaired)
			*repaired = true;
	}
	if (!orc && !force && !memcmp(old->key.b, key.b, 32)) {
		/* current: check every shard's checksum (constant memory), so a
		 * damaged or lost shard is rebuilt by the next run */
		bool complete = true;
		for (uint32_t s = 0; complete && s < (1u << old->shard_bits); s++) {
			char *p = shard_path(index_dir, s, err);
			if (!p) {
				idd_blocktable_free(old);
				return IDD_ERR;
			}
			complete = idd_indexfile_verify(p, BTS_MAGIC, BT_VERSION, NULL, NULL, &e2) == IDD_OK;
			free(p);
		}
		idd_blocktable_free(old);
		if (complete)
			return IDD_OK;
		if (warn)
			warn(ctx, e2.msg);
		if (repaired)
			*repaired = true;
		old = NULL;
	}
	idd_blocktable_free(old);
	char *dir = idd_path_join(index_dir, IDD_BLOCKTABLE_DIR, err);
	if (!dir || idd_mkdir_p(dir, err)) {
		free(dir);
		return IDD_ERR;
	}
	uint64_t unique = cat->unique_blocks;
	if (!unique)
		for (size_t i = 0; i < cat->count; i++)
			unique += cat->images[i].distinct_blocks;
	uint32_t bits = 0;
	while (bits < BT_MAX_SHARD_BITS && (unique >> bits) > BT_SHARD_ENTRIES)
		bits++;
	uint64_t entries = 0;
	int rc = IDD_OK;
	for (uint32_t s = 0; !rc && s < (1u << bits); s++)
		rc = build_shard(index_dir, cat, &key, bits, s, &entries, err);
	if (!rc) {
		idd_buf b = {0};
		idd_buf_put(&b, key.b, 32);
		idd_buf_put_u32(&b, bits);
		idd_buf_put_u64(&b, entries);
		idd_buf_put_u64(&b, cat->count);
		for (size_t i = 0; i < cat->count; i++)
			idd_buf_put_str(&b, cat->images[i].id);
		char *path = idd_path_join(dir, BT_INDEX_FILE, err);
		rc = b.failed ? idd_fail(err, "out of memory")
		     : path ? idd_indexfile_write(path, BTI_MAGIC, BT_VERSION, b.data, b.len, true, err)
		            : IDD_ERR;
		free(path);
		idd_buf_free(&b);
	}
	/* drop shards a larger earlier table left behind */
	for (uint32_t s = 1u << bits; !rc && s < (1u << BT_MAX_SHARD_BITS); s++) {
		char *p = shard_path(index_dir, s, err);
		if (p)
			unlink(p);
		free(p);
	}
	free(dir);
	if (!rc)
		*rebuilt = true;
	return rc;
}
