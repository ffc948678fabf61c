/* packgen.h - small real repositories for the pack tests: raw images whose
 * blocks are given as content numbers (0: a zero block; k: a block of
 * half text, half pseudo-random bytes, distinct for each k), indexed with
 * the real scan and map. */
#ifndef IDD_PACKGEN_H
#define IDD_PACKGEN_H

#include "testutil.h"
#include "index/map.h"
#include "index/pack.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline void pg_block(uint64_t c, unsigned char *buf, uint32_t bs)
{
	memset(buf, 0, bs);
	if (!c)
		return;
	for (uint32_t i = 0; i < bs / 2; i++)
		buf[i] = (unsigned char)"the quick brown fox jumps over the lazy dog "[(i + c) % 44];
	tu_fill_random(buf + bs / 2, bs / 2, c);
	idd_le64_put(buf, c); /* distinct even where the random half repeats */
}

static inline idd_digest pg_digest(uint64_t c, uint32_t bs)
{
	unsigned char *b = malloc(bs);
	assert_non_null(b);
	pg_block(c, b, bs);
	idd_digest d;
	assert_int_equal(idd_sha256(b, bs, d.b, NULL), IDD_OK);
	free(b);
	return d;
}

/* Write REPO/NAME: n blocks, the last one cut to tail bytes when tail. */
static inline void pg_image(const char *repo, const char *name, const uint64_t *content, size_t n,
                            uint32_t bs, uint32_t tail)
{
	size_t len = n * bs - (tail ? bs - tail : 0);
	unsigned char *data = malloc(n * bs);
	assert_non_null(data);
	for (size_t i = 0; i < n; i++)
		pg_block(content[i], data + i * bs, bs);
	free(tu_write(repo, name, data, len));
	free(data);
}

/* scan + map REPO (block size bs for a new index). */
static inline void pg_index(const char *repo, uint32_t bs)
{
	idd_error err;
	idd_scan_opts so = {.repo = repo, .jobs = 2, .block_size = bs};
	idd_scan_stats ss;
	if (idd_scan(&so, &ss, &err))
		fail_msg("scan: %s", err.msg);
	idd_map_opts mo = {.repo = repo};
	idd_map_stats ms;
	if (idd_map_run(&mo, &ms, &err))
		fail_msg("map: %s", err.msg);
}

static inline int pg_pack(const char *repo, idd_pack_stats *st, idd_error *err)
{
	idd_pack_opts o = {.repo = repo, .jobs = 2};
	return idd_pack_run(&o, st, err);
}

#endif
