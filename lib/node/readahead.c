/* readahead.c - readahead by evidence (readahead.h). */
#include "node/readahead.h"

#include <stdbool.h>
#include <string.h>

void idd_readahead_init(idd_readahead *ra, uint64_t min, uint64_t max)
{
	memset(ra, 0, sizeof *ra);
	pthread_mutex_init(&ra->lock, NULL);
	ra->max = max;
	ra->min = min < max ? min : max;
}

void idd_readahead_destroy(idd_readahead *ra)
{
	pthread_mutex_destroy(&ra->lock);
}

static uint64_t first_window(const idd_readahead *ra, uint64_t len)
{
	uint64_t w = len > ra->max / 2 ? ra->max : 2 * len;
	return w < ra->min ? ra->min : w;
}

/* Does a read at off continue stream st?  It may start anywhere from the
 * stream's last read to the end of what was read ahead of it, or as far
 * before it: reads in flight together arrive in any order.  A stream with
 * no window yet reaches one read's length. */
static bool continues(const idd_ra_stream *st, uint64_t off)
{
	if (!st->used)
		return false;
	uint64_t reach = st->window ? st->window : st->next - st->start;
	return off + reach >= st->start && off <= st->next + reach;
}

uint64_t idd_readahead_window(idd_readahead *ra, uint64_t off, uint64_t len, bool missed)
{
	if (!ra->max || !len)
		return 0;
	pthread_mutex_lock(&ra->lock);
	ra->clock++;
	idd_ra_stream *st = NULL, *lru = &ra->s[0];
	for (int i = 0; i < IDD_RA_STREAMS; i++) {
		if (!st && continues(&ra->s[i], off))
			st = &ra->s[i];
		if (ra->s[i].used < lru->used)
			lru = &ra->s[i];
	}
	uint64_t end = off + len, w;
	bool sequential = st || off == 0;
	if (st) {
		if (missed)
			st->window = st->window ? (st->window > ra->max / 2 ? ra->max : 2 * st->window)
			                        : first_window(ra, len);
		if (off > st->start)
			st->start = off;
		if (end > st->next)
			st->next = end;
	} else {
		st = lru;
		*st = (idd_ra_stream){.start = off, .next = end};
		if (off == 0 && missed)
			st->window = first_window(ra, len);
	}
	st->used = ra->clock;
	/* a sequential read the node could answer: only a short look ahead */
	w = !sequential ? 0 : missed ? st->window : ra->min;
	pthread_mutex_unlock(&ra->lock);
	return w;
}
