/* simcount.h - the counting engine behind similarity (simcount.c): for
 * every digest, the set of images holding it (its signature), aggregated
 * over identical signatures, then expanded into pair counts: the full
 * matrix, the pairs of a candidate list (top-K), or the rows of a few images.
 * docs/similarity.md describes the algorithm and its constants. */
#ifndef IDD_INDEX_SIMCOUNT_H
#define IDD_INDEX_SIMCOUNT_H

#include "base/util.h"

/* ---- signatures: distinct lists of (image, multiplicity), weighted ---- */

/* Entries back to back in one arena of 32-bit words: len, weight (low,
 * high), then len pairs (image, mult), images ascending.  A lookup touches
 * its slot and its entry, nothing else. */
typedef struct sim_sig_slot {
	uint64_t hash, pos; /* pos: entry offset + 1, 0 = empty */
} sim_sig_slot;

typedef struct sim_sigtab {
	uint32_t *arena;
	size_t alen, acap;
	sim_sig_slot *slots;
	size_t nslots, n;
} sim_sigtab;

typedef struct sim_sig {
	const uint32_t *pairs;
	uint64_t weight; /* how many digests have exactly this list */
	uint32_t len;
} sim_sig;

void sim_sigtab_free(sim_sigtab *t);
int sim_sigtab_add(sim_sigtab *t, const uint32_t *pairs, uint32_t len, uint64_t weight,
                   idd_error *err);
size_t sim_sigtab_bytes(const sim_sigtab *t);
/* for (size_t pos = 0; sim_sigtab_next(t, &pos, &s);) visits every entry */
static inline bool sim_sigtab_next(const sim_sigtab *t, size_t *pos, sim_sig *s)
{
	if (*pos >= t->alen)
		return false;
	const uint32_t *e = t->arena + *pos;
	s->len = e[0];
	s->weight = e[1] | (uint64_t)e[2] << 32;
	s->pairs = e + 3;
	*pos += 3 + 2 * (size_t)s->len;
	return true;
}

/* Where the signatures go: expand(ctx, t, tid, nthreads) adds t's
 * signatures to the rows a with a % nthreads == tid (so threads never write
 * the same row).  Called with tid 0 of 1 for a table flushed while counting
 * (under a lock), and with every tid at once for the last, merged table. */
typedef struct sim_sink {
	void (*expand)(void *ctx, const sim_sigtab *t, int tid, int nthreads);
	void *ctx;
} sim_sink;

/* ---- the count ---- */

typedef struct sim_sample {
	uint64_t key;
	uint32_t image, pad;
} sim_sample;

typedef struct sim_count_opts {
	const char *index_dir;
	const idd_catalog *cat;
	int threads;
	uint64_t mem_budget;     /* bytes in memory per pass-2 group, all threads together */
	const char *tmp_dir;     /* spill files go in a fresh directory here */
	uint64_t sample_below;   /* 0: none; else every digest whose mixed key is below it is
	                            collected into samples (the consistent sample of top-K) */
	idd_progress_fn progress;
	void *ctx;
} sim_count_opts;

typedef struct sim_count sim_count;

/* Pass 1: read every block list once (its 64-bit keys, sorted, counted) and
 * spill them by key range.  On return, nonzero/distinct are not final yet;
 * samples are.  IDD_ENOENT: a list vanished (a concurrent scan). */
int sim_count_start(const sim_count_opts *o, sim_count **out, idd_error *err);
/* The consistent sample collected by pass 1 (sorted by nothing). */
const sim_sample *sim_count_samples(const sim_count *c, size_t *n);
void sim_count_drop_samples(sim_count *c);
/* Pass 2: group each key's images, intern the signatures, expand them into
 * sink.  Afterwards nonzero[i] (blocks with multiplicity) and distinct[i]
 * (distinct keys) hold per image. */
int sim_count_finish(sim_count *c, const sim_sink *sink, idd_error *err);
const uint64_t *sim_count_nonzero(const sim_count *c);
const uint64_t *sim_count_distinct(const sim_count *c);
uint64_t sim_count_records(const sim_count *c);
uint64_t sim_count_signatures(const sim_count *c);
void sim_count_free(sim_count *c);

/* ---- the full matrix ---- */

/* n x n cells, each (shared, contained) next to each other, 32 bits wide
 * when every count fits (an image of fewer than 2^32 non-zero blocks), else
 * 64; what signatures of more than half the images add is kept per image
 * and folded in by sim_matrix_finish. */
typedef struct sim_matrix {
	size_t n;
	bool wide;
	void *cells;
	uint64_t total_weight;                /* G: weights of the complement-counted signatures */
	uint64_t *row_shared, *row_contained; /* r and E per image (simcount.c) */
	uint32_t *stamp[IDD_MAX_THREADS];  /* per thread: membership marks */
	uint32_t *comp[IDD_MAX_THREADS];   /* per thread: complement list */
	uint32_t stamp_now[IDD_MAX_THREADS];
} sim_matrix;

int sim_matrix_init(sim_matrix *m, size_t n, bool wide, int threads, idd_error *err);
/* Fold the row corrections in and set the diagonal; frees the work arrays. */
void sim_matrix_finish(sim_matrix *m, const uint64_t *nonzero, const uint64_t *distinct);
void sim_matrix_free(sim_matrix *m);
void sim_matrix_expand(void *m, const sim_sigtab *t, int tid, int nthreads);

static inline uint64_t sim_cell_get(const void *cells, bool wide, size_t i)
{
	return wide ? ((const uint64_t *)cells)[i] : ((const uint32_t *)cells)[i];
}
static inline void sim_cell_set(void *cells, bool wide, size_t i, uint64_t v)
{
	if (wide)
		((uint64_t *)cells)[i] = v;
	else
		((uint32_t *)cells)[i] = (uint32_t)v;
}

/* ---- exact rows of a few images ---- */

/* For the k images sel[0..k) of cat and every image b of cat:
 * shared[j*n+b] = |U_a ∩ U_b|, cab[j*n+b] = a's blocks whose content b holds,
 * cba[j*n+b] = b's blocks whose content a holds (a = sel[j]).  Reads every
 * block list once; memory: the selected images' keys (24 bytes each) and
 * 3 k n counters.  IDD_ENOENT: a list vanished. */
int sim_rows(const char *index_dir, const idd_catalog *cat, const size_t *sel, size_t k,
             int threads, uint64_t *shared, uint64_t *cab, uint64_t *cba, idd_error *err);

/* ---- shared helpers ---- */

void sim_sort_u64(uint64_t *a, uint64_t *tmp, size_t n);
void sim_sort_samples(sim_sample *a, sim_sample *tmp, size_t n);
static inline uint64_t sim_mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}
/* Run fn(arg, tid) on nthreads threads (in this one when none starts). */
void sim_run_threads(int nthreads, void (*fn)(void *arg, int tid), void *arg);

#endif
