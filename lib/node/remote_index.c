/* remote_index.c - a repository's index on a node: the record of each
 * image asked for (its entry, or the whole catalog of an index without
 * entries) and its block map. */
#include "node/remote_index.h"
#include "index/catalog.h"
#include "index/entries.h"

#include <stdlib.h>
#include <string.h>

int idd_remote_index_open(const char *source, const char *index, const idd_fetch_opts *fo,
                          idd_remote_index **out, idd_error *err)
{
	idd_remote_index *ri = idd_calloc(1, sizeof *ri, err);
	if (!ri)
		return IDD_ENOMEM;
	pthread_mutex_init(&ri->mu, NULL);
	int rc = idd_source_open(source, fo, &ri->src, err);
	if (!rc && index) {
		rc = idd_source_open(index, fo, &ri->isrc, err);
		ri->prefix = rc ? NULL : idd_strdup("", err);
	} else if (!rc) {
		ri->isrc = ri->src;
		ri->prefix = idd_strdup(IDD_INDEX_SUBDIR "/", err);
	}
	if (!rc && !ri->prefix)
		rc = IDD_ENOMEM;
	if (rc) {
		idd_remote_index_close(ri);
		return rc;
	}
	*out = ri;
	return IDD_OK;
}

void idd_remote_index_close(idd_remote_index *ri)
{
	if (!ri)
		return;
	if (ri->isrc && ri->isrc != ri->src)
		idd_source_close(ri->isrc);
	idd_source_close(ri->src);
	idd_catalog_free(ri->cat);
	for (size_t i = 0; i < ri->nimages; i++) {
		idd_image_info_free(ri->images[i]);
		free(ri->images[i]);
	}
	free(ri->images);
	free(ri->prefix);
	pthread_mutex_destroy(&ri->mu);
	free(ri);
}

/* Every record comes from one repository: one block size. */
static int check_block_size(idd_remote_index *ri, uint32_t bs, const char *name, idd_error *err)
{
	if (!ri->block_size)
		ri->block_size = bs;
	else if (bs != ri->block_size)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: %u-byte blocks, the index's other files say %u",
		                     name, bs, ri->block_size);
	return IDD_OK;
}

/* Fetch a file of the index: prefix + rel. */
static int get_index_file(idd_remote_index *ri, const char *rel, size_t max, char **path,
                          void **file, size_t *len, idd_error *err)
{
	*file = NULL;
	*len = 0;
	*path = idd_asprintf(err, "%s%s", ri->prefix, rel);
	if (!*path)
		return IDD_ENOMEM;
	int rc = idd_source_get(ri->isrc, *path, max, file, len, err);
	if (!rc)
		ri->bytes += *len;
	return rc;
}

static int catalog_locked(idd_remote_index *ri, idd_error *err)
{
	if (ri->cat)
		return IDD_OK;
	char *path;
	void *file;
	size_t flen;
	int rc = get_index_file(ri, IDD_CATALOG_FILE, IDD_MAX_REMOTE_INDEX_FILE, &path, &file, &flen, err);
	if (rc == IDD_ENOENT)
		idd_error_prefix(err, "no index in the source (run 'imgdedup scan' and 'imgdedup map' there)");
	idd_catalog *cat = NULL;
	if (!rc)
		rc = idd_catalog_parse_file(path, file, flen, &cat, err);
	if (!rc && (rc = check_block_size(ri, cat->block_size, path, err)))
		idd_catalog_free(cat);
	else if (!rc)
		ri->cat = cat;
	free(file);
	free(path);
	return rc;
}

/* Does the index keep entries?  Asked once, when an entry is missing:
 * entries/index says so; without it the index predates entries (or was
 * copied without them) and the catalog is the only record. */
static int layout_locked(idd_remote_index *ri, idd_error *err)
{
	if (ri->layout != IDD_LAYOUT_UNKNOWN)
		return IDD_OK;
	char *path;
	void *file;
	size_t flen;
	int rc = get_index_file(ri, IDD_ENTRIES_INDEX_FILE, IDD_ENTRIES_INDEX_MAX_FILE, &path, &file,
	                        &flen, err);
	idd_entries_index x;
	if (!rc && idd_entries_index_parse_file(path, file, flen, &x, err) == IDD_OK)
		ri->layout = IDD_LAYOUT_ENTRIES;
	else if (!rc || rc == IDD_ENOENT || rc == IDD_ECORRUPT) /* damaged: the catalog still says */
		ri->layout = IDD_LAYOUT_CATALOG;
	free(file);
	free(path);
	return ri->layout == IDD_LAYOUT_UNKNOWN ? rc : IDD_OK;
}

/* Fetch and check the entry of id: IDD_ENOENT when the index has none. */
static int entry_locked(idd_remote_index *ri, const char *id, const idd_image_info **out,
                        idd_error *err)
{
	char *rel = idd_entry_relpath(id, err);
	if (!rel)
		return IDD_ENOMEM;
	char *path;
	void *file;
	size_t flen;
	int rc = get_index_file(ri, rel, IDD_ENTRY_MAX_FILE, &path, &file, &flen, err);
	free(rel);
	idd_image_info *im = NULL;
	idd_image_info **nv = NULL;
	uint32_t bs = 0;
	if (!rc && !(im = idd_calloc(1, sizeof *im, err)))
		rc = IDD_ENOMEM;
	if (!rc && !(rc = idd_entry_parse_file(path, file, flen, id, &bs, im, err)) &&
	    !(rc = check_block_size(ri, bs, path, err))) {
		nv = idd_realloc_array(ri->images, ri->nimages + 1, sizeof *nv, err);
		if (!nv)
			rc = IDD_ENOMEM;
	}
	if (!rc) {
		ri->images = nv;
		ri->images[ri->nimages++] = im;
		ri->layout = IDD_LAYOUT_ENTRIES;
		*out = im;
	} else if (im) {
		idd_image_info_free(im);
		free(im);
	}
	free(file);
	free(path);
	return rc;
}

static int image_locked(idd_remote_index *ri, const char *id, const idd_image_info **out,
                        idd_error *err)
{
	for (size_t i = 0; i < ri->nimages; i++)
		if (!strcmp(ri->images[i]->id, id)) {
			*out = ri->images[i];
			return IDD_OK;
		}
	if (ri->layout != IDD_LAYOUT_CATALOG) {
		idd_error e2;
		int rc = entry_locked(ri, id, out, &e2);
		if (rc != IDD_ENOENT) {
			if (rc)
				*err = e2;
			return rc;
		}
		if ((rc = layout_locked(ri, err)))
			return rc;
		if (ri->layout == IDD_LAYOUT_ENTRIES)
			return idd_fail_code(err, IDD_ENOENT, "%s: no image '%s' in the source's index",
			                     idd_source_root(ri->src), id);
	}
	int rc = catalog_locked(ri, err);
	if (rc)
		return rc;
	*out = idd_catalog_find(ri->cat, id);
	if (!*out)
		return idd_fail_code(err, IDD_ENOENT, "%s: no image '%s' in the source's index",
		                     idd_source_root(ri->src), id);
	return IDD_OK;
}

int idd_remote_index_image(idd_remote_index *ri, const char *id, const idd_image_info **out,
                           idd_error *err)
{
	if (!idd_relpath_ok(id))
		return idd_fail_code(err, IDD_EPERM, "%s: refused: an image id must be a relative path "
		                     "inside the source (no '..', no absolute path)", id);
	const idd_image_info *in = NULL;
	pthread_mutex_lock(&ri->mu);
	int rc = image_locked(ri, id, &in, err);
	pthread_mutex_unlock(&ri->mu);
	if (rc)
		return rc;
	/* The index is untrusted: the file it names must stay inside SOURCE. */
	if (!idd_relpath_ok(in->file))
		return idd_fail_code(err, IDD_EPERM, "%s: refused: the index names '%s', a path outside "
		                     "the source", id, in->file);
	*out = in;
	return IDD_OK;
}

int idd_remote_index_catalog(idd_remote_index *ri, const idd_catalog **out, idd_error *err)
{
	pthread_mutex_lock(&ri->mu);
	int rc = catalog_locked(ri, err);
	pthread_mutex_unlock(&ri->mu);
	*out = rc ? NULL : ri->cat;
	return rc;
}

uint32_t idd_remote_index_block_size(idd_remote_index *ri)
{
	pthread_mutex_lock(&ri->mu);
	uint32_t bs = ri->block_size;
	pthread_mutex_unlock(&ri->mu);
	return bs;
}

uint64_t idd_remote_index_bytes(idd_remote_index *ri)
{
	pthread_mutex_lock(&ri->mu);
	uint64_t n = ri->bytes;
	pthread_mutex_unlock(&ri->mu);
	return n;
}

static bool digest_eq(const idd_digest *a, const idd_digest *b)
{
	return !memcmp(a->b, b->b, IDD_DIGEST_SIZE);
}

int idd_remote_index_map(idd_remote_index *ri, const idd_image_info *in, idd_map **out,
                         idd_error *err)
{
	*out = NULL;
	char *mrel = idd_map_relpath(in->id, err);
	char *mpath = mrel ? idd_asprintf(err, "%s%s", ri->prefix, mrel) : NULL;
	free(mrel);
	if (!mpath)
		return IDD_ENOMEM;
	void *file = NULL;
	size_t flen = 0;
	idd_map *m = NULL;
	int rc = idd_source_get(ri->isrc, mpath, IDD_MAX_REMOTE_INDEX_FILE, &file, &flen, err);
	if (rc == IDD_ENOENT)
		idd_error_prefix(err, "%s: no block map (run 'imgdedup map' in the source)", in->id);
	uint32_t bs = 0;
	if (!rc) {
		pthread_mutex_lock(&ri->mu);
		ri->bytes += flen;
		bs = ri->block_size;
		pthread_mutex_unlock(&ri->mu);
		rc = idd_map_parse(mpath, file, flen, &m, err);
		free(file);
	}
	free(mpath);
	if (rc)
		return rc;
	static const idd_digest zero_key;
	rc = IDD_ECORRUPT;
	if (m->block_size != bs || m->image_size != in->virtual_size || m->nblocks != in->nblocks) {
		idd_fail_code(err, rc, "%s: the block map does not match the catalog (size or block size); "
		              "run 'imgdedup map' in the source", in->id);
		goto out;
	}
	if (memcmp(m->list_key.b, zero_key.b, IDD_DIGEST_SIZE) && !digest_eq(&m->list_key, &in->list_key)) {
		idd_fail_code(err, rc, "%s: the block map is older than the catalog; run 'imgdedup map' in "
		              "the source", in->id);
		goto out;
	}
	/* Independent of the parser's checks: every reference in range. */
	for (size_t i = 0; i < m->nruns; i++) {
		const idd_map_span *sp = &m->runs[i];
		uint64_t last = (uint64_t)sp->ref + (sp->kind == IDD_RUN_SEQ ? sp->count - 1 : 0);
		if (last > m->ndistinct) {
			idd_fail_code(err, rc, "%s: corrupt block map (reference past the digest table)", in->id);
			goto out;
		}
	}
	for (uint64_t k = 0; k < m->ndistinct; k++)
		if (idd_digest_is_zero(&m->digests[k])) {
			idd_fail_code(err, rc, "%s: corrupt block map (zero digest in the table)", in->id);
			goto out;
		}
	rc = IDD_OK;
out:
	if (rc)
		idd_map_free(m);
	else
		*out = m;
	return rc;
}

void idd_remote_index_fetch_stats(const idd_remote_index *ri, idd_fetch_stats *st)
{
	idd_source_stats(ri->src, st);
	if (ri->isrc && ri->isrc != ri->src) {
		idd_fetch_stats is;
		idd_source_stats(ri->isrc, &is);
		st->requests += is.requests;
		st->bytes += is.bytes;
		st->retries += is.retries;
	}
}

int idd_remote_index_profiles(idd_remote_index *ri, idd_profiles_index *out, idd_error *err)
{
	memset(out, 0, sizeof *out);
	char *path;
	void *file;
	size_t flen;
	pthread_mutex_lock(&ri->mu);
	int rc = get_index_file(ri, IDD_PROFILES_INDEX_FILE, IDD_PROFILES_INDEX_MAX_FILE, &path, &file,
	                        &flen, err);
	pthread_mutex_unlock(&ri->mu);
	if (!rc)
		rc = idd_profiles_index_parse(path, file, flen, out, err);
	free(file);
	free(path);
	return rc;
}

int idd_remote_index_profile(idd_remote_index *ri, const char *id, idd_boot_profile *out,
                             idd_error *err)
{
	memset(out, 0, sizeof *out);
	char *rel = idd_boot_profile_relpath(id, err);
	if (!rel)
		return IDD_ENOMEM;
	char *path;
	void *file;
	size_t flen;
	pthread_mutex_lock(&ri->mu);
	int rc = get_index_file(ri, rel, IDD_PROFILE_MAX_FILE, &path, &file, &flen, err);
	pthread_mutex_unlock(&ri->mu);
	free(rel);
	if (!rc)
		rc = idd_boot_profile_parse(path, file, flen, id, out, err);
	free(file);
	free(path);
	return rc;
}
