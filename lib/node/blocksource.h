/* blocksource.h - where the verified bytes of a block come from.
 *
 * deploy and serve assemble an image block by block.  Every place that can
 * provide a block's content is a block source behind one small interface:
 * "fill these blocks with verified bytes, or say you do not hold them".
 * Sources are tried in order (a chain): the output being written, the node
 * cache, seeds, peers, the repository's pack, the repository's image in its
 * original format.  A source never hands out bytes it has not checked
 * against the digest asked for, so a caller can trust whatever comes back.
 *
 * Threads: every source may be read from several threads at once; each
 * implementation documents how it serialises its own state.  Counters are
 * atomics, read with idd_block_source_counters().
 */
#ifndef IDD_NODE_BLOCKSOURCE_H
#define IDD_NODE_BLOCKSOURCE_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"

#include <stdatomic.h>

/* One block asked for. */
typedef struct idd_block_req {
	idd_digest digest;  /* the content wanted (never the zero digest) */
	uint64_t block;     /* a block of the image being assembled that holds this content:
	                       sources that read the image itself (remote) read it there */
	uint32_t len;       /* bytes of the block inside the image (< block size at the end) */
	unsigned char *buf; /* block-size bytes: out, the verified block (zero padded) */
	int status;         /* out: IDD_OK filled and verified; IDD_ENOENT not held here;
	                       IDD_ECORRUPT held but failed verification (a warning, the
	                       next source is asked) */
	/* out, optional: a local file holding exactly these bytes, for callers
	 * that can clone ranges (reflinks); -1 when none. */
	int origin_fd;
	uint64_t origin_off;
} idd_block_req;

typedef struct idd_block_source idd_block_source;

struct idd_block_source_ops {
	const char *kind; /* "output", "cache", "seed", "peer", "pack", "remote" */
	/* Cheap, no I/O: could this source hold d?  NULL: every block is
	 * worth asking for (a remote image holds them all). */
	bool (*has)(idd_block_source *s, const idd_digest *d);
	/* Fill reqs[0..n) whose status is IDD_ENOENT on entry; set each one's
	 * status.  Returns IDD_OK, or an error code only for a failure that
	 * concerns the caller (out of memory, the source unusable as a whole,
	 * which err describes): requests left IDD_ENOENT then go to the next
	 * source. */
	int (*read)(idd_block_source *s, idd_block_req *reqs, size_t n, idd_error *err);
	void (*close)(idd_block_source *s);
};

/* What a source delivered, for --json and progress. */
typedef struct idd_block_source_counters {
	uint64_t blocks;   /* blocks delivered */
	uint64_t bytes;    /* payload bytes transferred or read to deliver them */
	uint64_t requests; /* requests made (remote sources) */
	uint64_t damaged;  /* blocks that failed verification */
	uint64_t retries;  /* requests retried after a transient failure */
} idd_block_source_counters;

struct idd_block_source {
	const struct idd_block_source_ops *ops;
	char *name;          /* for messages: a path or URL */
	uint32_t block_size;
	atomic_uint_least64_t blocks, bytes, requests, damaged, retries;
	idd_warn_fn warn;    /* told once per source about damage, a dead peer, ... */
	void *warn_ctx;
	void *priv;
};

/* Initialise the common part (name copied). */
int idd_block_source_init(idd_block_source *s, const struct idd_block_source_ops *ops,
                          const char *name, uint32_t block_size, idd_warn_fn warn, void *ctx,
                          idd_error *err);
/* Free the common part (for implementations' close). */
void idd_block_source_fini(idd_block_source *s);
void idd_block_source_close(idd_block_source *s);
void idd_block_source_counters_get(const idd_block_source *s, idd_block_source_counters *out);
/* Verify buf (block-size bytes) against d; on success the request is done. */
bool idd_block_verify(idd_hasher *h, const void *buf, uint32_t block_size, const idd_digest *d);

/* A chain: sources asked in order; each request goes to the next source
 * only while it is still IDD_ENOENT or IDD_ECORRUPT. */
typedef struct idd_block_chain {
	idd_block_source *src[16];
	size_t n;
	idd_error failure; /* the last source that failed as a whole (failure.code < 0) */
} idd_block_chain;

/* The chain of sources, in the order given; NULL entries (a source this
 * run does not have: no seeds, no pack, no peers) are left out.  Every
 * chain deploy and serve ask is assembled here. */
void idd_block_chain_of(idd_block_chain *c, idd_block_source *const *src, size_t n);
#define IDD_BLOCK_CHAIN_OF(c, ...)                                                                 \
	idd_block_chain_of((c), (idd_block_source *const[]){__VA_ARGS__},                              \
	                   sizeof((idd_block_source *const[]){__VA_ARGS__}) / sizeof(idd_block_source *))

/* Ask every source in turn.  Afterwards each request is IDD_OK, or says why
 * not: IDD_ENOENT (nobody holds it), IDD_ECORRUPT (a source held it but it
 * failed verification), or the code of a source that failed as a whole
 * (IDD_ENET, ...; c->failure has its message).  A source that ran out of
 * time (IDD_ETIMEDOUT, the thread's idd_fetch_deadline) or was stopped
 * (IDD_ECANCELED) ends the chain: the rest get that code. */
int idd_block_chain_read(idd_block_chain *c, idd_block_req *reqs, size_t n, idd_error *err);

#endif
