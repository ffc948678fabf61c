/* evict.c - the order in which gc removes cache files (evict.h).
 *
 * Value policy, with n items, item i read at t_i:
 *   rank r_i  = items read strictly later than i;  p_i = 1 / (1 + r_i)
 *   worth w_c = sum of p_i over the items i holding content c
 *   cost_i    = sum of w_c * block_size over the contents c that no other
 *               kept item holds
 * and, while the kept items take more than max bytes, the removable item
 * of least cost_i / disk_bytes_i goes (ties: read longer ago, then listed
 * earlier).  When an item goes, a content it shared with exactly one kept
 * item becomes that item's alone, and its worth joins that item's cost: the
 * last copy of a shared content carries the demand of every image that
 * held it.  Contents are counted per item and in a table keyed by digest
 * prefix, holding for each the number of kept holders and the XOR of their
 * indexes (the last holder, once one is left).  Cost: one pass over every
 * item's contents, plus n^2 comparisons for the choices. */
#include "node/evict.h"

#include <stdlib.h>
#include <string.h>

uint64_t idd_evict_key(const unsigned char digest[32])
{
	uint64_t k = idd_le64(digest);
	return k == UINT64_MAX ? k - 1 : k;
}

struct content {
	uint64_t key;   /* UINT64_MAX: empty slot */
	uint32_t holders;
	uint32_t holder_xor;
	double worth;
};

struct table {
	struct content *s;
	size_t cap;
};

static struct content *slot(struct table *t, uint64_t key)
{
	size_t i = (size_t)(key * 0x9E3779B97F4A7C15ull) & (t->cap - 1);
	while (t->s[i].key != UINT64_MAX && t->s[i].key != key)
		i = (i + 1) & (t->cap - 1);
	return &t->s[i];
}

static int cmp_desc(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x > y ? -1 : x < y;
}

/* p_i for every item: 1 / (1 + items read strictly later). */
static int likelihoods(const idd_evict_item *items, size_t n, double *p, idd_error *err)
{
	int64_t *t = idd_calloc(n ? n : 1, sizeof *t, err);
	if (!t)
		return IDD_ENOMEM;
	for (size_t i = 0; i < n; i++)
		t[i] = items[i].last_read;
	qsort(t, n, sizeof *t, cmp_desc);
	for (size_t i = 0; i < n; i++) {
		size_t lo = 0, hi = n; /* first position holding a time <= t_i: the later ones precede it */
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (t[mid] > items[i].last_read)
				lo = mid + 1;
			else
				hi = mid;
		}
		p[i] = 1.0 / (1.0 + (double)lo);
	}
	free(t);
	return IDD_OK;
}

static bool before(const idd_evict_item *items, const double *score, size_t a, size_t b)
{
	if (score[a] != score[b])
		return score[a] < score[b];
	if (items[a].last_read != items[b].last_read)
		return items[a].last_read < items[b].last_read;
	return a < b;
}

static int choose_value(const idd_evict_item *items, size_t n, uint64_t total, uint64_t max,
                        size_t *order, size_t *norder, idd_error *err)
{
	size_t nkeys = 0;
	for (size_t i = 0; i < n; i++)
		nkeys += items[i].nkeys;
	struct table t = {.cap = 1024};
	while (t.cap < nkeys * 2)
		t.cap *= 2;
	t.s = idd_malloc(t.cap * sizeof *t.s, err);
	double *p = idd_calloc(n ? n : 1, sizeof *p, err);
	double *cost = idd_calloc(n ? n : 1, sizeof *cost, err);
	double *score = idd_calloc(n ? n : 1, sizeof *score, err);
	bool *gone = idd_calloc(n ? n : 1, sizeof *gone, err);
	int rc = (t.s && p && cost && score && gone) ? likelihoods(items, n, p, err) : IDD_ENOMEM;
	if (rc)
		goto out;
	for (size_t i = 0; i < t.cap; i++)
		t.s[i] = (struct content){.key = UINT64_MAX};
	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < items[i].nkeys; k++) {
			struct content *c = slot(&t, items[i].keys[k]);
			c->key = items[i].keys[k];
			c->holders++;
			c->holder_xor ^= (uint32_t)i;
			c->worth += p[i];
		}
	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < items[i].nkeys; k++) {
			struct content *c = slot(&t, items[i].keys[k]);
			if (c->holders == 1)
				cost[i] += c->worth * items[i].block_size;
		}
	*norder = 0;
	while (total > max) {
		for (size_t i = 0; i < n; i++)
			score[i] = cost[i] / (double)IDD_MAX(items[i].disk_bytes, 1);
		size_t best = n;
		for (size_t i = 0; i < n; i++)
			if (items[i].removable && !gone[i] && (best == n || before(items, score, i, best)))
				best = i;
		if (best == n)
			break;
		gone[best] = true;
		order[(*norder)++] = best;
		total -= IDD_MIN(total, items[best].disk_bytes);
		for (size_t k = 0; k < items[best].nkeys; k++) {
			struct content *c = slot(&t, items[best].keys[k]);
			c->holders--;
			c->holder_xor ^= (uint32_t)best;
			if (c->holders == 1 && c->holder_xor < n) /* its last copy: worth all its holders' demand */
				cost[c->holder_xor] += c->worth * items[c->holder_xor].block_size;
		}
	}
out:
	free(t.s);
	free(p);
	free(cost);
	free(score);
	free(gone);
	return rc;
}

static int cmp_lru(const void *a, const void *b, void *ctx)
{
	const idd_evict_item *items = ctx;
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	int64_t tx = items[x].last_read, ty = items[y].last_read;
	if (tx != ty)
		return tx < ty ? -1 : 1;
	return x < y ? -1 : x > y;
}

static int choose_lru(const idd_evict_item *items, size_t n, uint64_t total, uint64_t max,
                      size_t *order, size_t *norder, idd_error *err)
{
	size_t *idx = idd_calloc(n ? n : 1, sizeof *idx, err);
	if (!idx)
		return IDD_ENOMEM;
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (items[i].removable)
			idx[m++] = i;
	qsort_r(idx, m, sizeof *idx, cmp_lru, (void *)items);
	*norder = 0;
	for (size_t i = 0; i < m && total > max; i++) {
		order[(*norder)++] = idx[i];
		total -= IDD_MIN(total, items[idx[i]].disk_bytes);
	}
	free(idx);
	return IDD_OK;
}

int idd_evict_choose(const idd_evict_item *items, size_t n, uint64_t max, enum idd_evict_policy p,
                     size_t *order, size_t *norder, idd_error *err)
{
	*norder = 0;
	if (n >= UINT32_MAX)
		return idd_fail(err, "cache gc: too many cache files (%zu)", n);
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += items[i].disk_bytes;
	if (total <= max)
		return IDD_OK;
	return p == IDD_EVICT_LRU ? choose_lru(items, n, total, max, order, norder, err)
	                          : choose_value(items, n, total, max, order, norder, err);
}
