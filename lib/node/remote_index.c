/* remote_index.c - loading a repository's catalog and maps on a node. */
#include "node/remote_index.h"
#include "index/catalog.h"

#include <stdlib.h>
#include <string.h>

int idd_remote_index_open(const char *source, const char *index, const idd_fetch_opts *fo,
                          idd_remote_index **out, idd_error *err)
{
	idd_remote_index *ri = idd_calloc(1, sizeof *ri, err);
	if (!ri)
		return IDD_ENOMEM;
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
	char *rel = rc ? NULL : idd_asprintf(err, "%s%s", ri->prefix, IDD_CATALOG_FILE);
	if (!rc && !rel)
		rc = IDD_ENOMEM;
	void *file = NULL;
	size_t flen = 0;
	if (!rc) {
		rc = idd_source_get(ri->isrc, rel, IDD_MAX_REMOTE_INDEX_FILE, &file, &flen, err);
		if (rc == IDD_ENOENT)
			idd_error_prefix(err, "no index in the source (run 'imgdedup scan' and 'imgdedup map' there)");
	}
	if (!rc) {
		ri->bytes += flen;
		rc = idd_catalog_parse_file(rel, file, flen, &ri->cat, err);
	}
	free(file);
	free(rel);
	if (rc) {
		idd_remote_index_close(ri);
		return rc;
	}
	ri->block_size = ri->cat->block_size;
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
	free(ri->prefix);
	free(ri);
}

int idd_remote_index_image(idd_remote_index *ri, const char *id, const idd_image_info **out,
                           idd_error *err)
{
	if (!idd_relpath_ok(id))
		return idd_fail_code(err, IDD_EPERM, "%s: refused: an image id must be a relative path "
		                     "inside the source (no '..', no absolute path)", id);
	const idd_image_info *in = idd_catalog_find(ri->cat, id);
	if (!in)
		return idd_fail_code(err, IDD_ENOENT, "%s: no image '%s' in the source's index",
		                     idd_source_root(ri->src), id);
	/* The catalog is untrusted: the file it names must stay inside SOURCE. */
	if (!idd_relpath_ok(in->file))
		return idd_fail_code(err, IDD_EPERM, "%s: refused: the index names '%s', a path outside "
		                     "the source", id, in->file);
	*out = in;
	return IDD_OK;
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
	if (!rc) {
		ri->bytes += flen;
		rc = idd_map_parse(mpath, file, flen, &m, err);
		free(file);
	}
	free(mpath);
	if (rc)
		return rc;
	static const idd_digest zero_key;
	rc = IDD_ECORRUPT;
	if (m->block_size != ri->block_size || m->image_size != in->virtual_size ||
	    m->nblocks != in->nblocks) {
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
