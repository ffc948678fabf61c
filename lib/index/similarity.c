/* similarity.c - exact pairwise similarity of every image in the index.
 *
 * Algorithm (docs/similarity.md):
 *  1. per image: its non-zero digests, truncated to 64 bits, sorted and
 *     counted -> (key, image, multiplicity) records, appended in image order
 *     to 2^p partition files by the key's top p bits (memory: one image);
 *  2. per partition: a stable radix sort by key groups each digest's images
 *     (already in image order); each group is a "signature" (the list of
 *     (image, multiplicity)) interned with a weight = how many digests have it;
 *  3. each distinct signature is expanded into pairs once, weighted.
 * So a block held by every image costs one signature, not images^2 per block.
 * The result is cached in the index (similarity file) keyed by the catalog. */
#include "base/util.h"
#include "base/error.h"
#include "index/indexfile.h"
#include "index/map.h"
#include "index/catalog.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char SIM_MAGIC[8] = {'I', 'D', 'D', '-', 'S', 'I', 'M', 0};
#define SIM_VERSION 1
#define SIM_FILE "similarity"
#define MAX_PART_BITS 10

typedef struct rec {
	uint64_t key;
	uint32_t image, mult;
} rec;

/* ---- radix sorts (stable LSD) ---- */

static void radix_u64(uint64_t *a, uint64_t *tmp, size_t n)
{
	if (n < 2)
		return; /* nothing to sort; a and tmp may be NULL */
	size_t cnt[256];
	for (int shift = 0; shift < 64; shift += 8) {
		memset(cnt, 0, sizeof cnt);
		for (size_t i = 0; i < n; i++)
			cnt[(a[i] >> shift) & 255]++;
		if (n && cnt[(a[0] >> shift) & 255] == n)
			continue; /* all share this digit */
		size_t sum = 0;
		for (int d = 0; d < 256; d++) {
			size_t c = cnt[d];
			cnt[d] = sum;
			sum += c;
		}
		for (size_t i = 0; i < n; i++)
			tmp[cnt[(a[i] >> shift) & 255]++] = a[i];
		memcpy(a, tmp, n * sizeof *a);
	}
}

static void radix_rec(rec *a, rec *tmp, size_t n)
{
	if (n < 2)
		return;
	size_t *cnt = calloc(65536, sizeof *cnt);
	if (!cnt) { /* tiny fallback: insertion sort is still correct */
		for (size_t i = 1; i < n; i++) {
			rec r = a[i];
			size_t j = i;
			while (j && a[j - 1].key > r.key) {
				a[j] = a[j - 1];
				j--;
			}
			a[j] = r;
		}
		return;
	}
	rec *src = a, *dst = tmp;
	for (int shift = 0; shift < 64; shift += 16) {
		memset(cnt, 0, 65536 * sizeof *cnt);
		for (size_t i = 0; i < n; i++)
			cnt[(src[i].key >> shift) & 65535]++;
		if (n && cnt[(src[0].key >> shift) & 65535] == n)
			continue;
		size_t sum = 0;
		for (size_t d = 0; d < 65536; d++) {
			size_t c = cnt[d];
			cnt[d] = sum;
			sum += c;
		}
		for (size_t i = 0; i < n; i++)
			dst[cnt[(src[i].key >> shift) & 65535]++] = src[i];
		rec *t = src;
		src = dst;
		dst = t;
	}
	if (src != a)
		memcpy(a, src, n * sizeof *a);
	free(cnt);
}

/* ---- signature table: distinct lists of (image, mult) with weights ---- */

typedef struct sig {
	uint64_t hash, off, weight;
	uint32_t len;
} sig;

typedef struct sigtab {
	sig *v;
	size_t n, cap;
	uint32_t *arena; /* pairs image, mult */
	size_t alen, acap;
	size_t *slots; /* index + 1, 0 = empty */
	size_t nslots;
} sigtab;

static void sigtab_free(sigtab *t)
{
	free(t->v);
	free(t->arena);
	free(t->slots);
	memset(t, 0, sizeof *t);
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static int sigtab_grow(sigtab *t, idd_error *err)
{
	size_t ns = t->nslots ? t->nslots * 2 : 4096;
	size_t *s = idd_calloc(ns, sizeof *s, err);
	if (!s)
		return IDD_ERR;
	for (size_t i = 0; i < t->n; i++) {
		size_t j = t->v[i].hash & (ns - 1);
		while (s[j])
			j = (j + 1) & (ns - 1);
		s[j] = i + 1;
	}
	free(t->slots);
	t->slots = s;
	t->nslots = ns;
	return IDD_OK;
}

/* pairs: len x (image, mult) */
static int sigtab_add(sigtab *t, const uint32_t *pairs, uint32_t len, uint64_t weight, idd_error *err)
{
	uint64_t h = 0x9e3779b97f4a7c15ULL ^ len;
	for (uint32_t i = 0; i < 2 * len; i++)
		h = mix64(h ^ pairs[i]) + i;
	if ((t->n + 1) * 2 > t->nslots && sigtab_grow(t, err))
		return IDD_ERR;
	size_t j = h & (t->nslots - 1);
	while (t->slots[j]) {
		sig *s = &t->v[t->slots[j] - 1];
		if (s->hash == h && s->len == len &&
		    !memcmp(t->arena + s->off, pairs, (size_t)len * 2 * sizeof *pairs)) {
			s->weight += weight;
			return IDD_OK;
		}
		j = (j + 1) & (t->nslots - 1);
	}
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 1024;
		sig *v = idd_realloc_array(t->v, nc, sizeof *v, err);
		if (!v)
			return IDD_ERR;
		t->v = v;
		t->cap = nc;
	}
	if (t->alen + 2 * (size_t)len > t->acap) {
		size_t nc = t->acap ? t->acap : 4096;
		while (nc < t->alen + 2 * (size_t)len)
			nc *= 2;
		uint32_t *a = idd_realloc_array(t->arena, nc, sizeof *a, err);
		if (!a)
			return IDD_ERR;
		t->arena = a;
		t->acap = nc;
	}
	memcpy(t->arena + t->alen, pairs, (size_t)len * 2 * sizeof *pairs);
	t->v[t->n] = (sig){.hash = h, .off = t->alen, .weight = weight, .len = len};
	t->alen += 2 * (size_t)len;
	t->slots[j] = ++t->n;
	return IDD_OK;
}

/* ---- the computation ---- */

typedef struct job {
	const char *index_dir;
	const idd_catalog *cat;
	uint32_t pbits;
	FILE **parts;          /* 2^pbits spill files */
	char **part_paths;
	idd_similarity *res;
	pthread_mutex_t mu;
	pthread_cond_t turn;
	size_t next_image;     /* next image to take */
	size_t next_write;     /* image whose records are written next */
	size_t next_part;
	bool failed;
	bool vanished;         /* a block list vanished: a scan replaced the catalog */
	idd_error err;
	sigtab sigs;           /* merged signatures */
	uint64_t done, total, part_unit; /* progress in bytes of virtual disk, twice */
	const idd_similarity_opts *o;
} job;

static void job_fail(job *j, const idd_error *e)
{
	pthread_mutex_lock(&j->mu);
	if (!j->failed) {
		j->failed = true;
		j->err = *e;
	}
	pthread_cond_broadcast(&j->turn);
	pthread_mutex_unlock(&j->mu);
}

static void job_progress(job *j, uint64_t inc)
{
	pthread_mutex_lock(&j->mu);
	j->done += inc;
	if (j->o->progress)
		j->o->progress(j->o->ctx, j->done, j->total);
	pthread_mutex_unlock(&j->mu);
}

static void *pass1_worker(void *arg)
{
	job *j = arg;
	idd_error e;
	uint64_t *keys = NULL, *tmp = NULL;
	rec *out = NULL;
	size_t cap = 0;
	for (;;) {
		pthread_mutex_lock(&j->mu);
		size_t i = j->next_image++;
		bool stop = j->failed || i >= j->cat->count;
		pthread_mutex_unlock(&j->mu);
		if (stop)
			break;
		const idd_image_info *im = &j->cat->images[i];
		idd_blocklist *bl = NULL;
		int orc = idd_blocklist_open(j->index_dir, im, &bl, &e);
		if (orc) {
			if (orc == IDD_ENOENT)
				j->vanished = true;
			job_fail(j, &e);
			break;
		}
		/* memory for the non-zero blocks only: a thin image costs its data */
		if (bl->ndata > cap) {
			free(keys);
			free(tmp);
			free(out);
			cap = (size_t)bl->ndata;
			keys = malloc(cap * sizeof *keys);
			tmp = malloc(cap * sizeof *tmp);
			out = malloc(cap * sizeof *out);
			if (!keys || !tmp || !out) {
				idd_blocklist_free(bl);
				idd_fail_code(&e, IDD_ENOMEM, "%s: out of memory for %llu non-zero blocks", im->id,
				              (unsigned long long)cap);
				cap = 0;
				job_fail(j, &e);
				break;
			}
		}
		size_t nk = (size_t)bl->ndata;
		for (size_t k = 0; k < nk; k++)
			keys[k] = idd_be64(bl->digests[k].b);
		idd_blocklist_free(bl);
		radix_u64(keys, tmp, nk);
		size_t no = 0;
		for (size_t k = 0; k < nk;) {
			size_t m = k + 1;
			while (m < nk && keys[m] == keys[k])
				m++;
			out[no++] = (rec){.key = keys[k], .image = (uint32_t)i,
			                  .mult = (uint32_t)IDD_MIN(m - k, (size_t)UINT32_MAX)};
			k = m;
		}
		j->res->nonzero[i] = nk;
		j->res->distinct[i] = no;
		/* write in image order so partitions stay image-sorted */
		pthread_mutex_lock(&j->mu);
		while (j->next_write != i && !j->failed)
			pthread_cond_wait(&j->turn, &j->mu);
		bool ok = !j->failed;
		pthread_mutex_unlock(&j->mu);
		if (!ok)
			break;
		size_t k = 0;
		uint32_t parts = 1u << j->pbits;
		for (uint32_t p = 0; p < parts && ok; p++) {
			size_t s = k;
			while (k < no && (j->pbits == 0 || (out[k].key >> (64 - j->pbits)) == p))
				k++;
			if (k > s && fwrite(out + s, sizeof *out, k - s, j->parts[p]) != k - s) {
				idd_fail_errno(&e, j->part_paths[p], "write");
				ok = false;
			}
		}
		pthread_mutex_lock(&j->mu);
		j->next_write++;
		pthread_cond_broadcast(&j->turn);
		pthread_mutex_unlock(&j->mu);
		if (!ok) {
			job_fail(j, &e);
			break;
		}
		job_progress(j, im->nblocks * j->cat->block_size);
	}
	free(keys);
	free(tmp);
	free(out);
	return NULL;
}

static int read_part(const char *path, rec **out, size_t *n, idd_error *err)
{
	void *data;
	size_t len;
	int rc = idd_read_file(path, SIZE_MAX / 2, &data, &len, err);
	if (rc)
		return IDD_ERR;
	if (len % sizeof(rec)) {
		free(data);
		return idd_fail(err, "%s: spill file has a partial record", path);
	}
	*out = data;
	*n = len / sizeof(rec);
	return IDD_OK;
}

static void *pass2_worker(void *arg)
{
	job *j = arg;
	idd_error e;
	sigtab local = {0};
	uint32_t *pairs = malloc(2 * (j->cat->count + 1) * sizeof *pairs);
	if (!pairs) {
		idd_fail(&e, "out of memory");
		job_fail(j, &e);
		return NULL;
	}
	for (;;) {
		pthread_mutex_lock(&j->mu);
		size_t p = j->next_part++;
		bool stop = j->failed || p >= (1u << j->pbits);
		pthread_mutex_unlock(&j->mu);
		if (stop)
			break;
		rec *r = NULL, *tmp = NULL;
		size_t n = 0;
		if (read_part(j->part_paths[p], &r, &n, &e)) {
			job_fail(j, &e);
			break;
		}
		unlink(j->part_paths[p]);
		tmp = malloc((n ? n : 1) * sizeof *tmp);
		if (!tmp) {
			free(r);
			idd_fail(&e, "out of memory sorting %zu records", n);
			job_fail(j, &e);
			break;
		}
		radix_rec(r, tmp, n);
		free(tmp);
		bool ok = true;
		for (size_t k = 0; k < n && ok;) {
			size_t m = k;
			uint32_t len = 0;
			while (m < n && r[m].key == r[k].key) {
				pairs[2 * len] = r[m].image;
				pairs[2 * len + 1] = r[m].mult;
				len++;
				m++;
			}
			if (sigtab_add(&local, pairs, len, 1, &e))
				ok = false;
			k = m;
		}
		free(r);
		if (!ok) {
			job_fail(j, &e);
			break;
		}
		job_progress(j, j->part_unit);
	}
	/* merge into the shared table */
	pthread_mutex_lock(&j->mu);
	for (size_t i = 0; i < local.n && !j->failed; i++) {
		if (sigtab_add(&j->sigs, local.arena + local.v[i].off, local.v[i].len, local.v[i].weight, &e)) {
			j->failed = true;
			j->err = e;
		}
	}
	pthread_mutex_unlock(&j->mu);
	sigtab_free(&local);
	free(pairs);
	return NULL;
}

static int run_threads(job *j, int nthreads, void *(*fn)(void *), idd_error *err)
{
	pthread_t th[64];
	int started = 0;
	for (int t = 0; t < nthreads && t < 64; t++) {
		if (pthread_create(&th[t], NULL, fn, j))
			break;
		started++;
	}
	if (!started)
		fn(j);
	for (int t = 0; t < started; t++)
		pthread_join(th[t], NULL);
	if (j->failed) {
		*err = j->err;
		return IDD_ERR;
	}
	return IDD_OK;
}

void idd_similarity_free(idd_similarity *s)
{
	if (!s)
		return;
	for (size_t i = 0; s->ids && i < s->n; i++)
		free(s->ids[i]);
	free(s->ids);
	free(s->nonzero);
	free(s->distinct);
	free(s->shared);
	free(s->contained);
	free(s);
}

static idd_similarity *sim_alloc(size_t n, idd_error *err)
{
	idd_similarity *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return NULL;
	s->n = n;
	size_t nn;
	if (__builtin_mul_overflow(n, n, &nn)) {
		idd_fail(err, "too many images (%zu)", n);
		free(s);
		return NULL;
	}
	s->ids = idd_calloc(n + 1, sizeof *s->ids, err);
	s->nonzero = s->ids ? idd_calloc(n + 1, sizeof *s->nonzero, err) : NULL;
	s->distinct = s->nonzero ? idd_calloc(n + 1, sizeof *s->distinct, err) : NULL;
	s->shared = s->distinct ? idd_calloc(nn + 1, sizeof *s->shared, err) : NULL;
	s->contained = s->shared ? idd_calloc(nn + 1, sizeof *s->contained, err) : NULL;
	if (!s->contained) {
		idd_similarity_free(s);
		return NULL;
	}
	return s;
}

static int compute(const idd_similarity_opts *o, const char *index_dir, const idd_catalog *cat,
                   idd_similarity *res, idd_error *err)
{
	size_t n = cat->count;
	uint64_t records = 0;
	for (size_t i = 0; i < n; i++)
		records += cat->images[i].distinct_blocks;
	uint64_t budget = o->mem_budget ? o->mem_budget : (512ull << 20);
	uint64_t per_part = IDD_MAX(budget / (2 * sizeof(rec)), (uint64_t)1024);
	uint32_t pbits = 0;
	while (pbits < MAX_PART_BITS && (records >> pbits) > per_part)
		pbits++;
	job j = {.index_dir = index_dir, .cat = cat, .pbits = pbits, .res = res, .o = o};
	uint32_t parts = 1u << pbits;
	char *tmpdir = idd_asprintf(err, "%s/.similarity.XXXXXX", o->tmp_dir ? o->tmp_dir : index_dir);
	if (!tmpdir)
		return IDD_ERR;
	if (!mkdtemp(tmpdir)) {
		int rc = idd_fail_errno(err, tmpdir, "cannot create a temporary directory");
		free(tmpdir);
		return rc;
	}
	int rc = IDD_OK;
	j.parts = idd_calloc(parts, sizeof *j.parts, err);
	j.part_paths = j.parts ? idd_calloc(parts, sizeof *j.part_paths, err) : NULL;
	if (!j.part_paths)
		rc = IDD_ERR;
	for (uint32_t p = 0; !rc && p < parts; p++) {
		if (!(j.part_paths[p] = idd_asprintf(err, "%s/%04x", tmpdir, p)))
			rc = IDD_ERR;
		else if (!(j.parts[p] = fopen(j.part_paths[p], "wb")))
			rc = idd_fail_errno(err, j.part_paths[p], "cannot create spill file");
	}
	pthread_mutex_init(&j.mu, NULL);
	pthread_cond_init(&j.turn, NULL);
	int nthreads = idd_threads_for_jobs(o->jobs);
	uint64_t bytes = 0;
	for (size_t i = 0; i < n; i++)
		bytes += cat->images[i].nblocks * cat->block_size;
	j.part_unit = bytes / parts;
	j.total = bytes + j.part_unit * parts;
	if (!rc)
		rc = run_threads(&j, nthreads, pass1_worker, err);
	if (rc && j.vanished)
		rc = IDD_ENOENT;
	for (uint32_t p = 0; j.parts && p < parts; p++) {
		if (j.parts[p] && fclose(j.parts[p]) && !rc)
			rc = idd_fail_errno(err, j.part_paths[p], "write");
		j.parts[p] = NULL;
	}
	if (!rc)
		rc = run_threads(&j, nthreads, pass2_worker, err);
	for (uint32_t p = 0; j.part_paths && p < parts; p++) {
		if (j.part_paths[p])
			unlink(j.part_paths[p]);
		free(j.part_paths[p]);
	}
	rmdir(tmpdir);
	free(tmpdir);
	free(j.parts);
	free(j.part_paths);
	pthread_mutex_destroy(&j.mu);
	pthread_cond_destroy(&j.turn);
	if (!rc) {
		/* expand each distinct signature into pairs, once, weighted */
		for (size_t k = 0; k < j.sigs.n; k++) {
			const sig *s = &j.sigs.v[k];
			const uint32_t *pr = j.sigs.arena + s->off;
			for (uint32_t x = 0; x < s->len; x++) {
				size_t a = pr[2 * x];
				uint64_t wa = s->weight * pr[2 * x + 1];
				uint64_t *sh = res->shared + a * n, *co = res->contained + a * n;
				for (uint32_t y = 0; y < s->len; y++) {
					size_t b = pr[2 * y];
					sh[b] += s->weight;
					co[b] += wa;
				}
			}
		}
		res->signatures = j.sigs.n;
		res->records = records;
	}
	sigtab_free(&j.sigs);
	return rc;
}

/* ---- the cache ---- */

static int cache_save(const char *index_dir, const idd_digest *key, const idd_similarity *s,
                      idd_error *err)
{
	idd_buf b = {0};
	size_t n = s->n;
	idd_buf_put(&b, key->b, 32);
	idd_buf_put_u64(&b, n);
	idd_buf_put_u64(&b, s->signatures);
	idd_buf_put_u64(&b, s->records);
	for (size_t i = 0; i < n; i++) {
		idd_buf_put_str(&b, s->ids[i]);
		idd_buf_put_varint(&b, s->nonzero[i]);
		idd_buf_put_varint(&b, s->distinct[i]);
	}
	for (size_t a = 0; a < n; a++)
		for (size_t c = a; c < n; c++)
			idd_buf_put_varint(&b, s->shared[a * n + c]);
	for (size_t a = 0; a < n; a++)
		for (size_t c = 0; c < n; c++)
			idd_buf_put_varint(&b, s->contained[a * n + c] - s->shared[a * n + c]);
	char *path = idd_path_join(index_dir, SIM_FILE, err);
	int rc = b.failed ? idd_fail(err, "out of memory caching the similarity")
	         : path ? idd_indexfile_write(path, SIM_MAGIC, SIM_VERSION, b.data, b.len, true, err)
	                : IDD_ERR;
	free(path);
	idd_buf_free(&b);
	return rc;
}

/* IDD_OK with *out when the cache matches key; IDD_ENOENT when absent or stale. */
static int cache_load(const char *index_dir, const idd_digest *key, const idd_catalog *cat,
                      idd_similarity **out, idd_error *err)
{
	char *path = idd_path_join(index_dir, SIM_FILE, err);
	if (!path)
		return IDD_ERR;
	void *p;
	size_t len;
	int rc = idd_indexfile_read(path, SIM_MAGIC, SIM_VERSION, &p, &len, NULL, err);
	if (rc) {
		free(path);
		return rc;
	}
	idd_reader r;
	idd_reader_init(&r, p, len);
	idd_digest k;
	uint64_t n = 0;
	idd_similarity *s = NULL;
	rc = IDD_ENOENT;
	if (!idd_get_bytes(&r, k.b, 32) || memcmp(k.b, key->b, 32) || !idd_get_u64(&r, &n) ||
	    n != cat->count)
		goto out;
	if (!(s = sim_alloc((size_t)n, err))) {
		rc = IDD_ERR;
		goto out;
	}
	bool ok = idd_get_u64(&r, &s->signatures) && idd_get_u64(&r, &s->records);
	for (size_t i = 0; ok && i < n; i++)
		ok = idd_get_str(&r, &s->ids[i], 4096) && !strcmp(s->ids[i], cat->images[i].id) &&
		     idd_get_varint(&r, &s->nonzero[i]) && idd_get_varint(&r, &s->distinct[i]);
	for (size_t a = 0; ok && a < n; a++)
		for (size_t c = a; ok && c < n; c++) {
			ok = idd_get_varint(&r, &s->shared[a * n + c]);
			s->shared[c * n + a] = s->shared[a * n + c];
		}
	for (size_t a = 0; ok && a < n; a++)
		for (size_t c = 0; ok && c < n; c++) {
			uint64_t extra;
			ok = idd_get_varint(&r, &extra) &&
			     idd_add_ok(extra, s->shared[a * n + c], &s->contained[a * n + c]);
		}
	if (!ok || idd_reader_left(&r)) {
		rc = idd_fail(err, "%s: corrupt similarity cache", path);
		goto out;
	}
	s->from_cache = true;
	*out = s;
	s = NULL;
	rc = IDD_OK;
out:
	idd_similarity_free(s);
	free(p);
	free(path);
	return rc;
}

/* One attempt over the catalog as it is now.  IDD_ENOENT: a block list
 * vanished under us (a concurrent scan collected it). */
static int compute_once(const idd_similarity_opts *o, const char *index_dir, idd_similarity **out,
                        idd_error *err)
{
	idd_catalog *cat = NULL;
	idd_similarity *res = NULL;
	idd_digest key;
	int rc = idd_catalog_load(index_dir, &cat, err);
	if (rc == IDD_ENOENT)
		rc = IDD_ERR; /* no index at all: nothing to retry */
	if (!rc)
		rc = idd_catalog_key(cat, &key, err);
	if (rc)
		goto out;
	if (!o->no_cache) {
		idd_error e2;
		int crc = cache_load(index_dir, &key, cat, &res, &e2);
		if (crc == IDD_OK)
			goto out;
		if (crc != IDD_ENOENT && o->warn) /* damaged cache: say so, recompute */
			o->warn(o->ctx, e2.msg);
	}
	if (!(res = sim_alloc(cat->count, err))) {
		rc = IDD_ERR;
		goto out;
	}
	for (size_t i = 0; i < cat->count; i++)
		if (!(res->ids[i] = idd_strdup(cat->images[i].id, err))) {
			rc = IDD_ERR;
			goto out;
		}
	if ((rc = compute(o, index_dir, cat, res, err)))
		goto out;
	idd_error e3;
	if (cache_save(index_dir, &key, res, &e3) && o->warn) /* read-only index: still answer */
		o->warn(o->ctx, e3.msg);
out:
	if (rc) {
		idd_similarity_free(res);
		res = NULL;
	}
	*out = res;
	idd_catalog_free(cat);
	return rc;
}

int idd_similarity_compute(const idd_similarity_opts *o, idd_similarity **out, idd_error *err)
{
	char *index_dir = NULL;
	if (idd_index_path(o->repo, o->index_dir, &index_dir, err))
		return IDD_ERR;
	/* readers take no lock: a scan may replace the catalog and collect the
	 * lists of the one read; start over from the new catalog */
	int rc;
	for (int attempt = 0; (rc = compute_once(o, index_dir, out, err)) == IDD_ENOENT && attempt < 2;
	     attempt++)
		;
	free(index_dir);
	return rc;
}

double idd_similarity_value(const idd_similarity *s, idd_metric m, size_t a, size_t b)
{
	if (a == b)
		return 1.0;
	size_t n = s->n;
	if (m == IDD_METRIC_CONTAINMENT) {
		uint64_t tot = s->contained[a * n + a]; /* = a's non-zero blocks */
		return tot ? (double)s->contained[a * n + b] / (double)tot : 0.0;
	}
	uint64_t inter = s->shared[a * n + b];
	uint64_t uni = s->shared[a * n + a] + s->shared[b * n + b] - inter;
	return uni ? (double)inter / (double)uni : 0.0;
}

/* ---- clustering: average linkage, nearest-neighbour chain, O(n^2) ---- */

typedef struct node {
	size_t left, right, minleaf;
} node;

int idd_similarity_cluster_order(const idd_similarity *s, idd_metric m, size_t *order, idd_error *err)
{
	size_t n = s->n;
	if (n <= 2) {
		for (size_t i = 0; i < n; i++)
			order[i] = i;
		return IDD_OK;
	}
	float *D = idd_malloc(n * n * sizeof *D, err);
	size_t *slot_node = idd_malloc(n * sizeof *slot_node, err);
	size_t *size = idd_malloc(n * sizeof *size, err);
	size_t *chain = idd_malloc(n * sizeof *chain, err);
	bool *active = idd_calloc(n, sizeof *active, err);
	node *nodes = idd_malloc((2 * n) * sizeof *nodes, err);
	size_t *stack = idd_malloc((2 * n) * sizeof *stack, err);
	int rc = D && slot_node && size && chain && active && nodes && stack ? IDD_OK : IDD_ERR;
	if (!rc) {
		for (size_t a = 0; a < n; a++) {
			for (size_t b = 0; b < n; b++) {
				double v = m == IDD_METRIC_CONTAINMENT
				           ? (idd_similarity_value(s, m, a, b) + idd_similarity_value(s, m, b, a)) / 2
				           : idd_similarity_value(s, m, a, b);
				D[a * n + b] = (float)(1.0 - v);
			}
			slot_node[a] = a;
			size[a] = 1;
			active[a] = true;
			nodes[a] = (node){.left = SIZE_MAX, .right = SIZE_MAX, .minleaf = a};
		}
		size_t nactive = n, len = 0, next = n;
		while (nactive > 1) {
			if (len == 0) {
				size_t f = 0;
				while (!active[f])
					f++;
				chain[len++] = f;
			}
			size_t a = chain[len - 1], prev = len >= 2 ? chain[len - 2] : SIZE_MAX;
			size_t best = prev;
			float bestd = prev != SIZE_MAX ? D[a * n + prev] : 2.0f;
			for (size_t k = 0; k < n; k++)
				if (active[k] && k != a && D[a * n + k] < bestd) {
					best = k;
					bestd = D[a * n + k];
				}
			if (best != prev || prev == SIZE_MAX) {
				chain[len++] = best;
				continue;
			}
			/* merge a and prev into slot lo */
			size_t lo = IDD_MIN(a, prev), hi = IDD_MAX(a, prev);
			size_t na = slot_node[lo], nb = slot_node[hi];
			if (nodes[nb].minleaf < nodes[na].minleaf) {
				size_t t = na;
				na = nb;
				nb = t;
			}
			nodes[next] = (node){.left = na, .right = nb, .minleaf = nodes[na].minleaf};
			for (size_t k = 0; k < n; k++) {
				if (!active[k] || k == lo || k == hi)
					continue;
				float d = (float)(((double)size[lo] * D[lo * n + k] + (double)size[hi] * D[hi * n + k]) /
				                  (double)(size[lo] + size[hi]));
				D[lo * n + k] = D[k * n + lo] = d;
			}
			size[lo] += size[hi];
			active[hi] = false;
			slot_node[lo] = next++;
			nactive--;
			len -= 2;
		}
		/* leaf order: depth-first, left (smaller first leaf) before right */
		size_t sp = 0, out = 0;
		stack[sp++] = next - 1;
		while (sp) {
			size_t x = stack[--sp];
			if (nodes[x].left == SIZE_MAX) {
				order[out++] = x;
				continue;
			}
			stack[sp++] = nodes[x].right;
			stack[sp++] = nodes[x].left;
		}
	}
	free(D);
	free(slot_node);
	free(size);
	free(chain);
	free(active);
	free(nodes);
	free(stack);
	return rc;
}

/* b is a better seed for a than c? */
static bool seed_better(const idd_similarity *s, size_t a, size_t b, size_t c)
{
	double cb = idd_similarity_value(s, IDD_METRIC_CONTAINMENT, a, b);
	double cc = idd_similarity_value(s, IDD_METRIC_CONTAINMENT, a, c);
	if (cb != cc)
		return cb > cc;
	double jb = idd_similarity_value(s, IDD_METRIC_JACCARD, a, b);
	double jc = idd_similarity_value(s, IDD_METRIC_JACCARD, a, c);
	if (jb != jc)
		return jb > jc;
	return strcmp(s->ids[b], s->ids[c]) < 0;
}

size_t idd_similarity_top(const idd_similarity *s, size_t a, size_t k, size_t *out)
{
	size_t got = 0;
	for (size_t b = 0; b < s->n && k; b++) {
		if (b == a)
			continue;
		if (got == k && !seed_better(s, a, b, out[got - 1]))
			continue;
		size_t pos = got < k ? got++ : k - 1;
		while (pos > 0 && seed_better(s, a, b, out[pos - 1])) {
			out[pos] = out[pos - 1];
			pos--;
		}
		out[pos] = b;
	}
	return got;
}

void idd_similar_free(idd_similar *v, size_t n)
{
	for (size_t i = 0; v && i < n; i++)
		free(v[i].id);
	free(v);
}

int idd_image_top_similar(const char *index_dir, const char *id, size_t k, idd_similar **out,
                          size_t *n, idd_error *err)
{
	*out = NULL;
	*n = 0;
	idd_similarity_opts o = {.repo = ".", .index_dir = index_dir};
	idd_similarity *s;
	if (idd_similarity_compute(&o, &s, err))
		return IDD_ERR;
	size_t a = 0;
	while (a < s->n && strcmp(s->ids[a], id))
		a++;
	if (a == s->n) {
		idd_fail(err, "%s: no image '%s' in the index", index_dir, id);
		idd_similarity_free(s);
		return IDD_ENOENT;
	}
	size_t kk = IDD_MIN(k, s->n);
	size_t *top = idd_calloc(kk + 1, sizeof *top, err);
	idd_similar *v = top ? idd_calloc(kk + 1, sizeof *v, err) : NULL;
	int rc = v ? IDD_OK : IDD_ERR;
	size_t got = rc ? 0 : idd_similarity_top(s, a, kk, top);
	for (size_t i = 0; !rc && i < got; i++) {
		size_t b = top[i];
		v[i].containment = idd_similarity_value(s, IDD_METRIC_CONTAINMENT, a, b);
		v[i].jaccard = idd_similarity_value(s, IDD_METRIC_JACCARD, a, b);
		v[i].shared = s->shared[a * s->n + b];
		if (!(v[i].id = idd_strdup(s->ids[b], err)))
			rc = IDD_ERR;
	}
	if (rc) {
		idd_similar_free(v, kk);
	} else {
		*out = v;
		*n = got;
	}
	free(top);
	idd_similarity_free(s);
	return rc;
}
