/* verify.c - check every index file, and with deep, the images themselves. */
#include "base/util.h"
#include "base/digest.h"
#include "base/fetch.h"
#include "formats/image.h"
#include "index/repo.h"
#include "index/indexfile.h"
#include "index/indexdir.h"
#include "index/catalog.h"
#include "index/entries.h"
#include "index/map.h"
#include "index/pack.h"

#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

static void report(const idd_verify_opts *o, uint64_t *problems, const char *msg)
{
	(*problems)++;
	if (o->warn)
		o->warn(o->ctx, msg);
}

static void report_block(const idd_verify_opts *o, uint64_t *problems, const idd_image_info *im,
                         uint64_t b, uint32_t bs)
{
	char *m = idd_asprintf(NULL, "%s: block %llu (offset %llu) differs from the index (changed since the scan?)",
	                       im->id, (unsigned long long)b, (unsigned long long)(b * bs));
	report(o, problems, m ? m : "digest mismatch");
	free(m);
}

/* Re-read an image and compare its digests with the stored block list.
 * Like scan, it walks the image's extents: a zero extent is checked against
 * the list's runs without reading it, so the cost follows the data. */
static void verify_deep(const idd_verify_opts *o, const idd_catalog *cat, const idd_image_info *im,
                        const idd_blocklist *stored, uint64_t *problems)
{
	idd_error e;
	char *path = idd_path_join(o->repo, im->file, &e);
	if (!path) {
		report(o, problems, e.msg);
		return;
	}
	idd_repo_entry ent = {.id = im->id, .path = path, .member = im->member[0] ? im->member : NULL,
	                      .container = im->container, .member_off = im->member_off,
	                      .member_len = im->member_len, .streamed = im->streamed};
	idd_image *img = NULL;
	idd_hasher *h = NULL;
	unsigned char *buf = NULL;
	const uint32_t bs = cat->block_size;
	/* only files inside the repository are read: the directories on the way
	 * may not lead out (a link), and the file itself is opened without
	 * following a link (idd_repo_open_image) */
	char real[PATH_MAX], root[PATH_MAX];
	if (idd_repo_is_remote(o->repo)) {
		/* an object store: the key is REPO's prefix + a checked relative path */
	} else if (!realpath(o->repo, root) || !realpath(path, real)) {
		idd_fail_errno(&e, path, "cannot open");
		report(o, problems, e.msg);
		goto out;
	}
	size_t rl = idd_repo_is_remote(o->repo) ? 0 : strlen(root);
	if (rl && (strncmp(real, root, rl) != 0 || (real[rl] != '/' && real[rl] != 0))) {
		char *m = idd_asprintf(NULL, "%s: leads outside the repository (to %s); not read", path, real);
		report(o, problems, m ? m : "outside the repository");
		free(m);
		goto out;
	}
	const uint64_t chunk = (uint64_t)bs * 256;
	if (idd_repo_open_image(o->repo, &ent, &img, &e) || !(h = idd_hasher_new(&e)) ||
	    !(buf = idd_malloc((size_t)chunk, &e))) {
		if (!strstr(e.msg, path))
			idd_error_prefix(&e, "%s", path);
		report(o, problems, e.msg);
		goto out;
	}
	if (img->size != im->virtual_size) {
		char *m = idd_asprintf(NULL, "%s: image is %llu bytes, the index says %llu (re-run scan)",
		                       path, (unsigned long long)img->size, (unsigned long long)im->virtual_size);
		report(o, problems, m ? m : "size mismatch");
		free(m);
		goto out;
	}
	const uint64_t size = img->size;
	uint64_t off = 0; /* block aligned */
	while (off < size) {
		idd_extent ext;
		if (idd_image_extent(img, off, &ext, &e)) {
			report(o, problems, e.msg);
			goto out;
		}
		uint64_t ext_end = ext.voff + ext.vlen;
		if (ext.kind == IDD_EXT_ZERO) {
			/* whole zero blocks: the list must hold no run there */
			uint64_t next = ext_end >= size ? size : ext_end / bs * bs;
			if (next > off) {
				uint64_t b0 = off / bs, b1 = (next + bs - 1) / bs;
				size_t r = idd_blocklist_run_after(stored, b0);
				if (r < stored->nruns && stored->runs[r].block < b1) {
					report_block(o, problems, im, stored->runs[r].block, bs);
					goto out;
				}
				off = next;
				if (o->progress)
					o->progress(o->ctx, off, size);
				continue;
			}
		}
		uint64_t end = IDD_MIN(off + chunk, size);
		uint64_t ext_block_end = (ext_end + bs - 1) / bs * bs;
		if (ext_block_end < end && ext_block_end > off)
			end = ext_block_end;
		size_t n = (size_t)(end - off);
		idd_digest d[256];
		uint64_t hashed = 0;
		if (idd_image_read(img, off, buf, n, &e) || idd_hash_blocks(h, buf, n, bs, d, &hashed, &e)) {
			if (!strstr(e.msg, path))
				idd_error_prefix(&e, "%s", path);
			report(o, problems, e.msg);
			goto out;
		}
		uint64_t first = off / bs, nb = (n + bs - 1) / bs;
		for (uint64_t b = 0; b < nb; b++) {
			const idd_digest *want = idd_blocklist_get(stored, first + b);
			bool same = want ? !memcmp(want, &d[b], sizeof d[b]) : idd_digest_is_zero(&d[b]);
			if (!same) {
				report_block(o, problems, im, first + b, bs);
				goto out;
			}
		}
		off = end;
		if (o->progress)
			o->progress(o->ctx, off, size);
	}
out:
	free(buf);
	idd_hasher_free(h);
	idd_image_close(img);
	free(path);
}

/* The rules deploy applies to a catalog entry's paths: relative, no "."
 * or ".." or empty components, no control characters; a member's id is its
 * file, '/', the member; a backing file's path is relative too.  NULL when
 * the entry passes, else why not. */
static const char *entry_paths_problem(const idd_image_info *im)
{
	if (!idd_relpath_ok(im->id))
		return "its id is not a relative path inside the repository";
	if (!idd_relpath_ok(im->file))
		return "its file is not a relative path inside the repository";
	if (im->member[0]) {
		size_t fl = strlen(im->file);
		if (!idd_relpath_ok(im->member))
			return "its archive member is not a relative path";
		if (strncmp(im->id, im->file, fl) || im->id[fl] != '/' || strcmp(im->id + fl + 1, im->member))
			return "its id is not FILE/MEMBER";
	} else if (strcmp(im->id, im->file)) {
		return "its id and file differ";
	}
	for (size_t k = 0; k < im->nbacking; k++)
		if (!idd_relpath_ok(im->backing[k].path))
			return "a backing file's path is not a relative path inside the repository";
	return NULL;
}

/* Does the map say, block for block, what the list says?  Zero runs are
 * compared run against run; non-zero blocks one by one (the cost of the
 * data).  *bad receives the first block that differs. */
static bool map_agrees(const idd_map *m, const idd_blocklist *bl, uint64_t *bad)
{
	*bad = 0;
	if (m->nblocks != bl->nblocks)
		return false;
	size_t r = 0;
	for (size_t i = 0; i < m->nruns; i++) {
		const idd_map_span *sp = &m->runs[i];
		uint64_t end = sp->block + sp->count;
		if (sp->kind == IDD_RUN_ZERO) {
			size_t k = idd_blocklist_run_after(bl, sp->block);
			if (k < bl->nruns && bl->runs[k].block < end) {
				*bad = IDD_MAX(bl->runs[k].block, sp->block);
				return false;
			}
			continue;
		}
		for (uint64_t b = sp->block; b < end; b++) {
			while (r < bl->nruns && bl->runs[r].block + bl->runs[r].count <= b)
				r++;
			uint32_t ref = idd_map_span_ref(sp, b);
			if (r == bl->nruns || bl->runs[r].block > b || ref == 0 || ref > m->ndistinct ||
			    memcmp(&m->digests[ref - 1], &bl->digests[bl->runs[r].first + (b - bl->runs[r].block)],
			           sizeof(idd_digest))) {
				*bad = b;
				return false;
			}
		}
	}
	return true;
}

/* The map of one image, when there is one: intact, recorded for this image,
 * and, when built from the current list, agreeing with it block for block
 * (a map can be wrong under a valid checksum).  A map built from an older
 * list is stale, not damaged: 'imgdedup map' replaces it. */
static void verify_map(const idd_verify_opts *o, const char *index_dir, const idd_catalog *cat,
                       const idd_image_info *im, const idd_blocklist *bl, uint64_t *problems)
{
	idd_error e;
	idd_map *m = NULL;
	int rc = idd_map_load(index_dir, im->id, &m, &e);
	if (rc == IDD_ENOENT || (rc && strstr(e.msg, "no block map for")))
		return;
	if (rc) {
		report(o, problems, e.msg);
		return;
	}
	char *rel = idd_map_relpath(im->id, NULL);
	char *path = rel ? idd_path_join(index_dir, rel, NULL) : NULL;
	const char *where = path ? path : im->id;
	char *msg = NULL;
	uint64_t bad;
	if (!m->id || strcmp(m->id, im->id)) {
		char *other = idd_str_escape(m->id ? m->id : "", NULL);
		msg = idd_asprintf(NULL, "%s: is the map of another image ('%s'), not of %s (run 'imgdedup map')",
		                   where, other ? other : "?", im->id);
		free(other);
	} else if (memcmp(m->list_key.b, im->list_key.b, IDD_DIGEST_SIZE)) {
		/* stale */
	} else if (m->image_size != im->virtual_size || m->block_size != cat->block_size) {
		msg = idd_asprintf(NULL, "%s: block map of %s disagrees with the catalog (size or block size)",
		                   where, im->id);
	} else if (!map_agrees(m, bl, &bad)) {
		msg = idd_asprintf(NULL, "%s: block map of %s disagrees with its block list at block %llu "
		                   "(run 'imgdedup map')", where, im->id, (unsigned long long)bad);
	}
	if (msg)
		report(o, problems, msg);
	free(msg);
	free(path);
	free(rel);
	idd_map_free(m);
}

/* One index file other than the catalog and block lists: its container
 * (checksum, lengths, compression), and for block maps their structure. */
static void verify_file(const idd_verify_opts *o, const char *index_dir, const char *rel,
                        uint64_t *problems)
{
	idd_error e;
	char *path = idd_path_join(index_dir, rel, &e);
	void *data = NULL;
	size_t len;
	int rc = path ? idd_read_file(path, (size_t)IDD_IF_MAX_PAYLOAD, &data, &len, &e) : IDD_ERR;
	if (rc == IDD_ENOENT) { /* optional files (no similarity computed yet) */
		free(path);
		return;
	}
	if (!rc)
		rc = idd_indexfile_check(path, data, len, &e);
	size_t n = strlen(rel);
	if (!rc && n > 4 && strcmp(rel + n - 4, ".map") == 0) {
		idd_map *m;
		rc = idd_map_parse(path, data, len, &m, &e);
		if (!rc)
			idd_map_free(m);
	}
	if (rc)
		report(o, problems, e.msg);
	free(data);
	free(path);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct tree {
	const idd_verify_opts *o;
	const char *index_dir, *sub;
	char **skip; /* sorted relative paths already checked (maps of catalog images) */
	size_t nskip;
	uint64_t *problems;
};

/* Files and what is not a file (reported as damage); temporaries of a
 * running or killed run and dotfiles are not index files. */
static int verify_entry(void *ctx, const idd_dir_entry *e, idd_error *err)
{
	struct tree *t = ctx;
	if (e->kind == IDD_ENTRY_TEMP || e->kind == IDD_ENTRY_DOT)
		return IDD_OK;
	char *rel = idd_asprintf(NULL, "%s/%s", t->sub, e->name);
	bool done = rel && t->nskip && bsearch(&rel, t->skip, t->nskip, sizeof *t->skip, cmp_str);
	if (rel && !done)
		verify_file(t->o, t->index_dir, rel, t->problems);
	free(rel);
	return IDD_OK;
}

static void verify_tree(const idd_verify_opts *o, const char *index_dir, const char *sub,
                        char **skip, size_t nskip, uint64_t *problems)
{
	struct tree t = {.o = o, .index_dir = index_dir, .sub = sub, .skip = skip, .nskip = nskip,
	                 .problems = problems};
	char *dir = idd_path_join(index_dir, sub, NULL);
	if (dir)
		idd_dir_for_each(dir, 0, verify_entry, verify_entry, &t, NULL);
	free(dir);
}

int idd_verify(const idd_verify_opts *o, uint64_t *problems, idd_error *err)
{
	*problems = 0;
	char *index_dir;
	if (idd_index_path(o->repo, o->index_dir, &index_dir, err))
		return IDD_ERR;
	idd_catalog *cat;
	int rc = idd_catalog_load(index_dir, &cat, err);
	if (rc) {
		/* the catalog itself is damaged: that is the finding */
		if (rc != IDD_ENOENT) {
			report(o, problems, err->msg);
			rc = IDD_OK;
		}
		free(index_dir);
		return rc ? rc : IDD_ERR;
	}
	char *catpath = idd_path_join(index_dir, IDD_CATALOG_FILE, NULL);
	char **maps = idd_calloc(cat->count + 1, sizeof *maps, err);
	size_t nmaps = 0;
	if (!maps) {
		free(catpath);
		idd_catalog_free(cat);
		free(index_dir);
		return IDD_ERR;
	}
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		idd_error e;
		idd_blocklist *bl;
		const char *why = entry_paths_problem(im);
		if (why) {
			/* deploy refuses such an entry; verify reads nothing through it */
			char *id = idd_str_escape(im->id, NULL);
			char *m = idd_asprintf(NULL, "%s: entry '%s': %s", catpath ? catpath : index_dir,
			                       id ? id : "?", why);
			report(o, problems, m ? m : why);
			free(m);
			free(id);
			continue;
		}
		if ((maps[nmaps] = idd_map_relpath(im->id, NULL)))
			nmaps++;
		/* loading checks the list's checksum, its name, and its counts
		 * against the catalog entry */
		idd_catalog *now = NULL;
		int orc = idd_blocklist_open(index_dir, im, &bl, &e);
		if (orc == IDD_ENOENT && idd_catalog_load(index_dir, &now, &e) == IDD_OK) {
			/* a scan replaced the catalog and collected the list since we
			 * read it: check the image as the new catalog has it, if at all */
			const idd_image_info *cur = idd_catalog_find(now, im->id);
			if (!cur) {
				idd_catalog_free(now);
				continue;
			}
			im = cur; /* (the same list again: then it is really missing) */
			orc = idd_blocklist_open(index_dir, im, &bl, &e);
		}
		if (orc) {
			idd_catalog_free(now);
			char *m = idd_asprintf(NULL, "%s (the next 'imgdedup scan' rebuilds it)", e.msg);
			report(o, problems, m ? m : e.msg);
			free(m);
			continue;
		}
		verify_map(o, index_dir, cat, im, bl, problems);
		if (o->deep)
			verify_deep(o, cat, im, bl, problems);
		idd_blocklist_free(bl);
		idd_catalog_free(now);
	}
	qsort(maps, nmaps, sizeof *maps, cmp_str);
	verify_tree(o, index_dir, "maps", maps, nmaps, problems);
	verify_tree(o, index_dir, "blocktable", NULL, 0, problems);
	verify_file(o, index_dir, "similarity", problems);
	idd_entries_verify(index_dir, cat, o->warn, o->ctx, problems);
	idd_pack_verify(index_dir, cat, o->deep, o->warn, o->ctx, problems);
	for (size_t i = 0; i < nmaps; i++)
		free(maps[i]);
	free(maps);
	free(catpath);
	idd_catalog_free(cat);
	free(index_dir);
	return *problems ? IDD_ERR : IDD_OK;
}
