/* pack_index.c - the pack's index: which digest lies at which ordinal, and
 * where each ordinal's frame is.
 *
 * Version 2 (this one) keeps the digest -> ordinal table as a log-
 * structured merge, like the block table (blocktable.c): sorted runs of
 * 40-byte entries, the newest run winning for a digest, an entry with
 * ordinal IDD_PACK_REMOVED saying the digest left the pack.  A run costs
 * what one pack run added or removed; runs of similar size are merged
 * (pack_build.c), so each entry is rewritten O(log) times over its life.
 * Frames live in one frame table per data file, written with it and never
 * changed, searched in place: a run that packs k images' blocks writes
 * their entries and one table, not the whole index.  A sharded table was
 * the alternative: digests are uniform, so the blocks of even one image
 * touch nearly every shard (docs/formats.md, "Pack index").
 *
 * Version 1 (older imgdedup) was one file holding every frame and every
 * entry; it is still read (one run in memory, the frames in memory) so
 * that the next pack run can upgrade it in place (pack_build.c).
 * Layout: docs/formats.md ("Pack"). */
#include "index/pack.h"
#include "index/indexfile.h"
#include "base/digest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char PKI_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'K', 'I', 0};
const char IDD_PACK_RUN_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'K', 'R', 0};
const char IDD_PACK_FT_MAGIC[8] = {'I', 'D', 'D', '-', 'P', 'K', 'F', 0};
#define PKI_VERSION 2
#define PKR_VERSION IDD_PACK_RUN_VERSION
#define PKF_VERSION IDD_PACK_FT_VERSION
/* a file whose mtime is this close to the manifest's writing may have been
 * changed again within the timestamp granularity: check it by reading it */
#define RACY_NS ((int64_t)2 * 1000000000)
#define CONTAINER (IDD_IF_HEADER + IDD_IF_TRAILER)

static int corrupt(idd_error *err, const char *name, const char *what)
{
	return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt pack %s", name, what);
}

static int64_t mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* ---- paths ---- */

char *idd_pack_run_path(const char *index_dir, uint64_t seq, idd_error *err)
{
	return idd_asprintf(err, "%s/%s/%016llx", index_dir, IDD_PACK_RUNS_DIR,
	                    (unsigned long long)seq);
}

char *idd_pack_ft_relpath(const idd_digest *name, idd_error *err)
{
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(name, hex);
	return idd_asprintf(err, "%s/%s%s", IDD_PACK_DATA_DIR, hex, IDD_PACK_FT_SUFFIX);
}

char *idd_pack_list_relpath(const idd_digest *list_key, idd_error *err)
{
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(list_key, hex);
	return idd_asprintf(err, "%s/%s", IDD_PACK_LISTS_DIR, hex);
}

/* ---- freeing ---- */

void idd_pack_run_unmap(idd_pack_idxrun *r)
{
	if (r->map)
		munmap(r->map, r->map_len);
	r->map = NULL;
	r->recs = NULL;
}

void idd_pack_index_free(idd_pack_index *x)
{
	if (!x)
		return;
	for (size_t i = 0; i < x->nruns; i++)
		idd_pack_run_unmap(&x->runs[i]);
	for (size_t i = 0; i < x->nfiles; i++)
		if (x->files[i].ft_map)
			munmap(x->files[i].ft_map, x->files[i].ft_map_len);
	free(x->runs);
	free(x->files);
	free(x->frames);
	free(x->lists);
	free(x->dir);
	free(x->payload);
	free(x);
}

/* ---- parsing ---- */

static bool header_ok(const idd_pack_index *x)
{
	return x->block_size >= IDD_MIN_BLOCK_SIZE && x->block_size <= IDD_MAX_BLOCK_SIZE &&
	       idd_is_power_of_two(x->block_size) && x->frame_blocks != 0 &&
	       (uint64_t)x->frame_blocks * x->block_size <=
	               IDD_MAX(IDD_PACK_FRAME_BYTES, x->block_size);
}

static int parse_v1(const char *name, idd_pack_index *x, idd_reader *r, idd_error *err)
{
	uint64_t nfiles, nframes, nentries, nviews;
	if (!idd_get_u32(r, &x->block_size) || !idd_get_u32(r, &x->frame_blocks) ||
	    !idd_get_u32(r, &x->level) || !idd_get_u32(r, &x->flags) ||
	    !idd_get_bytes(r, x->catalog_key.b, 32) || !idd_get_u64(r, &nfiles) || !header_ok(x) ||
	    (x->flags & ~IDD_PACK_INCOMPLETE) || nfiles > idd_reader_left(r) / 48)
		return corrupt(err, name, "index (header)");
	x->nfiles = (size_t)nfiles;
	if (nfiles && !(x->files = idd_calloc((size_t)nfiles, sizeof *x->files, err)))
		return IDD_ENOMEM;
	uint64_t sum_frames = 0;
	for (size_t i = 0; i < x->nfiles; i++) {
		idd_pack_file *f = &x->files[i];
		if (!idd_get_bytes(r, f->name.b, 32) || !idd_get_u64(r, &f->size) ||
		    !idd_get_u64(r, &f->nframes) || f->size < IDD_PACK_DATA_HEADER ||
		    !idd_add_ok(sum_frames, f->nframes, &sum_frames))
			return corrupt(err, name, "index (file list)");
	}
	if (!idd_get_u64(r, &nframes) || nframes != sum_frames || nframes > idd_reader_left(r) / 2)
		return corrupt(err, name, "index (frame count)");
	x->nframes = (size_t)nframes;
	if (nframes && !(x->frames = idd_calloc((size_t)nframes, sizeof *x->frames, err)))
		return IDD_ENOMEM;
	size_t fi = 0;
	uint64_t slots = 0;
	for (uint32_t fno = 0; fno < x->nfiles; fno++) {
		uint64_t off = IDD_PACK_DATA_HEADER;
		idd_pack_file *pf = &x->files[fno];
		pf->first = slots;
		pf->first_frame = fi;
		for (uint64_t k = 0; k < pf->nframes; k++, fi++) {
			uint64_t clen, nb, end;
			idd_pack_frame *f = &x->frames[fi];
			if (!idd_get_varint(r, &clen) || !idd_get_varint(r, &nb) || clen == 0 || nb == 0 ||
			    nb > x->frame_blocks || !idd_add_ok(off, clen, &end) || end > pf->size)
				return corrupt(err, name, "index (frame table)");
			f->file = fno;
			f->nblocks = (uint32_t)nb;
			f->off = off;
			f->clen = clen;
			f->first = slots;
			off = end;
			slots += nb;
		}
		if (off != pf->size)
			return corrupt(err, name, "index (frames do not fill their data file)");
		pf->nslots = slots - pf->first;
	}
	x->nslots = slots;
	if (!idd_get_u64(r, &nentries) || nentries > idd_reader_left(r) / IDD_PACK_ENTRY ||
	    nentries > slots)
		return corrupt(err, name, "index (entry count)");
	x->nentries = nentries;
	const unsigned char *entries = idd_get_span(r, (size_t)nentries * IDD_PACK_ENTRY);
	for (uint64_t i = 0; i < nentries; i++) {
		const unsigned char *e = entries + i * IDD_PACK_ENTRY;
		if (idd_le64(e + 32) >= slots || idd_is_zero(e, 32) ||
		    (i && memcmp(e - IDD_PACK_ENTRY, e, 32) >= 0))
			return corrupt(err, name, "index (entries not sorted or past the frames)");
	}
	if (!(x->runs = idd_calloc(1, sizeof *x->runs, err)))
		return IDD_ENOMEM;
	x->nruns = nentries ? 1 : 0;
	x->runs[0].entries = nentries;
	x->runs[0].recs = entries;
	if (!idd_get_u64(r, &nviews) || nviews != idd_reader_left(r) / 32 || idd_reader_left(r) % 32)
		return corrupt(err, name, "index (view list)");
	x->nlists = (size_t)nviews;
	if (nviews && !(x->lists = idd_calloc((size_t)nviews, sizeof *x->lists, err)))
		return IDD_ENOMEM;
	for (size_t i = 0; i < x->nlists; i++) {
		idd_get_bytes(r, x->lists[i].list_key.b, 32);
		if (i && memcmp(x->lists[i - 1].list_key.b, x->lists[i].list_key.b, 32) >= 0)
			return corrupt(err, name, "index (view list not sorted)");
		/* which lists had unpacked blocks is not recorded: all are gone
		 * through again when the index says some were */
		x->lists[i].unpacked = (x->flags & IDD_PACK_INCOMPLETE) ? IDD_PACK_UNPACKED_UNKNOWN : 0;
	}
	return IDD_OK;
}

static int parse_v2(const char *name, idd_pack_index *x, idd_reader *r, idd_error *err)
{
	uint64_t written, nfiles, nruns, nlists;
	if (!idd_get_u32(r, &x->block_size) || !idd_get_u32(r, &x->frame_blocks) ||
	    !idd_get_u32(r, &x->level) || !idd_get_u32(r, &x->flags) || !idd_get_u64(r, &written) ||
	    !idd_get_u64(r, &x->next_seq) || !idd_get_u64(r, &x->nentries) ||
	    !idd_get_u64(r, &nfiles) || !header_ok(x) || x->flags != 0 ||
	    nfiles > idd_reader_left(r) / 88)
		return corrupt(err, name, "index (header)");
	x->written_ns = (int64_t)written;
	x->nfiles = (size_t)nfiles;
	if (nfiles && !(x->files = idd_calloc((size_t)nfiles, sizeof *x->files, err)))
		return IDD_ENOMEM;
	uint64_t slots = 0, frames = 0;
	for (size_t i = 0; i < x->nfiles; i++) {
		idd_pack_file *f = &x->files[i];
		uint64_t mt, most;
		if (!idd_get_bytes(r, f->name.b, 32) || !idd_get_u64(r, &f->size) ||
		    !idd_get_u64(r, &f->nframes) || !idd_get_u64(r, &f->nslots) ||
		    !idd_get_u64(r, &f->ft_size) || !idd_get_u64(r, &f->ft_ino) || !idd_get_u64(r, &mt) ||
		    f->nframes == 0 || f->nslots < f->nframes ||
		    !idd_mul_ok(f->nframes, x->frame_blocks, &most) || f->nslots > most ||
		    f->size < IDD_PACK_DATA_HEADER || f->size - IDD_PACK_DATA_HEADER < f->nframes ||
		    f->nframes > (UINT64_MAX - CONTAINER) / IDD_PACK_FT_REC ||
		    f->ft_size != CONTAINER + f->nframes * IDD_PACK_FT_REC)
			return corrupt(err, name, "index (file list)");
		f->ft_mtime_ns = (int64_t)mt;
		f->first = slots;
		f->first_frame = frames;
		if (!idd_add_ok(slots, f->nslots, &slots) || !idd_add_ok(frames, f->nframes, &frames) ||
		    frames > SIZE_MAX)
			return corrupt(err, name, "index (file list)");
	}
	x->nslots = slots;
	x->nframes = (size_t)frames;
	if (x->nentries > slots)
		return corrupt(err, name, "index (entry count)");
	if (!idd_get_u64(r, &nruns) || nruns > idd_reader_left(r) / 40)
		return corrupt(err, name, "index (run list)");
	if (!(x->runs = idd_calloc((size_t)nruns + 1, sizeof *x->runs, err)))
		return IDD_ENOMEM;
	for (uint64_t i = 0; i < nruns; i++) {
		idd_pack_idxrun *ru = &x->runs[x->nruns++];
		uint64_t mt;
		if (!idd_get_u64(r, &ru->seq) || !idd_get_u64(r, &ru->entries) ||
		    !idd_get_u64(r, &ru->size) || !idd_get_u64(r, &ru->ino) || !idd_get_u64(r, &mt) ||
		    ru->seq >= x->next_seq || (i && ru->seq <= x->runs[i - 1].seq) || ru->entries == 0 ||
		    ru->entries > (UINT64_MAX - CONTAINER) / IDD_PACK_ENTRY ||
		    ru->size != CONTAINER + ru->entries * IDD_PACK_ENTRY)
			return corrupt(err, name, "index (run list)");
		ru->mtime_ns = (int64_t)mt;
	}
	if (!idd_get_u64(r, &nlists) || nlists > idd_reader_left(r) / 64)
		return corrupt(err, name, "index (list table)");
	x->nlists = (size_t)nlists;
	if (nlists && !(x->lists = idd_calloc((size_t)nlists, sizeof *x->lists, err)))
		return IDD_ENOMEM;
	for (size_t i = 0; i < x->nlists; i++) {
		idd_pack_list *l = &x->lists[i];
		if (!idd_get_bytes(r, l->list_key.b, 32) || !idd_get_u64(r, &l->nblocks) ||
		    !idd_get_u64(r, &l->zero_blocks) || !idd_get_u64(r, &l->ndistinct) ||
		    !idd_get_u64(r, &l->unpacked) || l->zero_blocks > l->nblocks ||
		    l->ndistinct > l->nblocks - l->zero_blocks ||
		    (l->unpacked > l->ndistinct && l->unpacked != IDD_PACK_UNPACKED_UNKNOWN) ||
		    (i && memcmp(x->lists[i - 1].list_key.b, l->list_key.b, 32) >= 0))
			return corrupt(err, name, "index (list table)");
	}
	if (idd_reader_left(r))
		return corrupt(err, name, "index (trailing bytes)");
	return IDD_OK;
}

int idd_pack_index_parse(const char *name, const void *file, size_t len, idd_pack_index **out,
                         idd_error *err)
{
	void *payload;
	size_t plen;
	uint32_t version = 0;
	int rc = idd_indexfile_parse_limit(name, file, len, PKI_MAGIC, PKI_VERSION, IDD_PACK_MAX_INDEX,
	                                   &payload, &plen, &version, err);
	if (rc)
		return rc == IDD_ERR ? IDD_ECORRUPT : rc;
	idd_pack_index *x = idd_calloc(1, sizeof *x, err);
	if (!x) {
		free(payload);
		return IDD_ENOMEM;
	}
	x->payload = payload;
	x->version = version;
	idd_reader r;
	idd_reader_init(&r, payload, plen);
	rc = version == 1 ? parse_v1(name, x, &r, err) : parse_v2(name, x, &r, err);
	if (rc) {
		idd_pack_index_free(x);
		return rc;
	}
	*out = x;
	return IDD_OK;
}

/* ---- runs and frame tables on disk ---- */

/* Map PATH, a container of fixed records (flags 0) whose payload must be
 * want bytes; its identity goes to *size, *ino, *mt. */
static int map_records(const char *path, const char magic[8], uint32_t version, uint64_t want,
                       void **map, size_t *map_len, uint64_t *size, uint64_t *ino, int64_t *mt,
                       idd_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	struct stat st;
	int rc = IDD_OK;
	if (fd < 0 || fstat(fd, &st)) {
		bool gone = errno == ENOENT;
		rc = idd_fail_errno(err, path, "cannot open");
		if (gone)
			rc = IDD_ENOENT;
	} else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != want + CONTAINER ||
	           (uint64_t)st.st_size > SIZE_MAX) {
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: %lld bytes, the pack index says %llu", path,
		                   (long long)st.st_size, (unsigned long long)(want + CONTAINER));
	} else {
		void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED) {
			rc = idd_fail_errno(err, path, "mmap");
		} else {
			const unsigned char *h = m;
			if (memcmp(h, magic, 8) || idd_le32(h + 8) != version || idd_le32(h + 12) != 0 ||
			    idd_le64(h + 16) != want || idd_le64(h + 24) != want) {
				rc = idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt %s header", path,
				                   idd_indexfile_kind(magic));
				munmap(m, (size_t)st.st_size);
			} else {
				*map = m;
				*map_len = (size_t)st.st_size;
				*size = (uint64_t)st.st_size;
				*ino = (uint64_t)st.st_ino;
				*mt = mtime_ns(&st);
			}
		}
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Is a file as the manifest recorded it, and old enough for its stat to
 * say so? */
static bool trusted(const idd_pack_index *x, uint64_t size, uint64_t ino, int64_t mt,
                    uint64_t rsize, uint64_t rino, int64_t rmt)
{
	return size == rsize && ino == rino && mt == rmt && mt + RACY_NS <= x->written_ns;
}

int idd_pack_run_map(const char *index_dir, idd_pack_idxrun *r, idd_error *err)
{
	char *path = idd_pack_run_path(index_dir, r->seq, err);
	if (!path)
		return IDD_ENOMEM;
	int rc = map_records(path, IDD_PACK_RUN_MAGIC, PKR_VERSION, r->entries * IDD_PACK_ENTRY,
	                     &r->map, &r->map_len, &r->size, &r->ino, &r->mtime_ns, err);
	if (!rc)
		r->recs = (const unsigned char *)r->map + IDD_IF_HEADER;
	free(path);
	return rc;
}

/* A run not as recorded: its checksum, then its order (a run the
 * checksum vouches for was written sorted, but a reader never assumes). */
static int run_check(const char *index_dir, const idd_pack_idxrun *r, idd_error *err)
{
	char *path = idd_pack_run_path(index_dir, r->seq, err);
	if (!path)
		return IDD_ENOMEM;
	int rc = idd_indexfile_verify(path, IDD_PACK_RUN_MAGIC, PKR_VERSION, NULL, NULL, err);
	for (uint64_t i = 0; !rc && i < r->entries; i++) {
		const unsigned char *e = r->recs + i * IDD_PACK_ENTRY;
		if (idd_is_zero(e, 32) || (i && memcmp(e - IDD_PACK_ENTRY, e, 32) >= 0))
			rc = corrupt(err, path, "run (entries not sorted)");
	}
	free(path);
	return rc;
}

void (*idd_pack_index_read_hook)(void *ctx, const char *index_dir);
void *idd_pack_index_read_hook_ctx;

/* One attempt; *vanished: a file the manifest names is not there. */
static int open_once(const char *index_dir, idd_pack_index **out, bool *vanished, idd_error *err)
{
	char *path = idd_path_join(index_dir, IDD_PACK_INDEX_FILE, err);
	if (!path)
		return IDD_ENOMEM;
	void *data;
	size_t len;
	idd_pack_index *x = NULL;
	int rc = idd_read_file(path, (size_t)IDD_PACK_MAX_INDEX, &data, &len, err);
	if (!rc) {
		rc = idd_pack_index_parse(path, data, len, &x, err);
		free(data);
	}
	free(path);
	if (!rc && !(x->dir = idd_strdup(index_dir, err)))
		rc = IDD_ENOMEM;
	if (!rc && idd_pack_index_read_hook)
		idd_pack_index_read_hook(idd_pack_index_read_hook_ctx, index_dir);
	for (size_t i = 0; !rc && x->version >= 2 && i < x->nruns; i++) {
		idd_pack_idxrun *r = &x->runs[i];
		uint64_t size = r->size, ino = r->ino;
		int64_t mt = r->mtime_ns;
		rc = idd_pack_run_map(index_dir, r, err);
		if (!rc && !trusted(x, r->size, r->ino, r->mtime_ns, size, ino, mt))
			rc = run_check(index_dir, r, err);
		if (rc == IDD_ENOENT) {
			*vanished = true;
			rc = IDD_ECORRUPT; /* the pack is there, its run is not: damage */
		}
	}
	if (rc) {
		idd_pack_index_free(x);
		return rc;
	}
	*out = x;
	return IDD_OK;
}

static int load_frames(idd_pack_index *x, bool *vanished, idd_error *err);

/* Readers take no lock: a pack run may replace the manifest and delete the
 * runs it merged away between our reading the one and opening the others;
 * then the new manifest names what is there (three attempts). */
static int open_retrying(const char *index_dir, bool frames, idd_pack_index **out, idd_error *err)
{
	for (int attempt = 0;; attempt++) {
		bool vanished = false;
		idd_pack_index *x = NULL;
		int rc = open_once(index_dir, &x, &vanished, err);
		if (!rc && frames && !x->frames && (rc = load_frames(x, &vanished, err))) {
			idd_pack_index_free(x);
			x = NULL;
		}
		if (!rc) {
			*out = x;
			return IDD_OK;
		}
		if (!vanished || attempt == 2)
			return rc;
	}
}

int idd_pack_index_open(const char *index_dir, idd_pack_index **out, idd_error *err)
{
	return open_retrying(index_dir, false, out, err);
}

int idd_pack_ft_stat(const char *index_dir, idd_pack_file *f, idd_error *err)
{
	char *rel = idd_pack_ft_relpath(&f->name, err);
	char *path = rel ? idd_path_join(index_dir, rel, err) : NULL;
	struct stat st;
	int rc = !path ? IDD_ENOMEM : stat(path, &st) ? idd_fail_errno(err, path, "stat") : IDD_OK;
	if (!rc) {
		f->ft_size = (uint64_t)st.st_size;
		f->ft_ino = (uint64_t)st.st_ino;
		f->ft_mtime_ns = mtime_ns(&st);
	}
	free(rel);
	free(path);
	return rc;
}

static void ft_record(const idd_pack_file *f, uint64_t j, idd_pack_frame *fr, uint32_t file)
{
	const unsigned char *p = f->ft + j * IDD_PACK_FT_REC;
	fr->file = file;
	fr->first = f->first + idd_le64(p);
	fr->off = idd_le64(p + 8);
	fr->clen = idd_le32(p + 16);
	fr->nblocks = idd_le32(p + 20);
}

/* Map file fi's frame table; one whose file is not as recorded is checked
 * whole: checksum, frames back to back filling the data file, blocks
 * numbered in order and adding up. */
static int ft_open(idd_pack_index *x, uint32_t fi, idd_error *err)
{
	idd_pack_file *f = &x->files[fi];
	if (f->ft)
		return IDD_OK;
	char *rel = idd_pack_ft_relpath(&f->name, err);
	char *path = rel ? idd_path_join(x->dir, rel, err) : NULL;
	free(rel);
	if (!path)
		return IDD_ENOMEM;
	uint64_t size, ino;
	int64_t mt;
	int rc = map_records(path, IDD_PACK_FT_MAGIC, PKF_VERSION, f->nframes * IDD_PACK_FT_REC,
	                     &f->ft_map, &f->ft_map_len, &size, &ino, &mt, err);
	if (rc == IDD_ENOENT)
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: missing (run 'imgdedup pack')", path);
	if (!rc)
		f->ft = (const unsigned char *)f->ft_map + IDD_IF_HEADER;
	if (!rc && !trusted(x, size, ino, mt, f->ft_size, f->ft_ino, f->ft_mtime_ns)) {
		rc = idd_indexfile_verify(path, IDD_PACK_FT_MAGIC, PKF_VERSION, NULL, NULL, err);
		uint64_t off = IDD_PACK_DATA_HEADER, slot = 0;
		for (uint64_t j = 0; !rc && j < f->nframes; j++) {
			idd_pack_frame fr;
			ft_record(f, j, &fr, fi);
			if (fr.first - f->first != slot || fr.off != off || fr.clen == 0 ||
			    fr.nblocks == 0 || fr.nblocks > x->frame_blocks || fr.clen > f->size - off)
				rc = corrupt(err, path, "frame table");
			off += fr.clen;
			slot += fr.nblocks;
		}
		if (!rc && (off != f->size || slot != f->nslots))
			rc = corrupt(err, path, "frame table (frames do not fill their data file)");
	}
	if (rc && f->ft_map) {
		munmap(f->ft_map, f->ft_map_len);
		f->ft_map = NULL;
		f->ft = NULL;
	}
	free(path);
	return rc;
}

/* Frame j of file fi. */
static int frame_get(idd_pack_index *x, uint32_t fi, uint64_t j, idd_pack_frame *fr,
                     idd_error *err)
{
	const idd_pack_file *f = &x->files[fi];
	if (x->frames) {
		*fr = x->frames[f->first_frame + j];
		return IDD_OK;
	}
	int rc = ft_open(x, fi, err);
	if (!rc)
		ft_record(f, j, fr, fi);
	return rc;
}

static int load_frames(idd_pack_index *x, bool *vanished, idd_error *err)
{
	idd_pack_frame *all = x->nframes ? idd_calloc(x->nframes, sizeof *all, err) : NULL;
	int rc = x->nframes && !all ? IDD_ENOMEM : IDD_OK;
	for (uint32_t fi = 0; !rc && fi < x->nfiles; fi++) {
		char *rel = idd_pack_ft_relpath(&x->files[fi].name, err);
		char *p = rel ? idd_path_join(x->dir, rel, err) : NULL;
		*vanished = *vanished || (p && access(p, F_OK) != 0);
		free(rel);
		free(p);
		for (uint64_t j = 0; !rc && j < x->files[fi].nframes; j++)
			rc = frame_get(x, fi, j, &all[x->files[fi].first_frame + j], err);
	}
	if (rc) {
		free(all);
		return rc;
	}
	x->frames = all;
	return IDD_OK;
}

int idd_pack_index_load(const char *index_dir, idd_pack_index **out, idd_error *err)
{
	return open_retrying(index_dir, true, out, err);
}

/* ---- lookups ---- */

static const unsigned char *run_at(const idd_pack_idxrun *r, uint64_t i)
{
	return r->recs + i * IDD_PACK_ENTRY;
}

/* Lower bound of d in r from *pos on (galloping: lookups in digest order
 * touch each page of a run once); true when found. */
static bool run_seek(const idd_pack_idxrun *r, uint64_t *pos, const unsigned char *d)
{
	uint64_t lo = *pos, n = r->entries, step = 1, hi = lo;
	while (hi < n && memcmp(run_at(r, hi), d, 32) < 0) {
		lo = hi + 1;
		hi += step;
		step *= 2;
	}
	if (hi > n)
		hi = n;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (memcmp(run_at(r, mid), d, 32) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*pos = lo;
	return lo < n && !memcmp(run_at(r, lo), d, 32);
}

/* The newest run's word on d decides: an ordinal, a removal, or nothing. */
static bool decide(const idd_pack_index *x, uint64_t ord, uint64_t *ordinal)
{
	if (ord == IDD_PACK_REMOVED || ord >= x->nslots)
		return false;
	*ordinal = ord;
	return true;
}

bool idd_pack_find(const idd_pack_index *x, const idd_digest *d, uint64_t *ordinal)
{
	for (size_t i = x->nruns; i-- > 0;) {
		uint64_t pos = 0;
		if (run_seek(&x->runs[i], &pos, d->b))
			return decide(x, idd_le64(run_at(&x->runs[i], pos) + 32), ordinal);
	}
	return false;
}

int idd_pack_locate(idd_pack_index *x, uint64_t p, idd_pack_loc *loc, idd_error *err)
{
	if (p >= x->nslots || !x->nfiles)
		return idd_fail_code(err, IDD_ECORRUPT, "pack: ordinal %llu past the frames",
		                     (unsigned long long)p);
	size_t lo = 0, hi = x->nfiles;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (x->files[mid].first <= p)
			lo = mid;
		else
			hi = mid;
	}
	uint32_t fi = (uint32_t)lo;
	const idd_pack_file *f = &x->files[fi];
	uint64_t a = 0, b = f->nframes;
	idd_pack_frame fr;
	while (b - a > 1) {
		uint64_t mid = a + (b - a) / 2;
		int rc = frame_get(x, fi, mid, &fr, err);
		if (rc)
			return rc;
		if (fr.first <= p)
			a = mid;
		else
			b = mid;
	}
	int rc = frame_get(x, fi, a, &fr, err);
	if (rc)
		return rc;
	if (p < fr.first || p - fr.first >= fr.nblocks || fr.off < IDD_PACK_DATA_HEADER ||
	    fr.clen > f->size || fr.off > f->size - fr.clen)
		return idd_fail_code(err, IDD_ECORRUPT, "pack: frame table of file %u is damaged", fi);
	loc->frame = f->first_frame + a;
	loc->file = fi;
	loc->nblocks = fr.nblocks;
	loc->off = fr.off;
	loc->clen = fr.clen;
	loc->slot = (uint32_t)(p - fr.first);
	return IDD_OK;
}

bool idd_pack_lookup(idd_pack_index *x, const idd_digest *d, idd_pack_loc *loc)
{
	uint64_t p;
	idd_error e;
	return idd_pack_find(x, d, &p) && idd_pack_locate(x, p, loc, &e) == IDD_OK;
}

size_t idd_pack_frame_of(const idd_pack_frame *frames, size_t nframes, uint64_t p)
{
	size_t lo = 0, hi = nframes;
	while (hi - lo > 1) {
		size_t mid = lo + (hi - lo) / 2;
		if (frames[mid].first <= p)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

const idd_pack_list *idd_pack_index_list(const idd_pack_index *x, const idd_digest *list_key)
{
	size_t lo = 0, hi = x->nlists;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = memcmp(x->lists[mid].list_key.b, list_key->b, 32);
		if (!c)
			return &x->lists[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int idd_pack_seeker_init(idd_pack_seeker *s, const idd_pack_index *x, idd_error *err)
{
	s->x = x;
	s->pos = idd_calloc(x->nruns + 1, sizeof *s->pos, err);
	return s->pos ? IDD_OK : IDD_ENOMEM;
}

void idd_pack_seeker_free(idd_pack_seeker *s)
{
	free(s->pos);
	s->pos = NULL;
}

bool idd_pack_seek(idd_pack_seeker *s, const unsigned char d[32], uint64_t *ordinal)
{
	bool found = false, live = false;
	/* every run moves on, so that the next digest starts from here */
	for (size_t i = s->x->nruns; i-- > 0;) {
		const idd_pack_idxrun *r = &s->x->runs[i];
		if (run_seek(r, &s->pos[i], d) && !found) {
			found = true;
			live = decide(s->x, idd_le64(run_at(r, s->pos[i]) + 32), ordinal);
		}
	}
	return live;
}

int idd_pack_iter_init(idd_pack_iter *it, const idd_pack_index *x, idd_error *err)
{
	it->x = x;
	it->pos = idd_calloc(x->nruns + 1, sizeof *it->pos, err);
	return it->pos ? IDD_OK : IDD_ENOMEM;
}

void idd_pack_iter_free(idd_pack_iter *it)
{
	free(it->pos);
	it->pos = NULL;
}

int idd_pack_iter_next(idd_pack_iter *it, const unsigned char **digest, uint64_t *ordinal)
{
	const idd_pack_index *x = it->x;
	for (;;) {
		const unsigned char *min = NULL;
		size_t newest = 0;
		for (size_t i = 0; i < x->nruns; i++) {
			if (it->pos[i] >= x->runs[i].entries)
				continue;
			const unsigned char *e = run_at(&x->runs[i], it->pos[i]);
			int c = min ? memcmp(e, min, 32) : -1;
			if (c <= 0) { /* later runs are newer: they win ties */
				min = e;
				newest = i;
			}
		}
		if (!min)
			return 0;
		for (size_t i = 0; i < x->nruns; i++)
			if (it->pos[i] < x->runs[i].entries && !memcmp(run_at(&x->runs[i], it->pos[i]), min, 32))
				it->pos[i]++;
		uint64_t ord = idd_le64(run_at(&x->runs[newest], it->pos[newest] - 1) + 32);
		if (decide(x, ord, ordinal)) {
			*digest = min;
			return 1;
		}
	}
}

/* ---- writing ---- */

int idd_pack_index_save(const char *index_dir, const idd_pack_index *x, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u32(&b, x->block_size);
	idd_buf_put_u32(&b, x->frame_blocks);
	idd_buf_put_u32(&b, x->level);
	idd_buf_put_u32(&b, 0);
	idd_buf_put_u64(&b, (uint64_t)idd_now_ns());
	idd_buf_put_u64(&b, x->next_seq);
	idd_buf_put_u64(&b, x->nentries);
	idd_buf_put_u64(&b, x->nfiles);
	for (size_t i = 0; i < x->nfiles; i++) {
		const idd_pack_file *f = &x->files[i];
		idd_buf_put(&b, f->name.b, 32);
		idd_buf_put_u64(&b, f->size);
		idd_buf_put_u64(&b, f->nframes);
		idd_buf_put_u64(&b, f->nslots);
		idd_buf_put_u64(&b, f->ft_size);
		idd_buf_put_u64(&b, f->ft_ino);
		idd_buf_put_u64(&b, (uint64_t)f->ft_mtime_ns);
	}
	idd_buf_put_u64(&b, x->nruns);
	for (size_t i = 0; i < x->nruns; i++) {
		const idd_pack_idxrun *r = &x->runs[i];
		idd_buf_put_u64(&b, r->seq);
		idd_buf_put_u64(&b, r->entries);
		idd_buf_put_u64(&b, r->size);
		idd_buf_put_u64(&b, r->ino);
		idd_buf_put_u64(&b, (uint64_t)r->mtime_ns);
	}
	idd_buf_put_u64(&b, x->nlists);
	for (size_t i = 0; i < x->nlists; i++) {
		const idd_pack_list *l = &x->lists[i];
		idd_buf_put(&b, l->list_key.b, 32);
		idd_buf_put_u64(&b, l->nblocks);
		idd_buf_put_u64(&b, l->zero_blocks);
		idd_buf_put_u64(&b, l->ndistinct);
		idd_buf_put_u64(&b, l->unpacked);
	}
	char *path = idd_path_join(index_dir, IDD_PACK_INDEX_FILE, err);
	int rc = b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory writing the pack index")
	         : !path  ? IDD_ENOMEM
	                  : idd_indexfile_write(path, PKI_MAGIC, PKI_VERSION, b.data, b.len, true, err);
	free(path);
	idd_buf_free(&b);
	return rc;
}
