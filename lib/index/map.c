/* map.c - block maps (every block of an image -> its content digest) and the
 * incremental `map` run.  Layout: docs/formats.md ("Block maps"). */
#include "index/map.h"
#include "index/catalog.h"
#include "index/indexfile.h"
#include "index/indexdir.h"
#include "index/blocktable.h"
#include "base/digest.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

static const char MAP_MAGIC[8] = {'I', 'D', 'D', '-', 'M', 'A', 'P', 0};
static const char MAPIDX_MAGIC[8] = {'I', 'D', 'D', '-', 'M', 'I', 'X', 0};
#define MAP_VERSION 1
#define MAPIDX_VERSION 2
/* a map file modified this close to the maps index's writing may have been
 * changed again within the timestamp granularity: checked by reading it */
#define MAP_RACY_NS ((int64_t)2 * 1000000000)
#define MAX_ID 4096
#define MAPIDX_FILE "index"

/* Run kinds in the block stream: tag = length << 2 | kind. */
enum { RUN_ZERO = 0, RUN_NEW = 1, RUN_COPY = 2, RUN_REPEAT = 3 };

uint64_t idd_map_parse_max_blocks = (uint64_t)1 << 36; /* 256 TiB of 4 KiB blocks */

void idd_map_free(idd_map *m)
{
	if (!m)
		return;
	free(m->digests);
	free(m->runs);
	free(m->id);
	free(m);
}

/* Append count blocks of one kind to the run list, extending the last run
 * when the blocks continue it (a single-block run may become SEQ or SAME). */
static int push_run(idd_map *m, size_t *cap, uint32_t kind, uint32_t ref, uint64_t count,
                    idd_error *err)
{
	if (m->nruns) {
		idd_map_span *l = &m->runs[m->nruns - 1];
		uint64_t end_ref = (uint64_t)l->ref + l->count;
		if (kind == IDD_RUN_ZERO && l->kind == IDD_RUN_ZERO) {
			l->count += count;
			return IDD_OK;
		}
		if (kind != IDD_RUN_ZERO && l->kind != IDD_RUN_ZERO) {
			bool seq_next = ref == end_ref && (kind == IDD_RUN_SEQ || count == 1);
			bool same_next = ref == l->ref && (kind == IDD_RUN_SAME || count == 1);
			if (seq_next && (l->kind == IDD_RUN_SEQ || l->count == 1)) {
				l->kind = IDD_RUN_SEQ;
				l->count += count;
				return IDD_OK;
			}
			if (same_next && (l->kind == IDD_RUN_SAME || l->count == 1)) {
				l->kind = IDD_RUN_SAME;
				l->count += count;
				return IDD_OK;
			}
		}
	}
	if (m->nruns == *cap) {
		size_t nc = *cap ? *cap * 2 : 64;
		idd_map_span *nr = idd_realloc_array(m->runs, nc, sizeof *nr, err);
		if (!nr)
			return IDD_ERR;
		m->runs = nr;
		*cap = nc;
	}
	uint64_t block = m->nruns ? m->runs[m->nruns - 1].block + m->runs[m->nruns - 1].count : 0;
	m->runs[m->nruns++] = (idd_map_span){block, count, kind == IDD_RUN_ZERO ? 0 : ref,
	                                    count == 1 && kind != IDD_RUN_ZERO ? IDD_RUN_SEQ : kind};
	return IDD_OK;
}

size_t idd_map_span_index(const idd_map *m, uint64_t b)
{
	size_t lo = 0, hi = m->nruns;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (m->runs[mid].block <= b)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

uint32_t idd_map_ref(const idd_map *m, uint64_t b)
{
	if (!m->nruns || b >= m->nblocks)
		return 0;
	return idd_map_span_ref(&m->runs[idd_map_span_index(m, b)], b);
}

uint64_t idd_map_nonzero_blocks(const idd_map *m)
{
	uint64_t n = 0;
	for (size_t i = 0; i < m->nruns; i++)
		if (m->runs[i].kind != IDD_RUN_ZERO)
			n += m->runs[i].count;
	return n;
}

int idd_map_content_key(const idd_map *m, idd_digest *out, idd_error *err)
{
	/* little-endian fields, so the key does not depend on the struct layout */
	idd_buf b = {0};
	idd_buf_put_u32(&b, m->block_size);
	idd_buf_put_u64(&b, m->image_size);
	idd_buf_put_u64(&b, m->ndistinct);
	idd_buf_put(&b, m->digests, (size_t)m->ndistinct * IDD_DIGEST_SIZE);
	idd_buf_put_u64(&b, m->nruns);
	for (size_t i = 0; i < m->nruns; i++) {
		idd_buf_put_u64(&b, m->runs[i].block);
		idd_buf_put_u64(&b, m->runs[i].count);
		idd_buf_put_u32(&b, m->runs[i].ref);
		idd_buf_put_u32(&b, m->runs[i].kind);
	}
	int rc = b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory") :
	                    idd_sha256(b.data, b.len, out->b, err);
	idd_buf_free(&b);
	return rc;
}

/* Building a map: the digest table grows in order of first occurrence, a
 * set finds repeats, runs absorb consecutive references. */
struct map_builder {
	idd_map *m;
	idd_digest_set set;
	size_t cap, rcap;
};

static int builder_init(struct map_builder *b, uint32_t block_size, uint64_t nblocks,
                        uint64_t image_size, idd_error *err)
{
	memset(b, 0, sizeof *b);
	if (!idd_is_power_of_two(block_size) || block_size < IDD_MIN_BLOCK_SIZE ||
	    block_size > IDD_MAX_BLOCK_SIZE)
		return idd_fail(err, "map: bad block size %u", block_size);
	if (nblocks != image_size / block_size + (image_size % block_size != 0))
		return idd_fail(err, "map: %llu blocks do not match an image of %llu bytes",
		                (unsigned long long)nblocks, (unsigned long long)image_size);
	if (nblocks > idd_map_parse_max_blocks)
		return idd_fail(err, "map: image too large (%llu blocks)", (unsigned long long)nblocks);
	if (!(b->m = idd_calloc(1, sizeof *b->m, err)))
		return IDD_ERR;
	b->m->block_size = block_size;
	b->m->image_size = image_size;
	b->m->nblocks = nblocks;
	if (idd_digest_set_init(&b->set, 1024, true, err)) {
		idd_map_free(b->m);
		b->m = NULL;
		return IDD_ERR;
	}
	return IDD_OK;
}

static void builder_free(struct map_builder *b)
{
	idd_digest_set_free(&b->set);
	idd_map_free(b->m);
	b->m = NULL;
}

static int builder_zero(struct map_builder *b, uint64_t count, idd_error *err)
{
	return count ? push_run(b->m, &b->rcap, IDD_RUN_ZERO, 0, count, err) : IDD_OK;
}

static int builder_block(struct map_builder *b, const idd_digest *d, idd_error *err)
{
	idd_map *m = b->m;
	bool added;
	size_t slot = idd_digest_set_add(&b->set, d, &added, err);
	if (slot == (size_t)-1)
		return IDD_ERR;
	if (added) {
		if (m->ndistinct >= UINT32_MAX - 1)
			return idd_fail(err, "map: more than 2^32 distinct blocks");
		if (m->ndistinct == b->cap) {
			size_t nc = b->cap ? b->cap * 2 : 1024;
			idd_digest *v = idd_realloc_array(m->digests, nc, sizeof *v, err);
			if (!v)
				return IDD_ERR;
			m->digests = v;
			b->cap = nc;
		}
		m->digests[m->ndistinct++] = *d;
		b->set.aux[slot] = m->ndistinct;
	}
	return push_run(m, &b->rcap, IDD_RUN_SEQ, (uint32_t)b->set.aux[slot], 1, err);
}

int idd_map_build(const idd_digest *blocks, uint64_t nblocks, uint32_t block_size,
                  uint64_t image_size, idd_map **out, idd_error *err)
{
	struct map_builder b;
	if (builder_init(&b, block_size, nblocks, image_size, err))
		return IDD_ERR;
	for (uint64_t i = 0; i < nblocks; i++) {
		int rc = idd_digest_is_zero(&blocks[i]) ? builder_zero(&b, 1, err)
		                                        : builder_block(&b, &blocks[i], err);
		if (rc) {
			builder_free(&b);
			return IDD_ERR;
		}
	}
	idd_digest_set_free(&b.set);
	*out = b.m;
	return IDD_OK;
}

int idd_map_build_list(const idd_blocklist *bl, uint64_t image_size, idd_map **out, idd_error *err)
{
	struct map_builder b;
	if (builder_init(&b, bl->block_size, bl->nblocks, image_size, err))
		return IDD_ERR;
	uint64_t end = 0;
	for (size_t r = 0; r < bl->nruns; r++) {
		const idd_block_run *run = &bl->runs[r];
		if (builder_zero(&b, run->block - end, err))
			goto fail;
		for (uint64_t k = 0; k < run->count; k++)
			if (builder_block(&b, &bl->digests[run->first + k], err))
				goto fail;
		end = run->block + run->count;
	}
	if (builder_zero(&b, bl->nblocks - end, err))
		goto fail;
	idd_digest_set_free(&b.set);
	*out = b.m;
	return IDD_OK;
fail:
	builder_free(&b);
	return IDD_ERR;
}

char *idd_map_relpath(const char *id, idd_error *err)
{
	char hex[2 * IDD_DIGEST_SIZE + 1];
	if (idd_id_hex(id, hex, err))
		return NULL;
	return idd_asprintf(err, "%s/%s.map", IDD_MAPS_DIR, hex);
}

static int encode_payload(const idd_map *m, void **file, size_t *len, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u32(&b, m->block_size);
	idd_buf_put_u64(&b, m->image_size);
	idd_buf_put_u64(&b, m->nblocks);
	idd_buf_put_u64(&b, m->ndistinct);
	idd_buf_put(&b, m->list_key.b, IDD_DIGEST_SIZE);
	idd_buf_put_str(&b, m->id ? m->id : "");
	idd_buf_put(&b, m->digests, (size_t)m->ndistinct * IDD_DIGEST_SIZE);
	uint64_t next_new = 1, covered = 0;
	for (size_t i = 0; i < m->nruns && !b.failed; i++) {
		const idd_map_span *r = &m->runs[i];
		if (r->block != covered || !r->count)
			goto bad;
		covered += r->count;
		if (r->kind == IDD_RUN_ZERO) {
			uint64_t n = r->count;
			while (i + 1 < m->nruns && m->runs[i + 1].kind == IDD_RUN_ZERO)
				n += m->runs[++i].count, covered += m->runs[i].count;
			idd_buf_put_varint(&b, n << 2 | RUN_ZERO);
			continue;
		}
		uint64_t ref = r->ref, n = r->count;
		if (r->kind == IDD_RUN_SAME) {
			if (ref == next_new) { /* its first occurrence introduces it */
				idd_buf_put_varint(&b, (uint64_t)1 << 2 | RUN_NEW);
				next_new++;
				n--;
			}
			if (n && ref < next_new) {
				idd_buf_put_varint(&b, n << 2 | RUN_REPEAT);
				idd_buf_put_varint(&b, ref);
			} else if (n)
				goto bad;
			continue;
		}
		while (n) { /* SEQ: copies of known entries, then new ones */
			if (ref < next_new) {
				uint64_t c = IDD_MIN(n, next_new - ref);
				idd_buf_put_varint(&b, c << 2 | RUN_COPY);
				idd_buf_put_varint(&b, ref);
				ref += c;
				n -= c;
			} else if (ref == next_new) {
				idd_buf_put_varint(&b, n << 2 | RUN_NEW);
				next_new += n;
				n = 0;
			} else
				goto bad;
		}
	}
	if (covered != m->nblocks)
		goto bad;
	if (b.failed) {
		idd_buf_free(&b);
		return idd_fail(err, "out of memory encoding a block map");
	}
	if (next_new != m->ndistinct + 1) {
		idd_buf_free(&b);
		return idd_fail(err, "map: digest table holds unreferenced entries");
	}
	*file = b.data;
	*len = b.len;
	return IDD_OK;
bad:
	idd_buf_free(&b);
	return idd_fail(err, "map: runs out of order or references out of first-occurrence order");
}

/* The complete file: the index-file container (indexfile.c's layout) built
 * in memory, so maps can be produced for a remote store or a fuzz corpus. */
int idd_map_encode(const idd_map *m, void **file, size_t *len, idd_error *err)
{
	void *payload = NULL;
	size_t plen = 0;
	if (encode_payload(m, &payload, &plen, err))
		return IDD_ERR;
	size_t bound = ZSTD_compressBound(plen);
	unsigned char *f = idd_malloc(IDD_IF_HEADER + bound + IDD_IF_TRAILER, err);
	if (!f) {
		free(payload);
		return IDD_ERR;
	}
	size_t z = ZSTD_compress(f + IDD_IF_HEADER, bound, payload, plen, 3);
	free(payload);
	if (ZSTD_isError(z)) {
		free(f);
		return idd_fail(err, "map: zstd: %s", ZSTD_getErrorName(z));
	}
	memcpy(f, MAP_MAGIC, 8);
	idd_le32_put(f + 8, MAP_VERSION);
	idd_le32_put(f + 12, IDD_IF_ZSTD);
	idd_le64_put(f + 16, plen);
	idd_le64_put(f + 24, z);
	if (idd_sha256(f, IDD_IF_HEADER + z, f + IDD_IF_HEADER + z, err)) {
		free(f);
		return IDD_ERR;
	}
	*file = f;
	*len = IDD_IF_HEADER + z + IDD_IF_TRAILER;
	return IDD_OK;
}

/* Parse a map payload (container already checked). */
static int map_parse_payload(const char *name, const void *payload, size_t plen, idd_map **out,
                             idd_error *err)
{
	idd_reader r;
	idd_reader_init(&r, payload, plen);
	idd_map *m = idd_calloc(1, sizeof *m, err);
	if (!m)
		return IDD_ERR;
	const char *why = "short header";
	if (!idd_get_u32(&r, &m->block_size) || !idd_get_u64(&r, &m->image_size) ||
	    !idd_get_u64(&r, &m->nblocks) || !idd_get_u64(&r, &m->ndistinct) ||
	    !idd_get_bytes(&r, m->list_key.b, IDD_DIGEST_SIZE) || !idd_get_str(&r, &m->id, MAX_ID))
		goto corrupt;
	why = "bad block size";
	if (!idd_is_power_of_two(m->block_size) || m->block_size < IDD_MIN_BLOCK_SIZE ||
	    m->block_size > IDD_MAX_BLOCK_SIZE)
		goto corrupt;
	why = "block count does not match the image size";
	if (m->nblocks != m->image_size / m->block_size + (m->image_size % m->block_size != 0))
		goto corrupt;
	if (m->nblocks > idd_map_parse_max_blocks) {
		idd_fail(err, "%s: corrupt block map (claims %llu blocks, more than %llu allowed)", name,
		         (unsigned long long)m->nblocks, (unsigned long long)idd_map_parse_max_blocks);
		idd_map_free(m);
		return IDD_ERR;
	}
	why = "digest table larger than the file";
	if (m->ndistinct > m->nblocks || m->ndistinct > idd_reader_left(&r) / IDD_DIGEST_SIZE)
		goto corrupt;
	const unsigned char *table = idd_get_span(&r, (size_t)m->ndistinct * IDD_DIGEST_SIZE);
	if (!table)
		goto corrupt;
	/* First pass: validate the runs without allocating per block, so a map
	 * claiming more blocks than its runs describe costs nothing. */
	idd_reader runs = r;
	uint64_t covered = 0, next_new = 1;
	while (idd_reader_left(&runs)) {
		uint64_t tag, ref = 0;
		why = "truncated run";
		if (!idd_get_varint(&runs, &tag))
			goto corrupt;
		uint64_t n = tag >> 2, kind = tag & 3;
		why = "empty run or run past the end of the image";
		if (n == 0 || n > m->nblocks - covered)
			goto corrupt;
		if (kind == RUN_COPY || kind == RUN_REPEAT) {
			why = "truncated run";
			if (!idd_get_varint(&runs, &ref))
				goto corrupt;
			why = "reference past the digests introduced so far";
			if (ref == 0 || ref >= next_new || (kind == RUN_COPY && n - 1 >= next_new - ref))
				goto corrupt;
		} else if (kind == RUN_NEW) {
			why = "new blocks past the digest table";
			if (n > m->ndistinct + 1 - next_new)
				goto corrupt;
			next_new += n;
		}
		covered += n;
	}
	why = "runs cover fewer blocks than the header claims";
	if (covered != m->nblocks)
		goto corrupt;
	why = "digest table holds entries no block uses";
	if (next_new != m->ndistinct + 1)
		goto corrupt;
	for (uint64_t k = 0; k < m->ndistinct; k++) {
		why = "zero digest in the digest table";
		if (idd_is_zero(table + k * IDD_DIGEST_SIZE, IDD_DIGEST_SIZE))
			goto corrupt;
	}
	m->digests = idd_malloc((size_t)m->ndistinct * IDD_DIGEST_SIZE, err);
	if (!m->digests) {
		idd_map_free(m);
		return IDD_ERR;
	}
	memcpy(m->digests, table, (size_t)m->ndistinct * IDD_DIGEST_SIZE);
	size_t rcap = 0;
	next_new = 1;
	while (idd_reader_left(&r)) { /* already validated */
		uint64_t tag, ref = 0;
		idd_get_varint(&r, &tag);
		uint64_t n = tag >> 2, kind = tag & 3;
		if (kind == RUN_COPY || kind == RUN_REPEAT)
			idd_get_varint(&r, &ref);
		int prc;
		switch (kind) {
		case RUN_ZERO: prc = push_run(m, &rcap, IDD_RUN_ZERO, 0, n, err); break;
		case RUN_NEW:
			prc = push_run(m, &rcap, IDD_RUN_SEQ, (uint32_t)next_new, n, err);
			next_new += n;
			break;
		case RUN_COPY: prc = push_run(m, &rcap, IDD_RUN_SEQ, (uint32_t)ref, n, err); break;
		default: prc = push_run(m, &rcap, IDD_RUN_SAME, (uint32_t)ref, n, err); break;
		}
		if (prc) {
			idd_map_free(m);
			return IDD_ERR;
		}
	}
	*out = m;
	return IDD_OK;
corrupt:
	idd_map_free(m);
	return idd_fail(err, "%s: corrupt block map (%s)", name, why);
}

int idd_map_parse(const char *name, const void *file, size_t len, idd_map **out, idd_error *err)
{
	void *payload;
	size_t plen;
	if (idd_indexfile_parse(name, file, len, MAP_MAGIC, MAP_VERSION, &payload, &plen, NULL, err))
		return IDD_ERR;
	int rc = map_parse_payload(name, payload, plen, out, err);
	free(payload);
	return rc;
}

static char *map_path(const char *index_dir, const char *id, idd_error *err)
{
	char *rel = idd_map_relpath(id, err);
	if (!rel)
		return NULL;
	char *p = idd_path_join(index_dir, rel, err);
	free(rel);
	return p;
}

int idd_map_save(const char *index_dir, const char *id, const idd_map *m, uint64_t *bytes_written,
                 idd_error *err)
{
	idd_map tmp = *m;
	tmp.id = (char *)id;
	void *file = NULL;
	size_t flen = 0;
	if (idd_map_encode(&tmp, &file, &flen, err))
		return IDD_ERR;
	char *dir = idd_path_join(index_dir, IDD_MAPS_DIR, err);
	char *path = map_path(index_dir, id, err);
	int rc = dir && path ? idd_mkdir_p(dir, err) : IDD_ERR;
	if (!rc)
		rc = idd_write_file_atomic(path, file, flen, err);
	if (!rc && bytes_written)
		*bytes_written = flen;
	free(file);
	free(dir);
	free(path);
	return rc;
}

int idd_map_load(const char *index_dir, const char *id, idd_map **out, idd_error *err)
{
	char *path = map_path(index_dir, id, err);
	if (!path)
		return IDD_ERR;
	void *file;
	size_t len;
	int rc = idd_read_file(path, (size_t)(IDD_IF_MAX_PAYLOAD + 64), &file, &len, err);
	if (rc == IDD_ENOENT)
		idd_fail(err, "%s: no block map for %s (run 'imgdedup map' first)", path, id);
	if (!rc) {
		rc = idd_map_parse(path, file, len, out, err);
		free(file);
	}
	free(path);
	return rc;
}

/* ---- the maps index: which list_key each map was built from ---- */

typedef struct mapidx_entry {
	char *id;
	idd_digest list_key;
	uint64_t bytes;
	uint64_t ino;     /* the map file as it was when written or checked: */
	int64_t mtime_ns; /* one that still looks the same is not read again */
} mapidx_entry;

typedef struct mapidx {
	int64_t written_ns; /* when this index was written (0: version 1) */
	size_t n;
	mapidx_entry *v; /* sorted by id */
} mapidx;

static void mapidx_free(mapidx *x)
{
	for (size_t i = 0; i < x->n; i++)
		free(x->v[i].id);
	free(x->v);
	x->v = NULL;
	x->n = 0;
}

static int mapidx_load(const char *index_dir, mapidx *x, idd_error *err)
{
	memset(x, 0, sizeof *x);
	char *path = idd_asprintf(err, "%s/%s/%s", index_dir, IDD_MAPS_DIR, MAPIDX_FILE);
	if (!path)
		return IDD_ERR;
	void *p;
	size_t len;
	uint32_t version = 0;
	int rc = idd_indexfile_read(path, MAPIDX_MAGIC, MAPIDX_VERSION, &p, &len, &version, err);
	if (rc) {
		free(path);
		return rc;
	}
	idd_reader r;
	idd_reader_init(&r, p, len);
	uint64_t n, written = 0;
	rc = IDD_OK;
	if ((version >= 2 && !idd_get_u64(&r, &written)) || !idd_get_u64(&r, &n) || n > len / 41) {
		rc = idd_fail(err, "%s: corrupt maps index", path);
	} else if (!(x->v = idd_calloc((size_t)n, sizeof *x->v, err))) {
		rc = IDD_ERR;
	} else {
		for (uint64_t i = 0; i < n; i++) {
			mapidx_entry *e = &x->v[i];
			x->n = (size_t)i + 1;
			uint64_t mt = 0;
			if (!idd_get_str(&r, &e->id, MAX_ID) || !idd_get_bytes(&r, e->list_key.b, 32) ||
			    !idd_get_u64(&r, &e->bytes) ||
			    (version >= 2 && (!idd_get_u64(&r, &e->ino) || !idd_get_u64(&r, &mt))) ||
			    (i && strcmp(x->v[i - 1].id, e->id) >= 0)) {
				rc = idd_fail(err, "%s: corrupt maps index", path);
				break;
			}
			e->mtime_ns = (int64_t)mt;
		}
		x->written_ns = (int64_t)written;
		if (!rc && idd_reader_left(&r))
			rc = idd_fail(err, "%s: corrupt maps index (trailing bytes)", path);
	}
	if (rc)
		mapidx_free(x);
	free(p);
	free(path);
	return rc;
}

static int mapidx_save(const char *index_dir, const mapidx *x, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u64(&b, (uint64_t)idd_now_ns());
	idd_buf_put_u64(&b, x->n);
	for (size_t i = 0; i < x->n; i++) {
		idd_buf_put_str(&b, x->v[i].id);
		idd_buf_put(&b, x->v[i].list_key.b, 32);
		idd_buf_put_u64(&b, x->v[i].bytes);
		idd_buf_put_u64(&b, x->v[i].ino);
		idd_buf_put_u64(&b, (uint64_t)x->v[i].mtime_ns);
	}
	if (b.failed) {
		idd_buf_free(&b);
		return idd_fail(err, "out of memory");
	}
	char *path = idd_asprintf(err, "%s/%s/%s", index_dir, IDD_MAPS_DIR, MAPIDX_FILE);
	int rc = path ? idd_indexfile_write(path, MAPIDX_MAGIC, MAPIDX_VERSION, b.data, b.len, true, err)
	              : IDD_ERR;
	free(path);
	idd_buf_free(&b);
	return rc;
}

static int cmp_entry_id(const void *a, const void *b)
{
	return strcmp(((const mapidx_entry *)a)->id, ((const mapidx_entry *)b)->id);
}

static mapidx_entry *mapidx_find(const mapidx *x, const char *id)
{
	mapidx_entry key = {.id = (char *)id};
	return x->n ? bsearch(&key, x->v, x->n, sizeof key, cmp_entry_id) : NULL;
}

/* Size, inode and mtime of a map file; false when it is not there. */
static bool map_file_ident(const char *index_dir, const char *id, uint64_t *size, uint64_t *ino,
                           int64_t *mtime_ns)
{
	char *p = map_path(index_dir, id, NULL);
	struct stat st;
	bool ok = p && stat(p, &st) == 0 && S_ISREG(st.st_mode);
	free(p);
	if (ok) {
		*size = (uint64_t)st.st_size;
		*ino = (uint64_t)st.st_ino;
		*mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	}
	return ok;
}

static uint64_t file_bytes(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISREG(st.st_mode) ? (uint64_t)st.st_size : UINT64_MAX;
}

/* Is the map file of im intact and built for it: container, structure,
 * id, list key, size and block size? */
static int map_file_check(const char *index_dir, uint32_t bs, const idd_image_info *im,
                          idd_error *err)
{
	idd_map *m;
	int rc = idd_map_load(index_dir, im->id, &m, err);
	if (rc)
		return rc;
	char *path = map_path(index_dir, im->id, err);
	const char *why = m->id && strcmp(m->id, im->id) ? "it is the map of another image"
	                  : memcmp(m->list_key.b, im->list_key.b, 32) ? "it was built from another block list"
	                  : m->image_size != im->virtual_size || m->block_size != bs
	                  ? "its size or block size disagrees with the catalog" : NULL;
	if (why)
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: block map of %s: %s", path ? path : im->id,
		                   im->id, why);
	free(path);
	idd_map_free(m);
	return rc;
}

/* Build and save the map of one image; fills e. */
static int map_one(const char *index_dir, uint32_t bs, const idd_image_info *im, mapidx_entry *e,
                   idd_error *err)
{
	idd_blocklist *bl = NULL;
	if (idd_blocklist_open(index_dir, im, &bl, err))
		return IDD_ERR;
	idd_map *m = NULL;
	int rc = bl->block_size == bs ? idd_map_build_list(bl, im->virtual_size, &m, err)
	         : idd_fail(err, "block list of %u-byte blocks in an index of %u", bl->block_size, bs);
	idd_blocklist_free(bl);
	if (rc) {
		idd_error_prefix(err, "%s", im->id);
		return IDD_ERR;
	}
	m->list_key = im->list_key;
	rc = idd_map_save(index_dir, im->id, m, &e->bytes, err);
	idd_map_free(m);
	uint64_t size;
	if (!rc && !map_file_ident(index_dir, im->id, &size, &e->ino, &e->mtime_ns))
		e->ino = 0;
	if (!rc) {
		e->list_key = im->list_key;
		if (!(e->id = idd_strdup(im->id, err)))
			rc = IDD_ERR;
	}
	return rc;
}

struct map_keep {
	char **names; /* sorted file names of the maps to keep */
	size_t n;
	uint64_t removed_maps;
};

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool keep_map(void *ctx, const idd_dir_entry *e)
{
	struct map_keep *k = ctx;
	const char *name = e->name;
	if (e->kind == IDD_ENTRY_FILE &&
	    (!strcmp(name, MAPIDX_FILE) || (k->n && bsearch(&name, k->names, k->n, sizeof *k->names, cmp_name))))
		return true;
	if (e->kind == IDD_ENTRY_FILE && strstr(name, ".map"))
		k->removed_maps++;
	return false;
}

/* Delete every file in maps/ that is neither the maps index nor the map of
 * an image in keep (temporaries of crashed runs included: we hold the lock). */
static int remove_stale(const char *index_dir, const mapidx *keep, uint64_t *removed, idd_error *err)
{
	char *dir = idd_path_join(index_dir, IDD_MAPS_DIR, err);
	if (!dir)
		return IDD_ERR;
	struct map_keep k = {.names = idd_calloc(keep->n + 1, sizeof *k.names, err)};
	int rc = k.names ? IDD_OK : IDD_ERR;
	for (size_t i = 0; !rc && i < keep->n; i++) {
		char *rel = idd_map_relpath(keep->v[i].id, err);
		if (!rel) {
			rc = IDD_ERR;
			break;
		}
		k.names[k.n] = idd_strdup(rel + strlen(IDD_MAPS_DIR) + 1, err);
		free(rel);
		if (!k.names[k.n++])
			rc = IDD_ERR;
	}
	if (!rc) {
		qsort(k.names, k.n, sizeof *k.names, cmp_name);
		rc = idd_dir_gc(dir, keep_map, &k, NULL, err);
		*removed += k.removed_maps;
	}
	for (size_t i = 0; i < k.n; i++)
		free(k.names[i]);
	free(k.names);
	free(dir);
	return rc;
}

int idd_map_run(const idd_map_opts *o, idd_map_stats *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	char *index_dir = NULL;
	if (idd_index_path(o->repo, o->index_dir, &index_dir, err))
		return IDD_ERR;
	int lockfd = -1, rc;
	idd_catalog *cat = NULL;
	mapidx old = {0}, neu = {0};
	char *catpath = idd_path_join(index_dir, IDD_CATALOG_FILE, err);
	if (!catpath) {
		free(index_dir);
		return IDD_ERR;
	}
	if (access(catpath, F_OK) != 0) {
		rc = idd_fail(err, "%s: no index here (run 'imgdedup scan' first)", index_dir);
		goto out;
	}
	if ((rc = idd_lock(index_dir, o->no_wait, &lockfd, err)))
		goto out;
	if ((rc = idd_catalog_load(index_dir, &cat, err)))
		goto out;
	for (size_t i = 0; i < o->n_images; i++) {
		if (!idd_catalog_find(cat, o->images[i])) {
			rc = idd_fail(err, "%s: no image '%s' in the index", index_dir, o->images[i]);
			if (rc == IDD_ERR)
				rc = IDD_ENOENT;
			goto out;
		}
	}
	idd_error e2;
	int lr = mapidx_load(index_dir, &old, &e2);
	bool idx_missing = lr != IDD_OK;
	if (lr && lr != IDD_ENOENT) { /* damaged: rebuild every map */
		idd_warnf(o->warn, o->ctx, "%s; every map is rebuilt", e2.msg);
		st->repaired++;
	}
	neu.v = idd_calloc(cat->count + 1, sizeof *neu.v, err);
	if (!neu.v) {
		rc = IDD_ERR;
		goto out;
	}
	st->images = cat->count;
	uint64_t total = 0, done = 0;
	for (size_t i = 0; i < cat->count; i++)
		total += cat->images[i].nblocks;
	bool changed = idx_missing;
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		bool selected = o->n_images == 0;
		for (size_t k = 0; k < o->n_images && !selected; k++)
			selected = !strcmp(o->images[k], im->id);
		mapidx_entry *prev = mapidx_find(&old, im->id);
		char *path = map_path(index_dir, im->id, err);
		if (!path) {
			rc = IDD_ERR;
			goto out;
		}
		free(path);
		uint64_t have = UINT64_MAX, ino = 0;
		int64_t mtime = 0;
		if (!map_file_ident(index_dir, im->id, &have, &ino, &mtime))
			have = UINT64_MAX;
		bool recorded = prev && !memcmp(prev->list_key.b, im->list_key.b, 32);
		bool current = recorded && have != UINT64_MAX && have == prev->bytes;
		/* a map whose file is as it was when last written or checked (size,
		 * inode, mtime, not modified within a moment of the maps index) is
		 * trusted without reading it: a cron run costs what changed, and
		 * verify reads everything */
		bool trusted = current && ino == prev->ino && mtime == prev->mtime_ns &&
		               mtime + MAP_RACY_NS <= old.written_ns;
		/* otherwise the maps index says current: check the map itself
		 * (checksum, structure, the image and list it was built for), so a
		 * cron run repairs a damaged, swapped or lost map */
		bool checked = false;
		if (selected && recorded && !trusted) {
			idd_error why;
			if (!current) {
				idd_warnf(o->warn, o->ctx, "%s: block map of %s is missing or has changed size; rebuilt",
				          index_dir, im->id);
			} else if (map_file_check(index_dir, cat->block_size, im, &why)) {
				idd_warnf(o->warn, o->ctx, "%s; rebuilt", why.msg);
				current = false;
			} else {
				checked = true;
			}
			if (!current)
				st->repaired++;
		}
		mapidx_entry *e = &neu.v[neu.n];
		if (current || (!selected && prev && have == prev->bytes)) {
			/* unchanged, or stale but not asked for: keep as recorded */
			if (!(e->id = idd_strdup(im->id, err))) {
				rc = IDD_ERR;
				goto out;
			}
			e->list_key = prev->list_key;
			e->bytes = prev->bytes;
			e->ino = prev->ino;
			e->mtime_ns = prev->mtime_ns;
			if (checked && (ino != prev->ino || mtime != prev->mtime_ns)) {
				/* checked under a new identity (rewritten elsewhere, copied
				 * back): remember it, so the next run trusts it */
				e->ino = ino;
				e->mtime_ns = mtime;
				changed = true;
			}
			neu.n++;
			if (selected)
				st->unchanged++;
		} else if (selected) {
			if ((rc = map_one(index_dir, cat->block_size, im, e, err)))
				goto out;
			neu.n++;
			st->written++;
			changed = true;
		} else if (prev) {
			changed = true; /* recorded map vanished: forget it */
		}
		done += im->nblocks;
		if (o->progress)
			o->progress(o->ctx, done, total);
	}
	if (old.n != neu.n)
		changed = true;
	if ((rc = remove_stale(index_dir, &neu, &st->removed, err)))
		goto out;
	if (st->removed)
		changed = true;
	if (changed) {
		char *dir = idd_path_join(index_dir, IDD_MAPS_DIR, err);
		rc = dir ? idd_mkdir_p(dir, err) : IDD_ERR;
		free(dir);
		if (!rc)
			rc = mapidx_save(index_dir, &neu, err);
		if (rc)
			goto out;
	}
	for (size_t i = 0; i < neu.n; i++)
		st->map_bytes += neu.v[i].bytes;
	/* the block table follows the catalog (scan keeps it current; an index
	 * written by an older imgdedup or a generator gets it here) */
	idd_bt_update_stats bst;
	if ((rc = idd_blocktable_update(index_dir, NULL, cat, NULL, false, &bst, o->warn, o->ctx, err)))
		goto out;
	st->repaired += bst.repaired;
	st->blocktable_rebuilt = bst.rebuilt || bst.runs_written;
	st->blocktable_entries = bst.entries;
	st->blocktable_bytes = idd_blocktable_bytes(index_dir);
out:
	mapidx_free(&old);
	mapidx_free(&neu);
	idd_catalog_free(cat);
	idd_unlock(lockfd);
	free(catpath);
	free(index_dir);
	return rc;
}

/* ---- what `info` shows ---- */

int idd_image_summary_get(const char *index_dir, const char *id, idd_image_summary *out,
                          idd_error *err)
{
	memset(out, 0, sizeof *out);
	idd_catalog *cat;
	if (idd_catalog_load(index_dir, &cat, err))
		return IDD_ERR;
	const idd_image_info *im = idd_catalog_find(cat, id);
	if (!im) {
		idd_fail(err, "%s: no image '%s' in the index", index_dir, id);
		idd_catalog_free(cat);
		return IDD_ENOENT;
	}
	out->blocks = im->nblocks;
	out->zero_blocks = im->zero_blocks;
	out->distinct_blocks = im->distinct_blocks;
	out->internal_duplicates = im->nblocks - im->zero_blocks - im->distinct_blocks;
	idd_map *m = NULL;
	idd_error e2;
	if (idd_map_load(index_dir, id, &m, &e2) == IDD_OK &&
	    !memcmp(m->list_key.b, im->list_key.b, 32)) {
		out->has_map = true;
		char *p = map_path(index_dir, id, &e2);
		out->map_bytes = p ? file_bytes(p) : 0;
		free(p);
	}
	/* exclusive blocks: digests of this image the block table counts once */
	idd_blocktable *bt = NULL;
	if (m && out->has_map && idd_blocktable_open(index_dir, &bt, &e2) == IDD_OK &&
	    idd_blocktable_matches(bt, cat)) {
		uint64_t excl = 0;
		for (uint64_t k = 0; k < m->ndistinct; k++) {
			int64_t c = 0;
			(void)idd_blocktable_count(bt, &m->digests[k], &c, &e2);
			excl += c == 1;
		}
		out->has_blocktable = true;
		out->exclusive_blocks = excl;
	}
	idd_blocktable_free(bt);
	idd_map_free(m);
	idd_catalog_free(cat);
	return IDD_OK;
}
