/* source_seed.c - seeds: read-only local raw images named by the user
 * (--seed), known through their block map when they are copies of a
 * repository image, hashed otherwise.  Only digests the caller still needs
 * are looked for; every block is verified again when it is read. */
#include "node/source_seed.h"
#include "base/file.h"
#include "index/catalog.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* How many blocks of a seed found by name are read and compared with its
 * map before the map is believed (a renamed or reused file fails here). */
#define SEED_SPOT_CHECKS 8
#define HASH_RUN ((size_t)1 << 20)

struct seed {
	char *path;
	int fd;
	uint64_t size;
	atomic_bool warned;
};

struct seeds {
	struct seed *v;
	size_t n;
	idd_digest_set where; /* digest -> seed << 40 | block (read-only once built) */
	uint32_t bs;
};


/* Open a seed without hanging on a FIFO or following it into a device. */
static int seed_open(struct seed *sd, const char *path, idd_error *err)
{
	sd->fd = idd_open_regular(path, O_RDONLY, 0, err);
	if (sd->fd < 0) {
		idd_error_prefix(err, "seed");
		return sd->fd; /* the code */
	}
	struct stat st;
	if (fstat(sd->fd, &st))
		return idd_fail_errno(err, path, "stat");
	sd->size = (uint64_t)st.st_size;
	sd->path = idd_strdup(path, err);
	return sd->path ? IDD_OK : IDD_ENOMEM;
}

static bool seed_block_is(idd_hasher *h, struct seed *sd, uint32_t bs, uint64_t b,
                          const idd_digest *want, unsigned char *buf)
{
	uint64_t off = b * bs;
	if (off >= sd->size)
		return false;
	size_t n = (size_t)IDD_MIN((uint64_t)bs, sd->size - off);
	memset(buf + n, 0, bs - n);
	return idd_pread_all(sd->fd, buf, n, off) == 0 && idd_block_verify(h, buf, bs, want);
}

/* The record of image id, or NULL (not there, not a valid id, the source
 * failing: the seed is then hashed, which is never wrong). */
static const idd_image_info *record(idd_remote_index *ri, const char *id)
{
	const idd_image_info *in = NULL;
	idd_error e;
	return idd_remote_index_image(ri, id, &in, &e) ? NULL : in;
}

/* The id a seed named as deploy names its output would be (cache.h:
 * '/' as "%2F", '%' as "%25", a leading '.' as "%2E", "%.raw" or, in older
 * versions, ".raw" appended): suffix is the one to drop ("" for none);
 * NULL when base does not end with it. */
static char *unflatten(const char *base, const char *suffix)
{
	size_t n = strlen(base), sl = strlen(suffix);
	if (n <= sl || strcmp(base + n - sl, suffix))
		return NULL;
	n -= sl;
	char *id = malloc(n + 1), *w = id;
	static const char codes[][3] = {"2F", "25", "2E"}, chars[] = "/%.";
	for (size_t i = 0; id && i < n; i++) {
		int k = -1;
		for (int c = 0; k < 0 && c < 3 && i + 3 <= n && base[i] == '%'; c++)
			if (!strncmp(base + i + 1, codes[c], 2))
				k = c;
		*w++ = k < 0 ? base[i] : chars[k];
		if (k >= 0)
			i += 2;
	}
	if (id)
		*w = 0;
	return id;
}

/* The repository image a seed is a copy of, if any: the seed's real path
 * inside a local SOURCE (*same_file when its identity is the one scanned);
 * else an image of the same size whose id is the seed's name, or whose
 * cache name it is (one entry each); else, from the whole catalog, the one
 * image of that size whose id or cache name ends like the seed's name. */
static const idd_image_info *seed_candidate(idd_remote_index *ri, struct seed *sd, bool *same_file)
{
	*same_file = false;
	struct stat st;
	if (fstat(sd->fd, &st))
		return NULL;
	const idd_image_info *in = NULL;
	if (!idd_source_is_remote(ri->src)) {
		char *root = realpath(idd_source_root(ri->src), NULL);
		char *real = realpath(sd->path, NULL);
		size_t rl = root ? strlen(root) : 0;
		if (root && real && !strncmp(real, root, rl) && real[rl] == '/')
			in = record(ri, real + rl + 1);
		free(root);
		free(real);
		if (in && !in->member[0] && !strcmp(in->format, "raw") && in->dev == (uint64_t)st.st_dev &&
		    in->ino == (uint64_t)st.st_ino && in->file_size == (uint64_t)st.st_size &&
		    in->mtime_ns == idd_ts_ns(st.st_mtim) && in->ctime_ns == idd_ts_ns(st.st_ctim)) {
			*same_file = true;
			return in;
		}
	}
	if (in && in->virtual_size == sd->size)
		return in;
	const char *base = strrchr(sd->path, '/');
	base = base ? base + 1 : sd->path;
	static const char *const suffixes[] = {"", "%.raw", ".raw"};
	for (int k = 0; k < 4; k++) {
		char *id = k == 0 ? strdup(base) : unflatten(base, suffixes[k - 1]);
		in = id ? record(ri, id) : NULL;
		free(id);
		if (in && in->virtual_size == sd->size)
			return in;
	}
	const idd_catalog *cat;
	idd_error e;
	if (idd_remote_index_catalog(ri, &cat, &e))
		return NULL;
	const idd_image_info *found = NULL;
	for (size_t i = 0; i < cat->count; i++) {
		const idd_image_info *c = &cat->images[i];
		if (c->virtual_size != sd->size)
			continue;
		const char *cb = strrchr(c->id, '/');
		cb = cb ? cb + 1 : c->id;
		bool match = !strcmp(cb, base);
		if (!match) { /* a deploy into another cache: images/<flattened id> */
			idd_error e2;
			char *flat = idd_cache_default_out(".", c->id, &e2);
			const char *fb = flat ? strrchr(flat, '/') : NULL;
			match = fb && !strcmp(fb + 1, base);
			free(flat);
			if (!match) { /* or a cache of an older version */
				flat = idd_cache_old_out(".", c->id, &e2);
				fb = flat ? strrchr(flat, '/') : NULL;
				match = fb && !strcmp(fb + 1, base);
				free(flat);
			}
		}
		if (match) {
			if (found)
				return NULL; /* ambiguous: hash it */
			found = c;
		}
	}
	return found;
}

static int note(struct seeds *S, idd_digest_set *want, const idd_digest *d, size_t s, uint64_t b,
                idd_error *err)
{
	size_t slot = idd_digest_set_find(want, d);
	if (slot == (size_t)-1 || want->aux[slot])
		return IDD_OK; /* not wanted, or already found in an earlier place */
	want->aux[slot] = 1;
	bool added;
	size_t ws = idd_digest_set_add(&S->where, d, &added, err);
	if (ws == (size_t)-1)
		return IDD_ENOMEM;
	if (added)
		S->where.aux[ws] = (uint64_t)s << 40 | b;
	return IDD_OK;
}

/* Use the seed's map instead of hashing it: every block is still verified
 * when it is read.  False (hash the seed) when no map fits. */
static bool seed_from_map(struct seeds *S, size_t s, idd_remote_index *ri, const idd_image_info *self,
                          const idd_map *self_map, idd_digest_set *want, idd_hasher *h)
{
	struct seed *sd = &S->v[s];
	bool same_file;
	const idd_image_info *in = seed_candidate(ri, sd, &same_file);
	if (!in)
		return false;
	idd_map *loaded = NULL;
	const idd_map *m = self_map; /* a copy of the very image being assembled */
	if (in != self && (strcmp(in->id, self->id) || memcmp(in->list_key.b, self->list_key.b, 32))) {
		idd_error e2; /* a missing or bad map is not an error: hash instead */
		if (idd_remote_index_map(ri, in, &loaded, &e2))
			return false;
		m = loaded;
	}
	bool ok = true;
	if (!same_file) { /* found by name only: a few blocks must agree */
		unsigned char *buf = malloc(S->bs);
		uint64_t nz = idd_map_nonzero_blocks(m);
		uint64_t step = nz / SEED_SPOT_CHECKS + 1, seen = 0;
		ok = buf != NULL;
		for (size_t ri2 = 0; ok && ri2 < m->nruns; ri2++) {
			const idd_map_span *sp = &m->runs[ri2];
			if (sp->kind == IDD_RUN_ZERO)
				continue;
			for (uint64_t b = sp->block; ok && b < sp->block + sp->count; b++)
				if (seen++ % step == 0)
					ok = seed_block_is(h, sd, S->bs, b, &m->digests[idd_map_span_ref(sp, b) - 1], buf);
		}
		free(buf);
	}
	for (size_t ri2 = 0; ok && ri2 < m->nruns; ri2++) {
		const idd_map_span *sp = &m->runs[ri2];
		if (sp->kind == IDD_RUN_ZERO)
			continue;
		for (uint64_t b = sp->block; ok && b < sp->block + sp->count; b++) {
			idd_error e3;
			if (note(S, want, &m->digests[idd_map_span_ref(sp, b) - 1], s, b, &e3))
				ok = false;
		}
	}
	idd_map_free(loaded);
	return ok;
}

static int seed_hash(struct seeds *S, size_t s, idd_digest_set *want, idd_hasher *h, idd_error *err)
{
	struct seed *sd = &S->v[s];
	uint32_t bs = S->bs;
	unsigned char *buf = idd_malloc(HASH_RUN, err);
	idd_digest *dg = idd_calloc(HASH_RUN / bs, sizeof *dg, err);
	int rc = (!buf || !dg) ? IDD_ENOMEM : IDD_OK;
	uint64_t off = 0;
	while (!rc && off < sd->size) {
		off_t ds = lseek(sd->fd, (off_t)off, SEEK_DATA);
		if (ds < 0)
			break;
		off_t he = lseek(sd->fd, ds, SEEK_HOLE);
		uint64_t end = he < 0 ? sd->size : IDD_MIN((uint64_t)he, sd->size);
		for (uint64_t b = (uint64_t)ds / bs; !rc && b * bs < end;) {
			uint64_t start = b * bs;
			uint64_t len = IDD_MIN((uint64_t)HASH_RUN, sd->size - start);
			uint64_t nb = (len + bs - 1) / bs;
			memset(buf, 0, nb * bs);
			uint64_t hashed = 0;
			if (idd_pread_all(sd->fd, buf, (size_t)len, start)) {
				rc = idd_fail_errno(err, sd->path, "read");
				break;
			}
			if ((rc = idd_hash_blocks(h, buf, (size_t)(nb * bs), bs, dg, &hashed, err)))
				break;
			for (uint64_t i = 0; !rc && i < nb; i++)
				if (!idd_digest_is_zero(&dg[i]))
					rc = note(S, want, &dg[i], s, b + i, err);
			b += nb;
		}
		off = end;
	}
	free(buf);
	free(dg);
	return rc;
}

static bool seeds_has(idd_block_source *bs, const idd_digest *d)
{
	struct seeds *S = bs->priv;
	return idd_digest_set_find(&S->where, d) != (size_t)-1;
}

static int seeds_read(idd_block_source *bs, idd_block_req *reqs, size_t n, idd_error *err)
{
	struct seeds *S = bs->priv;
	idd_hasher *h = idd_thread_hasher(err);
	if (!h)
		return IDD_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		idd_block_req *q = &reqs[i];
		q->status = IDD_ENOENT;
		q->origin_fd = -1;
		size_t slot = idd_digest_set_find(&S->where, &q->digest);
		if (slot == (size_t)-1)
			continue;
		uint64_t v = S->where.aux[slot];
		struct seed *sd = &S->v[v >> 40];
		uint64_t b = v & (((uint64_t)1 << 40) - 1);
		if (seed_block_is(h, sd, S->bs, b, &q->digest, q->buf)) {
			q->status = IDD_OK;
			q->origin_fd = sd->fd;
			q->origin_off = b * S->bs;
			atomic_fetch_add(&bs->blocks, 1);
			atomic_fetch_add(&bs->bytes, S->bs);
			continue;
		}
		q->status = IDD_ECORRUPT;
		atomic_fetch_add(&bs->damaged, 1);
		if (!atomic_exchange(&sd->warned, true))
			idd_warnf(bs->warn, bs->warn_ctx, "warning: seed %s: block at offset %llu is not what it "
			          "was (changed while deploying, or not the indexed image); fetching what it "
			          "would have provided", sd->path, (unsigned long long)(b * S->bs));
	}
	return IDD_OK;
}

static void seeds_close(idd_block_source *bs)
{
	struct seeds *S = bs->priv;
	if (S) {
		for (size_t i = 0; i < S->n; i++) {
			if (S->v[i].fd >= 0)
				close(S->v[i].fd);
			free(S->v[i].path);
		}
		free(S->v);
		idd_digest_set_free(&S->where);
		free(S);
	}
	idd_block_source_fini(bs);
	free(bs);
}

static const struct idd_block_source_ops seed_ops = {"seed", seeds_has, seeds_read, seeds_close};

int idd_seed_source_open(const char *const *paths, size_t n, idd_remote_index *ri,
                         const idd_image_info *self, const idd_map *self_map, idd_digest_set *want,
                         idd_warn_fn warn, void *ctx, uint64_t *mapped, idd_block_source **out,
                         idd_error *err)
{
	*mapped = 0;
	idd_block_source *bs = idd_calloc(1, sizeof *bs, err);
	struct seeds *S = idd_calloc(1, sizeof *S, err);
	if (!bs || !S) {
		free(bs);
		free(S);
		return IDD_ENOMEM;
	}
	bs->priv = S;
	S->bs = self_map->block_size;
	int rc = idd_block_source_init(bs, &seed_ops, n ? paths[0] : "seed", S->bs, warn, ctx, err);
	if (!rc)
		rc = idd_digest_set_init(&S->where, want->count + 16, true, err);
	if (!rc && n && !(S->v = idd_calloc(n, sizeof *S->v, err)))
		rc = IDD_ENOMEM;
	for (size_t i = 0; !rc && i < n; i++) {
		S->v[i].fd = -1;
		S->n = i + 1;
		atomic_init(&S->v[i].warned, false);
		rc = seed_open(&S->v[i], paths[i], err);
	}
	idd_hasher *h = rc ? NULL : idd_thread_hasher(err);
	if (!rc && !h)
		rc = IDD_ENOMEM;
	/* want->aux marks digests found already: clear it */
	for (size_t i = 0; !rc && i < want->cap; i++)
		want->aux[i] = 0;
	for (size_t i = 0; !rc && i < S->n && want->count; i++) {
		if (seed_from_map(S, i, ri, self, self_map, want, h))
			(*mapped)++;
		else
			rc = seed_hash(S, i, want, h, err);
	}
	if (rc) {
		seeds_close(bs);
		return rc;
	}
	*out = bs;
	return IDD_OK;
}
