/* cache_name.c - where an image lives in the node cache: CACHE/images/NAME,
 * NAME a reversible encoding of the image id (one level, no two ids on one
 * name, within NAME_MAX with every suffix the cache appends), and the move
 * of images cached under the names of older versions.  Layout and rules:
 * docs/deploy.md ("The cache directory"). */
#include "node/cache.h"
#include "node/partial.h"
#include "node/remote_index.h"
#include "index/indexfile.h"
#include "base/digest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The longest name: NAME_MAX less the longest suffix the cache appends
 * (".partial", ".present"; deploy's ".part" is shorter). */
#define NAME_LIMIT (255 - 8)
/* A hashed name keeps this much of the escaped id, for people to read. */
#define HASHED_KEEP 160

static bool raw_name(const char *id)
{
	size_t n = strlen(id);
	return n > 4 && (!strcmp(id + n - 4, ".raw") || !strcmp(id + n - 4, ".img"));
}

/* '/' -> %2F, '%' -> %25, and (new names) a leading '.' -> %2E: a name never
 * starts with a dot, which the cache keeps for its temporaries.  At most
 * max bytes, never cutting an escape. */
static void put_escaped(idd_buf *b, const char *id, bool escape_dot, size_t max)
{
	size_t used = 0;
	for (const char *p = id; *p; p++) {
		const char *esc = *p == '/' ? "%2F" : *p == '%' ? "%25"
		                  : (*p == '.' && p == id && escape_dot) ? "%2E" : NULL;
		size_t n = esc ? 3 : 1;
		if (used + n > max)
			break;
		if (esc)
			idd_buf_put(b, esc, 3);
		else
			idd_buf_put_u8(b, (uint8_t)*p);
		used += n;
	}
}

static char *finish(idd_buf *b, const char *dir, idd_error *err)
{
	idd_buf_put_u8(b, 0);
	if (b->failed) {
		idd_buf_free(b);
		idd_fail_code(err, IDD_ENOMEM, "out of memory");
		return NULL;
	}
	char *rel = idd_asprintf(err, "%s/%s", IDD_CACHE_IMAGES, (char *)b->data);
	idd_buf_free(b);
	char *full = rel ? idd_path_join(dir, rel, err) : NULL;
	free(rel);
	return full;
}

char *idd_cache_default_out(const char *dir, const char *id, idd_error *err)
{
	/* ids ending in .raw or .img are their escaped selves; any other id gets
	 * "%.raw" appended, which no escaped id can end with ('%' is always
	 * escaped), so the two kinds never meet */
	idd_buf b = {0};
	put_escaped(&b, id, true, SIZE_MAX);
	const char *suffix = raw_name(id) ? "" : "%.raw";
	if (b.len + strlen(suffix) <= NAME_LIMIT) {
		idd_buf_put(&b, suffix, strlen(suffix));
		return finish(&b, dir, err);
	}
	/* too long for a file name: the start of it, then the full SHA-256 of
	 * the id after "%=", which no other name contains */
	idd_buf_free(&b);
	memset(&b, 0, sizeof b);
	put_escaped(&b, id, true, HASHED_KEEP);
	char hex[2 * IDD_DIGEST_SIZE + 1];
	if (idd_id_hex(id, hex, err)) {
		idd_buf_free(&b);
		return NULL;
	}
	idd_buf_put(&b, "%=", 2);
	idd_buf_put(&b, hex, strlen(hex));
	idd_buf_put(&b, ".raw", 4);
	return finish(&b, dir, err);
}

char *idd_cache_old_out(const char *dir, const char *id, idd_error *err)
{
	idd_buf b = {0};
	put_escaped(&b, id, false, SIZE_MAX);
	if (!raw_name(id))
		idd_buf_put(&b, ".raw", 4);
	return finish(&b, dir, err);
}

/* Move the file at from to to (absent) and its index entry with it, when
 * the index registers it with exactly m's image.  Cache lock held; c is
 * the index as read under it. */
static int move_if_holds(idd_cache *c, const char *from, const char *to, const idd_map *m,
                         bool *moved, idd_error *err)
{
	*moved = false;
	idd_cache_entry *e = NULL;
	for (size_t i = 0; i < c->count && !e; i++)
		if (c->e[i].owned && !strcmp(c->e[i].abs, from))
			e = &c->e[i];
	struct stat st;
	if (!e || !idd_cache_entry_holds(e, m) || lstat(to, &st) == 0 || errno != ENOENT ||
	    lstat(from, &st) || !S_ISREG(st.st_mode))
		return IDD_OK; /* not provably this image's, or nothing to move */
	size_t dl = strlen(c->dir);
	char *rel = idd_strdup(to + dl + 1, err);
	char *abs = idd_strdup(to, err);
	if (!rel || !abs) {
		free(rel);
		free(abs);
		return IDD_ENOMEM;
	}
	int rc = IDD_OK;
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE)) {
		/* no RENAME_NOREPLACE here: the lock keeps deploys and gc out, and
		 * the name was free a moment ago */
		if ((errno != EINVAL && errno != ENOSYS) || rename(from, to))
			rc = idd_fail_errno(err, to, "cannot move the cached image to its name");
	}
	if (!rc) {
		free(e->path);
		free(e->abs);
		e->path = rel;
		e->abs = abs;
		rel = abs = NULL;
		*moved = true;
		char *dir = idd_path_join(c->dir, IDD_CACHE_IMAGES, err);
		rc = dir ? idd_fsync_dir(dir, err) : IDD_ENOMEM;
		free(dir);
		if (!rc)
			rc = idd_cache_save_index(c, err);
	}
	free(rel);
	free(abs);
	return rc;
}

int idd_cache_migrate_name(const char *cache_dir, idd_remote_index *ri, const char *id,
                           const idd_map *m, idd_warn_fn warn, void *ctx, idd_error *err)
{
	/* cheap checks first: most runs have nothing to move */
	char *dir = realpath(cache_dir, NULL);
	if (!dir)
		return IDD_OK; /* no cache yet */
	char *now = idd_cache_default_out(dir, id, err);
	char *old = now ? idd_cache_old_out(dir, id, err) : NULL;
	/* the id whose old name is this id's name now: "X" was cached as
	 * "X.raw", the name of the id "X.raw" */
	char *other_id = NULL, *other_now = NULL;
	size_t n = strlen(id);
	if (old && n > 4 && !strcmp(id + n - 4, ".raw")) {
		other_id = idd_strdup(id, err);
		if (other_id) {
			other_id[n - 4] = 0;
			if (raw_name(other_id)) {
				free(other_id);
				other_id = NULL;
			}
		}
		other_now = other_id ? idd_cache_default_out(dir, other_id, err) : NULL;
	}
	struct stat st;
	bool mine = old && strcmp(now, old) && lstat(now, &st) && lstat(old, &st) == 0;
	bool theirs = other_now && lstat(now, &st) == 0 && lstat(other_now, &st);
	int rc = !now || !old ? IDD_ENOMEM : IDD_OK;
	idd_map *om = NULL;
	if (!rc && theirs) {
		/* only when the catalog has that id and its map says the file is its */
		const idd_image_info *oi;
		idd_error e2;
		theirs = idd_remote_index_image(ri, other_id, &oi, &e2) == IDD_OK &&
		         idd_remote_index_map(ri, oi, &om, &e2) == IDD_OK;
	}
	if (!rc && (mine || theirs)) {
		idd_cache *c;
		int lockfd = -1;
		rc = idd_cache_open_locked(dir, warn, ctx, &c, &lockfd, err);
		if (!rc) {
			bool moved = false;
			if (mine)
				rc = move_if_holds(c, old, now, m, &moved, err);
			if (!rc && theirs)
				rc = move_if_holds(c, now, other_now, om, &moved, err);
			idd_unlock(lockfd);
			idd_cache_close(c);
		}
	}
	idd_map_free(om);
	free(dir);
	free(now);
	free(old);
	free(other_id);
	free(other_now);
	return rc;
}
