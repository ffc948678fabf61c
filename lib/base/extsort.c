/* extsort.c - external merge sort of fixed-size records (extsort.h).
 * Records are buffered up to the budget; a full buffer is sorted and
 * written as a run to an unnamed temporary file.  Reading merges the runs
 * through a binary heap, at most FANIN at a time (more are merged into
 * longer runs first), each read through a buffer of its share of the
 * budget.  Callers order records totally: equal ones come out in no
 * particular order. */
#include "base/extsort.h"
#include "base/error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FANIN 64
/* a run's read buffer: its share of the budget, within these bounds */
#define MIN_READ (64u << 10)
#define MAX_READ (4u << 20)

struct xrun {
	int fd;
	uint64_t nrecs;   /* records in the file */
	uint64_t next;    /* records taken into buf so far */
	unsigned char *buf;
	size_t cap, fill, at; /* in records */
};

struct idd_extsort {
	char *tmpdir;
	size_t rs;
	size_t budget;
	idd_extsort_cmp cmp;
	unsigned char *mem; /* buffered records */
	size_t n, cap;
	struct xrun *runs;
	size_t nruns;
	bool finished;
	size_t at;        /* in-memory iteration: next record */
	size_t *heap;     /* merge: run indices, smallest current record first */
	size_t nheap;
	unsigned char *cur;
	uint64_t count, spills;
};

static int tmp_file(const char *dir, idd_error *err)
{
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd >= 0)
		return fd;
	char *tmpl = idd_asprintf(err, "%s/sort.tmp.%ld.XXXXXX", dir, (long)getpid());
	if (!tmpl)
		return -1;
	fd = mkstemp(tmpl);
	if (fd < 0)
		idd_fail_errno(err, dir, "cannot create a temporary file for sorting");
	else
		unlink(tmpl);
	free(tmpl);
	return fd;
}

int idd_extsort_new(const char *tmpdir, size_t rec_size, size_t budget, idd_extsort_cmp cmp,
                    idd_extsort **out, idd_error *err)
{
	idd_extsort *s = idd_calloc(1, sizeof *s, err);
	if (!s)
		return IDD_ENOMEM;
	s->rs = rec_size;
	s->cmp = cmp;
	s->budget = IDD_MAX(budget, 4 * rec_size);
	if (!(s->tmpdir = idd_strdup(tmpdir, err)) || !(s->cur = idd_malloc(rec_size, err))) {
		idd_extsort_free(s);
		return IDD_ENOMEM;
	}
	*out = s;
	return IDD_OK;
}

void idd_extsort_free(idd_extsort *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->nruns; i++) {
		if (s->runs[i].fd >= 0)
			close(s->runs[i].fd);
		free(s->runs[i].buf);
	}
	free(s->runs);
	free(s->heap);
	free(s->mem);
	free(s->cur);
	free(s->tmpdir);
	free(s);
}

uint64_t idd_extsort_count(const idd_extsort *s) { return s->count; }
uint64_t idd_extsort_spills(const idd_extsort *s) { return s->spills; }

static int add_run(idd_extsort *s, int fd, uint64_t nrecs, idd_error *err)
{
	struct xrun *v = idd_realloc_array(s->runs, s->nruns + 1, sizeof *v, err);
	if (!v) {
		close(fd);
		return IDD_ENOMEM;
	}
	s->runs = v;
	s->runs[s->nruns++] = (struct xrun){.fd = fd, .nrecs = nrecs};
	return IDD_OK;
}

/* Sort the buffer and write it out as a run. */
static int spill(idd_extsort *s, idd_error *err)
{
	qsort(s->mem, s->n, s->rs, s->cmp);
	int fd = tmp_file(s->tmpdir, err);
	if (fd < 0)
		return IDD_ERR;
	if (idd_pwrite_all(fd, s->mem, s->n * s->rs, 0)) {
		int rc = idd_fail_errno(err, s->tmpdir, "cannot write a temporary file for sorting");
		close(fd);
		return rc;
	}
	int rc = add_run(s, fd, s->n, err);
	if (!rc) {
		s->spills++;
		s->n = 0;
	}
	return rc;
}

int idd_extsort_add(idd_extsort *s, const void *rec, idd_error *err)
{
	size_t max = s->budget / s->rs;
	if (s->n == s->cap) {
		if (s->cap < max) { /* grow towards the budget: small sorts stay small */
			size_t nc = s->cap ? IDD_MIN(s->cap * 2, max) : IDD_MIN((size_t)1024, max);
			unsigned char *p = idd_realloc_array(s->mem, nc, s->rs, err);
			if (!p)
				return IDD_ENOMEM;
			s->mem = p;
			s->cap = nc;
		} else if (spill(s, err)) {
			return IDD_ERR;
		}
	}
	memcpy(s->mem + s->n * s->rs, rec, s->rs);
	s->n++;
	s->count++;
	return IDD_OK;
}

/* Refill a run's buffer; false at its end or on error (*rc set). */
static bool run_fill(idd_extsort *s, struct xrun *r, int *rc, idd_error *err)
{
	if (r->at < r->fill)
		return true;
	if (r->next >= r->nrecs)
		return false;
	size_t n = (size_t)IDD_MIN((uint64_t)r->cap, r->nrecs - r->next);
	if (idd_pread_all(r->fd, r->buf, n * s->rs, r->next * s->rs)) {
		*rc = idd_fail_errno(err, s->tmpdir, "cannot read back a temporary file for sorting");
		return false;
	}
	r->next += n;
	r->fill = n;
	r->at = 0;
	return true;
}

static const unsigned char *run_head(const idd_extsort *s, const struct xrun *r)
{
	return r->buf + r->at * s->rs;
}

/* Heap order: smaller record first, the earlier run on ties. */
static bool heap_less(const idd_extsort *s, size_t a, size_t b)
{
	int c = s->cmp(run_head(s, &s->runs[a]), run_head(s, &s->runs[b]));
	return c < 0 || (c == 0 && a < b);
}

static void sift_down(idd_extsort *s, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, m = i;
		if (l < s->nheap && heap_less(s, s->heap[l], s->heap[m]))
			m = l;
		if (l + 1 < s->nheap && heap_less(s, s->heap[l + 1], s->heap[m]))
			m = l + 1;
		if (m == i)
			return;
		size_t t = s->heap[i];
		s->heap[i] = s->heap[m];
		s->heap[m] = t;
		i = m;
	}
}

/* Set up the merge of runs [first, first + count): buffers and heap. */
static int merge_begin(idd_extsort *s, size_t first, size_t count, idd_error *err)
{
	size_t share = s->budget / IDD_MAX(count, (size_t)1);
	share = IDD_MIN(IDD_MAX(share, (size_t)MIN_READ), (size_t)MAX_READ);
	size_t recs = IDD_MAX(share / s->rs, (size_t)1);
	free(s->heap);
	if (!(s->heap = idd_calloc(count + 1, sizeof *s->heap, err)))
		return IDD_ENOMEM;
	s->nheap = 0;
	for (size_t i = first; i < first + count; i++) {
		struct xrun *r = &s->runs[i];
		free(r->buf);
		if (!(r->buf = idd_malloc(recs * s->rs, err)))
			return IDD_ENOMEM;
		r->cap = recs;
		r->fill = r->at = 0;
		r->next = 0;
		int rc = IDD_OK;
		if (run_fill(s, r, &rc, err))
			s->heap[s->nheap++] = i;
		else if (rc)
			return rc;
	}
	for (size_t i = s->nheap / 2; i-- > 0;)
		sift_down(s, i);
	return IDD_OK;
}

/* Take the smallest record of the merge into s->cur: 1, 0 at the end. */
static int merge_next(idd_extsort *s, idd_error *err)
{
	if (!s->nheap)
		return 0;
	struct xrun *r = &s->runs[s->heap[0]];
	memcpy(s->cur, run_head(s, r), s->rs);
	r->at++;
	int rc = IDD_OK;
	if (!run_fill(s, r, &rc, err)) {
		if (rc)
			return rc;
		s->heap[0] = s->heap[--s->nheap];
	}
	if (s->nheap)
		sift_down(s, 0);
	return 1;
}

static void run_close(struct xrun *r)
{
	if (r->fd >= 0)
		close(r->fd);
	free(r->buf);
	r->fd = -1;
	r->buf = NULL;
}

/* Merge the first FANIN runs into one, until at most FANIN are left. */
static int reduce_runs(idd_extsort *s, idd_error *err)
{
	while (s->nruns > FANIN) {
		int fd = tmp_file(s->tmpdir, err);
		if (fd < 0)
			return IDD_ERR;
		int rc = merge_begin(s, 0, FANIN, err);
		unsigned char *out = rc ? NULL : idd_malloc(MAX_READ, err);
		size_t per = MAX_READ / s->rs, fill = 0;
		uint64_t off = 0, total = 0;
		if (!rc && !out)
			rc = IDD_ENOMEM;
		while (!rc) {
			int got = merge_next(s, err);
			if (got < 0)
				rc = got;
			if (got > 0) {
				memcpy(out + fill * s->rs, s->cur, s->rs);
				fill++;
				total++;
			}
			if (!rc && (fill == per || (got == 0 && fill))) {
				if (idd_pwrite_all(fd, out, fill * s->rs, off))
					rc = idd_fail_errno(err, s->tmpdir, "cannot write a temporary file for sorting");
				off += fill * s->rs;
				fill = 0;
			}
			if (got == 0)
				break;
		}
		free(out);
		if (rc) {
			close(fd);
			return rc;
		}
		for (size_t i = 0; i < FANIN; i++)
			run_close(&s->runs[i]);
		memmove(s->runs, s->runs + FANIN, (s->nruns - FANIN) * sizeof *s->runs);
		s->nruns -= FANIN;
		if ((rc = add_run(s, fd, total, err)))
			return rc;
	}
	return IDD_OK;
}

int idd_extsort_finish(idd_extsort *s, idd_error *err)
{
	s->finished = true;
	if (!s->nruns) {
		if (s->n)
			qsort(s->mem, s->n, s->rs, s->cmp);
		return IDD_OK;
	}
	if (s->n && spill(s, err))
		return IDD_ERR;
	free(s->mem);
	s->mem = NULL;
	s->cap = 0;
	int rc = reduce_runs(s, err);
	return rc ? rc : merge_begin(s, 0, s->nruns, err);
}

int idd_extsort_next(idd_extsort *s, const void **rec, idd_error *err)
{
	if (!s->nruns) {
		if (s->at >= s->n)
			return 0;
		*rec = s->mem + s->at++ * s->rs;
		return 1;
	}
	int got = merge_next(s, err);
	if (got > 0)
		*rec = s->cur;
	return got;
}
