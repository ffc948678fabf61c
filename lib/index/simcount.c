/* simcount.c - the counting engine behind similarity (docs/similarity.md).
 *
 *  Pass 1 (threads over images): an image's non-zero digests, truncated to
 *  their first 64 bits ("keys"), radix-sorted and counted; its distinct keys
 *  are appended as one chunk (image, keys, the few with multiplicity > 1) to
 *  each of 2^g group files by their top g bits, at an offset reserved
 *  atomically, so threads never wait for each other.  A histogram by the
 *  top gb bits (the bucket) is kept on the way.
 *  Pass 2 (threads over groups): a group is read once, streaming, and each
 *  key is scattered into its bucket as one 64-bit word: the key without its
 *  top gb bits (which the bucket implies), shifted up, the image in the low
 *  bits.  A bucket (~8,192 words) is sorted in cache; the words of one key
 *  become adjacent, images ascending, and form its signature.  Signatures of
 *  two or more images are interned with a weight; single ones only count
 *  towards the image's distinct keys.
 *  Expansion: each distinct signature adds its weight to every pair of its
 *  images, directly (L^2) or, when it holds more than half the images, as a
 *  whole-row addition minus its complement (L (n - L)): a digest in nearly
 *  every image costs what the few images without it cost. */
#include "index/simcount.h"
#include "base/error.h"
#include "index/catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* pass 2 buckets: about this many keys each, so that one bucket and its
 * sort buffer stay in the core's L2 cache */
#define BUCKET_KEYS 8192
/* at most 2^MAX_GROUP_BITS spill files (descriptors held open in pass 1) */
#define MAX_GROUP_BITS 9
/* at most 2^MAX_BUCKET_BITS buckets (a 4-byte counter each per thread) unless
 * the image count needs more bits */
#define MAX_BUCKET_BITS 22
/* read the spill files this many bytes at a time */
#define READ_CHUNK (4u << 20)

/* ---- radix sorts (LSD, 11-bit digits, constant digits skipped) ---- */

enum { DIGIT = 11, RADIX = 1 << DIGIT, PASSES = 6 };

static void insertion_u64(uint64_t *a, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		uint64_t v = a[i];
		size_t j = i;
		while (j && a[j - 1] > v) {
			a[j] = a[j - 1];
			j--;
		}
		a[j] = v;
	}
}

static void lsd_u64(uint64_t *a, uint64_t *tmp, size_t n)
{
	size_t cnt[PASSES][RADIX];
	memset(cnt, 0, sizeof cnt);
	for (size_t i = 0; i < n; i++) {
		uint64_t v = a[i];
		for (int p = 0; p < PASSES; p++)
			cnt[p][(v >> (DIGIT * p)) & (RADIX - 1)]++;
	}
	uint64_t *src = a, *dst = tmp;
	for (int p = 0; p < PASSES; p++) {
		size_t *c = cnt[p];
		int sh = DIGIT * p;
		if (c[(src[0] >> sh) & (RADIX - 1)] == n)
			continue; /* every key has this digit */
		size_t sum = 0;
		for (size_t d = 0; d < RADIX; d++) {
			size_t x = c[d];
			c[d] = sum;
			sum += x;
		}
		for (size_t i = 0; i < n; i++)
			dst[c[(src[i] >> sh) & (RADIX - 1)]++] = src[i];
		uint64_t *t = src;
		src = dst;
		dst = t;
	}
	if (src != a)
		memcpy(a, src, n * sizeof *a);
}

/* Keys here are digest prefixes, uniform in their top bits: one pass on the
 * top bits into buckets of about 4 keys, each finished by insertion; a
 * bucket that is not small after all (keys far from uniform) is radix
 * sorted on its own, so the worst case stays O(n). */
void sim_sort_u64(uint64_t *a, uint64_t *tmp, size_t n)
{
	if (n < 64) {
		insertion_u64(a, n);
		return;
	}
	unsigned d = 8;
	while (d < 16 && ((size_t)4 << d) < n)
		d++;
	size_t nb = (size_t)1 << d;
	uint32_t stack_cnt[1u << 12];
	uint32_t *cnt = nb <= IDD_ARRAY_LEN(stack_cnt) && n < UINT32_MAX ? stack_cnt : NULL;
	if (!cnt) {
		if (n >= UINT32_MAX || !(cnt = malloc((nb + 1) * sizeof *cnt))) {
			lsd_u64(a, tmp, n);
			return;
		}
	}
	memset(cnt, 0, nb * sizeof *cnt);
	int sh = 64 - (int)d;
	for (size_t i = 0; i < n; i++)
		cnt[a[i] >> sh]++;
	uint32_t sum = 0;
	for (size_t b = 0; b < nb; b++) {
		uint32_t x = cnt[b];
		cnt[b] = sum;
		sum += x;
	}
	for (size_t i = 0; i < n; i++)
		tmp[cnt[a[i] >> sh]++] = a[i];
	/* cnt[b] is now the end of bucket b */
	size_t start = 0;
	for (size_t b = 0; b < nb; b++) {
		size_t end = cnt[b], len = end - start;
		if (len > 64)
			lsd_u64(tmp + start, a + start, len);
		else
			insertion_u64(tmp + start, len);
		start = end;
	}
	memcpy(a, tmp, n * sizeof *a);
	if (cnt != stack_cnt)
		free(cnt);
}

void sim_sort_samples(sim_sample *a, sim_sample *tmp, size_t n)
{
	if (n < 2)
		return;
	size_t (*cnt)[RADIX] = calloc(PASSES, sizeof *cnt);
	if (!cnt) { /* still correct, only slower */
		for (size_t i = 1; i < n; i++) {
			sim_sample v = a[i];
			size_t j = i;
			while (j && a[j - 1].key > v.key) {
				a[j] = a[j - 1];
				j--;
			}
			a[j] = v;
		}
		return;
	}
	for (size_t i = 0; i < n; i++)
		for (int p = 0; p < PASSES; p++)
			cnt[p][(a[i].key >> (DIGIT * p)) & (RADIX - 1)]++;
	sim_sample *src = a, *dst = tmp;
	for (int p = 0; p < PASSES; p++) {
		size_t *c = cnt[p];
		int sh = DIGIT * p;
		if (c[(src[0].key >> sh) & (RADIX - 1)] == n)
			continue;
		size_t sum = 0;
		for (size_t d = 0; d < RADIX; d++) {
			size_t x = c[d];
			c[d] = sum;
			sum += x;
		}
		for (size_t i = 0; i < n; i++)
			dst[c[(src[i].key >> sh) & (RADIX - 1)]++] = src[i];
		sim_sample *t = src;
		src = dst;
		dst = t;
	}
	if (src != a)
		memcpy(a, src, n * sizeof *a);
	free(cnt);
}

/* ---- threads ---- */

typedef struct thread_arg {
	void (*fn)(void *, int);
	void *arg;
	int tid;
} thread_arg;

static void *thread_main(void *p)
{
	thread_arg *t = p;
	t->fn(t->arg, t->tid);
	return NULL;
}

void sim_run_threads(int nthreads, void (*fn)(void *arg, int tid), void *arg)
{
	pthread_t th[IDD_MAX_THREADS];
	thread_arg ta[IDD_MAX_THREADS];
	if (nthreads < 1)
		nthreads = 1;
	if (nthreads > IDD_MAX_THREADS)
		nthreads = IDD_MAX_THREADS;
	int started = 0;
	for (int t = 1; t < nthreads; t++) {
		ta[t] = (thread_arg){fn, arg, t};
		if (pthread_create(&th[t], NULL, thread_main, &ta[t]))
			break;
		started = t;
	}
	/* this thread is tid 0; tids that could not start are run here too */
	fn(arg, 0);
	for (int t = started + 1; t < nthreads; t++)
		fn(arg, t);
	for (int t = 1; t <= started; t++)
		pthread_join(th[t], NULL);
}

/* ---- signature table ---- */

void sim_sigtab_free(sim_sigtab *t)
{
	free(t->arena);
	free(t->slots);
	memset(t, 0, sizeof *t);
}

size_t sim_sigtab_bytes(const sim_sigtab *t)
{
	return t->acap * sizeof *t->arena + t->nslots * sizeof *t->slots;
}

static int sigtab_grow(sim_sigtab *t, idd_error *err)
{
	size_t ns = t->nslots ? t->nslots * 2 : 1024;
	sim_sig_slot *s = idd_calloc(ns, sizeof *s, err);
	if (!s)
		return IDD_ERR;
	for (size_t i = 0; i < t->nslots; i++) {
		if (!t->slots[i].pos)
			continue;
		size_t j = t->slots[i].hash & (ns - 1);
		while (s[j].pos)
			j = (j + 1) & (ns - 1);
		s[j] = t->slots[i];
	}
	free(t->slots);
	t->slots = s;
	t->nslots = ns;
	return IDD_OK;
}

static uint64_t sigtab_hash(const uint32_t *pairs, uint32_t len)
{
	uint64_t h = 0x9e3779b97f4a7c15ULL ^ len;
	for (uint32_t i = 0; i < len; i++) {
		uint64_t v;
		memcpy(&v, pairs + 2 * i, 8); /* one pair (image, mult) */
		h = (h ^ v) * 0xff51afd7ed558ccdULL;
		h ^= h >> 32;
	}
	return sim_mix64(h);
}

/* the cache lines a later add of hash h will touch first */
static inline void sigtab_prefetch_slot(const sim_sigtab *t, uint64_t h)
{
	if (t->nslots)
		__builtin_prefetch(&t->slots[h & (t->nslots - 1)]);
}

static inline void sigtab_prefetch_entry(const sim_sigtab *t, uint64_t h)
{
	if (t->nslots) {
		uint64_t pos = t->slots[h & (t->nslots - 1)].pos;
		if (pos)
			__builtin_prefetch(t->arena + pos - 1);
	}
}

static int sigtab_add_hashed(sim_sigtab *t, const uint32_t *pairs, uint32_t len, uint64_t weight,
                             uint64_t h, idd_error *err);

int sim_sigtab_add(sim_sigtab *t, const uint32_t *pairs, uint32_t len, uint64_t weight,
                   idd_error *err)
{
	return sigtab_add_hashed(t, pairs, len, weight, sigtab_hash(pairs, len), err);
}

static int sigtab_add_hashed(sim_sigtab *t, const uint32_t *pairs, uint32_t len, uint64_t weight,
                             uint64_t h, idd_error *err)
{
	if ((t->n + 1) * 2 > t->nslots && sigtab_grow(t, err))
		return IDD_ERR;
	size_t j = h & (t->nslots - 1);
	while (t->slots[j].pos) {
		if (t->slots[j].hash == h) {
			uint32_t *e = t->arena + t->slots[j].pos - 1;
			if (e[0] == len && !memcmp(e + 3, pairs, (size_t)len * 2 * sizeof *pairs)) {
				uint64_t nw = (e[1] | (uint64_t)e[2] << 32) + weight;
				e[1] = (uint32_t)nw;
				e[2] = (uint32_t)(nw >> 32);
				return IDD_OK;
			}
		}
		j = (j + 1) & (t->nslots - 1);
	}
	size_t need = t->alen + 3 + 2 * (size_t)len;
	if (need > t->acap) {
		size_t nc = t->acap ? t->acap : 4096;
		while (nc < need)
			nc *= 2;
		uint32_t *a = idd_realloc_array(t->arena, nc, sizeof *a, err);
		if (!a)
			return IDD_ERR;
		t->arena = a;
		t->acap = nc;
	}
	uint32_t *e = t->arena + t->alen;
	e[0] = len;
	e[1] = (uint32_t)weight;
	e[2] = (uint32_t)(weight >> 32);
	memcpy(e + 3, pairs, (size_t)len * 2 * sizeof *pairs);
	t->slots[j] = (sim_sig_slot){h, t->alen + 1};
	t->alen = need;
	t->n++;
	return IDD_OK;
}

/* ---- the count ---- */

typedef struct chunk_head {
	uint32_t image, nkeys, nmult, zero;
} chunk_head;

typedef struct mult_rec {
	uint64_t key, mult;
} mult_rec;

typedef struct side_rec {
	uint64_t word;       /* the packed word of pass 2 */
	uint32_t mult;       /* capped at UINT32_MAX */
	uint32_t bucket;     /* within the group */
} side_rec;

struct sim_count {
	sim_count_opts o;
	size_t n;
	int threads;
	unsigned ib, gb, g;  /* image bits, bucket bits, group bits */
	char *dir;
	int *fds;
	char **paths;
	_Atomic uint64_t *file_len;   /* per group: bytes reserved */
	_Atomic uint64_t *side_count; /* per group: records with multiplicity > 1 */
	uint64_t *bucket_count;       /* per bucket: distinct keys */
	uint64_t *nonzero, *distinct;
	sim_sample *samples;
	size_t nsamples, samples_cap;
	uint64_t records;
	sim_sigtab sigs;
	uint64_t flushed;             /* signatures expanded before the end */
	/* work distribution and failure */
	pthread_mutex_t mu;
	size_t next;
	bool failed, vanished;
	idd_error err;
	uint64_t done, total, group_unit;
	const sim_sink *sink;
	pthread_mutex_t sink_mu;
};

static void count_fail(sim_count *c, const idd_error *e, bool vanished)
{
	pthread_mutex_lock(&c->mu);
	if (!c->failed) {
		c->failed = true;
		c->err = *e;
		c->vanished = vanished;
	}
	pthread_mutex_unlock(&c->mu);
}

static bool count_take(sim_count *c, size_t limit, size_t *out)
{
	pthread_mutex_lock(&c->mu);
	bool ok = !c->failed && c->next < limit;
	if (ok)
		*out = c->next++;
	pthread_mutex_unlock(&c->mu);
	return ok;
}

static void count_progress(sim_count *c, uint64_t inc)
{
	pthread_mutex_lock(&c->mu);
	c->done += inc;
	if (c->o.progress)
		c->o.progress(c->o.ctx, c->done, c->total);
	pthread_mutex_unlock(&c->mu);
}

static unsigned bits_for(uint64_t v) /* bits to hold 0..v-1 */
{
	unsigned b = 0;
	while (b < 64 && (v - 1) >> b)
		b++;
	return v <= 1 ? 0 : b;
}

typedef struct pass1_local {
	uint64_t *keys, *tmp;
	size_t cap;
	unsigned char *chunk;
	size_t chunk_cap;
	mult_rec *mults;
	size_t mults_cap;
	uint32_t *hist;
	sim_sample *samples;
	size_t nsamples, samples_cap;
	idd_blocklist_buffers bufs;
} pass1_local;

static int grow(void **p, size_t *cap, size_t need, size_t size, idd_error *err)
{
	if (need <= *cap)
		return IDD_OK;
	size_t nc = *cap ? *cap : 1024;
	while (nc < need)
		nc *= 2;
	void *q = idd_realloc_array(*p, nc, size, err);
	if (!q)
		return IDD_ERR;
	*p = q;
	*cap = nc;
	return IDD_OK;
}

/* write the keys keys[lo..hi) of image i (and their multiplicities) to group q */
static int write_chunk(sim_count *c, pass1_local *l, uint32_t image, size_t q, const uint64_t *keys,
                       size_t nk, const mult_rec *mults, size_t nm, idd_error *err)
{
	size_t bytes = sizeof(chunk_head) + nk * sizeof *keys + nm * sizeof *mults;
	if (grow((void **)&l->chunk, &l->chunk_cap, bytes, 1, err))
		return IDD_ERR;
	chunk_head h = {.image = image, .nkeys = (uint32_t)nk, .nmult = (uint32_t)nm};
	memcpy(l->chunk, &h, sizeof h);
	memcpy(l->chunk + sizeof h, keys, nk * sizeof *keys);
	if (nm)
		memcpy(l->chunk + sizeof h + nk * sizeof *keys, mults, nm * sizeof *mults);
	uint64_t off = atomic_fetch_add(&c->file_len[q], (uint64_t)bytes);
	if (idd_pwrite_all(c->fds[q], l->chunk, bytes, off))
		return idd_fail_errno(err, c->paths[q], "write");
	if (nm)
		atomic_fetch_add(&c->side_count[q], (uint64_t)nm);
	return IDD_OK;
}

static int pass1_image(sim_count *c, pass1_local *l, size_t i, idd_error *err)
{
	const idd_image_info *im = &c->o.cat->images[i];
	idd_blocklist list, *bl = &list;
	int rc = idd_blocklist_open_reuse(c->o.index_dir, im, &l->bufs, bl, err);
	if (rc)
		return rc;
	size_t nk = (size_t)bl->ndata;
	/* memory for the non-zero blocks only: a thin image costs its data */
	if (nk > l->cap) {
		free(l->keys);
		free(l->tmp);
		l->keys = malloc(nk * sizeof *l->keys);
		l->tmp = malloc(nk * sizeof *l->tmp);
		l->cap = nk;
		if (!l->keys || !l->tmp) {
			free(l->keys);
			free(l->tmp);
			l->keys = l->tmp = NULL;
			l->cap = 0;
			idd_blocklist_clear(bl);
			return idd_fail_code(err, IDD_ENOMEM, "%s: out of memory for %zu non-zero blocks", im->id, nk);
		}
	}
	for (size_t k = 0; k < nk; k++)
		l->keys[k] = idd_be64(bl->digests[k].b);
	idd_blocklist_clear(bl);
	c->nonzero[i] = nk;
	uint64_t *keys = l->keys;
	sim_sort_u64(keys, l->tmp, nk);
	/* distinct keys in place; multiplicities above 1 on the side */
	size_t nd = 0, nm = 0;
	for (size_t k = 0; k < nk;) {
		size_t e = k + 1;
		while (e < nk && keys[e] == keys[k])
			e++;
		if (e - k > 1) {
			if (grow((void **)&l->mults, &l->mults_cap, nm + 1, sizeof *l->mults, err))
				return IDD_ERR;
			l->mults[nm++] = (mult_rec){keys[k], e - k};
		}
		keys[nd++] = keys[k];
		k = e;
	}
	unsigned gb = c->gb;
	for (size_t k = 0; k < nd; k++)
		l->hist[keys[k] >> (64 - gb)]++;
	if (c->o.sample_below) {
		for (size_t k = 0; k < nd; k++) {
			if (sim_mix64(keys[k]) >= c->o.sample_below)
				continue;
			if (grow((void **)&l->samples, &l->samples_cap, l->nsamples + 1, sizeof *l->samples, err))
				return IDD_ERR;
			l->samples[l->nsamples++] = (sim_sample){.key = keys[k], .image = (uint32_t)i};
		}
	}
	/* one chunk per group, cut where the top g bits change */
	size_t groups = (size_t)1 << c->g, k = 0, m = 0;
	for (size_t q = 0; q < groups && k < nd; q++) {
		size_t ke = k, me = m;
		while (ke < nd && (c->g == 0 || (keys[ke] >> (64 - c->g)) == q))
			ke++;
		while (me < nm && (c->g == 0 || (l->mults[me].key >> (64 - c->g)) == q))
			me++;
		if (ke > k && write_chunk(c, l, (uint32_t)i, q, keys + k, ke - k, l->mults + m, me - m, err))
			return IDD_ERR;
		k = ke;
		m = me;
	}
	return IDD_OK;
}

static void pass1_worker(void *arg, int tid)
{
	(void)tid;
	sim_count *c = arg;
	idd_error e;
	pass1_local l = {0};
	l.hist = calloc((size_t)1 << c->gb, sizeof *l.hist);
	if (!l.hist) {
		idd_fail_code(&e, IDD_ENOMEM, "out of memory for a histogram of %zu buckets",
		              (size_t)1 << c->gb);
		count_fail(c, &e, false);
		return;
	}
	size_t i;
	while (count_take(c, c->n, &i)) {
		int rc = pass1_image(c, &l, i, &e);
		if (rc) {
			count_fail(c, &e, rc == IDD_ENOENT);
			break;
		}
		const idd_image_info *im = &c->o.cat->images[i];
		count_progress(c, im->nblocks * c->o.cat->block_size);
	}
	pthread_mutex_lock(&c->mu);
	size_t nb = (size_t)1 << c->gb;
	for (size_t b = 0; b < nb; b++)
		c->bucket_count[b] += l.hist[b];
	if (l.nsamples && !c->failed) {
		if (grow((void **)&c->samples, &c->samples_cap, c->nsamples + l.nsamples, sizeof *c->samples,
		         &e)) {
			c->failed = true;
			c->err = e;
		} else {
			memcpy(c->samples + c->nsamples, l.samples, l.nsamples * sizeof *l.samples);
			c->nsamples += l.nsamples;
		}
	}
	pthread_mutex_unlock(&c->mu);
	free(l.keys);
	free(l.tmp);
	free(l.chunk);
	free(l.mults);
	free(l.hist);
	free(l.samples);
	idd_blocklist_buffers_free(&l.bufs);
}

void sim_count_free(sim_count *c)
{
	if (!c)
		return;
	size_t groups = (size_t)1 << c->g;
	for (size_t q = 0; c->fds && q < groups; q++)
		if (c->fds[q] >= 0)
			close(c->fds[q]);
	for (size_t q = 0; c->paths && q < groups; q++) {
		if (c->paths[q])
			unlink(c->paths[q]);
		free(c->paths[q]);
	}
	if (c->dir)
		rmdir(c->dir);
	free(c->dir);
	free(c->fds);
	free(c->paths);
	free(c->file_len);
	free(c->side_count);
	free(c->bucket_count);
	free(c->nonzero);
	free(c->distinct);
	free(c->samples);
	sim_sigtab_free(&c->sigs);
	pthread_mutex_destroy(&c->mu);
	pthread_mutex_destroy(&c->sink_mu);
	free(c);
}

int sim_count_start(const sim_count_opts *o, sim_count **out, idd_error *err)
{
	*out = NULL;
	sim_count *c = idd_calloc(1, sizeof *c, err);
	if (!c)
		return IDD_ERR;
	pthread_mutex_init(&c->mu, NULL);
	pthread_mutex_init(&c->sink_mu, NULL);
	c->o = *o;
	c->n = o->cat->count;
	c->threads = o->threads > 0 ? o->threads : 1;
	uint64_t records = 0, bytes = 0;
	for (size_t i = 0; i < c->n; i++) {
		const idd_image_info *im = &o->cat->images[i];
		uint64_t d = im->distinct_blocks;
		if (d > im->nblocks - IDD_MIN(im->zero_blocks, im->nblocks))
			d = im->nblocks - IDD_MIN(im->zero_blocks, im->nblocks);
		records += d;
		bytes += im->nblocks * o->cat->block_size;
	}
	/* buckets of about BUCKET_KEYS keys, at least as many as images (the
	 * packed word holds the image in the bits the bucket frees) */
	c->ib = bits_for(c->n);
	unsigned want = 1;
	while (want < MAX_BUCKET_BITS && (records >> want) > BUCKET_KEYS)
		want++;
	c->gb = IDD_MAX(IDD_MAX(c->ib, want), 1u);
	/* groups: every thread holds one group (8 bytes a key) within the budget */
	uint64_t budget = o->mem_budget ? o->mem_budget : (512ull << 20);
	uint64_t per_group = IDD_MAX(budget / (8 * (uint64_t)c->threads), (uint64_t)1);
	c->g = 0;
	while (c->g < MAX_GROUP_BITS && c->g < c->gb && (records >> c->g) > per_group)
		c->g++;
	size_t groups = (size_t)1 << c->g;
	c->nonzero = idd_calloc(c->n + 1, sizeof *c->nonzero, err);
	c->distinct = c->nonzero ? idd_calloc(c->n + 1, sizeof *c->distinct, err) : NULL;
	c->bucket_count = c->distinct ? idd_calloc((size_t)1 << c->gb, sizeof *c->bucket_count, err) : NULL;
	c->fds = c->bucket_count ? idd_malloc(groups * sizeof *c->fds, err) : NULL;
	c->paths = c->fds ? idd_calloc(groups, sizeof *c->paths, err) : NULL;
	c->file_len = c->paths ? idd_calloc(groups, sizeof *c->file_len, err) : NULL;
	c->side_count = c->file_len ? idd_calloc(groups, sizeof *c->side_count, err) : NULL;
	if (!c->side_count) {
		if (c->fds)
			for (size_t q = 0; q < groups; q++)
				c->fds[q] = -1;
		sim_count_free(c);
		return IDD_ERR;
	}
	for (size_t q = 0; q < groups; q++)
		c->fds[q] = -1;
	int rc = IDD_OK;
	c->dir = idd_asprintf(err, "%s/.similarity.XXXXXX", o->tmp_dir ? o->tmp_dir : o->index_dir);
	if (!c->dir)
		rc = IDD_ERR;
	else if (!mkdtemp(c->dir)) {
		rc = idd_fail_errno(err, c->dir, "cannot create a temporary directory");
		free(c->dir);
		c->dir = NULL;
	}
	for (size_t q = 0; !rc && q < groups; q++) {
		if (!(c->paths[q] = idd_asprintf(err, "%s/%04zx", c->dir, q)))
			rc = IDD_ERR;
		else if ((c->fds[q] = open(c->paths[q], O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
			rc = idd_fail_errno(err, c->paths[q], "cannot create spill file");
	}
	c->group_unit = bytes / groups;
	c->total = bytes + c->group_unit * groups;
	if (!rc) {
		sim_run_threads(c->threads, pass1_worker, c);
		if (c->failed) {
			*err = c->err;
			rc = c->vanished ? IDD_ENOENT : (c->err.code ? c->err.code : IDD_ERR);
		}
	}
	if (rc) {
		sim_count_free(c);
		return rc;
	}
	for (size_t b = 0; b < ((size_t)1 << c->gb); b++)
		c->records += c->bucket_count[b];
	*out = c;
	return IDD_OK;
}

const sim_sample *sim_count_samples(const sim_count *c, size_t *n)
{
	*n = c->nsamples;
	return c->samples;
}

void sim_count_drop_samples(sim_count *c)
{
	free(c->samples);
	c->samples = NULL;
	c->nsamples = c->samples_cap = 0;
}

const uint64_t *sim_count_nonzero(const sim_count *c) { return c->nonzero; }
const uint64_t *sim_count_distinct(const sim_count *c) { return c->distinct; }
uint64_t sim_count_records(const sim_count *c) { return c->records; }
uint64_t sim_count_signatures(const sim_count *c) { return c->sigs.n + c->flushed; }

/* streaming reader of one spill file */
typedef struct spill_reader {
	int fd;
	const char *path;
	uint64_t off, end;
	unsigned char *buf;
	size_t pos, len;
} spill_reader;

static int spill_read(spill_reader *r, void *dst, size_t n, idd_error *err)
{
	unsigned char *d = dst;
	while (n) {
		if (r->pos == r->len) {
			uint64_t left = r->end - r->off;
			if (!left)
				return idd_fail(err, "%s: spill file ends inside a record", r->path);
			size_t want = (size_t)IDD_MIN(left, (uint64_t)READ_CHUNK);
			if (idd_pread_all(r->fd, r->buf, want, r->off))
				return idd_fail_errno(err, r->path, "read");
			r->off += want;
			r->pos = 0;
			r->len = want;
		}
		size_t take = IDD_MIN(n, r->len - r->pos);
		memcpy(d, r->buf + r->pos, take);
		r->pos += take;
		d += take;
		n -= take;
	}
	return IDD_OK;
}

typedef struct pass2_local {
	uint64_t *words, *tmp;
	size_t words_cap, tmp_cap;
	size_t *pos;
	side_rec *side;
	size_t side_cap;
	uint64_t *keys;
	mult_rec *mults;
	size_t mults_cap;
	unsigned char *buf;
	uint32_t *pairs;
	uint64_t *distinct;
	sim_sigtab sigs;
	/* one bucket's signatures before they are added (prefetched ahead) */
	uint32_t *bpairs;
	size_t bpairs_cap;
	struct batch_sig {
		uint64_t hash;
		size_t off;
		uint32_t len;
	} *batch;
	size_t batch_cap;
} pass2_local;

/* add a bucket's signatures, each slot and entry asked for ahead of its use:
 * the table is far larger than the caches and every lookup would wait */
static int add_batch(pass2_local *l, size_t nbatch, idd_error *err)
{
	enum { AHEAD_SLOT = 16, AHEAD_ENTRY = 8 };
	for (size_t i = 0; i < nbatch; i++) {
		if (i + AHEAD_SLOT < nbatch)
			sigtab_prefetch_slot(&l->sigs, l->batch[i + AHEAD_SLOT].hash);
		if (i + AHEAD_ENTRY < nbatch)
			sigtab_prefetch_entry(&l->sigs, l->batch[i + AHEAD_ENTRY].hash);
		const struct batch_sig *b = &l->batch[i];
		if (sigtab_add_hashed(&l->sigs, l->bpairs + b->off, b->len, 1, b->hash, err))
			return IDD_ERR;
	}
	return IDD_OK;
}

static int cmp_side(const void *x, const void *y)
{
	const side_rec *a = x, *b = y;
	if (a->bucket != b->bucket)
		return a->bucket < b->bucket ? -1 : 1;
	return a->word < b->word ? -1 : a->word > b->word;
}

/* the table holds more than its share of the budget: expand it now */
static void maybe_flush(sim_count *c, sim_sigtab *t)
{
	uint64_t budget = c->o.mem_budget ? c->o.mem_budget : (512ull << 20);
	if (sim_sigtab_bytes(t) <= budget / (2 * (uint64_t)c->threads))
		return;
	pthread_mutex_lock(&c->sink_mu);
	c->sink->expand(c->sink->ctx, t, 0, 1);
	pthread_mutex_unlock(&c->sink_mu);
	pthread_mutex_lock(&c->mu);
	c->flushed += t->n;
	pthread_mutex_unlock(&c->mu);
	sim_sigtab_free(t);
}

static int pass2_group(sim_count *c, pass2_local *l, size_t q, idd_error *err)
{
	unsigned gb = c->gb, g = c->g, ib = c->ib;
	size_t nb = (size_t)1 << (gb - g), base = q << (gb - g);
	uint64_t total = 0, maxb = 0;
	for (size_t b = 0; b < nb; b++) {
		total += c->bucket_count[base + b];
		maxb = IDD_MAX(maxb, c->bucket_count[base + b]);
	}
	uint64_t nside = atomic_load(&c->side_count[q]);
	if (grow((void **)&l->words, &l->words_cap, (size_t)total + 1, sizeof *l->words, err) ||
	    grow((void **)&l->tmp, &l->tmp_cap, (size_t)maxb + 1, sizeof *l->tmp, err) ||
	    grow((void **)&l->side, &l->side_cap, (size_t)nside + 1, sizeof *l->side, err))
		return IDD_ERR;
	size_t sum = 0;
	for (size_t b = 0; b < nb; b++) {
		l->pos[b] = sum;
		sum += (size_t)c->bucket_count[base + b];
	}
	spill_reader r = {.fd = c->fds[q], .path = c->paths[q], .end = atomic_load(&c->file_len[q]),
	                  .buf = l->buf};
	size_t ns = 0;
	uint64_t *words = l->words;
	while (r.off < r.end || r.pos < r.len) {
		chunk_head h;
		if (spill_read(&r, &h, sizeof h, err))
			return IDD_ERR;
		uint64_t image = h.image;
		for (uint32_t done = 0; done < h.nkeys;) {
			uint32_t take = IDD_MIN(h.nkeys - done, (uint32_t)(READ_CHUNK / 8 / 4));
			if (spill_read(&r, l->keys, (size_t)take * 8, err))
				return IDD_ERR;
			for (uint32_t k = 0; k < take; k++) {
				uint64_t key = l->keys[k];
				size_t b = (size_t)(key >> (64 - gb)) - base;
				if (b >= nb || l->pos[b] >= total)
					return idd_fail(err, "%s: spill file holds a key of another group", r.path);
				words[l->pos[b]++] = key << gb | image;
			}
			done += take;
		}
		if (h.nmult) {
			if (ns + h.nmult > nside)
				return idd_fail(err, "%s: spill file holds more counts than written", r.path);
			if (grow((void **)&l->mults, &l->mults_cap, h.nmult, sizeof *l->mults, err) ||
			    spill_read(&r, l->mults, (size_t)h.nmult * sizeof *l->mults, err))
				return IDD_ERR;
			for (uint32_t k = 0; k < h.nmult; k++) {
				uint64_t key = l->mults[k].key;
				l->side[ns++] = (side_rec){.word = key << gb | image,
				                           .mult = (uint32_t)IDD_MIN(l->mults[k].mult, (uint64_t)UINT32_MAX),
				                           .bucket = (uint32_t)((key >> (64 - gb)) - base)};
			}
		}
	}
	/* the file is consumed: give its space back now */
	close(c->fds[q]);
	c->fds[q] = -1;
	unlink(c->paths[q]);
	qsort(l->side, ns, sizeof *l->side, cmp_side);
	uint64_t imask = ib ? (~0ull >> (64 - ib)) : 0;
	size_t start = 0, si = 0;
	for (size_t b = 0; b < nb; b++) {
		size_t end = start + (size_t)c->bucket_count[base + b];
		uint64_t *w = words + start;
		size_t cnt = end - start;
		sim_sort_u64(w, l->tmp, cnt);
		while (si < ns && l->side[si].bucket < b)
			si++; /* cannot happen for a consistent file; keeps the scan in step */
		size_t nbatch = 0, bp = 0;
		for (size_t i = 0; i < cnt;) {
			uint64_t keybits = w[i] >> gb;
			size_t j = i;
			while (j < cnt && (w[j] >> gb) == keybits)
				j++;
			uint32_t len = (uint32_t)(j - i);
			if (len > 1 && (grow((void **)&l->bpairs, &l->bpairs_cap, bp + 2 * (size_t)len, sizeof *l->bpairs,
			                     err) ||
			                grow((void **)&l->batch, &l->batch_cap, nbatch + 1, sizeof *l->batch, err)))
				return IDD_ERR;
			uint32_t *pr = len > 1 ? l->bpairs + bp : l->pairs;
			for (size_t x = i; x < j; x++) {
				uint32_t img = (uint32_t)(w[x] & imask), mult = 1;
				while (si < ns && l->side[si].bucket == b && l->side[si].word < w[x])
					si++;
				if (si < ns && l->side[si].bucket == b && l->side[si].word == w[x])
					mult = l->side[si++].mult;
				if (x > i && img == pr[2 * (x - i - 1)])
					return idd_fail(err, "%s: an image's key appears twice", r.path);
				pr[2 * (x - i)] = img;
				pr[2 * (x - i) + 1] = mult;
				l->distinct[img]++;
			}
			if (len > 1) {
				l->batch[nbatch++] = (struct batch_sig){sigtab_hash(pr, len), bp, len};
				bp += 2 * (size_t)len;
			}
			i = j;
		}
		if (add_batch(l, nbatch, err))
			return IDD_ERR;
		start = end;
	}
	maybe_flush(c, &l->sigs);
	return IDD_OK;
}

static void pass2_worker(void *arg, int tid)
{
	(void)tid;
	sim_count *c = arg;
	idd_error e;
	pass2_local l = {0};
	size_t nb = (size_t)1 << (c->gb - c->g);
	l.pos = malloc(nb * sizeof *l.pos);
	l.keys = malloc(READ_CHUNK / 4);
	l.buf = malloc(READ_CHUNK);
	l.pairs = malloc(2 * (c->n + 1) * sizeof *l.pairs);
	l.distinct = calloc(c->n + 1, sizeof *l.distinct);
	if (!l.pos || !l.keys || !l.buf || !l.pairs || !l.distinct) {
		idd_fail_code(&e, IDD_ENOMEM, "out of memory grouping keys");
		count_fail(c, &e, false);
	} else {
		size_t q;
		while (count_take(c, (size_t)1 << c->g, &q)) {
			if (pass2_group(c, &l, q, &e)) {
				count_fail(c, &e, false);
				break;
			}
			count_progress(c, c->group_unit);
		}
	}
	/* merge into the shared table and counts */
	pthread_mutex_lock(&c->mu);
	sim_sig sg;
	for (size_t pos = 0; !c->failed && sim_sigtab_next(&l.sigs, &pos, &sg);) {
		if (sim_sigtab_add(&c->sigs, sg.pairs, sg.len, sg.weight, &e)) {
			c->failed = true;
			c->err = e;
		}
	}
	for (size_t i = 0; l.distinct && i < c->n; i++)
		c->distinct[i] += l.distinct[i];
	pthread_mutex_unlock(&c->mu);
	sim_sigtab_free(&l.sigs);
	free(l.words);
	free(l.tmp);
	free(l.pos);
	free(l.side);
	free(l.keys);
	free(l.mults);
	free(l.buf);
	free(l.pairs);
	free(l.distinct);
	free(l.bpairs);
	free(l.batch);
}

typedef struct expand_arg {
	sim_count *c;
	int nthreads;
} expand_arg;

static void expand_worker(void *arg, int tid)
{
	expand_arg *x = arg;
	x->c->sink->expand(x->c->sink->ctx, &x->c->sigs, tid, x->nthreads);
}

int sim_count_finish(sim_count *c, const sim_sink *sink, idd_error *err)
{
	c->sink = sink;
	c->next = 0;
	sim_run_threads(c->threads, pass2_worker, c);
	if (c->failed) {
		*err = c->err;
		return c->err.code ? c->err.code : IDD_ERR;
	}
	expand_arg x = {c, c->threads};
	sim_run_threads(c->threads, expand_worker, &x);
	return IDD_OK;
}

/* ---- the full matrix ---- */

int sim_matrix_init(sim_matrix *m, size_t n, bool wide, int threads, idd_error *err)
{
	memset(m, 0, sizeof *m);
	m->n = n;
	m->wide = wide;
	size_t nn;
	if (__builtin_mul_overflow(n, n, &nn) || __builtin_mul_overflow(nn, 2 * (wide ? 8 : 4), &nn))
		return idd_fail(err, "too many images (%zu) for a similarity matrix", n);
	threads = IDD_MAX(1, IDD_MIN(threads, IDD_MAX_THREADS));
	m->cells = calloc(nn ? nn : 1, 1);
	if (!m->cells)
		return idd_fail_code(err, IDD_ENOMEM, "out of memory for the %zu x %zu similarity matrix "
		                     "(%zu MiB)", n, n, nn >> 20);
	m->row_shared = idd_calloc(n + 1, sizeof *m->row_shared, err);
	m->row_contained = m->row_shared ? idd_calloc(n + 1, sizeof *m->row_contained, err) : NULL;
	bool ok = m->row_contained;
	for (int t = 0; ok && t < threads; t++) {
		m->stamp[t] = idd_calloc(n + 1, sizeof *m->stamp[t], err);
		m->comp[t] = m->stamp[t] ? idd_malloc((n + 1) * sizeof *m->comp[t], err) : NULL;
		ok = m->comp[t];
	}
	if (!ok) {
		sim_matrix_free(m);
		return IDD_ERR;
	}
	return IDD_OK;
}

static void matrix_free_work(sim_matrix *m)
{
	free(m->row_shared);
	free(m->row_contained);
	m->row_shared = m->row_contained = NULL;
	for (int t = 0; t < IDD_MAX_THREADS; t++) {
		free(m->stamp[t]);
		free(m->comp[t]);
		m->stamp[t] = m->comp[t] = NULL;
	}
}

void sim_matrix_free(sim_matrix *m)
{
	matrix_free_work(m);
	free(m->cells);
	m->cells = NULL;
}

/* The complement of a signature's images (which hold more than half), as a
 * list; marks by stamp, so the array is cleared once per 2^32 uses. */
static size_t complement(sim_matrix *m, int tid, const uint32_t *pr, uint32_t len)
{
	uint32_t *st = m->stamp[tid], *comp = m->comp[tid];
	uint32_t sv = ++m->stamp_now[tid];
	if (!sv) {
		memset(st, 0, m->n * sizeof *st);
		sv = m->stamp_now[tid] = 1;
	}
	for (uint32_t x = 0; x < len; x++)
		st[pr[2 * x]] = sv;
	size_t nc = 0;
	for (size_t b = 0; b < m->n; b++)
		if (st[b] != sv)
			comp[nc++] = (uint32_t)b;
	return nc;
}

/* Both widths: unsigned arithmetic wraps, and every final count is exact.
 * A signature S of more than half the images is counted through its
 * complement C (the few images without the digest), with
 *   shared(a,b)    += w [a in S][b in S] = w - w[a in C] - w[b in C] + w[a,b in C]
 *   contained(a,b) += w m_a [a in S][b in S]
 *                   = the same + e_a - e_a [b in C],  e_a = w (m_a - 1) for a in S:
 * a constant G (sum of w), one value per image r (w summed over the
 * complements holding it) and E (sum of e_a), all folded in at the end, plus
 * the pairs of C x C and, for the rare a of multiplicity > 1, a x C.  A digest
 * held by nearly every image costs |C|^2, not |S|^2. */
#define DEFINE_EXPAND(NAME, T)                                                                   \
	static void NAME(sim_matrix *m, const sim_sigtab *t, int tid, int nt)                       \
	{                                                                                            \
		size_t n = m->n;                                                                         \
		T *cells = m->cells;                                                                     \
		sim_sig sg, *s = &sg;                                                                    \
		for (size_t pos = 0; sim_sigtab_next(t, &pos, &sg);) {                                   \
			const uint32_t *pr = s->pairs;                                                       \
			uint32_t len = s->len;                                                               \
			T w = (T)s->weight;                                                                  \
			if (2 * (size_t)len <= n) {                                                          \
				for (uint32_t x = 0; x < len; x++) {                                             \
					size_t a = pr[2 * x];                                                        \
					if ((int)(a % (size_t)nt) != tid)                                            \
						continue;                                                                \
					T wa = (T)(w * (T)pr[2 * x + 1]);                                            \
					T *row = cells + 2 * a * n;                                                  \
					for (uint32_t y = 0; y < len; y++) {                                         \
						T *cell = row + 2 * (size_t)pr[2 * y];                                   \
						cell[0] += w;                                                            \
						cell[1] += wa;                                                           \
					}                                                                            \
				}                                                                                \
				continue;                                                                        \
			}                                                                                    \
			size_t nc = complement(m, tid, pr, len);                                             \
			const uint32_t *comp = m->comp[tid];                                                 \
			if (tid == 0)                                                                        \
				m->total_weight += s->weight;                                                    \
			for (size_t i = 0; i < nc; i++) {                                                    \
				size_t a = comp[i];                                                              \
				if ((int)(a % (size_t)nt) != tid)                                                \
					continue;                                                                    \
				m->row_shared[a] += s->weight;                                                   \
				T *row = cells + 2 * a * n;                                                      \
				for (size_t j = 0; j < nc; j++) {                                                \
					T *cell = row + 2 * (size_t)comp[j];                                         \
					cell[0] += w;                                                                \
					cell[1] += w;                                                                \
				}                                                                                \
			}                                                                                    \
			for (uint32_t x = 0; x < len; x++) {                                                 \
				size_t a = pr[2 * x];                                                            \
				if (pr[2 * x + 1] == 1 || (int)(a % (size_t)nt) != tid)                          \
					continue;                                                                    \
				T e = (T)(w * (T)(pr[2 * x + 1] - 1));                                           \
				m->row_contained[a] += s->weight * (pr[2 * x + 1] - 1);                          \
				T *row = cells + 2 * a * n;                                                      \
				for (size_t j = 0; j < nc; j++)                                                  \
					row[2 * (size_t)comp[j] + 1] -= e;                                           \
			}                                                                                    \
		}                                                                                        \
	}

DEFINE_EXPAND(expand32, uint32_t)
DEFINE_EXPAND(expand64, uint64_t)

void sim_matrix_expand(void *ctx, const sim_sigtab *t, int tid, int nthreads)
{
	sim_matrix *m = ctx;
	if (m->wide)
		expand64(m, t, tid, nthreads);
	else
		expand32(m, t, tid, nthreads);
}

#define DEFINE_FOLD(NAME, T)                                                                     \
	static void NAME(sim_matrix *m)                                                              \
	{                                                                                            \
		size_t n = m->n;                                                                         \
		T *cells = m->cells;                                                                     \
		T g = (T)m->total_weight;                                                                \
		for (size_t a = 0; a < n; a++) {                                                         \
			T rs = (T)(g - (T)m->row_shared[a]);                                                 \
			T rc = (T)(rs + (T)m->row_contained[a]);                                             \
			T *row = cells + 2 * a * n;                                                          \
			for (size_t b = 0; b < n; b++) {                                                     \
				T col = (T)m->row_shared[b];                                                     \
				row[2 * b] += (T)(rs - col);                                                     \
				row[2 * b + 1] += (T)(rc - col);                                                 \
			}                                                                                    \
		}                                                                                        \
	}

DEFINE_FOLD(fold32, uint32_t)
DEFINE_FOLD(fold64, uint64_t)

void sim_matrix_finish(sim_matrix *m, const uint64_t *nonzero, const uint64_t *distinct)
{
	size_t n = m->n;
	bool any = m->total_weight;
	for (size_t a = 0; a < n && !any; a++)
		any = m->row_shared[a] || m->row_contained[a];
	if (any) {
		if (m->wide)
			fold64(m);
		else
			fold32(m);
	}
	for (size_t a = 0; a < n; a++) {
		sim_cell_set(m->cells, m->wide, 2 * (a * n + a), distinct[a]);
		sim_cell_set(m->cells, m->wide, 2 * (a * n + a) + 1, nonzero[a]);
	}
	matrix_free_work(m);
}

/* ---- exact rows of a few images ---- */

typedef struct rows_job {
	const char *index_dir;
	const idd_catalog *cat;
	size_t n, k;
	uint64_t *keys;       /* distinct keys of the selection, sorted */
	size_t nkeys;
	size_t *span;         /* nkeys + 1: entries of key t at span[t] .. span[t+1] */
	uint32_t *entry_sel;  /* j of the selection */
	uint64_t *entry_mult; /* its multiplicity */
	uint32_t *slots;      /* hash of keys: index + 1 */
	size_t mask;
	/* a bit per 2^filter_shift-th of the key space holding a key: most
	 * blocks of the other images are not among the selection's, and one
	 * look in this small array (in cache) says so */
	uint64_t *filter;
	size_t filter_mask;
	uint64_t *shared, *cab, *cba;
	pthread_mutex_t mu;
	size_t next;
	bool failed, vanished;
	idd_error err;
} rows_job;

static size_t rows_find(const rows_job *r, uint64_t key)
{
	size_t j = (size_t)(sim_mix64(key) & r->mask);
	for (;;) {
		uint32_t s = r->slots[j];
		if (!s)
			return SIZE_MAX;
		if (r->keys[s - 1] == key)
			return s - 1;
		j = (j + 1) & r->mask;
	}
}

static void rows_worker(void *arg, int tid)
{
	(void)tid;
	rows_job *r = arg;
	idd_error e;
	idd_blocklist_buffers bufs = {0};
	uint32_t *seen = calloc(r->nkeys + 1, sizeof *seen);
	if (!seen) {
		idd_fail_code(&e, IDD_ENOMEM, "out of memory");
		pthread_mutex_lock(&r->mu);
		if (!r->failed) {
			r->failed = true;
			r->err = e;
		}
		pthread_mutex_unlock(&r->mu);
		return;
	}
	for (;;) {
		pthread_mutex_lock(&r->mu);
		size_t b = r->next++;
		bool stop = r->failed || b >= r->n;
		pthread_mutex_unlock(&r->mu);
		if (stop)
			break;
		idd_blocklist list, *bl = &list;
		int rc = idd_blocklist_open_reuse(r->index_dir, &r->cat->images[b], &bufs, bl, &e);
		if (rc) {
			pthread_mutex_lock(&r->mu);
			if (!r->failed) {
				r->failed = true;
				r->err = e;
				r->vanished = rc == IDD_ENOENT;
			}
			pthread_mutex_unlock(&r->mu);
			break;
		}
		/* every block of b, with its multiplicity: b's count of a's content
		 * grows each time; the distinct counts only the first time */
		uint32_t mark = (uint32_t)b + 1;
		for (uint64_t x = 0; x < bl->ndata; x++) {
			uint64_t key = idd_be64(bl->digests[x].b);
			size_t fb = (size_t)(key >> 7) & r->filter_mask;
			if (!(r->filter[fb >> 6] >> (fb & 63) & 1))
				continue;
			size_t t = rows_find(r, key);
			if (t == SIZE_MAX)
				continue;
			bool first = seen[t] != mark;
			seen[t] = mark;
			for (size_t q = r->span[t]; q < r->span[t + 1]; q++) {
				size_t cell = (size_t)r->entry_sel[q] * r->n + b;
				r->cba[cell]++;
				if (first) {
					r->shared[cell]++;
					r->cab[cell] += r->entry_mult[q];
				}
			}
		}
		idd_blocklist_clear(bl);
	}
	free(seen);
	idd_blocklist_buffers_free(&bufs);
}

int sim_rows(const char *index_dir, const idd_catalog *cat, const size_t *sel, size_t k,
             int threads, uint64_t *shared, uint64_t *cab, uint64_t *cba, idd_error *err)
{
	size_t n = cat->count;
	if (!k)
		return IDD_OK;
	rows_job r = {.index_dir = index_dir, .cat = cat, .n = n, .k = k,
	              .shared = shared, .cab = cab, .cba = cba};
	memset(shared, 0, k * n * sizeof *shared);
	memset(cab, 0, k * n * sizeof *cab);
	memset(cba, 0, k * n * sizeof *cba);
	/* the selection's keys, with multiplicities, grouped by key */
	sim_sample *rec = NULL, *tmp = NULL;
	size_t nrec = 0, cap = 0;
	int rc = IDD_OK;
	for (size_t j = 0; !rc && j < k; j++) {
		idd_blocklist *bl;
		if ((rc = idd_blocklist_open(index_dir, &cat->images[sel[j]], &bl, err)))
			break;
		if (grow((void **)&rec, &cap, nrec + (size_t)bl->ndata + 1, sizeof *rec, err)) {
			idd_blocklist_free(bl);
			rc = IDD_ERR;
			break;
		}
		for (uint64_t x = 0; x < bl->ndata; x++)
			rec[nrec + x] = (sim_sample){.key = idd_be64(bl->digests[x].b), .image = (uint32_t)j};
		nrec += (size_t)bl->ndata;
		idd_blocklist_free(bl);
	}
	if (!rc && !(tmp = idd_malloc((nrec + 1) * sizeof *tmp, err)))
		rc = IDD_ERR;
	if (!rc)
		sim_sort_samples(rec, tmp, nrec); /* stable: j ascending within a key */
	free(tmp);
	size_t nk = 0, ne = 0;
	if (!rc) {
		r.keys = idd_malloc((nrec + 1) * sizeof *r.keys, err);
		r.span = r.keys ? idd_malloc((nrec + 2) * sizeof *r.span, err) : NULL;
		r.entry_sel = r.span ? idd_malloc((nrec + 1) * sizeof *r.entry_sel, err) : NULL;
		r.entry_mult = r.entry_sel ? idd_malloc((nrec + 1) * sizeof *r.entry_mult, err) : NULL;
		if (!r.entry_mult)
			rc = IDD_ERR;
	}
	for (size_t i = 0; !rc && i < nrec;) {
		size_t e = i;
		r.keys[nk] = rec[i].key;
		r.span[nk] = ne;
		while (e < nrec && rec[e].key == rec[i].key) {
			size_t f = e;
			while (f < nrec && rec[f].key == rec[e].key && rec[f].image == rec[e].image)
				f++;
			r.entry_sel[ne] = rec[e].image;
			r.entry_mult[ne] = f - e;
			ne++;
			e = f;
		}
		nk++;
		i = e;
	}
	free(rec);
	if (!rc) {
		r.span[nk] = ne;
		r.nkeys = nk;
		size_t ns = 16;
		while (ns < 2 * nk)
			ns *= 2;
		r.mask = ns - 1;
		size_t fbits = 1u << 16;
		while (fbits < 32 * nk && fbits < ((size_t)1 << 30))
			fbits *= 2;
		r.filter_mask = fbits - 1;
		if (!(r.slots = idd_calloc(ns, sizeof *r.slots, err)) ||
		    !(r.filter = idd_calloc(fbits / 64, sizeof *r.filter, err)))
			rc = IDD_ERR;
		for (size_t t = 0; !rc && t < nk; t++) {
			size_t fb = (size_t)(r.keys[t] >> 7) & r.filter_mask;
			r.filter[fb >> 6] |= 1ull << (fb & 63);
		}
		for (size_t t = 0; !rc && t < nk; t++) {
			size_t j = (size_t)(sim_mix64(r.keys[t]) & r.mask);
			while (r.slots[j])
				j = (j + 1) & r.mask;
			r.slots[j] = (uint32_t)t + 1;
		}
	}
	if (!rc && nk >= UINT32_MAX)
		rc = idd_fail(err, "too many distinct blocks in the images to compare");
	if (!rc) {
		pthread_mutex_init(&r.mu, NULL);
		sim_run_threads(threads, rows_worker, &r);
		pthread_mutex_destroy(&r.mu);
		if (r.failed) {
			*err = r.err;
			rc = r.vanished ? IDD_ENOENT : (r.err.code ? r.err.code : IDD_ERR);
		}
	}
	free(r.keys);
	free(r.span);
	free(r.entry_sel);
	free(r.entry_mult);
	free(r.slots);
	free(r.filter);
	return rc;
}
