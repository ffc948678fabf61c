/* profiles.h - boot profiles published in a repository's index
 * (profiles.c).
 *
 *   profiles/<hex SHA-256 of id>   the digests image id's boot first read,
 *                                  in that order (container, magic IDD-PRF)
 *   profiles/index                 the images that have one, with their
 *                                  lengths (container, magic IDD-PRI)
 *
 * A profile names content, not block numbers: it means the same on every
 * node, and for any image that holds some of those blocks.  A node serving
 * an image prefetches its own profile or, for an image never booted, the
 * profile that overlaps it most, restricted to the blocks it holds.
 * Layout: docs/formats.md ("Boot profiles"). */
#ifndef IDD_INDEX_PROFILES_H
#define IDD_INDEX_PROFILES_H

#include "base/util.h"
#include "base/error.h"

#define IDD_PROFILES_DIR "profiles"
#define IDD_PROFILES_INDEX_FILE "profiles/index"
/* Largest profile a reader accepts: 4 Mi digests (16 GiB of 4 KiB blocks
 * first read by a boot), and largest profiles index. */
#define IDD_PROFILE_MAX_DIGESTS ((uint64_t)1 << 22)
#define IDD_PROFILE_MAX_FILE ((size_t)IDD_PROFILE_MAX_DIGESTS * 32 + 8192)
#define IDD_PROFILES_INDEX_MAX_FILE ((size_t)64 << 20)

typedef struct idd_boot_profile {
	char *id;            /* the image booted */
	uint32_t block_size; /* of the repository when it was recorded */
	idd_digest *digests; /* distinct, none all-zero, in first-read order */
	size_t n;
} idd_boot_profile;
void idd_boot_profile_free(idd_boot_profile *p);

typedef struct idd_profiles_index {
	size_t n;
	char **ids;       /* sorted */
	uint64_t *counts; /* digests of each profile */
} idd_profiles_index;
void idd_profiles_index_free(idd_profiles_index *x);

/* "profiles/<hex SHA-256 of id>", relative to the index directory. */
char *idd_boot_profile_relpath(const char *id, idd_error *err);
/* Parse a whole profile file that must be image id's (id NULL: any). */
int idd_boot_profile_parse(const char *name, const void *file, size_t len, const char *id,
                           idd_boot_profile *out, idd_error *err);
int idd_profiles_index_parse(const char *name, const void *file, size_t len,
                             idd_profiles_index *out, idd_error *err);
/* Read the index of a local index directory (an empty one when absent). */
int idd_profiles_index_load(const char *index_dir, idd_profiles_index *out, idd_error *err);

/* Store p under the index lock's protection (the caller holds it): the
 * profile file, then the index naming it, each written atomically.
 * Duplicates and zero digests are dropped, the first occurrence kept. */
int idd_boot_profile_store(const char *index_dir, const idd_boot_profile *p, idd_error *err);
/* Remove image id's profile; IDD_ENOENT when it has none. */
int idd_boot_profile_remove(const char *index_dir, const char *id, idd_error *err);

#endif
