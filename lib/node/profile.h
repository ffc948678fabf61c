/* profile.h - boot profiles on a node: the order in which a guest first
 * read the blocks of its images (serve --record writes one, --prefetch
 * replays it), published into a repository's index by content
 * (index/profiles.h), and chosen for an image when serve opens it.
 * A record file is text: '#' comment lines, then one line per block first
 * read, "IMAGE<TAB>BLOCK<TAB>DIGEST" (the hex SHA-256 of its content; a
 * line without it, as older versions wrote, names the block only). */
#ifndef IDD_NODE_PROFILE_H
#define IDD_NODE_PROFILE_H

#include "base/util.h"
#include "base/error.h"
#include "index/map.h"
#include "index/profiles.h"
#include "node/remote_index.h"

typedef struct idd_profile {
	char **ids;          /* image id of each entry */
	uint64_t *blocks;    /* block number of each entry, in profile order */
	idd_digest *digests; /* its content (all-zero: not recorded) */
	size_t n;
} idd_profile;

/* Read a profile; a malformed line is IDD_ECORRUPT naming the line. */
int idd_profile_load(const char *path, idd_profile *p, idd_error *err);
void idd_profile_free(idd_profile *p);

typedef struct idd_profile_writer {
	idd_buf b;
} idd_profile_writer;
int idd_profile_writer_begin(idd_profile_writer *w, idd_error *err);
/* Add an image's blocks in first-read order, with their digests from m
 * (may be NULL); ids with a tab or newline are skipped: they cannot be
 * written unambiguously. */
int idd_profile_writer_add(idd_profile_writer *w, const char *id, const idd_map *m,
                           const uint64_t *blocks, size_t n, idd_error *err);
/* Write the profile atomically to path. */
int idd_profile_writer_commit(idd_profile_writer *w, const char *path, idd_error *err);
void idd_profile_writer_free(idd_profile_writer *w);

/* The content image id's entries of pf read, in order: the recorded
 * digests, else those m (the image's map, may be NULL) gives the blocks.
 * Zero blocks and blocks past the map are left out.  *out is malloc'd. */
int idd_profile_digests(const idd_profile *pf, const char *id, const idd_map *m,
                        idd_digest **out, size_t *n, idd_error *err);

/* Which blocks of image id (map m) to prefetch, in order, from the
 * profiles the index ri publishes: the image's own profile, else the one
 * holding most of the image's blocks (most similar by content), each
 * restricted to the blocks the image holds.  *blocks (malloc'd, *n of them,
 * the first block holding each digest) is empty and *from NULL when no
 * profile applies; *from names the image whose profile was taken.
 * At most max_candidates borrowed profiles are fetched. */
int idd_profile_choose(idd_remote_index *ri, const char *id, const idd_map *m,
                       size_t max_candidates, uint64_t **blocks, size_t *n, char **from,
                       idd_error *err);

#endif
