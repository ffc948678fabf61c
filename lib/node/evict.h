/* evict.h - which files of the node cache `cache gc` removes, in which
 * order (the policy is defined in docs/deploy.md, "Eviction").
 *
 * A cached file holds contents; removing it loses only the contents no
 * other kept file holds, and those cost a fetch when an image that needs
 * them is deployed or booted again.  The value policy removes first what
 * loses least per byte freed: a content is worth the sum of the reuse
 * likelihoods of the cached images holding it (shared by k images, k
 * terms), an image's likelihood falls with how many images were read more
 * recently, and a file costs the worth of the contents only it holds.  The
 * LRU policy removes the least recently read first, whatever they share. */
#ifndef IDD_NODE_EVICT_H
#define IDD_NODE_EVICT_H

#include "base/util.h"
#include "base/error.h"

enum idd_evict_policy { IDD_EVICT_VALUE, IDD_EVICT_LRU };

typedef struct idd_evict_item {
	int64_t last_read;    /* unix ns: last registered or read */
	uint64_t disk_bytes;  /* what removing it frees */
	uint32_t block_size;  /* bytes each of its contents stands for */
	const uint64_t *keys; /* its distinct contents (digest prefixes, never UINT64_MAX) */
	size_t nkeys;
	bool removable;       /* present and not in use */
} idd_evict_item;

/* The key idd_evict_item.keys holds for a digest. */
uint64_t idd_evict_key(const unsigned char digest[32]);

/* Choose what to remove until the items kept take at most max bytes (or
 * nothing removable is left): indexes into items, in removal order, in
 * order[0..*norder) (order has room for n).  Items not removable are never
 * chosen but their contents count as kept. */
int idd_evict_choose(const idd_evict_item *items, size_t n, uint64_t max, enum idd_evict_policy p,
                     size_t *order, size_t *norder, idd_error *err);

#endif
