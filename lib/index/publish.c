/* publish.c - copy a local index into an object store, where nodes read it
 * (SOURCE/.imgdedup).  Under the index lock: every file but the catalog is
 * uploaded first (skipped when the object already holds the same bytes:
 * same size and an ETag equal to the file's MD5), the catalog last, and only
 * then are objects the index no longer has deleted.  A node that reads the
 * new catalog therefore finds every file it names; one that read the old
 * catalog just before may find a newer block map, which deploy and serve
 * refuse cleanly ("older than the catalog"): run again.
 *
 * Before anything is sent, the per-image entries (entries.h) are brought
 * in line with the catalog, so that an index written before they existed
 * is published with them; entries/index goes up after every entry.
 *
 * A re-run over a large unchanged index should not read it all again:
 * block lists are named by their own checksum, so one the store holds under
 * its name with its size is that file; the MD5 of every other file is kept
 * in PUBLISH_STATE beside the index, keyed by the file's identity, and only
 * recomputed when that changes. */
#include "base/util.h"
#include "base/error.h"
#include "index/catalog.h"
#include "index/entries.h"
#include "index/indexfile.h"
#include "index/indexdir.h"
#include "index/pack.h"
#include "base/fetch.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* MD5s of the files last published (not itself published). */
#define PUBLISH_STATE "publish-state"
/* The largest object one PUT may create (S3's limit). */
#define MAX_SINGLE_PUT ((uint64_t)5 << 30)
#define UPLOAD_THREADS 4

struct lfile {
	char *rel;       /* relative to the index directory */
	char *path;
	uint64_t size, ino;
	int64_t mtime_ns;
	char md5[33];    /* "" until known */
	bool upload;
};

struct files {
	struct lfile *v;
	size_t n;
};

static void files_free(struct files *f)
{
	for (size_t i = 0; i < f->n; i++) {
		free(f->v[i].rel);
		free(f->v[i].path);
	}
	free(f->v);
	memset(f, 0, sizeof *f);
}

/* The pack's copies of block lists: blocks/ has them, no node reads them. */
static bool pack_list_copy(const char *rel)
{
	size_t n = strlen(IDD_PACK_LISTS_DIR);
	return !strncmp(rel, IDD_PACK_LISTS_DIR, n) && rel[n] == '/';
}

static int collect_file(void *ctx, const idd_dir_entry *e, idd_error *err)
{
	struct files *out = ctx;
	if (!S_ISREG(e->st.st_mode) || !strcmp(e->rel, "lock") || !strcmp(e->rel, PUBLISH_STATE) ||
	    pack_list_copy(e->rel))
		return IDD_OK;
	struct lfile *v = idd_realloc_array(out->v, out->n + 1, sizeof *v, err);
	if (!v)
		return IDD_ERR;
	out->v = v;
	struct lfile f = {.rel = idd_strdup(e->rel, err), .path = idd_strdup(e->path, err),
	                  .size = (uint64_t)e->st.st_size, .ino = (uint64_t)e->st.st_ino,
	                  .mtime_ns = idd_ts_ns(e->st.st_mtim)};
	if (!f.rel || !f.path) {
		free(f.rel);
		free(f.path);
		return IDD_ERR;
	}
	out->v[out->n++] = f;
	return IDD_OK;
}

/* Regular files under dir, the lock, temporaries of running or killed runs
 * and dotfiles excluded. */
static int collect(const char *dir, struct files *out, idd_error *err)
{
	return idd_dir_for_each(dir, IDD_DIR_RECURSE | IDD_DIR_STAT, collect_file, NULL, out, err);
}

static int md5_file(int fd, const char *path, uint64_t size, char hex[33], idd_error *err)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	unsigned char *buf = idd_malloc(1 << 20, err);
	int rc = (!c || !buf || EVP_DigestInit_ex(c, EVP_md5(), NULL) != 1)
	         ? idd_fail(err, "%s: cannot compute MD5", path) : IDD_OK;
	for (uint64_t off = 0; !rc && off < size;) {
		size_t n = (size_t)IDD_MIN(size - off, (uint64_t)1 << 20);
		if (idd_pread_all(fd, buf, n, off))
			rc = idd_fail_errno(err, path, "read");
		else if (EVP_DigestUpdate(c, buf, n) != 1)
			rc = idd_fail(err, "%s: cannot compute MD5", path);
		off += n;
	}
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int ml = 0;
	if (!rc && (EVP_DigestFinal_ex(c, md, &ml) != 1 || ml != 16))
		rc = idd_fail(err, "%s: cannot compute MD5", path);
	for (unsigned i = 0; !rc && i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	EVP_MD_CTX_free(c);
	free(buf);
	return rc;
}

struct uploader {
	idd_source *dst;
	const char *dest_dir;  /* key prefix under the destination: ".imgdedup/" */
	struct files *files;
	size_t next;
	pthread_mutex_t mu;
	int rc;
	idd_error err;
	uint64_t done_bytes, total_bytes, uploaded, bytes_uploaded;
	const idd_publish_opts *o;
};

static int upload_one(struct uploader *u, struct lfile *f, idd_error *err)
{
	if (f->size > MAX_SINGLE_PUT)
		return idd_fail(err, "%s: %llu bytes: larger than one upload may be (5 GiB)", f->path,
		                (unsigned long long)f->size);
	int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return idd_fail_errno(err, f->path, "cannot open");
	struct stat st;
	int rc = fstat(fd, &st) ? idd_fail_errno(err, f->path, "stat") : IDD_OK;
	/* under the index lock nothing should change it; if it did, the upload
	 * would not be the file listed */
	if (!rc && (uint64_t)st.st_size != f->size)
		rc = idd_fail(err, "%s: changed while publishing", f->path);
	char *key = rc ? NULL : idd_asprintf(err, "%s%s", u->dest_dir, f->rel);
	if (!rc && !key)
		rc = IDD_ERR;
	if (!rc)
		rc = idd_source_put_fd(u->dst, key, fd, f->size, err);
	free(key);
	close(fd);
	return rc;
}

static void *upload_main(void *arg)
{
	struct uploader *u = arg;
	for (;;) {
		pthread_mutex_lock(&u->mu);
		struct lfile *f = NULL;
		while (!u->rc && u->next < u->files->n && !f) {
			struct lfile *c = &u->files->v[u->next++];
			if (c->upload)
				f = c;
		}
		pthread_mutex_unlock(&u->mu);
		if (!f)
			return NULL;
		idd_error e;
		int rc = upload_one(u, f, &e);
		pthread_mutex_lock(&u->mu);
		if (rc && !u->rc) {
			u->rc = rc;
			u->err = e;
		}
		if (!rc) {
			u->uploaded++;
			u->bytes_uploaded += f->size;
			u->done_bytes += f->size;
			if (u->o->progress)
				u->o->progress(u->o->ctx, u->done_bytes, u->total_bytes);
		}
		pthread_mutex_unlock(&u->mu);
	}
}

static int cmp_rel(const void *a, const void *b)
{
	return strcmp(((const struct lfile *)a)->rel, ((const struct lfile *)b)->rel);
}

static int cmp_key(const void *a, const void *b)
{
	return strcmp(((const idd_s3_object *)a)->key, ((const idd_s3_object *)b)->key);
}

/* The remote object named key (the list sorted by key), or NULL. */
static const idd_s3_object *remote_find(const idd_s3_object_list *l, const char *key)
{
	idd_s3_object k = {.key = (char *)key};
	return l->n ? bsearch(&k, l->v, l->n, sizeof *l->v, cmp_key) : NULL;
}

static struct lfile *local_find(const struct files *f, const char *rel)
{
	struct lfile k = {.rel = (char *)rel};
	return f->n ? bsearch(&k, f->v, f->n, sizeof *f->v, cmp_rel) : NULL;
}

static bool local_has(const struct files *f, const char *rel)
{
	return local_find(f, rel) != NULL;
}

/* Take the MD5s of files whose identity is what the state file recorded.
 * Lines: MD5 SIZE INO MTIME_NS REL.  A damaged or missing state only costs
 * reading the files again. */
static void state_load(const char *index_dir, struct files *f)
{
	char *path = idd_path_join(index_dir, PUBLISH_STATE, NULL);
	void *data = NULL;
	size_t len = 0;
	if (!path || idd_read_file(path, (size_t)1 << 30, &data, &len, NULL)) {
		free(path);
		return;
	}
	char *text = data, *end = text + len;
	for (char *line = text; line < end;) {
		char *nl = memchr(line, '\n', (size_t)(end - line));
		if (!nl)
			break;
		*nl = 0;
		char md5[33];
		unsigned long long size, ino;
		long long mtime;
		int off = 0;
		if (sscanf(line, "%32s %llu %llu %lld %n", md5, &size, &ino, &mtime, &off) == 4 && off > 0 &&
		    strlen(md5) == 32 && strspn(md5, "0123456789abcdef") == 32) {
			struct lfile *l = local_find(f, line + off);
			if (l && l->size == size && l->ino == ino && l->mtime_ns == (int64_t)mtime)
				memcpy(l->md5, md5, 33);
		}
		line = nl + 1;
	}
	free(data);
	free(path);
}

static int state_save(const char *index_dir, const struct files *f, idd_error *err)
{
	idd_buf b = {0};
	for (size_t i = 0; i < f->n; i++) {
		const struct lfile *l = &f->v[i];
		if (!l->md5[0] || strchr(l->rel, '\n'))
			continue;
		char head[128];
		int n = snprintf(head, sizeof head, "%s %llu %llu %lld ", l->md5, (unsigned long long)l->size,
		                 (unsigned long long)l->ino, (long long)l->mtime_ns);
		idd_buf_put(&b, head, (size_t)n);
		idd_buf_put(&b, l->rel, strlen(l->rel));
		idd_buf_put_u8(&b, '\n');
	}
	char *path = idd_path_join(index_dir, PUBLISH_STATE, err);
	int rc = b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory")
	         : !path   ? IDD_ERR
	                   : idd_write_file_atomic(path, b.data ? (void *)b.data : "", b.len, err);
	free(path);
	idd_buf_free(&b);
	return rc;
}

int idd_publish(const idd_publish_opts *o, idd_publish_stats *st, idd_error *err)
{
	memset(st, 0, sizeof *st);
	const char *dest = o->to ? o->to : o->repo;
	if (!dest || !idd_is_s3(dest))
		return idd_fail(err, "%s: publish writes into an object store: the destination must be "
		                "s3://BUCKET/PREFIX (give --to when REPO is a directory)", dest ? dest : "?");
	char *index_dir = NULL;
	if (idd_index_path(o->repo, o->index_dir, &index_dir, err))
		return IDD_ERR;
	int lock_fd = -1;
	idd_source *dst = NULL;
	struct files files = {0};
	idd_s3_object_list remote = {0};
	idd_catalog *cat = NULL;
	int rc = idd_lock(index_dir, o->no_wait, &lock_fd, err);
	if (rc)
		goto out;
	/* only a readable index is published */
	rc = idd_catalog_load(index_dir, &cat, err);
	if (rc == IDD_ENOENT)
		idd_error_prefix(err, "nothing to publish (run 'imgdedup scan' and 'imgdedup map' first)");
	if (rc)
		goto out;
	/* the per-image entries nodes read instead of the catalog: an index
	 * written before they existed gets them here */
	idd_entries_sync esy;
	if ((rc = idd_entries_prepare(index_dir, cat, cat, &esy, err)) ||
	    (rc = idd_entries_commit(index_dir, cat, cat, &esy, err)))
		goto out;
	idd_fetch_opts fo = {.connections = UPLOAD_THREADS, .warn = o->warn, .ctx = o->ctx};
	if ((rc = idd_source_open(dest, &fo, &dst, err)))
		goto out;
	if ((rc = collect(index_dir, &files, err)))
		goto out;
	if (files.n)
		qsort(files.v, files.n, sizeof *files.v, cmp_rel);
	const char *dest_dir = IDD_INDEX_SUBDIR "/";
	if ((rc = idd_source_list(dst, dest_dir, &remote, err)))
		goto out;
	if (remote.n)
		qsort(remote.v, remote.n, sizeof *remote.v, cmp_key);
	/* what the store already holds is not sent again */
	struct lfile *catalog = NULL, *entries_index = NULL;
	uint64_t total = 0;
	state_load(index_dir, &files);
	for (size_t i = 0; !rc && i < files.n; i++) {
		struct lfile *f = &files.v[i];
		char *key = idd_asprintf(err, "%s%s", dest_dir, f->rel);
		if (!key) {
			rc = IDD_ERR;
			break;
		}
		const idd_s3_object *r = remote_find(&remote, key);
		free(key);
		/* a block list is named by its own checksum: same name, same bytes */
		bool named = !strncmp(f->rel, IDD_BLOCKS_DIR "/", strlen(IDD_BLOCKS_DIR) + 1);
		if (r && named && r->size == f->size) {
			f->upload = false;
		} else {
			if (!f->md5[0]) {
				int fd = open(f->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
				if (fd < 0) {
					rc = idd_fail_errno(err, f->path, "cannot open");
					break;
				}
				rc = md5_file(fd, f->path, f->size, f->md5, err);
				close(fd);
				if (rc)
					break;
			}
			f->upload = !r || r->size != f->size || strcmp(r->etag, f->md5);
		}
		st->files++;
		if (!strcmp(f->rel, IDD_CATALOG_FILE)) {
			catalog = f;
			continue;
		}
		if (!strcmp(f->rel, IDD_ENTRIES_INDEX_FILE)) {
			entries_index = f;
			continue;
		}
		if (f->upload)
			total += f->size;
		else
			st->unchanged++;
	}
	if (rc)
		goto out;
	if (!catalog) {
		rc = idd_fail(err, "%s: no catalog", index_dir);
		goto out;
	}
	/* everything else first; then entries/index (a node that finds it
	 * takes a missing entry for an image that is not there: every entry
	 * is in place by then), the catalog last */
	bool catalog_upload = catalog->upload;
	catalog->upload = false;
	bool eindex_upload = entries_index && entries_index->upload;
	if (entries_index)
		entries_index->upload = false;
	struct uploader u = {.dst = dst, .dest_dir = dest_dir, .files = &files, .o = o,
	                     .total_bytes = total + (catalog_upload ? catalog->size : 0) +
	                                    (eindex_upload ? entries_index->size : 0)};
	pthread_mutex_init(&u.mu, NULL);
	pthread_t tids[UPLOAD_THREADS];
	int started = 0;
	for (int i = 0; i < UPLOAD_THREADS; i++)
		if (pthread_create(&tids[i], NULL, upload_main, &u) == 0)
			started++;
	if (!started)
		upload_main(&u);
	for (int i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	pthread_mutex_destroy(&u.mu);
	st->uploaded = u.uploaded;
	st->bytes_uploaded = u.bytes_uploaded;
	if (u.rc) {
		*err = u.err;
		rc = u.rc;
		goto out;
	}
	if (eindex_upload) {
		entries_index->upload = true;
		if ((rc = upload_one(&u, entries_index, err)))
			goto out;
		st->uploaded++;
		st->bytes_uploaded += entries_index->size;
	} else if (entries_index) {
		st->unchanged++;
	}
	if (catalog_upload) {
		catalog->upload = true;
		if ((rc = upload_one(&u, catalog, err)))
			goto out;
		st->uploaded++;
		st->bytes_uploaded += catalog->size;
	} else {
		st->unchanged++;
	}
	if (o->progress)
		o->progress(o->ctx, u.total_bytes, u.total_bytes);
	/* what was published, for the next run (a failure only costs reading) */
	idd_error se;
	if (state_save(index_dir, &files, &se))
		idd_warnf(o->warn, o->ctx, "warning: %s", se.msg);
	/* what the index no longer has goes, now that no catalog names it */
	size_t dl = strlen(dest_dir);
	for (size_t k = 0; !o->keep_stale && k < remote.n; k++) {
		const char *key = remote.v[k].key;
		if (strncmp(key, dest_dir, dl) || local_has(&files, key + dl))
			continue;
		idd_error e;
		if (idd_source_delete(dst, key, &e)) {
			idd_warnf(o->warn, o->ctx, "warning: %s (left in place)", e.msg);
			continue;
		}
		st->deleted++;
	}
out:
	idd_s3_object_list_free(&remote);
	files_free(&files);
	idd_source_close(dst);
	idd_catalog_free(cat);
	idd_unlock(lock_fd);
	free(index_dir);
	return rc;
}
