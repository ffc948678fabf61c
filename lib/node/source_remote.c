/* source_remote.c - blocks read from the repository's own image, in its
 * original format (raw, qcow2, VMDK, archive members), by range.
 *
 * A batch of requests is planned into stored byte ranges per file (a qcow2
 * overlay's backing files are files of their own), read through the fetch
 * layer (which coalesces neighbouring ranges into few requests), compressed
 * units are decoded once each, and every block is verified against the
 * digest asked for.
 *
 * Threads: the source keeps a pool of readers, each with its own
 * connection to SOURCE and its own open image (format readers keep state
 * and are not shared).  A batch takes a reader for its whole duration, so
 * up to `readers` batches are fetched at once. */
#include "node/source_remote.h"
#include "formats/archive.h"
#include "formats/image.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A batch is fetched in windows of bounded memory. */
#define WINDOW_BYTES ((uint64_t)16 << 20)

struct reader {
	idd_source *src;
	idd_file *file;        /* the file in SOURCE holding the image (root of ranges) */
	uint64_t base;         /* member offset inside an uncompressed archive */
	idd_image *img;        /* NULL: raw, virtual offset == stored offset */
	idd_file **backing;    /* backing files opened for img (their offsets are their own) */
	size_t nbacking;
	const char *img_dir;   /* directory of the image, relative to SOURCE ("" at the top) */
	char *level_dir;       /* directory of the last backing file opened */
	bool busy;
	uint64_t requests_seen, retries_seen;
	bool unopened;         /* a streamed member not extracted yet: done at the first read */
	int finish_rc;         /* ... and why that failed (every later read fails alike) */
	idd_error finish_err;
};

struct remote {
	const idd_image_info *info;
	uint64_t image_size;
	char *tmp_dir;
	int tmp_fd;            /* a streamed member, extracted here once */
	struct reader *readers;
	size_t nreaders;
	pthread_mutex_t lock;  /* guards the readers' busy flags */
	pthread_cond_t freed;
	const atomic_bool *cancel; /* the fetch options' stop flag */
};

/* ---- opening the image ---- */

/* dir/name with "." and ".." resolved; NULL (refused) when it leaves the
 * source's root. */
static char *resolve_inside(const char *dir, const char *name, idd_error *err)
{
	char *joined = dir[0] ? idd_asprintf(err, "%s/%s", dir, name) : idd_strdup(name, err);
	if (!joined)
		return NULL;
	char *out = idd_malloc(strlen(joined) + 1, err);
	if (!out) {
		free(joined);
		return NULL;
	}
	size_t n = 0;
	for (char *save = NULL, *part = strtok_r(joined, "/", &save); part;
	     part = strtok_r(NULL, "/", &save)) {
		if (!strcmp(part, "."))
			continue;
		if (!strcmp(part, "..")) {
			if (!n) { /* above the root */
				free(joined);
				free(out);
				return NULL;
			}
			while (n && out[n - 1] != '/')
				n--;
			if (n)
				n--;
			continue;
		}
		if (n)
			out[n++] = '/';
		memcpy(out + n, part, strlen(part));
		n += strlen(part);
	}
	out[n] = 0;
	free(joined);
	if (!n) {
		free(out);
		return NULL;
	}
	return out;
}

/* Backing files resolve inside SOURCE only, each relative to the directory
 * of the file naming it (a chain opens top down, one call per level). */
static int backing_open(void *ctx, const char *name, idd_file **out, idd_error *err)
{
	struct reader *rd = ctx;
	if (name[0] == '/' || idd_is_url(name))
		return idd_fail_code(err, IDD_EPERM, "backing file '%s' refused: it must be a relative path "
		                     "inside the source", name);
	const char *dir = rd->level_dir ? rd->level_dir : rd->img_dir;
	char *rel = resolve_inside(dir, name, err);
	if (!rel || !idd_relpath_ok(rel)) {
		free(rel);
		return idd_fail_code(err, IDD_EPERM, "backing file '%s' refused: it leads outside the source",
		                     name);
	}
	if (rd->nbacking >= IDD_MAX_BACKING_DEPTH) {
		free(rel);
		return idd_fail_code(err, IDD_ECORRUPT, "backing chain deeper than %d (a cycle?)",
		                     IDD_MAX_BACKING_DEPTH);
	}
	idd_file *f;
	int rc = idd_source_open_file(rd->src, rel, UINT64_MAX, &f, err);
	if (rc) {
		free(rel);
		return rc;
	}
	/* the image reader owns f; it is remembered only to route its ranges */
	idd_file **nb = idd_realloc_array(rd->backing, rd->nbacking + 1, sizeof *nb, err);
	if (!nb) {
		free(rel);
		idd_file_close(f);
		return IDD_ENOMEM;
	}
	rd->backing = nb;
	rd->backing[rd->nbacking++] = f;
	/* the next level resolves next to this one */
	char *slash = strrchr(rel, '/');
	if (slash)
		*slash = 0;
	else
		rel[0] = 0;
	free(rd->level_dir);
	rd->level_dir = rel;
	*out = f;
	return IDD_OK;
}

/* A member that cannot be read by range (in a compressed archive, or a
 * sparse tar member): stream the archive once through archive.c's reader
 * and keep the member in an unlinked temporary file in tmp_dir.  The whole
 * archive is transferred. */
static int extract_member(struct remote *r, idd_block_source *bs, idd_file *arch,
                          const char *tmp_dir, idd_error *err)
{
	int fd = open(tmp_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0)
		return idd_fail_errno(err, tmp_dir, "cannot create a temporary file in");
	uint64_t read_bytes = 0;
	int rc = idd_archive_spool_member_from(arch, r->info->member, fd, &read_bytes, err);
	atomic_fetch_add(&bs->bytes, read_bytes);
	if (rc)
		close(fd);
	else
		r->tmp_fd = fd;
	return rc;
}

static int reader_finish(struct remote *r, idd_block_source *bs, struct reader *rd, idd_error *err);

/* Open SOURCE and the file holding the image.  A member that must be
 * streamed is extracted only when a block is first asked of it (reader_finish
 * then): a deploy or serve that gets every block elsewhere (the pack)
 * never transfers the archive. */
static int reader_open(struct remote *r, idd_block_source *bs, struct reader *rd, const char *source,
                       const idd_fetch_opts *fo, idd_error *err)
{
	const idd_image_info *in = r->info;
	int rc = idd_source_open(source, fo, &rd->src, err);
	if (rc)
		return rc;
	char *dirbuf = idd_strdup(in->file, err);
	if (!dirbuf)
		return IDD_ENOMEM;
	char *slash = strrchr(dirbuf, '/');
	if (slash)
		*slash = 0;
	else
		dirbuf[0] = 0;
	rd->img_dir = dirbuf;
	bool member = in->member[0] != 0;
	/* Spare a HEAD request: the catalog knows the file's size (a wrong one
	 * fails cleanly on the range requests). */
	rc = idd_source_open_file(rd->src, in->file,
	                          idd_source_is_remote(rd->src) ? in->file_size : UINT64_MAX, &rd->file,
	                          err);
	if (rc)
		return rc;
	if (member && in->streamed) {
		rd->unopened = true;
		return IDD_OK;
	}
	return reader_finish(r, bs, rd, err);
}

/* The image inside the file: an extracted member, an archive member read
 * in place, or the file itself; its format reader for other than raw. */
static int reader_finish(struct remote *r, idd_block_source *bs, struct reader *rd, idd_error *err)
{
	const idd_image_info *in = r->info;
	bool member = in->member[0] != 0;
	int rc;
	rd->unopened = false;
	uint64_t len = rd->file->size;
	if (member && in->streamed) {
		if (r->tmp_fd < 0 && (rc = extract_member(r, bs, rd->file, r->tmp_dir, err)))
			return rc;
		char *p = idd_asprintf(err, "/proc/self/fd/%d", r->tmp_fd);
		if (!p)
			return IDD_ENOMEM;
		idd_file *lf;
		rc = idd_file_open_local(p, &lf, err);
		free(p);
		if (rc)
			return rc;
		idd_file_close(rd->file);
		rd->file = lf; /* the member, local now: reading it costs no transfer */
		rd->base = 0;
		len = lf->size;
	} else if (member) {
		rd->base = in->member_off;
		len = in->member_len;
		uint64_t end;
		if (!idd_add_ok(in->member_off, in->member_len, &end) || end > rd->file->size)
			return idd_fail_code(err, IDD_ECORRUPT, "%s: the member lies outside %s", in->id,
			                     rd->file->name);
	}
	if (!strcmp(in->format, "raw")) {
		if (len < r->image_size)
			return idd_fail_code(err, IDD_ECORRUPT, "%s: the source file is smaller (%llu bytes) "
			                     "than the image (%llu bytes)", rd->file->name,
			                     (unsigned long long)len, (unsigned long long)r->image_size);
		return IDD_OK; /* raw: stored offset = base + virtual offset; no header to probe */
	}
	idd_file *imgfile;
	if ((rc = idd_file_open_slice(rd->file, false, rd->base, len, in->id, &imgfile, err)))
		return rc;
	if ((rc = idd_image_open(imgfile, true, backing_open, rd, &rd->img, err))) {
		if (rc == IDD_ERR && err->code == IDD_ERR) /* the format reader refused it */
			err->code = rc = IDD_ECORRUPT;
		return rc;
	}
	if (rd->img->size != r->image_size)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: the source image's virtual size (%llu) differs "
		                     "from the index's (%llu); re-scan the source", in->id,
		                     (unsigned long long)rd->img->size, (unsigned long long)r->image_size);
	return IDD_OK;
}

static void reader_close(struct reader *rd)
{
	idd_image_close(rd->img);
	idd_file_close(rd->file);
	free(rd->backing);
	free((char *)rd->img_dir);
	free(rd->level_dir);
	idd_source_close(rd->src);
}

/* ---- a window: planned ranges, compressed units, verification ---- */

struct piece {
	size_t req;        /* request index */
	uint32_t dst;      /* offset in the block */
	uint32_t n;
	size_t unit_idx;
	uint64_t unit_skip;
};

struct unit {
	idd_file *f;
	uint64_t off;      /* stored range (root offsets) */
	idd_extent ext;
	unsigned char *stored, *plain;
};

struct filegroup {
	idd_file *f;
	idd_range *r;
	size_t n, cap;
};

struct window {
	struct piece *pieces;
	size_t npieces, cap_pieces;
	struct unit *units;
	size_t nunits, cap_units;
	struct filegroup groups[IDD_MAX_BACKING_DEPTH + 2];
	size_t ngroups;
	uint64_t stored;   /* bytes this window fetches */
};

static int add_range(struct window *w, idd_file *f, uint64_t off, uint64_t len, void *buf,
                     const char *id, idd_error *err)
{
	size_t g = 0;
	while (g < w->ngroups && w->groups[g].f != f)
		g++;
	if (g == w->ngroups) {
		if (g == IDD_ARRAY_LEN(w->groups))
			return idd_fail_code(err, IDD_ECORRUPT, "%s: too many files in the backing chain", id);
		w->groups[g].f = f;
		w->groups[g].n = 0;
		w->ngroups++;
	}
	struct filegroup *fg = &w->groups[g];
	/* the range continuing the previous one into the next block merges here */
	if (fg->n && fg->r[fg->n - 1].off + fg->r[fg->n - 1].len == off &&
	    (unsigned char *)fg->r[fg->n - 1].buf + fg->r[fg->n - 1].len == (unsigned char *)buf) {
		fg->r[fg->n - 1].len += len;
	} else {
		if (fg->n == fg->cap) {
			size_t nc = fg->cap ? fg->cap * 2 : 256;
			idd_range *nr = idd_realloc_array(fg->r, nc, sizeof *nr, err);
			if (!nr)
				return IDD_ENOMEM;
			fg->r = nr;
			fg->cap = nc;
		}
		fg->r[fg->n++] = (idd_range){off, len, buf};
	}
	w->stored += len;
	return IDD_OK;
}

static int add_piece(struct window *w, struct piece p, idd_error *err)
{
	if (w->npieces == w->cap_pieces) {
		size_t nc = w->cap_pieces ? w->cap_pieces * 2 : 256;
		struct piece *np = idd_realloc_array(w->pieces, nc, sizeof *np, err);
		if (!np)
			return IDD_ENOMEM;
		w->pieces = np;
		w->cap_pieces = nc;
	}
	w->pieces[w->npieces++] = p;
	return IDD_OK;
}

static int add_unit(struct window *w, idd_file *f, uint64_t off, const idd_extent *ext, size_t *idx,
                    const char *id, idd_error *err)
{
	size_t u = 0;
	while (u < w->nunits && !(w->units[u].f == f && w->units[u].off == off))
		u++;
	if (u < w->nunits) {
		/* The same unit seen through an extent of another length (a qcow2
		 * overlay cuts its backing's extents where its own clusters take
		 * over): decode the longest prefix any piece needs.  Units always
		 * decode from their start. */
		struct unit *un = &w->units[u];
		if (ext->voff != un->ext.voff || ext->file_len != un->ext.file_len ||
		    ext->codec != un->ext.codec)
			return idd_fail_code(err, IDD_ECORRUPT, "%s: compressed unit at offset %llu of %s is "
			                     "mapped inconsistently", id, (unsigned long long)un->off, f->name);
		if (ext->vlen > un->ext.vlen) {
			unsigned char *np = realloc(un->plain, (size_t)ext->vlen);
			if (!np)
				return idd_fail_code(err, IDD_ENOMEM, "out of memory");
			un->plain = np;
			un->ext.vlen = ext->vlen;
		}
		*idx = u;
		return IDD_OK;
	}
	if (w->nunits == w->cap_units) {
		size_t nc = w->cap_units ? w->cap_units * 2 : 64;
		struct unit *nu = idd_realloc_array(w->units, nc, sizeof *nu, err);
		if (!nu)
			return IDD_ENOMEM;
		w->units = nu;
		w->cap_units = nc;
	}
	struct unit *un = &w->units[w->nunits++];
	memset(un, 0, sizeof *un);
	un->f = f;
	un->off = off;
	un->ext = *ext;
	un->stored = idd_malloc((size_t)ext->file_len, err);
	un->plain = idd_malloc((size_t)ext->vlen, err);
	if (!un->stored || !un->plain)
		return IDD_ENOMEM;
	*idx = w->nunits - 1;
	return add_range(w, f, off, ext->file_len, un->stored, id, err);
}

/* Plan the stored bytes of request i. */
static int plan_block(struct remote *r, struct reader *rd, struct window *w, size_t i,
                      idd_block_req *q, uint32_t bs, idd_error *err)
{
	const char *id = r->info->id;
	uint64_t voff = q->block * bs, blen = q->len;
	memset(q->buf, 0, bs);
	if (!rd->img) /* raw */
		return add_range(w, rd->file, rd->base + voff, blen, q->buf, id, err);
	uint64_t done = 0;
	while (done < blen) {
		idd_extent ext;
		int rc = idd_image_extent(rd->img, voff + done, &ext, err);
		if (rc) {
			if (rc == IDD_ERR && err->code == IDD_ERR)
				err->code = rc = IDD_ECORRUPT;
			return rc;
		}
		uint64_t skip = voff + done - ext.voff;
		uint64_t n = IDD_MIN(blen - done, ext.vlen - skip);
		idd_file *f = ext.file ? ext.file : rd->file;
		uint64_t base = ext.file ? 0 : rd->base;
		if (ext.kind == IDD_EXT_DATA) {
			if ((rc = add_range(w, f, base + ext.file_off + skip, n, q->buf + done, id, err)))
				return rc;
		} else if (ext.kind == IDD_EXT_COMPRESSED) {
			if (ext.file_len == 0 || ext.file_len > IDD_MAX_COMPRESSED_UNIT ||
			    ext.vlen > IDD_MAX_COMPRESSED_UNIT)
				return idd_fail_code(err, IDD_ECORRUPT, "%s: compressed unit at offset %llu too "
				                     "large or empty", id, (unsigned long long)ext.voff);
			size_t u = 0;
			if ((rc = add_unit(w, f, base + ext.file_off, &ext, &u, id, err)))
				return rc;
			if ((rc = add_piece(w, (struct piece){i, (uint32_t)done, (uint32_t)n, u, skip}, err)))
				return rc;
		}
		/* IDD_EXT_ZERO: already zeros */
		done += n;
	}
	return IDD_OK;
}

static void window_reset(struct window *w)
{
	for (size_t u = 0; u < w->nunits; u++) {
		free(w->units[u].stored);
		free(w->units[u].plain);
	}
	w->nunits = 0;
	w->npieces = 0;
	w->stored = 0;
	for (size_t g = 0; g < w->ngroups; g++)
		w->groups[g].n = 0;
	w->ngroups = 0;
}

static void window_free(struct window *w)
{
	window_reset(w);
	for (size_t g = 0; g < IDD_ARRAY_LEN(w->groups); g++)
		free(w->groups[g].r);
	free(w->units);
	free(w->pieces);
}

static int fetch_window(idd_block_source *bs, struct remote *r, struct reader *rd, struct window *w,
                        idd_block_req *reqs, size_t n, idd_error *err)
{
	int rc;
	for (size_t g = 0; g < w->ngroups; g++) {
		/* ranges in any order, overlapping (sector-padded compressed
		 * units) or close: the batch reader merges them into few requests */
		rc = idd_source_read_ranges(rd->src, w->groups[g].f, w->groups[g].r, w->groups[g].n, err);
		if (rc)
			return rc == IDD_ERR && idd_source_is_remote(rd->src) ? IDD_ENET : rc;
	}
	if (r->tmp_fd < 0) /* an extracted member was paid for when streamed */
		atomic_fetch_add(&bs->bytes, w->stored);
	/* A unit that does not decode damages the blocks built from it only. */
	unsigned char *unit_bad = idd_calloc(w->nunits ? w->nunits : 1, 1, err);
	if (!unit_bad)
		return IDD_ENOMEM;
	for (size_t u = 0; u < w->nunits; u++) {
		struct unit *un = &w->units[u];
		idd_error e2;
		if (idd_extent_decode(&un->ext, un->stored, (size_t)un->ext.file_len, un->plain, &e2)) {
			unit_bad[u] = 1;
			idd_warnf(bs->warn, bs->warn_ctx, "warning: %s (from %s): %s", r->info->id,
			          un->f->name, e2.msg);
		}
	}
	for (size_t p = 0; p < w->npieces; p++) {
		struct piece *pc = &w->pieces[p];
		struct unit *un = &w->units[pc->unit_idx];
		uint64_t end;
		if (unit_bad[pc->unit_idx]) {
			reqs[pc->req].status = IDD_ECORRUPT;
			continue;
		}
		if (!idd_add_ok(pc->unit_skip, pc->n, &end) || end > un->ext.vlen) {
			free(unit_bad);
			return idd_fail(err, "%s: internal error: piece past its decoded unit", r->info->id);
		}
		memcpy(reqs[pc->req].buf + pc->dst, un->plain + pc->unit_skip, pc->n);
	}
	free(unit_bad);
	idd_hasher *h = idd_thread_hasher(err);
	if (!h)
		return IDD_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		idd_block_req *q = &reqs[i];
		if (q->status == IDD_ENOENT && idd_block_verify(h, q->buf, bs->block_size, &q->digest)) {
			q->status = IDD_OK;
			atomic_fetch_add(&bs->blocks, 1);
		} else {
			q->status = IDD_ECORRUPT;
			atomic_fetch_add(&bs->damaged, 1);
		}
	}
	window_reset(w);
	return IDD_OK;
}

/* A free reader into *out; IDD_ETIMEDOUT when the thread's deadline passes
 * first, IDD_ECANCELED when the source is stopped. */
static int take_reader(struct remote *r, struct reader **out, idd_error *err)
{
	int64_t deadline = idd_fetch_deadline();
	pthread_mutex_lock(&r->lock);
	for (;;) {
		for (size_t i = 0; i < r->nreaders; i++)
			if (!r->readers[i].busy) {
				r->readers[i].busy = true;
				pthread_mutex_unlock(&r->lock);
				*out = &r->readers[i];
				return IDD_OK;
			}
		int64_t now = idd_mono_ns();
		if (r->cancel && atomic_load(r->cancel)) {
			pthread_mutex_unlock(&r->lock);
			return idd_fail_code(err, IDD_ECANCELED, "stopped");
		}
		if (deadline && now >= deadline) {
			pthread_mutex_unlock(&r->lock);
			return idd_fail_code(err, IDD_ETIMEDOUT,
			                     "no connection to the source was free in time");
		}
		/* woken by give_reader; looks at the deadline and the stop flag
		 * every 100 ms */
		int64_t until = now + 100000000;
		if (deadline && deadline < until)
			until = deadline;
		struct timespec ts = {(time_t)(until / 1000000000), (long)(until % 1000000000)};
		pthread_cond_clockwait(&r->freed, &r->lock, CLOCK_MONOTONIC, &ts);
	}
}

static void give_reader(idd_block_source *bs, struct remote *r, struct reader *rd)
{
	idd_fetch_stats fs;
	idd_source_stats(rd->src, &fs);
	atomic_fetch_add(&bs->requests, fs.requests - rd->requests_seen);
	atomic_fetch_add(&bs->retries, fs.retries - rd->retries_seen);
	rd->requests_seen = fs.requests;
	rd->retries_seen = fs.retries;
	pthread_mutex_lock(&r->lock);
	rd->busy = false;
	pthread_cond_signal(&r->freed);
	pthread_mutex_unlock(&r->lock);
}

static int remote_read(idd_block_source *bs, idd_block_req *reqs, size_t n, idd_error *err)
{
	struct remote *r = bs->priv;
	struct reader *rd = NULL;
	int rc = take_reader(r, &rd, err);
	if (rc) {
		idd_error_prefix(err, "%s", r->info->id);
		return rc;
	}
	struct window w;
	memset(&w, 0, sizeof w);
	if (rd->unopened && (rd->finish_rc = reader_finish(r, bs, rd, &rd->finish_err)))
		rd->unopened = true;
	if (rd->finish_rc) {
		*err = rd->finish_err;
		rc = rd->finish_rc;
		n = 0;
	}
	size_t start = 0;
	for (size_t i = 0; !rc && i < n; i++) {
		reqs[i].status = IDD_ENOENT;
		reqs[i].origin_fd = -1;
		uint64_t end;
		if (!idd_add_ok(reqs[i].block * bs->block_size, reqs[i].len, &end) || end > r->image_size) {
			rc = idd_fail(err, "%s: block %llu is past the image's end", r->info->id,
			              (unsigned long long)reqs[i].block);
			break;
		}
		rc = plan_block(r, rd, &w, i - start, &reqs[i], bs->block_size, err);
		if (!rc && (w.stored >= WINDOW_BYTES || i + 1 == n)) {
			rc = fetch_window(bs, r, rd, &w, reqs + start, i + 1 - start, err);
			start = i + 1;
		}
	}
	window_free(&w);
	give_reader(bs, r, rd);
	if (rc && !rd->finish_rc)
		idd_error_prefix(err, "%s", r->info->id);
	return rc;
}

static void remote_close(idd_block_source *bs)
{
	struct remote *r = bs->priv;
	if (r) {
		for (size_t i = 0; i < r->nreaders; i++)
			reader_close(&r->readers[i]);
		free(r->readers);
		if (r->tmp_fd >= 0)
			close(r->tmp_fd);
		free(r->tmp_dir);
		pthread_mutex_destroy(&r->lock);
		pthread_cond_destroy(&r->freed);
		free(r);
	}
	idd_block_source_fini(bs);
	free(bs);
}

static const struct idd_block_source_ops remote_ops = {"remote", NULL, remote_read, remote_close};

int idd_remote_source_open(const char *source, const idd_image_info *info, uint64_t image_size,
                           uint32_t block_size, const char *tmp_dir, int readers,
                           const idd_fetch_opts *fo, idd_warn_fn warn, void *ctx,
                           idd_block_source **out, idd_error *err)
{
	idd_block_source *bs = idd_calloc(1, sizeof *bs, err);
	struct remote *r = idd_calloc(1, sizeof *r, err);
	if (!bs || !r) {
		free(bs);
		free(r);
		return IDD_ENOMEM;
	}
	r->info = info;
	r->image_size = image_size;
	r->cancel = fo ? fo->cancel : NULL;
	r->tmp_fd = -1;
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->freed, NULL);
	bs->priv = r;
	int rc = idd_block_source_init(bs, &remote_ops, source, block_size, warn, ctx, err);
	if (!rc && !(r->tmp_dir = idd_strdup(tmp_dir ? tmp_dir : "/tmp", err)))
		rc = IDD_ENOMEM;
	if (rc) {
		remote_close(bs);
		return rc;
	}
	/* a streamed member is local once extracted: one reader is enough */
	if (readers < 1 || (info->member[0] && info->streamed))
		readers = 1;
	r->readers = idd_calloc((size_t)readers, sizeof *r->readers, err);
	if (!r->readers) {
		remote_close(bs);
		return IDD_ENOMEM;
	}
	for (int i = 0; i < readers; i++) {
		r->nreaders = (size_t)i + 1;
		rc = reader_open(r, bs, &r->readers[i], source, fo, err);
		if (rc) {
			remote_close(bs);
			return rc;
		}
		idd_fetch_stats fs;
		idd_source_stats(r->readers[i].src, &fs);
		atomic_fetch_add(&bs->requests, fs.requests);
		atomic_fetch_add(&bs->retries, fs.retries);
		r->readers[i].requests_seen = fs.requests;
		r->readers[i].retries_seen = fs.retries;
	}
	*out = bs;
	return IDD_OK;
}

/* ---- pricing reads (plan.h's estimate mode) ---- */

struct remote_estimate {
	const idd_image_info *info;
	bool archive_paid; /* a streamed member: the archive is transferred once */
};

static int estimate_read(idd_block_source *bs, idd_block_req *reqs, size_t n, idd_error *err)
{
	(void)err;
	struct remote_estimate *re = bs->priv;
	bool streamed = re->info->member[0] && re->info->streamed;
	uint64_t bytes = 0;
	for (size_t i = 0; i < n; i++) {
		reqs[i].status = IDD_OK;
		reqs[i].origin_fd = -1;
		bytes += streamed ? 0 : reqs[i].len;
	}
	if (streamed && n && !re->archive_paid) {
		re->archive_paid = true;
		bytes += re->info->file_size;
	}
	atomic_fetch_add(&bs->blocks, n);
	atomic_fetch_add(&bs->bytes, bytes);
	return IDD_OK;
}

static void estimate_close(idd_block_source *bs)
{
	free(bs->priv);
	idd_block_source_fini(bs);
	free(bs);
}

static const struct idd_block_source_ops estimate_ops = {"remote", NULL, estimate_read,
                                                         estimate_close};

int idd_remote_source_open_estimate(const idd_image_info *info, uint64_t image_size,
                                    uint32_t block_size, idd_block_source **out, idd_error *err)
{
	(void)image_size;
	idd_block_source *bs = idd_calloc(1, sizeof *bs, err);
	struct remote_estimate *re = idd_calloc(1, sizeof *re, err);
	if (!bs || !re) {
		free(bs);
		free(re);
		return IDD_ENOMEM;
	}
	re->info = info;
	bs->priv = re;
	if (idd_block_source_init(bs, &estimate_ops, info->file, block_size, NULL, NULL, err)) {
		estimate_close(bs);
		return IDD_ENOMEM;
	}
	*out = bs;
	return IDD_OK;
}
