/* extsort.h - sorting more fixed-size records than a memory budget holds:
 * the records are sorted in memory while they fit; beyond that, sorted runs
 * are spilled to unnamed temporary files (gone when closed, a killed run
 * leaves nothing) and merged as they are read back (extsort.c). */
#ifndef IDD_BASE_EXTSORT_H
#define IDD_BASE_EXTSORT_H

#include "base/util.h"

typedef int (*idd_extsort_cmp)(const void *a, const void *b);
typedef struct idd_extsort idd_extsort;

/* Records of rec_size bytes, ordered by cmp; at most about budget bytes of
 * them in memory (at least a few records).  Spills go to tmpdir. */
int idd_extsort_new(const char *tmpdir, size_t rec_size, size_t budget, idd_extsort_cmp cmp,
                    idd_extsort **out, idd_error *err);
void idd_extsort_free(idd_extsort *s);
int idd_extsort_add(idd_extsort *s, const void *rec, idd_error *err);
/* No more records: iteration may begin. */
int idd_extsort_finish(idd_extsort *s, idd_error *err);
/* The next record in order into *rec (valid until the next call): 1, or 0
 * at the end, or an IDD_E* code (< 0) on a read error. */
int idd_extsort_next(idd_extsort *s, const void **rec, idd_error *err);
/* Records added so far, and sorted runs written to disk. */
uint64_t idd_extsort_count(const idd_extsort *s);
uint64_t idd_extsort_spills(const idd_extsort *s);

#endif
