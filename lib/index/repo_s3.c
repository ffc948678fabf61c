/* repo_s3.c - repositories in an S3-compatible object store (repo_s3.h):
 * the walk over ListObjectsV2, opening images and their backing files by
 * key, and object identities.  Requests go through the source layer
 * (base/fetch.h), one source per bucket kept in a pool. */
#include "index/repo_s3.h"
#include "base/digest.h"
#include "base/error.h"
#include "formats/archive.h"
#include "base/fetch.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Small preads (qcow2 and VMDK metadata, clusters) are served from windows
 * this large: one request per window instead of one per cluster. */
#define S3_READAHEAD ((size_t)2 << 20)
#define S3_MAX_BACKING_DEPTH 16

/* ---- the pool: one source per bucket ---- */

struct pooled {
	char *bucket; /* "s3://BUCKET" */
	idd_source *src;
	struct pooled *next;
};

static pthread_mutex_t pool_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pooled *pool;

/* The source of path's bucket and the key path names (after "s3://BUCKET/";
 * "" for the bucket itself). */
static int bucket_of(const char *path, idd_source **src, const char **key, idd_error *err)
{
	if (!idd_is_s3(path))
		return idd_fail(err, "%s: not an s3:// location", path);
	const char *b = path + 5;
	const char *slash = strchr(b, '/');
	size_t bl = slash ? (size_t)(slash - b) : strlen(b);
	*key = slash ? slash + 1 : "";
	pthread_mutex_lock(&pool_mu);
	for (struct pooled *p = pool; p; p = p->next) {
		if (strlen(p->bucket) == 5 + bl && !strncmp(p->bucket + 5, b, bl)) {
			*src = p->src;
			pthread_mutex_unlock(&pool_mu);
			return IDD_OK;
		}
	}
	struct pooled *p = idd_calloc(1, sizeof *p, err);
	int rc = p ? IDD_OK : IDD_ERR;
	if (!rc && !(p->bucket = idd_asprintf(err, "s3://%.*s", (int)bl, b)))
		rc = IDD_ERR;
	if (!rc) {
		idd_fetch_opts fo = {.connections = 4};
		rc = idd_source_open(p->bucket, &fo, &p->src, err);
	}
	if (rc) {
		if (p)
			free(p->bucket);
		free(p);
		pthread_mutex_unlock(&pool_mu);
		return rc;
	}
	p->next = pool;
	pool = p;
	*src = p->src;
	pthread_mutex_unlock(&pool_mu);
	return IDD_OK;
}

void idd_repo_s3_release_all(void)
{
	pthread_mutex_lock(&pool_mu);
	while (pool) {
		struct pooled *p = pool;
		pool = p->next;
		idd_source_close(p->src);
		free(p->bucket);
		free(p);
	}
	pthread_mutex_unlock(&pool_mu);
}

/* The key prefix of a repository ("" or "a/b/" with its slash). */
static int repo_prefix(const char *repo, char **prefix, idd_error *err)
{
	char *bucket, *p;
	if (idd_s3_parse_location(repo, &bucket, &p, err))
		return IDD_ERR;
	free(bucket);
	*prefix = p[0] ? idd_asprintf(err, "%s/", p) : idd_strdup("", err);
	free(p);
	return *prefix ? IDD_OK : IDD_ERR;
}

/* ---- identities ---- */

static uint64_t etag_ino(const char *etag)
{
	unsigned char h[32];
	if (idd_sha256(etag, strlen(etag), h, NULL))
		return 0;
	return idd_le64(h);
}

static void object_ident(idd_file_ident *out, const char *etag, uint64_t size, int64_t mtime)
{
	out->dev = IDD_S3_DEV;
	out->ino = etag_ino(etag);
	out->size = size;
	out->mtime_ns = 0;
	out->ctime_ns = mtime > 0 ? mtime * 1000000000 : 0;
}

static int s3_file_ident(const char *path, idd_file_ident *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	idd_source *src;
	const char *key;
	idd_remote_stat rs;
	int rc = bucket_of(path, &src, &key, err);
	if (!rc)
		rc = idd_source_stat(src, key, &rs, err);
	if (!rc)
		object_ident(out, rs.etag, rs.size, rs.mtime);
	return rc;
}

/* Same ETag and size (HEAD and listings spell Last-Modified differently). */
static bool s3_ident_same(const idd_file_ident *a, const idd_file_ident *b)
{
	return a->ino == b->ino && a->size == b->size;
}

static bool s3_owns_ident(const idd_file_ident *id) { return id->dev == IDD_S3_DEV; }

static int s3_file_open(const char *path, uint64_t size_hint, idd_file **out, idd_error *err)
{
	idd_source *src;
	const char *key;
	int rc = bucket_of(path, &src, &key, err);
	if (!rc)
		rc = idd_source_open_file_readahead(src, key, size_hint, S3_READAHEAD, out, err);
	return rc;
}

/* ---- the walk ---- */

static int cmp_entry_id(const void *a, const void *b)
{
	return strcmp(((const idd_repo_entry *)a)->id, ((const idd_repo_entry *)b)->id);
}

/* Is any component of rel the index directory's name? */
static bool in_index_dir(const char *rel)
{
	size_t n = strlen(IDD_INDEX_SUBDIR);
	for (const char *p = rel; p; p = strchr(p, '/') ? strchr(p, '/') + 1 : NULL)
		if (!strncmp(p, IDD_INDEX_SUBDIR, n) && p[n] == '/')
			return true;
	return false;
}

/* The objects under repo that look like images (the walk's rules: the
 * index directory's name anywhere and "directory" placeholders skipped),
 * sorted by id; keys that are not safe relative paths are skipped with a
 * warning.  The index of an S3 repository is local: index_dir is not in it. */
static int s3_walk(const char *repo, const char *index_dir, const char *const *includes,
                   size_t n_includes, idd_repo_list *out, idd_warn_fn warn, void *ctx,
                   idd_error *err)
{
	(void)index_dir;
	memset(out, 0, sizeof *out);
	idd_source *src;
	const char *key;
	char *prefix = NULL;
	if (repo_prefix(repo, &prefix, err) || bucket_of(repo, &src, &key, err)) {
		free(prefix);
		return IDD_ERR;
	}
	idd_s3_object_list l;
	int rc = idd_source_list(src, prefix, &l, err);
	size_t pl = strlen(prefix);
	const char *bucket_end = strchr(repo + 5, '/');
	int bl = bucket_end ? (int)(bucket_end - (repo + 5)) : (int)strlen(repo + 5);
	for (size_t i = 0; !rc && i < l.n; i++) {
		const idd_s3_object *o = &l.v[i];
		const char *rel = o->key + pl; /* the listing is under prefix */
		size_t rl = strlen(rel);
		if (!rl || rel[rl - 1] == '/' || in_index_dir(rel))
			continue; /* "directory" placeholders, the index */
		const char *base = strrchr(rel, '/');
		base = base ? base + 1 : rel;
		if (!idd_repo_name_matches(base, includes, n_includes))
			continue;
		if (!idd_relpath_ok(rel)) {
			idd_warnf(warn, ctx, "warning: %s/%s: skipped: the key is not a plain relative path "
			          "(empty, '.' or '..' components, or control characters)", repo, rel);
			continue;
		}
		idd_repo_entry e = {0};
		e.id = idd_strdup(rel, err);
		e.path = idd_asprintf(err, "s3://%.*s/%s", bl, repo + 5, o->key);
		e.container = idd_strdup("", err);
		idd_file_ident id;
		object_ident(&id, o->etag, o->size, o->mtime);
		e.dev = id.dev;
		e.ino = id.ino;
		e.size = id.size;
		e.mtime_ns = id.mtime_ns;
		e.ctime_ns = id.ctime_ns;
		if (!e.id || !e.path || !e.container || idd_repo_list_push(out, &e, err)) {
			idd_repo_entry_free(&e);
			rc = IDD_ERR;
		}
	}
	idd_s3_object_list_free(&l);
	free(prefix);
	if (!rc && out->n)
		qsort(out->v, out->n, sizeof *out->v, cmp_entry_id);
	if (rc)
		idd_repo_list_free(out);
	return rc;
}

/* ---- images and backing files ---- */

struct s3_backing {
	const char *repo;
	char *prefix;      /* the repository's key prefix ("" or ending in '/') */
	char *dir;         /* key directory of the image naming the next backing file ("" or
	                      ending in '/') */
	char *bucket;      /* "s3://BUCKET/" */
	idd_chain *chain;
	int depth;
};

static int set_dir(struct s3_backing *c, const char *key, idd_error *err)
{
	const char *slash = strrchr(key, '/');
	char *d = slash ? idd_asprintf(err, "%.*s", (int)(slash - key + 1), key) : idd_strdup("", err);
	if (!d)
		return IDD_ERR;
	free(c->dir);
	c->dir = d;
	return IDD_OK;
}

/* dir + name with "." and ".." resolved; NULL when it climbs above the
 * bucket's root or is not a plain name. */
static char *resolve_key(const char *dir, const char *name, idd_error *err)
{
	char *joined = idd_asprintf(err, "%s%s", dir, name);
	if (!joined)
		return NULL;
	idd_buf b = {0};
	size_t *starts = idd_calloc(strlen(joined) + 1, sizeof *starts, err);
	size_t depth = 0;
	bool ok = starts != NULL;
	for (char *p = joined; ok && *p;) {
		char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.')) {
			/* "a//b", "./": nothing */
		} else if (n == 2 && p[0] == '.' && p[1] == '.') {
			if (!depth) {
				ok = false;
				break;
			}
			b.len = starts[--depth];
		} else {
			starts[depth++] = b.len;
			if (b.len)
				idd_buf_put_u8(&b, '/');
			idd_buf_put(&b, p, n);
		}
		p += n + (e ? 1 : 0);
	}
	idd_buf_put_u8(&b, 0);
	free(starts);
	free(joined);
	if (!ok || b.failed || !b.data[0]) {
		if (b.failed)
			idd_fail(err, "out of memory");
		idd_buf_free(&b);
		return NULL;
	}
	/* the leading '/' of a kept first component is never written */
	return (char *)b.data;
}

static int s3_backing_open(void *vctx, const char *name, idd_file **out, idd_error *err)
{
	struct s3_backing *c = vctx;
	if (++c->depth > S3_MAX_BACKING_DEPTH)
		return idd_fail(err, "%s: backing chain longer than %d images (a cycle?)", name,
		                S3_MAX_BACKING_DEPTH);
	if (name[0] == '/' || strstr(name, "://"))
		return idd_fail_code(err, IDD_EPERM, "backing file '%s' refused: in an object store it "
		                     "must be a relative name inside the repository", name);
	idd_error e;
	char *key = resolve_key(c->dir, name, &e);
	size_t pl = strlen(c->prefix);
	if (!key || strncmp(key, c->prefix, pl) || !idd_relpath_ok(key + pl)) {
		free(key);
		return idd_fail_code(err, IDD_EPERM, "backing file '%s' refused: it lies outside the "
		                     "repository %s", name, c->repo);
	}
	char *path = idd_asprintf(err, "%s%s", c->bucket, key);
	idd_file_ident id;
	int rc = path ? s3_file_ident(path, &id, err) : IDD_ERR;
	if (!rc)
		rc = s3_file_open(path, id.size, out, err);
	if (!rc && c->chain) { /* what the image was read with, for the catalog */
		idd_file_ident *v = idd_realloc_array(c->chain->v, c->chain->n + 1, sizeof *v, err);
		char *rel = v ? idd_strdup(key + pl, err) : NULL;
		if (v)
			c->chain->v = v;
		if (!rel) {
			idd_file_close(*out);
			rc = IDD_ERR;
		} else {
			id.path = rel;
			c->chain->v[c->chain->n++] = id;
		}
	}
	if (!rc && set_dir(c, key, err)) {
		idd_file_close(*out);
		rc = IDD_ERR;
	}
	free(path);
	free(key);
	return rc;
}

static int s3_open_image_chain(const char *repo, const idd_repo_entry *e, idd_chain *chain,
                               idd_image **out, idd_error *err)
{
	if (e->member) {
		/* by range inside the object, or streamed through it (spooled) */
		idd_file *arch;
		if (s3_file_open(e->path, e->dev == IDD_S3_DEV ? e->size : UINT64_MAX, &arch, err))
			return IDD_ERR;
		idd_archive_member m = {e->member, e->member_off, e->member_len, e->streamed,
		                        e->spooled ? e->spool_fd : -1};
		return idd_archive_open_member_file(arch, e->path, &m, out, err);
	}
	idd_source *src;
	const char *key;
	if (bucket_of(e->path, &src, &key, err))
		return IDD_ERR;
	struct s3_backing bc = {.repo = repo, .chain = chain};
	int rc = repo_prefix(repo, &bc.prefix, err);
	if (!rc && !(bc.bucket = idd_asprintf(err, "%.*s", (int)(key - e->path), e->path)))
		rc = IDD_ERR;
	if (!rc)
		rc = set_dir(&bc, key, err);
	/* entries from the walk know the size; others (verify's) ask */
	idd_file *f = NULL;
	if (!rc)
		rc = s3_file_open(e->path, e->dev == IDD_S3_DEV ? e->size : UINT64_MAX, &f, err);
	if (!rc)
		rc = idd_image_open(f, true, s3_backing_open, &bc, out, err);
	free(bc.prefix);
	free(bc.bucket);
	free(bc.dir);
	return rc;
}

static bool s3_chain_unchanged(const char *repo, const idd_file_ident *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char *p = idd_path_join(repo, v[i].path, NULL);
		idd_file_ident now;
		idd_error e;
		bool same = p && s3_file_ident(p, &now, &e) == IDD_OK && s3_ident_same(&now, &v[i]);
		free(p);
		if (!same)
			return false;
	}
	return true;
}

static int s3_archive_members(const idd_repo_entry *archive, idd_archive_members *out,
                              idd_error *err)
{
	memset(out, 0, sizeof *out);
	idd_file *f;
	if (s3_file_open(archive->path, archive->size, &f, err))
		return IDD_ERR;
	int rc = idd_archive_list_file(f, archive->path, out, err);
	idd_file_close(f);
	return rc;
}

const idd_repo_store idd_repo_store_s3 = {
	.name = "s3",
	.remote = true,
	.claims = idd_is_s3,
	.owns_ident = s3_owns_ident,
	.walk = s3_walk,
	.open_image_chain = s3_open_image_chain,
	.archive_members = s3_archive_members,
	.chain_unchanged = s3_chain_unchanged,
	.file_ident = s3_file_ident,
	.ident_same = s3_ident_same,
	.file_open = s3_file_open,
};
