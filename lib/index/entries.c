/* entries.c - per-image catalog entries: the files, and keeping them in
 * line with the catalog (entries.h, docs/formats.md "Per-image entries"). */
#include "index/entries.h"
#include "base/digest.h"
#include "base/error.h"
#include "index/catalog.h"
#include "index/indexfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char ENTRY_MAGIC[8] = {'I', 'D', 'D', '-', 'E', 'N', 'T', 0};
static const char ENTRIES_INDEX_MAGIC[8] = {'I', 'D', 'D', '-', 'E', 'N', 'I', 0};
#define ENTRY_VERSION 1
#define ENTRIES_INDEX_VERSION 1
#define HEX_LEN (2 * IDD_DIGEST_SIZE)
/* Entries written per sync (an upgrade writes one per image: one fsync
 * each made the first scan of 5,000 tiny images 3.5x slower) */
#define ENTRY_BATCH 4096

char *idd_entry_relpath(const char *id, idd_error *err)
{
	char hex[HEX_LEN + 1];
	return idd_id_hex(id, hex, err) ? NULL : idd_asprintf(err, "%s/%s", IDD_ENTRIES_DIR, hex);
}

void idd_entry_payload(uint32_t block_size, const idd_image_info *im, idd_buf *b)
{
	idd_buf_put_u32(b, block_size);
	idd_buf_put_u32(b, 0); /* flags */
	idd_catalog_put_record(b, im);
}

static bool block_size_ok(uint32_t bs)
{
	return idd_is_power_of_two(bs) && bs >= IDD_MIN_BLOCK_SIZE && bs <= IDD_MAX_BLOCK_SIZE;
}

int idd_entry_parse_file(const char *name, const void *file, size_t len, const char *id,
                         uint32_t *block_size, idd_image_info *im, idd_error *err)
{
	memset(im, 0, sizeof *im);
	void *payload;
	size_t plen;
	int rc = idd_indexfile_parse_limit(name, file, len, ENTRY_MAGIC, ENTRY_VERSION,
	                                   IDD_ENTRY_MAX_FILE, &payload, &plen, NULL, err);
	if (rc)
		return rc;
	idd_reader r;
	idd_reader_init(&r, payload, plen);
	uint32_t bs = 0, flags = 0;
	const char *why = NULL;
	if (!idd_get_u32(&r, &bs) || !idd_get_u32(&r, &flags))
		why = "short header";
	else if (!block_size_ok(bs))
		why = "block size";
	else if (flags)
		why = "unknown flags";
	else if (!idd_catalog_get_record(&r, bs, im))
		why = "inconsistent record";
	else if (idd_reader_left(&r))
		why = "trailing bytes";
	free(payload);
	if (why) {
		idd_image_info_free(im);
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt catalog entry (%s)", name, why);
	}
	/* content-addressed by the id: a file copied under another image's name
	 * is not that image's entry */
	if (strcmp(im->id, id)) {
		char *got = idd_str_escape(im->id, NULL);
		idd_image_info_free(im);
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: is the catalog entry of another image ('%s'), "
		                   "not of %s", name, got ? got : "?", id);
		free(got);
		return rc;
	}
	*block_size = bs;
	return IDD_OK;
}

int idd_entries_index_parse_file(const char *name, const void *file, size_t len,
                                 idd_entries_index *out, idd_error *err)
{
	void *payload;
	size_t plen;
	int rc = idd_indexfile_parse_limit(name, file, len, ENTRIES_INDEX_MAGIC, ENTRIES_INDEX_VERSION,
	                                   IDD_ENTRIES_INDEX_MAX_FILE, &payload, &plen, NULL, err);
	if (rc)
		return rc;
	idd_reader r;
	idd_reader_init(&r, payload, plen);
	idd_entries_index x;
	bool ok = idd_get_u32(&r, &x.block_size) && idd_get_u32(&r, &x.flags) &&
	          idd_get_u64(&r, &x.generation) && idd_get_u64(&r, &x.count) &&
	          !idd_reader_left(&r) && block_size_ok(x.block_size) && !(x.flags & ~IDD_ENTRIES_DIRTY);
	free(payload);
	if (!ok)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt entries index", name);
	*out = x;
	return IDD_OK;
}

static int index_save(const char *index_dir, const idd_entries_index *x, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u32(&b, x->block_size);
	idd_buf_put_u32(&b, x->flags);
	idd_buf_put_u64(&b, x->generation);
	idd_buf_put_u64(&b, x->count);
	char *path = idd_path_join(index_dir, IDD_ENTRIES_INDEX_FILE, err);
	int rc = b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory")
	         : !path  ? IDD_ENOMEM
	                  : idd_indexfile_write(path, ENTRIES_INDEX_MAGIC, ENTRIES_INDEX_VERSION, b.data,
	                                        b.len, false, err);
	free(path);
	idd_buf_free(&b);
	return rc;
}

/* entries/index of the local index; false when absent or unreadable. */
static bool index_load(const char *index_dir, idd_entries_index *x)
{
	char *path = idd_path_join(index_dir, IDD_ENTRIES_INDEX_FILE, NULL);
	void *file = NULL;
	size_t len = 0;
	idd_error e;
	bool ok = path && idd_read_file(path, IDD_ENTRIES_INDEX_MAX_FILE, &file, &len, &e) == IDD_OK &&
	          idd_entries_index_parse_file(path, file, len, x, &e) == IDD_OK;
	free(file);
	free(path);
	return ok;
}

/* Do the entries on disk hold old's records exactly (as far as the last
 * run that wrote them knows)? */
static bool agrees_with(const idd_entries_index *x, bool have, const idd_catalog *old)
{
	return have && old && !(x->flags & IDD_ENTRIES_DIRTY) && x->generation == old->generation &&
	       x->count == old->count && x->block_size == old->block_size;
}

/* Is the file at path (name in the directory dfd) the entry with this
 * payload?  quick: compare the size only (the entries agree with a catalog
 * holding this very record), by one lookup relative to the directory. */
static bool entry_current(int dfd, const char *name, const char *path, const idd_buf *want,
                          bool quick)
{
	size_t flen = IDD_IF_HEADER + want->len + IDD_IF_TRAILER;
	if (quick) {
		struct stat st;
		return dfd >= 0 && !fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) && S_ISREG(st.st_mode) &&
		       (uint64_t)st.st_size == flen;
	}
	void *file = NULL, *payload = NULL;
	size_t len = 0, plen = 0;
	idd_error e;
	bool same = idd_read_file(path, IDD_ENTRY_MAX_FILE, &file, &len, &e) == IDD_OK && len == flen &&
	            idd_indexfile_parse_limit(path, file, len, ENTRY_MAGIC, ENTRY_VERSION,
	                                      IDD_ENTRY_MAX_FILE, &payload, &plen, NULL, &e) == IDD_OK &&
	            plen == want->len && !memcmp(payload, want->data, plen);
	free(payload);
	free(file);
	return same;
}

static int entry_path(const char *index_dir, const char *id, char **out, idd_error *err)
{
	char *rel = idd_entry_relpath(id, err);
	*out = rel ? idd_path_join(index_dir, rel, err) : NULL;
	free(rel);
	return *out ? IDD_OK : IDD_ENOMEM;
}

int idd_entries_prepare(const char *index_dir, const idd_catalog *old, const idd_catalog *cat,
                        idd_entries_sync *sy, idd_error *err)
{
	memset(sy, 0, sizeof *sy);
	idd_entries_index x;
	bool have = index_load(index_dir, &x);
	bool incremental = agrees_with(&x, have, old) && old->block_size == cat->block_size;
	sy->full = !incremental;
	char *dir = idd_path_join(index_dir, IDD_ENTRIES_DIR, err);
	int rc = dir ? idd_mkdir_p(dir, err) : IDD_ENOMEM;
	free(dir);
	size_t o = 0;
	idd_buf want = {0}, was = {0};
	idd_indexfile_batch batch = {0};
	char *edir = rc ? NULL : idd_path_join(index_dir, IDD_ENTRIES_DIR, err);
	if (!rc && !edir)
		rc = IDD_ENOMEM;
	/* -1 (not openable): no entry is taken as current, each is written */
	int dfd = rc ? -1 : open(edir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	for (size_t i = 0; !rc && i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		const idd_image_info *prev = NULL;
		if (incremental) { /* both catalogs are sorted by id */
			while (o < old->count && strcmp(old->images[o].id, im->id) < 0)
				o++;
			if (o < old->count && !strcmp(old->images[o].id, im->id))
				prev = &old->images[o];
		}
		want.len = 0;
		idd_entry_payload(cat->block_size, im, &want);
		bool unchanged = false;
		if (prev) {
			was.len = 0;
			idd_entry_payload(old->block_size, prev, &was);
			unchanged = !was.failed && was.len == want.len && !memcmp(was.data, want.data, want.len);
		}
		if (want.failed || was.failed) {
			rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
			break;
		}
		char hex[HEX_LEN + 1];
		if ((rc = idd_id_hex(im->id, hex, err)))
			break;
		char *path = idd_path_join(edir, hex, err);
		if (!path) {
			rc = IDD_ENOMEM;
			break;
		}
		if (!entry_current(dfd, hex, path, &want, unchanged)) {
			/* from the first write on, which entries are current is
			 * unknown until commit: a run killed meanwhile leaves the
			 * next one checking them all */
			if (have && !(x.flags & IDD_ENTRIES_DIRTY) && !sy->marked) {
				x.flags |= IDD_ENTRIES_DIRTY;
				rc = index_save(index_dir, &x, err);
				sy->marked = true;
			}
			if (!rc)
				rc = idd_indexfile_batch_add(&batch, path, ENTRY_MAGIC, ENTRY_VERSION, want.data,
				                             want.len, false, err);
			if (!rc && batch.n == ENTRY_BATCH)
				rc = idd_indexfile_batch_commit(&batch, edir, err);
			if (!rc)
				sy->written++;
		}
		free(path);
	}
	if (!rc)
		rc = idd_indexfile_batch_commit(&batch, edir, err);
	idd_indexfile_batch_free(&batch);
	if (dfd >= 0)
		close(dfd);
	free(edir);
	idd_buf_free(&want);
	idd_buf_free(&was);
	return rc;
}

static int cmp_hex(const void *a, const void *b)
{
	return memcmp(a, b, HEX_LEN);
}

/* Full mode: remove every entry file no image of cat has. */
static int remove_strays(const char *index_dir, const idd_catalog *cat, idd_entries_sync *sy,
                         idd_error *err)
{
	char *names = idd_malloc((cat->count + 1) * HEX_LEN, err);
	if (!names)
		return IDD_ENOMEM;
	for (size_t i = 0; i < cat->count; i++) {
		char hex[HEX_LEN + 1];
		if (idd_id_hex(cat->images[i].id, hex, err)) {
			free(names);
			return IDD_ERR;
		}
		memcpy(names + i * HEX_LEN, hex, HEX_LEN);
	}
	qsort(names, cat->count, HEX_LEN, cmp_hex);
	char *dir = idd_path_join(index_dir, IDD_ENTRIES_DIR, err);
	DIR *d = dir ? opendir(dir) : NULL;
	int rc = !dir ? IDD_ENOMEM : !d ? idd_fail_errno(err, dir, "cannot open directory") : IDD_OK;
	struct dirent *de;
	while (!rc && (de = readdir(d))) {
		const char *nm = de->d_name;
		/* only entry names: entries/index and temporaries are not entries */
		if (strlen(nm) != HEX_LEN || strspn(nm, "0123456789abcdef") != HEX_LEN ||
		    (cat->count && bsearch(nm, names, cat->count, HEX_LEN, cmp_hex)))
			continue;
		char *p = idd_path_join(dir, nm, err);
		if (!p)
			rc = IDD_ENOMEM;
		else if (unlink(p) && errno != ENOENT)
			rc = idd_fail_errno(err, p, "cannot remove");
		else
			sy->removed++;
		free(p);
	}
	if (d)
		closedir(d);
	free(dir);
	free(names);
	return rc;
}

int idd_entries_commit(const char *index_dir, const idd_catalog *old, const idd_catalog *cat,
                       idd_entries_sync *sy, idd_error *err)
{
	int rc = IDD_OK;
	if (sy->full) {
		rc = remove_strays(index_dir, cat, sy, err);
	} else {
		/* old's images that cat no longer holds */
		size_t c = 0;
		for (size_t i = 0; !rc && i < old->count; i++) {
			const char *id = old->images[i].id;
			while (c < cat->count && strcmp(cat->images[c].id, id) < 0)
				c++;
			if (c < cat->count && !strcmp(cat->images[c].id, id))
				continue;
			char *path;
			if ((rc = entry_path(index_dir, id, &path, err)))
				break;
			if (unlink(path) == 0)
				sy->removed++;
			else if (errno != ENOENT)
				rc = idd_fail_errno(err, path, "cannot remove");
			free(path);
		}
	}
	if (rc)
		return rc;
	idd_entries_index now = {.block_size = cat->block_size, .generation = cat->generation,
	                         .count = cat->count};
	idd_entries_index x;
	bool have = index_load(index_dir, &x);
	if (have && !memcmp(&x, &now, sizeof x) && !sy->written && !sy->removed)
		return IDD_OK; /* nothing changed: nothing written */
	return index_save(index_dir, &now, err);
}

void idd_entries_verify(const char *index_dir, const idd_catalog *cat, idd_warn_fn warn,
                        void *ctx, uint64_t *problems)
{
	char *ipath = idd_path_join(index_dir, IDD_ENTRIES_INDEX_FILE, NULL);
	if (!ipath)
		return;
	void *file = NULL;
	size_t len = 0;
	idd_entries_index x;
	idd_error e;
	int rc = idd_read_file(ipath, IDD_ENTRIES_INDEX_MAX_FILE, &file, &len, &e);
	if (!rc)
		rc = idd_entries_index_parse_file(ipath, file, len, &x, &e);
	free(file);
	file = NULL;
	if (rc) {
		if (rc != IDD_ENOENT) { /* absent: an index written before entries existed */
			char *m = idd_asprintf(NULL, "%s (the next 'imgdedup scan' rewrites it)", e.msg);
			(*problems)++;
			if (warn)
				warn(ctx, m ? m : e.msg);
			free(m);
		}
		free(ipath);
		return;
	}
	free(ipath);
	/* entries being rewritten, or of another catalog state (a scan in
	 * progress, or one killed): the next scan checks them all */
	if ((x.flags & IDD_ENTRIES_DIRTY) || x.generation != cat->generation || x.count != cat->count)
		return;
	idd_buf want = {0};
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		char *path;
		if (entry_path(index_dir, im->id, &path, &e))
			break;
		want.len = 0;
		idd_entry_payload(cat->block_size, im, &want);
		const char *why = NULL;
		uint32_t bs = 0;
		idd_image_info got;
		rc = idd_read_file(path, IDD_ENTRY_MAX_FILE, &file, &len, &e);
		if (!rc)
			rc = idd_entry_parse_file(path, file, len, im->id, &bs, &got, &e);
		if (rc == IDD_ENOENT) {
			why = "missing";
		} else if (rc) {
			why = e.msg;
		} else {
			idd_buf have = {0};
			idd_entry_payload(bs, &got, &have);
			if (have.failed || want.failed || have.len != want.len || memcmp(have.data, want.data, want.len))
				why = "does not hold the catalog's record";
			idd_buf_free(&have);
			idd_image_info_free(&got);
		}
		free(file);
		file = NULL;
		if (why) {
			char *id = idd_str_escape(im->id, NULL);
			char *m = rc == IDD_ENOENT
			              ? idd_asprintf(NULL, "%s: catalog entry of %s missing (the next 'imgdedup "
			                             "scan' writes it)", path, id ? id : "?")
			          : rc ? idd_asprintf(NULL, "%s (remove it: the next 'imgdedup scan' rewrites it)", why)
			               : idd_asprintf(NULL, "%s: catalog entry of %s %s (remove it: the next "
			                              "'imgdedup scan' rewrites it)", path, id ? id : "?", why);
			(*problems)++;
			if (warn)
				warn(ctx, m ? m : why);
			free(m);
			free(id);
		}
		free(path);
	}
	idd_buf_free(&want);
}
