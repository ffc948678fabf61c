/* profiles.c - boot profiles published in the index (profiles.h). */
#include "index/profiles.h"
#include "base/digest.h"
#include "index/indexfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char PROFILE_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'R', 'F', 0};
static const char INDEX_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'R', 'I', 0};
#define PROFILE_VERSION 1
#define INDEX_VERSION 1
#define MAX_ID 4096

void idd_boot_profile_free(idd_boot_profile *p)
{
	free(p->id);
	free(p->digests);
	memset(p, 0, sizeof *p);
}

void idd_profiles_index_free(idd_profiles_index *x)
{
	for (size_t i = 0; i < x->n; i++)
		free(x->ids[i]);
	free(x->ids);
	free(x->counts);
	memset(x, 0, sizeof *x);
}

char *idd_boot_profile_relpath(const char *id, idd_error *err)
{
	char hex[2 * IDD_DIGEST_SIZE + 1];
	if (idd_id_hex(id, hex, err))
		return NULL;
	return idd_asprintf(err, "%s/%s", IDD_PROFILES_DIR, hex);
}

int idd_boot_profile_parse(const char *name, const void *file, size_t len, const char *id,
                           idd_boot_profile *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	void *payload;
	size_t plen;
	int rc = idd_indexfile_parse_limit(name, file, len, PROFILE_MAGIC, PROFILE_VERSION,
	                                   IDD_PROFILE_MAX_FILE, &payload, &plen, NULL, err);
	if (rc)
		return rc;
	idd_reader r;
	idd_reader_init(&r, payload, plen);
	uint32_t flags;
	uint64_t n = 0;
	bool ok = idd_get_u32(&r, &out->block_size) && idd_get_u32(&r, &flags) &&
	          idd_get_str(&r, &out->id, MAX_ID) && idd_get_u64(&r, &n);
	if (!ok || n > IDD_PROFILE_MAX_DIGESTS || idd_reader_left(&r) != n * IDD_DIGEST_SIZE)
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: not a boot profile (bad lengths)", name);
	else if (id && strcmp(out->id, id))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: the profile of another image", name);
	else if (!(out->digests = idd_calloc(n ? n : 1, sizeof *out->digests, err)))
		rc = IDD_ENOMEM;
	for (uint64_t i = 0; !rc && i < n; i++) {
		idd_get_bytes(&r, out->digests[i].b, IDD_DIGEST_SIZE);
		if (idd_digest_is_zero(&out->digests[i]))
			rc = idd_fail_code(err, IDD_ECORRUPT, "%s: a zero digest in a boot profile", name);
	}
	out->n = (size_t)n;
	free(payload);
	if (rc)
		idd_boot_profile_free(out);
	return rc;
}

int idd_profiles_index_parse(const char *name, const void *file, size_t len,
                             idd_profiles_index *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	void *payload;
	size_t plen;
	int rc = idd_indexfile_parse_limit(name, file, len, INDEX_MAGIC, INDEX_VERSION,
	                                   IDD_PROFILES_INDEX_MAX_FILE, &payload, &plen, NULL, err);
	if (rc)
		return rc;
	idd_reader r;
	idd_reader_init(&r, payload, plen);
	uint64_t n = 0;
	/* each record takes at least 2 bytes: a count beyond that is damage */
	if (!idd_get_u64(&r, &n) || n > idd_reader_left(&r) / 2)
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: not a profiles index (bad count)", name);
	else if (!(out->ids = idd_calloc(n + 1, sizeof *out->ids, err)) ||
	         !(out->counts = idd_calloc(n + 1, sizeof *out->counts, err)))
		rc = IDD_ENOMEM;
	for (uint64_t i = 0; !rc && i < n; i++) {
		if (!idd_get_str(&r, &out->ids[i], MAX_ID) || !idd_get_u64(&r, &out->counts[i]) ||
		    (i && strcmp(out->ids[i - 1], out->ids[i]) >= 0))
			rc = idd_fail_code(err, IDD_ECORRUPT, "%s: record %llu is damaged or out of order",
			                   name, (unsigned long long)i);
		out->n = (size_t)i + (out->ids[i] != NULL);
	}
	if (!rc && idd_reader_left(&r))
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: trailing bytes", name);
	free(payload);
	if (rc)
		idd_profiles_index_free(out);
	return rc;
}

int idd_profiles_index_load(const char *index_dir, idd_profiles_index *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	char *path = idd_path_join(index_dir, IDD_PROFILES_INDEX_FILE, err);
	if (!path)
		return IDD_ENOMEM;
	void *file = NULL;
	size_t len = 0;
	int rc = idd_read_file(path, IDD_PROFILES_INDEX_MAX_FILE, &file, &len, err);
	if (rc == IDD_ENOENT)
		rc = IDD_OK; /* no profile published yet */
	else if (!rc)
		rc = idd_profiles_index_parse(path, file, len, out, err);
	free(file);
	free(path);
	return rc;
}

static int index_save(const char *index_dir, const idd_profiles_index *x, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u64(&b, x->n);
	for (size_t i = 0; i < x->n; i++) {
		idd_buf_put_str(&b, x->ids[i]);
		idd_buf_put_u64(&b, x->counts[i]);
	}
	char *path = idd_path_join(index_dir, IDD_PROFILES_INDEX_FILE, err);
	int rc = b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory")
	                  : path ? idd_indexfile_write(path, INDEX_MAGIC, INDEX_VERSION, b.data, b.len,
	                                               true, err)
	                         : IDD_ENOMEM;
	free(path);
	idd_buf_free(&b);
	return rc;
}

/* Position of id in x (found or where it goes). */
static size_t index_find(const idd_profiles_index *x, const char *id, bool *found)
{
	size_t lo = 0, hi = x->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(x->ids[mid], id);
		if (!c) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

static int index_put(const char *index_dir, const char *id, uint64_t count, bool remove,
                     idd_error *err)
{
	idd_profiles_index x;
	int rc = idd_profiles_index_load(index_dir, &x, err);
	if (rc)
		return rc;
	bool found;
	size_t at = index_find(&x, id, &found);
	if (remove && !found) {
		idd_profiles_index_free(&x);
		return idd_fail_code(err, IDD_ENOENT, "%s: no boot profile published", id);
	}
	if (remove) {
		free(x.ids[at]);
		memmove(x.ids + at, x.ids + at + 1, (x.n - at - 1) * sizeof *x.ids);
		memmove(x.counts + at, x.counts + at + 1, (x.n - at - 1) * sizeof *x.counts);
		x.n--;
	} else if (found) {
		x.counts[at] = count;
	} else {
		char **ids = idd_realloc_array(x.ids, x.n + 1, sizeof *ids, err);
		if (ids)
			x.ids = ids;
		uint64_t *counts = ids ? idd_realloc_array(x.counts, x.n + 1, sizeof *counts, err) : NULL;
		if (counts)
			x.counts = counts;
		char *copy = counts ? idd_strdup(id, err) : NULL;
		if (!copy) {
			idd_profiles_index_free(&x);
			return IDD_ENOMEM;
		}
		memmove(x.ids + at + 1, x.ids + at, (x.n - at) * sizeof *x.ids);
		memmove(x.counts + at + 1, x.counts + at, (x.n - at) * sizeof *x.counts);
		x.ids[at] = copy;
		x.counts[at] = count;
		x.n++;
	}
	rc = index_save(index_dir, &x, err);
	idd_profiles_index_free(&x);
	return rc;
}

int idd_boot_profile_store(const char *index_dir, const idd_boot_profile *p, idd_error *err)
{
	if (!p->id || !*p->id || strlen(p->id) > MAX_ID)
		return idd_fail(err, "a boot profile needs an image id of 1 to %d bytes", MAX_ID);
	idd_digest_set seen;
	if (idd_digest_set_init(&seen, IDD_MAX(p->n, 16), false, err))
		return IDD_ERR;
	idd_buf b = {0};
	idd_buf_put_u32(&b, p->block_size);
	idd_buf_put_u32(&b, 0); /* flags */
	idd_buf_put_str(&b, p->id);
	size_t at_n = b.len;
	idd_buf_put_u64(&b, 0); /* count, filled below */
	uint64_t n = 0;
	int rc = IDD_OK;
	for (size_t i = 0; !rc && i < p->n && n < IDD_PROFILE_MAX_DIGESTS; i++) {
		bool added;
		if (idd_digest_is_zero(&p->digests[i]))
			continue;
		if (idd_digest_set_add(&seen, &p->digests[i], &added, err) == (size_t)-1)
			rc = IDD_ERR;
		else if (added) {
			idd_buf_put(&b, p->digests[i].b, IDD_DIGEST_SIZE);
			n++;
		}
	}
	idd_digest_set_free(&seen);
	if (!rc && b.failed)
		rc = idd_fail_code(err, IDD_ENOMEM, "out of memory");
	if (!rc)
		idd_le64_put(b.data + at_n, n);
	char *rel = rc ? NULL : idd_boot_profile_relpath(p->id, err);
	char *dir = rel ? idd_path_join(index_dir, IDD_PROFILES_DIR, err) : NULL;
	char *path = dir ? idd_path_join(index_dir, rel, err) : NULL;
	if (!rc && !path)
		rc = IDD_ENOMEM;
	if (!rc)
		rc = idd_mkdir_p(dir, err);
	if (!rc)
		rc = idd_indexfile_write(path, PROFILE_MAGIC, PROFILE_VERSION, b.data, b.len, true, err);
	/* the index last: a node that finds a name there finds its file */
	if (!rc)
		rc = index_put(index_dir, p->id, n, false, err);
	free(path);
	free(dir);
	free(rel);
	idd_buf_free(&b);
	return rc;
}

int idd_boot_profile_remove(const char *index_dir, const char *id, idd_error *err)
{
	int rc = index_put(index_dir, id, 0, true, err);
	char *rel = rc ? NULL : idd_boot_profile_relpath(id, err);
	char *path = rel ? idd_path_join(index_dir, rel, err) : NULL;
	if (!rc && !path)
		rc = IDD_ENOMEM;
	if (!rc && unlink(path))
		rc = idd_fail_errno(err, path, "unlink");
	free(path);
	free(rel);
	return rc;
}
