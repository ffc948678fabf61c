/* digest.h - SHA-256 block digests and digest sets (digest.c). */
#ifndef IDD_BASE_DIGEST_H
#define IDD_BASE_DIGEST_H

#include "base/util.h"

/* ---- digests (digest.c) ---- */
typedef struct idd_hasher idd_hasher; /* one per thread; reuses its EVP context */
idd_hasher *idd_hasher_new(idd_error *err);
void idd_hasher_free(idd_hasher *h);
/* The calling thread's own hasher (created on first use, freed when the
 * thread exits); NULL when it cannot be created. */
idd_hasher *idd_thread_hasher(idd_error *err);
int idd_hasher_digest(idd_hasher *h, const void *data, size_t len, idd_digest *out, idd_error *err);
/* SHA-256 of a whole buffer (checksums of index files). */
int idd_sha256(const void *data, size_t len, unsigned char out[32], idd_error *err);
/* SHA-256 of a followed by b. */
int idd_sha256_2(const void *a, size_t alen, const void *b, size_t blen, unsigned char out[32],
                 idd_error *err);
/* SHA-256 fed in pieces (files too large to hold). */
typedef struct idd_sha256_ctx idd_sha256_ctx;
idd_sha256_ctx *idd_sha256_begin(idd_error *err);
int idd_sha256_update(idd_sha256_ctx *c, const void *data, size_t len, idd_error *err);
/* Writes the digest and frees c (also on failure). */
int idd_sha256_end(idd_sha256_ctx *c, unsigned char out[32], idd_error *err);
void idd_sha256_abort(idd_sha256_ctx *c);
/* Lowercase hex of the SHA-256 of an image id: the file name that entries,
 * maps and boot profiles of that image use in the index. */
int idd_id_hex(const char *id, char hex[2 * IDD_DIGEST_SIZE + 1], idd_error *err);
bool idd_is_zero(const void *p, size_t len);
/* Hash every block of buf (len a multiple of bs, or the tail zero-padded):
 * zero blocks get the zero digest and are not hashed.  *hashed counts the
 * bytes digested. */
int idd_hash_blocks(idd_hasher *h, const unsigned char *buf, size_t len, uint32_t bs,
                    idd_digest *out, uint64_t *hashed, idd_error *err);

/* Open-addressing set of digests, keyed by the digest's first 8 bytes
 * (uniformly distributed) and compared in full. */
typedef struct idd_digest_set {
	idd_digest *slots;
	uint64_t *aux; /* per-slot user value (counts, locations), may be NULL */
	size_t cap, count;
	bool with_aux;
} idd_digest_set;
int idd_digest_set_init(idd_digest_set *s, size_t expect, bool with_aux, idd_error *err);
void idd_digest_set_free(idd_digest_set *s);
/* Inserts d if absent.  Returns the slot index, or (size_t)-1 on allocation
 * failure; *added says whether it was new.  The zero digest is not allowed. */
size_t idd_digest_set_add(idd_digest_set *s, const idd_digest *d, bool *added, idd_error *err);
size_t idd_digest_set_find(const idd_digest_set *s, const idd_digest *d); /* (size_t)-1 if absent */

#endif
