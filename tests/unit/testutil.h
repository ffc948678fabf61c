/* testutil.h - helpers for the cmocka unit tests. */
#ifndef IDD_TESTUTIL_H
#define IDD_TESTUTIL_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "base/file.h"
#include "formats/image.h"
#include "formats/archive.h"
#include "index/indexfile.h"
#include "index/catalog.h"
#include "index/repo.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>



/* A fresh empty directory under $TMPDIR, removed by tu_rmtree. */
char *tu_mkdtemp(void);
void tu_rmtree(const char *path);
/* Write len bytes to dir/name; returns the malloc'd path.  The file's mtime
 * is set ten seconds back (tu_age): scan does not take it for racily clean. */
char *tu_write(const char *dir, const char *name, const void *data, size_t len);
void tu_age(const char *path);
/* Deterministic pseudo-random bytes (xorshift) for test images. */
void tu_fill_random(void *buf, size_t len, uint64_t seed);
/* Bytes of the distinct non-zero 4 KiB blocks among blocks b0..b1 of img
 * (len bytes, the last block zero-padded) whose content is not among the
 * blocks of have (have_len bytes, may be NULL): what a fetch must transfer. */
uint64_t tu_missing_bytes(const unsigned char *img, size_t len, uint64_t b0, uint64_t b1,
                          const unsigned char *have, size_t have_len);
/* Flip one byte of a file at off. */
void tu_flip_byte(const char *path, uint64_t off);
void tu_truncate(const char *path, uint64_t len);
uint64_t tu_file_size(const char *path);
/* DIR/SUB/NAME of the first (by name) file of DIR/SUB whose name starts with PREFIX, or NULL. */
char *tu_first_file(const char *dir, const char *sub, const char *prefix);

/* A test image and its sibling, in 4 KiB blocks.  a: nb blocks drawn from a
 * pool of `pool` patterns (block i has the content of seed + i % pool:
 * repeats), every zero_every-th block zero (block 0 included), then tail
 * bytes of tail_seed.  b: a's nb blocks (no tail), blocks changed ..
 * changed + nchanged - 1 replaced by new content (block i: changed_seed + i). */
typedef struct {
	size_t nb, pool, zero_every, tail, changed, nchanged;
	uint64_t seed, tail_seed, changed_seed;
} tu_pair_spec;
/* Builds both images (malloc'd), writes them as REPO/a.raw and REPO/b.raw
 * (REPO created) and indexes REPO: 0, or -1 with the reason on stderr. */
int tu_pair_repo(const char *repo, const tu_pair_spec *s, unsigned char **a, unsigned char **b);
/* scan then map REPO, warnings discarded: 0, or -1 with the reason on stderr. */
int tu_index_repo(const char *repo);

#endif
