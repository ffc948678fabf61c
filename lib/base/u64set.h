/* u64set.h - a set of 64-bit numbers other than UINT64_MAX (u64set.c). */
#ifndef IDD_BASE_U64SET_H
#define IDD_BASE_U64SET_H

#include "base/util.h"

typedef struct idd_u64set {
	uint64_t *v;
	size_t cap, count;
} idd_u64set;

bool idd_u64set_has(const idd_u64set *s, uint64_t x);
/* Add x; *added says whether it was new.  IDD_ENOMEM when the set cannot grow. */
int idd_u64set_add(idd_u64set *s, uint64_t x, bool *added);
void idd_u64set_free(idd_u64set *s);

#endif
