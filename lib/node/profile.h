/* profile.h - boot profiles: the order in which a guest first read the
 * blocks of its images (serve --record writes one, --prefetch replays it).
 * A text file: a '#' header line, then "IMAGE<TAB>BLOCK" lines. */
#ifndef IDD_NODE_PROFILE_H
#define IDD_NODE_PROFILE_H

#include "base/util.h"
#include "base/error.h"

typedef struct idd_profile {
	char **ids;       /* image id of each entry */
	uint64_t *blocks; /* block number of each entry, in profile order */
	size_t n;
} idd_profile;

/* Read a profile; a malformed line is IDD_ECORRUPT naming the line. */
int idd_profile_load(const char *path, idd_profile *p, idd_error *err);
void idd_profile_free(idd_profile *p);

typedef struct idd_profile_writer {
	idd_buf b;
} idd_profile_writer;
int idd_profile_writer_begin(idd_profile_writer *w, idd_error *err);
/* Add an image's blocks in first-read order (ids with a tab or newline
 * are skipped: they cannot be written unambiguously). */
int idd_profile_writer_add(idd_profile_writer *w, const char *id, const uint64_t *blocks, size_t n,
                           idd_error *err);
/* Write the profile atomically to path. */
int idd_profile_writer_commit(idd_profile_writer *w, const char *path, idd_error *err);
void idd_profile_writer_free(idd_profile_writer *w);

#endif
