/* readahead.h - how much to read ahead of a client's read, by evidence
 * (readahead.c).  The model is Linux's on-demand readahead: a read that
 * continues a recent read (it starts inside it, at its end, or within the
 * window already read ahead of it) belongs to a stream, whose window starts
 * at twice the read and doubles with each further read of it, up to the
 * maximum (each read that missed: see idd_readahead_window); any other
 * read starts a stream with no readahead, so random
 * reads get none.  A read at the start of the image starts a stream with
 * its first window (boots and copies begin there).  A few streams are
 * tracked at once (several guests' or a guest's threads reading different
 * places), the least recently used replaced.  Thread-safe. */
#ifndef IDD_NODE_READAHEAD_H
#define IDD_NODE_READAHEAD_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define IDD_RA_STREAMS 8

typedef struct idd_ra_stream {
	uint64_t start, next; /* the last read of the stream: [start, next) */
	uint64_t window;      /* bytes read ahead after it; 0: not a stream yet */
	uint64_t used;        /* when last continued (a counter) */
} idd_ra_stream;

typedef struct idd_readahead {
	pthread_mutex_t lock;
	idd_ra_stream s[IDD_RA_STREAMS];
	uint64_t clock;
	uint64_t min, max;    /* bytes: the first window at least min, none above max */
} idd_readahead;

/* max 0: never read ahead. */
void idd_readahead_init(idd_readahead *ra, uint64_t min, uint64_t max);
void idd_readahead_destroy(idd_readahead *ra);
/* A client read [off, off + len), which missed (needed blocks fetched)
 * or not: the bytes to read ahead after it.  Only misses grow a stream's
 * window: a stream through blocks the node holds looks ahead by min only,
 * so that what lies near the reads but is never read is not fetched. */
uint64_t idd_readahead_window(idd_readahead *ra, uint64_t off, uint64_t len, bool missed);

#endif
