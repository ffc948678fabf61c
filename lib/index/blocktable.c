/* blocktable.c - the repository-wide block table: for each distinct non-zero
 * digest, how many images hold it.  Kept as a log-structured merge of sorted
 * runs of signed counts (LevelDB's compaction is the model): a change of k
 * images reads those k block lists, writes one run of +1/-1 entries, and
 * merges runs of similar size, so a cron run costs what changed plus an
 * amortised merge that grows with the logarithm of the repository.  A
 * manifest names the runs and the images (with their lists) they count.
 * Layout: docs/formats.md ("Block table"). */
#include "index/blocktable.h"
#include "index/catalog.h"
#include "index/indexfile.h"
#include "index/indexdir.h"
#include "base/digest.h"
#include "base/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const char BTI_MAGIC[8] = {'I', 'D', 'D', '-', 'B', 'T', 'I', 0};
static const char BTR_MAGIC[8] = {'I', 'D', 'D', '-', 'B', 'T', 'R', 0};
#define BT_VERSION 2
#define BT_ENTRY 36
#define BT_INDEX_FILE "index"
#define BT_RUN_PREFIX "run-"
/* a run is merged into the one before it once it is at least 1/BT_RATIO of
 * its size: at most log_BT_RATIO(table / change) runs exist */
#define BT_RATIO 2
/* a file whose mtime is this close to the manifest's writing may have been
 * changed again within the timestamp granularity: check it by reading it */
#define BT_RACY_NS ((int64_t)2 * 1000000000)

size_t idd_blocktable_buffer_entries = (size_t)8 << 20; /* 288 MiB */

/* Internal result: the table cannot be updated from what it says; count
 * everything afresh. */
#define BT_REBUILD 1

struct bt_entry {
	unsigned char d[32];
	int32_t count;
};

static int64_t file_mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
}

/* ---- runs on disk ---- */

static char *run_path(const char *dir, uint64_t seq, idd_error *err)
{
	return idd_asprintf(err, "%s/" BT_RUN_PREFIX "%016llx", dir, (unsigned long long)seq);
}

static void run_unmap(idd_bt_run *r)
{
	if (r->map)
		munmap((void *)r->map, r->map_len);
	r->map = NULL;
}

static const unsigned char *run_at(const idd_bt_run *r, uint64_t i)
{
	return r->map + IDD_IF_HEADER + i * BT_ENTRY;
}

/* Map a run and check its container header (not its checksum: that costs
 * a read of the whole file, done when its file changed and by verify). */
static int run_map(const char *dir, idd_bt_run *r, idd_error *err)
{
	char *path = run_path(dir, r->seq, err);
	if (!path)
		return IDD_ERR;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int rc = IDD_OK;
	struct stat st;
	if (fd < 0 || fstat(fd, &st)) {
		rc = idd_fail_errno(err, path, "cannot open");
	} else if (!S_ISREG(st.st_mode) || st.st_size < IDD_IF_HEADER + IDD_IF_TRAILER ||
	           ((uint64_t)st.st_size - IDD_IF_HEADER - IDD_IF_TRAILER) % BT_ENTRY) {
		rc = idd_fail_code(err, IDD_ECORRUPT, "%s: not a block table run (size %lld)", path,
		                   (long long)st.st_size);
	} else {
		void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
		if (m == MAP_FAILED) {
			rc = idd_fail_errno(err, path, "mmap");
		} else {
			r->map = m;
			r->map_len = (size_t)st.st_size;
			uint64_t payload = (uint64_t)st.st_size - IDD_IF_HEADER - IDD_IF_TRAILER;
			if (memcmp(r->map, BTR_MAGIC, 8) || idd_le32(r->map + 8) != BT_VERSION ||
			    idd_le32(r->map + 12) != 0 || idd_le64(r->map + 16) != payload ||
			    idd_le64(r->map + 24) != payload || payload / BT_ENTRY != r->entries) {
				rc = idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block table run header", path);
				run_unmap(r);
			}
		}
	}
	if (!rc) {
		r->size = (uint64_t)st.st_size;
		r->ino = (uint64_t)st.st_ino;
		r->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	}
	if (fd >= 0)
		close(fd);
	free(path);
	return rc;
}

/* Drop the pages of a run's entries [dropped_to, upto) from this process's
 * resident set: lookups and merges walk a run forwards and never come back,
 * and the budget is memory, not the table's size. */
static void run_drop_until(idd_bt_run *r, uint64_t upto)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint64_t page = pg > 0 ? (uint64_t)pg : 4096;
	uint64_t from = (IDD_IF_HEADER + r->dropped_to * BT_ENTRY) / page * page;
	uint64_t to = (IDD_IF_HEADER + upto * BT_ENTRY) / page * page;
	if (to > from)
		madvise((void *)(r->map + from), (size_t)(to - from), MADV_DONTNEED);
	if (upto > r->dropped_to)
		r->dropped_to = upto;
}

/* Lookups in digest order drop what lies behind them once it is worth a
 * syscall (256 KiB); random ones (pos going back) drop everything every
 * few thousand lookups. */
static void run_touch(idd_bt_run *r, uint64_t pos)
{
	if (pos >= r->dropped_to) {
		if ((pos - r->dropped_to) * BT_ENTRY >= (256u << 10))
			run_drop_until(r, pos);
		return;
	}
	if (++r->touched >= 2048) {
		madvise((void *)r->map, r->map_len, MADV_DONTNEED);
		r->touched = 0;
		r->dropped_to = 0;
	}
}

/* Count of d in r, searching from *pos (lookups come in digest order:
 * galloping forward from the last position); *pos ends at d's lower bound. */
static int32_t run_seek(idd_bt_run *r, uint64_t *pos, const unsigned char *d)
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
	run_touch(r, lo);
	if (lo < n && !memcmp(run_at(r, lo), d, 32))
		return (int32_t)idd_le32(run_at(r, lo) + 32);
	return 0;
}

/* A run being written: entries streamed into an index file
 * (idd_indexfile_out), counted. */
struct run_out {
	idd_indexfile_out f;
	uint64_t entries;
};

static int out_open(struct run_out *o, const char *dir, uint64_t seq, idd_error *err)
{
	memset(o, 0, sizeof *o);
	o->f.fd = -1;
	char *path = run_path(dir, seq, err);
	int rc = path ? idd_indexfile_out_begin(&o->f, path, BTR_MAGIC, BT_VERSION, err) : IDD_ERR;
	free(path);
	return rc;
}

static void out_discard(struct run_out *o)
{
	idd_indexfile_out_abort(&o->f);
}

static int out_put(struct run_out *o, const unsigned char *d, int32_t count, idd_error *err)
{
	unsigned char e[BT_ENTRY];
	memcpy(e, d, 32);
	idd_le32_put(e + 32, (uint32_t)count);
	if (idd_indexfile_out_append(&o->f, e, sizeof e, err))
		return IDD_ERR;
	o->entries++;
	return IDD_OK;
}

static int out_finish(struct run_out *o, idd_error *err)
{
	return idd_indexfile_out_finish(&o->f, NULL, err);
}

/* ---- the manifest ---- */

static void table_free_parts(idd_blocktable *bt)
{
	for (size_t i = 0; i < bt->nruns; i++)
		run_unmap(&bt->runs[i]);
	free(bt->runs);
	for (size_t i = 0; i < bt->nimages; i++)
		free(bt->images[i].id);
	free(bt->images);
	bt->runs = NULL;
	bt->images = NULL;
	bt->nruns = bt->nimages = 0;
}

void idd_blocktable_free(idd_blocktable *bt)
{
	if (!bt)
		return;
	table_free_parts(bt);
	if (bt->lists_fd_open && bt->lists_fd >= 0)
		close(bt->lists_fd);
	free(bt->dir);
	free(bt);
}

static int parse_manifest(const char *path, idd_blocktable *bt, const void *p, size_t len,
                          idd_error *err)
{
	idd_reader r;
	idd_reader_init(&r, p, len);
	uint64_t nruns, nimg;
	uint64_t written;
	if (!idd_get_u64(&r, &bt->next_seq) || !idd_get_u64(&r, &written) ||
	    !idd_get_u64(&r, &bt->entries) ||
	    !idd_get_u64(&r, &nruns) || nruns > idd_reader_left(&r) / 40)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block table index", path);
	bt->written_ns = (int64_t)written;
	if (!(bt->runs = idd_calloc((size_t)nruns + 1, sizeof *bt->runs, err)))
		return IDD_ERR;
	for (uint64_t i = 0; i < nruns; i++) {
		idd_bt_run *ru = &bt->runs[bt->nruns++];
		uint64_t mt;
		if (!idd_get_u64(&r, &ru->seq) || !idd_get_u64(&r, &ru->entries) ||
		    !idd_get_u64(&r, &ru->size) || !idd_get_u64(&r, &ru->ino) || !idd_get_u64(&r, &mt) ||
		    ru->seq >= bt->next_seq || (i && ru->seq <= bt->runs[i - 1].seq))
			return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block table index", path);
		ru->mtime_ns = (int64_t)mt;
	}
	if (!idd_get_u64(&r, &nimg) || nimg > idd_reader_left(&r) / 73)
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block table index", path);
	if (!(bt->images = idd_calloc((size_t)nimg + 1, sizeof *bt->images, err)))
		return IDD_ERR;
	for (uint64_t i = 0; i < nimg; i++) {
		idd_bt_image *im = &bt->images[bt->nimages++];
		uint64_t mt;
		if (!idd_get_str(&r, &im->id, 4096) || !idd_get_bytes(&r, im->list_key.b, 32) ||
		    !idd_get_u64(&r, &im->nblocks) || !idd_get_u64(&r, &im->zero_blocks) ||
		    !idd_get_u64(&r, &im->list_size) || !idd_get_u64(&r, &im->list_ino) ||
		    !idd_get_u64(&r, &mt) || (i && strcmp(bt->images[i - 1].id, im->id) >= 0))
			return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block table index", path);
		im->list_mtime_ns = (int64_t)mt;
	}
	if (idd_reader_left(&r))
		return idd_fail_code(err, IDD_ECORRUPT, "%s: corrupt block table index (trailing bytes)",
		                     path);
	return IDD_OK;
}

int idd_blocktable_open(const char *index_dir, idd_blocktable **out, idd_error *err)
{
	idd_blocktable *bt = idd_calloc(1, sizeof *bt, err);
	if (!bt)
		return IDD_ERR;
	char *path = NULL;
	void *p = NULL;
	size_t len;
	uint32_t version = 0;
	int rc = (bt->dir = idd_path_join(index_dir, IDD_BLOCKTABLE_DIR, err)) &&
	                 (path = idd_path_join(bt->dir, BT_INDEX_FILE, err))
	             ? IDD_OK
	             : IDD_ERR;
	if (!rc)
		rc = idd_indexfile_read(path, BTI_MAGIC, BT_VERSION, &p, &len, &version, err);
	if (!rc && version < BT_VERSION)
		rc = idd_fail_code(err, IDD_ENOENT, "%s: block table of an older imgdedup", path);
	if (!rc)
		rc = parse_manifest(path, bt, p, len, err);
	for (size_t i = 0; !rc && i < bt->nruns; i++)
		rc = run_map(bt->dir, &bt->runs[i], err);
	free(p);
	free(path);
	if (rc) {
		idd_blocktable_free(bt);
		return rc;
	}
	*out = bt;
	return IDD_OK;
}

static int save_manifest(const idd_blocktable *bt, idd_error *err)
{
	idd_buf b = {0};
	idd_buf_put_u64(&b, bt->next_seq);
	idd_buf_put_u64(&b, (uint64_t)idd_now_ns());
	idd_buf_put_u64(&b, bt->entries);
	idd_buf_put_u64(&b, bt->nruns);
	for (size_t i = 0; i < bt->nruns; i++) {
		const idd_bt_run *r = &bt->runs[i];
		idd_buf_put_u64(&b, r->seq);
		idd_buf_put_u64(&b, r->entries);
		idd_buf_put_u64(&b, r->size);
		idd_buf_put_u64(&b, r->ino);
		idd_buf_put_u64(&b, (uint64_t)r->mtime_ns);
	}
	idd_buf_put_u64(&b, bt->nimages);
	for (size_t i = 0; i < bt->nimages; i++) {
		const idd_bt_image *im = &bt->images[i];
		idd_buf_put_str(&b, im->id);
		idd_buf_put(&b, im->list_key.b, 32);
		idd_buf_put_u64(&b, im->nblocks);
		idd_buf_put_u64(&b, im->zero_blocks);
		idd_buf_put_u64(&b, im->list_size);
		idd_buf_put_u64(&b, im->list_ino);
		idd_buf_put_u64(&b, (uint64_t)im->list_mtime_ns);
	}
	char *path = idd_path_join(bt->dir, BT_INDEX_FILE, err);
	int rc = b.failed ? idd_fail(err, "out of memory writing the block table")
	         : path  ? idd_indexfile_write(path, BTI_MAGIC, BT_VERSION, b.data, b.len, true, err)
	                 : IDD_ERR;
	free(path);
	idd_buf_free(&b);
	return rc;
}

static const idd_bt_image *find_image(const idd_blocktable *bt, const char *id)
{
	size_t lo = 0, hi = bt->nimages;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(bt->images[mid].id, id);
		if (!c)
			return &bt->images[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static bool counted(const idd_blocktable *bt, const idd_image_info *im)
{
	const idd_bt_image *b = find_image(bt, im->id);
	return b && !memcmp(b->list_key.b, im->list_key.b, 32);
}

bool idd_blocktable_matches(const idd_blocktable *bt, const idd_catalog *cat)
{
	if (bt->nimages != cat->count)
		return false;
	for (size_t i = 0; i < cat->count; i++)
		if (!counted(bt, &cat->images[i]))
			return false;
	return true;
}

int idd_blocktable_count(idd_blocktable *bt, const idd_digest *d, int64_t *count, idd_error *err)
{
	(void)err;
	int64_t c = 0;
	for (size_t i = 0; i < bt->nruns; i++) {
		uint64_t pos = 0;
		c += run_seek(&bt->runs[i], &pos, d->b);
	}
	*count = c;
	return IDD_OK;
}

static bool stat_list(idd_blocktable *bt, const char *index_dir, const idd_digest *key,
                      uint64_t *size, uint64_t *ino, int64_t *mtime_ns)
{
	if (!bt->lists_fd_open) {
		char *d = idd_path_join(index_dir, IDD_BLOCKS_DIR, NULL);
		bt->lists_fd = d ? open(d, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
		bt->lists_fd_open = true;
		free(d);
	}
	char hex[2 * IDD_DIGEST_SIZE + 1];
	idd_digest_hex(key, hex);
	struct stat st;
	bool ok = bt->lists_fd >= 0 && fstatat(bt->lists_fd, hex, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	          S_ISREG(st.st_mode);
	if (ok) {
		*size = (uint64_t)st.st_size;
		*ino = (uint64_t)st.st_ino;
		*mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	}
	return ok;
}

bool idd_blocktable_list_trusted(idd_blocktable *bt, const char *index_dir,
                                 const idd_image_info *im)
{
	idd_bt_image *b = (idd_bt_image *)find_image(bt, im->id);
	uint64_t size, ino;
	int64_t mt;
	if (!b || memcmp(b->list_key.b, im->list_key.b, 32) || b->nblocks != im->nblocks ||
	    b->zero_blocks != im->zero_blocks || !stat_list(bt, index_dir, &im->list_key, &size, &ino, &mt) ||
	    size != b->list_size || ino != b->list_ino || mt != b->list_mtime_ns ||
	    mt + BT_RACY_NS > bt->written_ns)
		return false;
	b->seen = true;
	return true;
}

uint64_t idd_blocktable_bytes(const char *index_dir)
{
	char *dir = idd_path_join(index_dir, IDD_BLOCKTABLE_DIR, NULL);
	uint64_t total = dir ? idd_dir_bytes(dir, false) : 0;
	free(dir);
	return total;
}

/* ---- updating ---- */

struct update {
	idd_blocktable *bt;        /* the table as it is being changed */
	struct bt_entry *buf;      /* changes not yet written as a run */
	size_t n, cap;
	idd_bt_update_stats *st;
	idd_error *err;
};

static int cmp_entry(const void *a, const void *b)
{
	return memcmp(((const struct bt_entry *)a)->d, ((const struct bt_entry *)b)->d, 32);
}

static int run_append(struct update *u, const idd_bt_run *r)
{
	idd_blocktable *bt = u->bt;
	idd_bt_run *v = idd_realloc_array(bt->runs, bt->nruns + 1, sizeof *v, u->err);
	if (!v)
		return IDD_ERR;
	bt->runs = v;
	bt->runs[bt->nruns++] = *r;
	return IDD_OK;
}

/* Merge runs i and i+1 (adjacent) into one new run in place of both.
 * Merging into the oldest run drops the counts that fell to zero there;
 * a count below zero at the bottom means the table was wrong. */
static int merge_pair(struct update *u, size_t i)
{
	idd_blocktable *bt = u->bt;
	idd_bt_run *a = &bt->runs[i], *b = &bt->runs[i + 1];
	bool bottom = i == 0;
	struct run_out o;
	idd_bt_run nr = {.seq = bt->next_seq++};
	int rc = out_open(&o, bt->dir, nr.seq, u->err);
	uint64_t x = 0, y = 0, steps = 0;
	const unsigned char *prev = NULL;
	madvise((void *)a->map, a->map_len, MADV_SEQUENTIAL);
	madvise((void *)b->map, b->map_len, MADV_SEQUENTIAL);
	while (!rc && (x < a->entries || y < b->entries)) {
		const unsigned char *ea = x < a->entries ? run_at(a, x) : NULL;
		const unsigned char *eb = y < b->entries ? run_at(b, y) : NULL;
		int c = !ea ? 1 : !eb ? -1 : memcmp(ea, eb, 32);
		const unsigned char *d = c <= 0 ? ea : eb;
		int64_t sum = 0;
		if (c <= 0)
			sum += (int32_t)idd_le32(ea + 32), x++;
		if (c >= 0)
			sum += (int32_t)idd_le32(eb + 32), y++;
		if (prev && memcmp(prev, d, 32) >= 0) {
			rc = BT_REBUILD; /* unsorted input */
			break;
		}
		prev = d;
		if (++steps % 8192 == 0) {
			run_drop_until(a, x);
			run_drop_until(b, y);
		}
		if (sum < 0 && bottom) {
			rc = BT_REBUILD;
			break;
		}
		if (sum > INT32_MAX || sum < INT32_MIN) {
			rc = idd_fail(u->err, "%s: block table count overflow", bt->dir);
			break;
		}
		if (sum)
			rc = out_put(&o, d, (int32_t)sum, u->err);
	}
	if (!rc && o.entries == 0) { /* everything cancelled: no run at all */
		out_discard(&o);
	} else if (!rc && !(rc = out_finish(&o, u->err))) {
		u->st->bytes_written += IDD_IF_HEADER + o.entries * BT_ENTRY + IDD_IF_TRAILER;
		nr.entries = o.entries;
		out_discard(&o);
		rc = run_map(bt->dir, &nr, u->err);
	} else {
		out_discard(&o);
	}
	if (rc)
		return rc;
	run_unmap(a);
	run_unmap(b);
	if (nr.entries) {
		bt->runs[i] = nr;
		memmove(&bt->runs[i + 1], &bt->runs[i + 2], (bt->nruns - i - 2) * sizeof *bt->runs);
		bt->nruns--;
	} else {
		memmove(&bt->runs[i], &bt->runs[i + 2], (bt->nruns - i - 2) * sizeof *bt->runs);
		bt->nruns -= 2;
	}
	return IDD_OK;
}

static int compact(struct update *u)
{
	idd_blocktable *bt = u->bt;
	while (bt->nruns >= 2 &&
	       bt->runs[bt->nruns - 1].entries * BT_RATIO >= bt->runs[bt->nruns - 2].entries) {
		int rc = merge_pair(u, bt->nruns - 2);
		if (rc)
			return rc;
	}
	return IDD_OK;
}

/* Write the buffered changes as a run: sort, sum equal digests, count the
 * digests that appear or vanish against the runs already there. */
static int flush(struct update *u)
{
	idd_blocktable *bt = u->bt;
	if (!u->n)
		return IDD_OK;
	qsort(u->buf, u->n, sizeof *u->buf, cmp_entry);
	size_t w = 0;
	for (size_t i = 0; i < u->n;) {
		int64_t sum = 0;
		size_t j = i;
		for (; j < u->n && !memcmp(u->buf[j].d, u->buf[i].d, 32); j++)
			sum += u->buf[j].count;
		if (sum) {
			memcpy(u->buf[w].d, u->buf[i].d, 32);
			u->buf[w].count = (int32_t)sum;
			w++;
		}
		i = j;
	}
	u->n = 0;
	if (!w)
		return IDD_OK;
	uint64_t *pos = idd_calloc(bt->nruns + 1, sizeof *pos, u->err);
	if (!pos)
		return IDD_ERR;
	int64_t entries = (int64_t)bt->entries;
	for (size_t i = 0; i < w; i++) {
		int64_t old = 0;
		for (size_t r = 0; r < bt->nruns; r++)
			old += run_seek(&bt->runs[r], &pos[r], u->buf[i].d);
		int64_t now = old + u->buf[i].count;
		if (old < 0 || now < 0) {
			free(pos);
			return BT_REBUILD;
		}
		entries += (now > 0) - (old > 0);
	}
	free(pos);
	for (size_t r = 0; r < bt->nruns; r++) { /* the next pass starts from the first entry */
		run_drop_until(&bt->runs[r], bt->runs[r].entries);
		bt->runs[r].dropped_to = 0;
		bt->runs[r].touched = 0;
	}
	bt->entries = (uint64_t)entries;
	struct run_out o;
	idd_bt_run nr = {.seq = bt->next_seq++};
	int rc = out_open(&o, bt->dir, nr.seq, u->err);
	for (size_t i = 0; !rc && i < w; i++)
		rc = out_put(&o, u->buf[i].d, u->buf[i].count, u->err);
	if (!rc)
		rc = out_finish(&o, u->err);
	nr.entries = o.entries;
	out_discard(&o);
	if (!rc)
		rc = run_map(bt->dir, &nr, u->err);
	if (!rc) {
		u->st->runs_written++;
		u->st->bytes_written += nr.size;
		rc = run_append(u, &nr);
	}
	return rc ? rc : compact(u);
}

/* Add (sign +1) or take away (-1) one image's distinct digests. */
static int add_list(struct update *u, const idd_blocklist *bl, int sign)
{
	idd_digest_set set;
	if (idd_digest_set_init(&set, (size_t)IDD_MAX(bl->ndata, 16), false, u->err))
		return IDD_ERR;
	int rc = IDD_OK;
	for (uint64_t q = 0; q < bl->ndata; q++) {
		bool added;
		if (idd_digest_set_add(&set, &bl->digests[q], &added, u->err) == (size_t)-1) {
			rc = IDD_ERR;
			break;
		}
	}
	for (size_t s = 0; !rc && s < set.cap; s++) {
		if (idd_digest_is_zero(&set.slots[s]))
			continue;
		if (u->n == u->cap && (rc = flush(u)))
			break;
		memcpy(u->buf[u->n].d, set.slots[s].b, 32);
		u->buf[u->n].count = sign;
		u->n++;
	}
	idd_digest_set_free(&set);
	return rc;
}

/* Is the list in the current format?  Only those have their identity
 * recorded, so that a list trusted by its identity needs no upgrade. */
static bool list_is_current(const char *index_dir, const idd_digest *key)
{
	char *p = idd_blocks_path(index_dir, key, NULL);
	int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
	unsigned char hdr[12];
	bool ok = fd >= 0 && idd_pread_all(fd, hdr, sizeof hdr, 0) == 0 &&
	          idd_le32(hdr + 8) == IDD_BLOCKLIST_VERSION;
	if (fd >= 0)
		close(fd);
	free(p);
	return ok;
}

/* keep: the image's record in the old table, whose file identity still
 * holds (NULL: take it from the file now). */
static int record_image(struct update *u, const char *index_dir, const idd_image_info *im,
                        const idd_bt_image *keep)
{
	idd_blocktable *bt = u->bt;
	idd_bt_image *v = idd_realloc_array(bt->images, bt->nimages + 1, sizeof *v, u->err);
	if (!v)
		return IDD_ERR;
	bt->images = v;
	idd_bt_image *b = &bt->images[bt->nimages];
	memset(b, 0, sizeof *b);
	if (!(b->id = idd_strdup(im->id, u->err)))
		return IDD_ERR;
	bt->nimages++;
	b->list_key = im->list_key;
	b->nblocks = im->nblocks;
	b->zero_blocks = im->zero_blocks;
	if (keep) {
		b->list_size = keep->list_size;
		b->list_ino = keep->list_ino;
		b->list_mtime_ns = keep->list_mtime_ns;
	} else if (!stat_list(bt, index_dir, &im->list_key, &b->list_size, &b->list_ino,
	                      &b->list_mtime_ns) ||
	           !list_is_current(index_dir, &im->list_key))
		b->list_size = UINT64_MAX; /* never trusted without a read */
	return IDD_OK;
}

static int cmp_bt_image(const void *a, const void *b)
{
	return strcmp(((const idd_bt_image *)a)->id, ((const idd_bt_image *)b)->id);
}

/* Is every run as it was written?  A run whose file changed (size, inode,
 * mtime) is checked in full; damage means counting afresh. */
static bool runs_intact(idd_blocktable *bt, idd_warn_fn warn, void *ctx)
{
	for (size_t i = 0; i < bt->nruns; i++) {
		idd_bt_run *r = &bt->runs[i];
		char *p = run_path(bt->dir, r->seq, NULL);
		struct stat st;
		bool same = p && stat(p, &st) == 0 && (uint64_t)st.st_size == r->size &&
		            (uint64_t)st.st_ino == r->ino && file_mtime_ns(&st) == r->mtime_ns &&
		            r->mtime_ns + BT_RACY_NS <= bt->written_ns;
		idd_error e;
		if (!same && p && idd_indexfile_verify(p, BTR_MAGIC, BT_VERSION, NULL, NULL, &e)) {
			idd_warnf(warn, ctx, "%s; the block table is rebuilt", e.msg);
			free(p);
			return false;
		}
		free(p);
	}
	return true;
}

/* Remove run files the manifest does not name, and the shards of the
 * table's older format. */
static void remove_unnamed(const idd_blocktable *bt)
{
	DIR *d = opendir(bt->dir);
	struct dirent *de;
	bool changed = false;
	while (d && (de = readdir(d))) {
		if (de->d_name[0] == '.' || !strcmp(de->d_name, BT_INDEX_FILE))
			continue;
		bool named = false;
		unsigned long long seq;
		char tail;
		if (sscanf(de->d_name, BT_RUN_PREFIX "%16llx%c", &seq, &tail) == 1 &&
		    strlen(de->d_name) == strlen(BT_RUN_PREFIX) + 16)
			for (size_t i = 0; i < bt->nruns && !named; i++)
				named = bt->runs[i].seq == seq;
		if (named)
			continue;
		char *p = idd_path_join(bt->dir, de->d_name, NULL);
		if (p && unlink(p) == 0)
			changed = true;
		free(p);
	}
	if (d)
		closedir(d);
	if (changed)
		(void)idd_fsync_dir(bt->dir, NULL);
}

/* Highest run number any file in the directory uses, so that a new run
 * never takes the name of one an older manifest may still name. */
static uint64_t next_free_seq(const char *dir, uint64_t at_least)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d && (de = readdir(d))) {
		unsigned long long seq;
		if (sscanf(de->d_name, BT_RUN_PREFIX "%16llx", &seq) == 1 && seq + 1 > at_least)
			at_least = seq + 1;
	}
	if (d)
		closedir(d);
	return at_least;
}

/* One attempt: from the table as opened (or from nothing when old is NULL). */
static int apply(struct update *u, const char *index_dir, const idd_catalog *cat,
                 const idd_blocktable *old, bool *dropped, bool lists_checked, idd_warn_fn warn,
                 void *ctx)
{
	idd_error *err = u->err;
	/* images no longer counted as they were: take their old lists away */
	for (size_t i = 0; old && i < old->nimages; i++) {
		const idd_bt_image *b = &old->images[i];
		const idd_image_info *now = idd_catalog_find(cat, b->id);
		if (now && !memcmp(now->list_key.b, b->list_key.b, 32))
			continue;
		idd_image_info im = {.id = b->id, .list_key = b->list_key, .nblocks = b->nblocks,
		                     .zero_blocks = b->zero_blocks};
		idd_blocklist *bl;
		idd_error e;
		int orc = idd_blocklist_open(index_dir, &im, &bl, &e);
		if (orc == IDD_ENOMEM) {
			*err = e;
			return IDD_ERR;
		}
		if (orc)
			return BT_REBUILD; /* the old list is gone: the change cannot be undone */
		u->st->lists_read++;
		int rc = add_list(u, bl, -1);
		idd_blocklist_free(bl);
		if (rc)
			return rc;
	}
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *im = &cat->images[i];
		if (old && counted(old, im)) {
			/* a file that changed stays untrusted; one found as
			 * recorded this run keeps its record */
			const idd_bt_image *ob = find_image(old, im->id);
			if (record_image(u, index_dir, im, !lists_checked || ob->seen ? ob : NULL))
				return IDD_ERR;
			continue;
		}
		idd_blocklist *bl;
		idd_error e;
		int orc = idd_blocklist_open(index_dir, im, &bl, &e);
		if (orc == IDD_ENOMEM || (orc && !dropped)) {
			*err = e;
			return IDD_ERR;
		}
		if (orc) {
			idd_warnf(warn, ctx, "%s (dropped from the index; it is read again next run)", e.msg);
			dropped[i] = true;
			continue;
		}
		u->st->lists_read++;
		int rc = add_list(u, bl, +1);
		idd_blocklist_free(bl);
		if (rc || (rc = record_image(u, index_dir, im, NULL)))
			return rc;
	}
	int rc = flush(u);
	if (rc)
		return rc;
	qsort(u->bt->images, u->bt->nimages, sizeof *u->bt->images, cmp_bt_image);
	return IDD_OK;
}

/* Do the recorded file identities of the lists differ from what is on
 * disk now (lists rewritten and checked since)?  A list recorded within a
 * moment of the manifest is checked by reading it on every run rather
 * than the manifest rewritten for it: a run that changes nothing writes
 * nothing. */
static bool list_stats_stale(idd_blocktable *bt, const char *index_dir)
{
	for (size_t i = 0; i < bt->nimages; i++) {
		const idd_bt_image *b = &bt->images[i];
		if (b->seen)
			continue;
		uint64_t size = UINT64_MAX, ino = 0;
		int64_t mt = 0;
		(void)stat_list(bt, index_dir, &b->list_key, &size, &ino, &mt);
		if (size != b->list_size || ino != b->list_ino || mt != b->list_mtime_ns)
			return true;
	}
	return false;
}

int idd_blocktable_update(const char *index_dir, idd_blocktable *opened, const idd_catalog *cat,
                          bool *dropped,
                          bool lists_checked, idd_bt_update_stats *st, idd_warn_fn warn, void *ctx,
                          idd_error *err)
{
	memset(st, 0, sizeof *st);
	if (dropped)
		memset(dropped, 0, cat->count * sizeof *dropped);
	idd_blocktable *old = opened, *own = NULL;
	idd_error e;
	int orc = old ? IDD_OK : idd_blocktable_open(index_dir, &own, &e);
	if (!opened)
		old = own;
	if (orc == IDD_ENOMEM) {
		*err = e;
		return IDD_ERR;
	}
	if (orc && orc != IDD_ENOENT) {
		idd_warnf(warn, ctx, "%s; the block table is rebuilt", e.msg);
		st->repaired = true;
	}
	if (old && !runs_intact(old, warn, ctx)) {
		st->repaired = true;
		idd_blocktable_free(own);
		old = own = NULL;
	}
	if (old && idd_blocktable_matches(old, cat) &&
	    !(lists_checked && list_stats_stale(old, index_dir))) {
		st->entries = old->entries;
		idd_blocktable_free(own);
		return IDD_OK;
	}
	char *dir = idd_path_join(index_dir, IDD_BLOCKTABLE_DIR, err);
	if (!dir || idd_mkdir_p(dir, err)) {
		free(dir);
		idd_blocktable_free(own);
		return IDD_ERR;
	}
	struct update u = {.st = st, .err = err, .cap = IDD_MAX(idd_blocktable_buffer_entries, 1)};
	int rc = (u.buf = idd_calloc(u.cap, sizeof *u.buf, err)) ? IDD_OK : IDD_ERR;
	for (int attempt = 0; !rc && attempt < 2; attempt++) {
		bool fresh = !old || attempt == 1;
		if (!(u.bt = idd_calloc(1, sizeof *u.bt, err)) || !(u.bt->dir = idd_strdup(dir, err))) {
			rc = IDD_ERR;
			break;
		}
		u.n = 0;
		u.bt->next_seq = next_free_seq(dir, old ? old->next_seq : 0);
		if (!fresh) { /* continue from the old runs, mapped afresh */
			u.bt->entries = old->entries;
			for (size_t i = 0; !rc && i < old->nruns; i++) {
				idd_bt_run r = {.seq = old->runs[i].seq, .entries = old->runs[i].entries};
				rc = run_map(dir, &r, err);
				if (!rc && (rc = run_append(&u, &r)))
					run_unmap(&r);
			}
		}
		st->rebuilt = fresh;
		st->lists_read = 0;
		if (!rc)
			rc = apply(&u, index_dir, cat, fresh ? NULL : old, dropped, lists_checked, warn, ctx);
		if (rc == BT_REBUILD && !fresh) {
			idd_warnf(warn, ctx, "%s: the block table does not match the block lists; rebuilt",
			          dir);
			st->repaired = true;
			idd_blocktable_free(u.bt);
			u.bt = NULL;
			if (dropped)
				memset(dropped, 0, cat->count * sizeof *dropped);
			rc = IDD_OK;
			continue;
		}
		if (rc == BT_REBUILD)
			rc = idd_fail(err, "%s: block lists disagree with each other while counting", dir);
		break;
	}
	/* the runs' renames are durable before the manifest names them */
	if (!rc)
		rc = idd_fsync_dir(dir, err);
	if (!rc)
		rc = save_manifest(u.bt, err);
	if (!rc) {
		remove_unnamed(u.bt);
		st->entries = u.bt->entries;
	}
	free(u.buf);
	idd_blocktable_free(u.bt);
	idd_blocktable_free(own);
	free(dir);
	return rc;
}
