/* idxgen.h - write small synthetic indexes (catalog + block lists) for the
 * similarity and map unit tests.  Content k > 0 is a pseudo-random digest;
 * content 0 is the zero block. */
#ifndef IDD_IDXGEN_H
#define IDD_IDXGEN_H

#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static inline idd_digest ig_digest(uint64_t content)
{
	idd_digest d;
	memset(&d, 0, sizeof d);
	if (content)
		tu_fill_random(d.b, sizeof d.b, content * 0x9e3779b97f4a7c15ULL + 1);
	return d;
}

typedef struct ig_image {
	const char *id;
	const uint64_t *content; /* per block */
	uint64_t nblocks;
} ig_image;

/* ids must be given sorted. */
static inline void ig_write_index(const char *index_dir, uint32_t bs, const ig_image *v, size_t n,
                                  uint64_t generation)
{
	idd_error err;
	assert_int_equal(idd_mkdir_p(index_dir, &err), IDD_OK);
	idd_catalog cat = {.block_size = bs, .generation = generation, .count = n};
	cat.images = calloc(n + 1, sizeof *cat.images);
	assert_non_null(cat.images);
	for (size_t i = 0; i < n; i++) {
		idd_image_info *im = &cat.images[i];
		idd_digest *d = calloc(v[i].nblocks + 1, sizeof *d);
		assert_non_null(d);
		uint64_t zero = 0, distinct = 0;
		for (uint64_t k = 0; k < v[i].nblocks; k++) {
			d[k] = ig_digest(v[i].content[k]);
			if (!v[i].content[k]) {
				zero++;
				continue;
			}
			bool seen = false;
			for (uint64_t q = 0; q < k && !seen; q++)
				seen = v[i].content[q] == v[i].content[k];
			distinct += !seen;
		}
		assert_int_equal(idd_blocklist_save(index_dir, bs, d, v[i].nblocks, &im->list_key, &err), IDD_OK);
		free(d);
		im->id = (char *)v[i].id;
		im->file = (char *)v[i].id;
		im->member = (char *)"";
		im->format = (char *)"raw";
		im->container = (char *)"";
		im->virtual_size = v[i].nblocks * bs;
		im->file_size = im->virtual_size;
		im->nblocks = v[i].nblocks;
		im->zero_blocks = zero;
		im->distinct_blocks = distinct;
		cat.unique_blocks += distinct;
	}
	assert_int_equal(idd_catalog_save(index_dir, &cat, &err), IDD_OK);
	free(cat.images);
}

#endif
