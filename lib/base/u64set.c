/* u64set.c - a set of 64-bit numbers (block indexes): open addressing,
 * UINT64_MAX marks an empty slot, grown to stay at most half full. */
#include "base/u64set.h"

#include <stdlib.h>
#include <string.h>

bool idd_u64set_has(const idd_u64set *s, uint64_t x)
{
	if (!s->cap)
		return false;
	size_t i = (size_t)(x * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
	while (s->v[i] != UINT64_MAX) {
		if (s->v[i] == x)
			return true;
		i = (i + 1) & (s->cap - 1);
	}
	return false;
}

int idd_u64set_add(idd_u64set *s, uint64_t x, bool *added)
{
	*added = false;
	if ((s->count + 1) * 2 > s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 1024;
		uint64_t *nv = malloc(nc * sizeof *nv);
		if (!nv)
			return IDD_ENOMEM;
		memset(nv, 0xff, nc * sizeof *nv);
		for (size_t i = 0; i < s->cap; i++) {
			if (s->v[i] == UINT64_MAX)
				continue;
			size_t j = (size_t)(s->v[i] * 0x9E3779B97F4A7C15ull) & (nc - 1);
			while (nv[j] != UINT64_MAX)
				j = (j + 1) & (nc - 1);
			nv[j] = s->v[i];
		}
		free(s->v);
		s->v = nv;
		s->cap = nc;
	}
	size_t i = (size_t)(x * 0x9E3779B97F4A7C15ull) & (s->cap - 1);
	while (s->v[i] != UINT64_MAX) {
		if (s->v[i] == x)
			return IDD_OK;
		i = (i + 1) & (s->cap - 1);
	}
	s->v[i] = x;
	s->count++;
	*added = true;
	return IDD_OK;
}

void idd_u64set_free(idd_u64set *s)
{
	free(s->v);
	memset(s, 0, sizeof *s);
}
