/* profile.c - boot profiles (see profile.h). */
#include "node/profile.h"
#include "base/digest.h"
#include "index/indexfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define HEADER                                                                                 \
	"# imgdedup read profile: image id, tab, block number, tab, its content's SHA-256, in order " \
	"of first read\n"

/* A line's fields after the id: "BLOCK" or "BLOCK<TAB>DIGEST". */
static bool parse_fields(char *s, uint64_t *block, idd_digest *d)
{
	char *num_end = NULL;
	errno = 0;
	unsigned long long b = strtoull(s, &num_end, 10);
	if (errno || num_end == s || (*num_end && *num_end != '\t'))
		return false;
	*block = b;
	memset(d, 0, sizeof *d);
	if (!*num_end)
		return true;
	const char *hex = num_end + 1;
	if (strlen(hex) != 2 * IDD_DIGEST_SIZE)
		return false;
	for (size_t i = 0; i < IDD_DIGEST_SIZE; i++) {
		unsigned v;
		if (sscanf(hex + 2 * i, "%2x", &v) != 1 || !strchr("0123456789abcdef", hex[2 * i]) ||
		    !strchr("0123456789abcdef", hex[2 * i + 1]))
			return false;
		d->b[i] = (unsigned char)v;
	}
	return true;
}

int idd_profile_load(const char *path, idd_profile *pf, idd_error *err)
{
	memset(pf, 0, sizeof *pf);
	void *data;
	size_t len;
	int rc = idd_read_file(path, (size_t)1 << 30, &data, &len, err);
	if (rc)
		return rc;
	char *p = data, *end = p + len;
	size_t lineno = 0;
	while (!rc && p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		char *line_end = nl ? nl : end;
		lineno++;
		if (line_end > p && *p != '#') {
			char *tab = memchr(p, '\t', (size_t)(line_end - p));
			uint64_t b = 0;
			idd_digest d;
			*line_end = 0;
			if (!tab || !parse_fields(tab + 1, &b, &d)) {
				rc = idd_fail_code(err, IDD_ECORRUPT,
				                   "%s: line %zu: not 'IMAGE<TAB>BLOCK[<TAB>DIGEST]'", path, lineno);
				break;
			}
			char **ni = realloc(pf->ids, (pf->n + 1) * sizeof *ni);
			if (ni)
				pf->ids = ni;
			uint64_t *nb = ni ? realloc(pf->blocks, (pf->n + 1) * sizeof *nb) : NULL;
			if (nb)
				pf->blocks = nb;
			idd_digest *nd = nb ? realloc(pf->digests, (pf->n + 1) * sizeof *nd) : NULL;
			if (nd)
				pf->digests = nd;
			char *id = nd ? strndup(p, (size_t)(tab - p)) : NULL;
			if (!id) {
				rc = idd_fail_code(err, IDD_ENOMEM, "%s: out of memory", path);
				break;
			}
			pf->ids[pf->n] = id;
			pf->digests[pf->n] = d;
			pf->blocks[pf->n++] = b;
		}
		p = nl ? nl + 1 : end;
	}
	free(data);
	if (rc)
		idd_profile_free(pf);
	return rc;
}

void idd_profile_free(idd_profile *pf)
{
	for (size_t i = 0; i < pf->n; i++)
		free(pf->ids[i]);
	free(pf->ids);
	free(pf->blocks);
	free(pf->digests);
	memset(pf, 0, sizeof *pf);
}

int idd_profile_writer_begin(idd_profile_writer *w, idd_error *err)
{
	memset(w, 0, sizeof *w);
	idd_buf_put(&w->b, HEADER, strlen(HEADER));
	return w->b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory") : IDD_OK;
}

int idd_profile_writer_add(idd_profile_writer *w, const char *id, const idd_map *m,
                           const uint64_t *blocks, size_t n, idd_error *err)
{
	if (strpbrk(id, "\t\n"))
		return IDD_OK;
	for (size_t k = 0; k < n; k++) {
		char line[128], hex[2 * IDD_DIGEST_SIZE + 1] = "";
		uint32_t ref = m && blocks[k] < m->nblocks ? idd_map_ref(m, blocks[k]) : 0;
		if (ref)
			idd_digest_hex(&m->digests[ref - 1], hex);
		int l = snprintf(line, sizeof line, "\t%llu%s%s\n", (unsigned long long)blocks[k],
		                 ref ? "\t" : "", hex);
		idd_buf_put(&w->b, id, strlen(id));
		idd_buf_put(&w->b, line, (size_t)l);
	}
	return w->b.failed ? idd_fail_code(err, IDD_ENOMEM, "out of memory") : IDD_OK;
}

int idd_profile_writer_commit(idd_profile_writer *w, const char *path, idd_error *err)
{
	return idd_write_file_atomic(path, w->b.data, w->b.len, err);
}

void idd_profile_writer_free(idd_profile_writer *w)
{
	idd_buf_free(&w->b);
}

int idd_profile_digests(const idd_profile *pf, const char *id, const idd_map *m,
                        idd_digest **out, size_t *n, idd_error *err)
{
	*out = NULL;
	*n = 0;
	idd_digest *v = idd_calloc(pf->n ? pf->n : 1, sizeof *v, err);
	if (!v)
		return IDD_ENOMEM;
	size_t w = 0;
	for (size_t i = 0; i < pf->n; i++) {
		if (strcmp(pf->ids[i], id))
			continue;
		if (!idd_digest_is_zero(&pf->digests[i])) {
			v[w++] = pf->digests[i];
			continue;
		}
		uint32_t ref = m && pf->blocks[i] < m->nblocks ? idd_map_ref(m, pf->blocks[i]) : 0;
		if (ref)
			v[w++] = m->digests[ref - 1];
	}
	*out = v;
	*n = w;
	return IDD_OK;
}

/* The image's content: each distinct digest of m, with the first block
 * holding it as the set's value. */
static int content_index(const idd_map *m, idd_digest_set *set, idd_error *err)
{
	if (idd_digest_set_init(set, (size_t)IDD_MAX(m->ndistinct, 16), true, err))
		return IDD_ERR;
	for (size_t r = 0; r < m->nruns; r++) {
		const idd_map_span *sp = &m->runs[r];
		if (sp->kind == IDD_RUN_ZERO)
			continue;
		uint64_t count = sp->kind == IDD_RUN_SAME ? 1 : sp->count;
		for (uint64_t k = 0; k < count; k++) {
			uint32_t ref = sp->ref + (uint32_t)k;
			bool added;
			size_t slot = idd_digest_set_add(set, &m->digests[ref - 1], &added, err);
			if (slot == (size_t)-1) {
				idd_digest_set_free(set);
				return IDD_ERR;
			}
			if (added)
				set->aux[slot] = sp->block + k;
		}
	}
	return IDD_OK;
}

/* How many digests of p the image holds. */
static size_t overlap(const idd_boot_profile *p, const idd_digest_set *set)
{
	size_t c = 0;
	for (size_t i = 0; i < p->n; i++)
		c += idd_digest_set_find(set, &p->digests[i]) != (size_t)-1;
	return c;
}

static size_t common_prefix(const char *a, const char *b)
{
	size_t i = 0;
	while (a[i] && a[i] == b[i])
		i++;
	return i;
}

struct candidate {
	const char *id;
	size_t prefix;
	uint64_t count;
};

static int cmp_candidate(const void *a, const void *b)
{
	const struct candidate *x = a, *y = b;
	if (x->prefix != y->prefix)
		return x->prefix > y->prefix ? -1 : 1;
	if (x->count != y->count)
		return x->count > y->count ? -1 : 1;
	return strcmp(x->id, y->id);
}

/* The profile most of whose content the image holds, among the published
 * ones (those of images named most like it first, when there are more than
 * max of them).  *best is empty when none overlaps. */
static int borrow(idd_remote_index *ri, const idd_profiles_index *x, const char *id,
                  const idd_digest_set *set, size_t max, idd_boot_profile *best, idd_error *err)
{
	memset(best, 0, sizeof *best);
	int rc = IDD_OK;
	struct candidate *c = idd_calloc(x->n + 1, sizeof *c, err);
	if (!c)
		return IDD_ENOMEM;
	size_t nc = 0;
	for (size_t i = 0; i < x->n; i++)
		if (strcmp(x->ids[i], id) && x->counts[i])
			c[nc++] = (struct candidate){x->ids[i], common_prefix(x->ids[i], id), x->counts[i]};
	qsort(c, nc, sizeof *c, cmp_candidate);
	size_t best_overlap = 0;
	for (size_t i = 0; !rc && i < nc && i < max; i++) {
		idd_boot_profile p;
		idd_error e;
		int prc = idd_remote_index_profile(ri, c[i].id, &p, &e);
		if (prc == IDD_ENOMEM)
			rc = idd_fail_code(err, IDD_ENOMEM, "%s", e.msg);
		if (prc)
			continue; /* unpublished meanwhile, or damaged: not a reason to fail */
		size_t o = overlap(&p, set);
		if (o > best_overlap) {
			best_overlap = o;
			idd_boot_profile_free(best);
			*best = p;
		} else {
			idd_boot_profile_free(&p);
		}
	}
	free(c);
	return rc;
}

int idd_profile_choose(idd_remote_index *ri, const char *id, const idd_map *m,
                       size_t max_candidates, uint64_t **blocks, size_t *n, char **from,
                       idd_error *err)
{
	*blocks = NULL;
	*n = 0;
	*from = NULL;
	idd_digest_set set;
	if (content_index(m, &set, err))
		return IDD_ERR;
	/* one request when nothing is published: the list of profiles */
	idd_profiles_index x;
	idd_boot_profile p = {0};
	int rc = idd_remote_index_profiles(ri, &x, err);
	if (rc) {
		idd_digest_set_free(&set);
		return rc == IDD_ENOENT ? IDD_OK : rc;
	}
	bool own = false;
	for (size_t i = 0; i < x.n && !own; i++)
		own = !strcmp(x.ids[i], id);
	if (own && (rc = idd_remote_index_profile(ri, id, &p, err)) && rc != IDD_ENOMEM)
		rc = IDD_OK; /* a damaged or vanished own profile: borrow rather than fail */
	if (!rc && !p.n)
		rc = borrow(ri, &x, id, &set, max_candidates, &p, err);
	idd_profiles_index_free(&x);
	uint64_t *v = NULL;
	size_t w = 0;
	if (!rc && p.n && !(v = idd_calloc(p.n, sizeof *v, err)))
		rc = IDD_ENOMEM;
	for (size_t i = 0; !rc && i < p.n; i++) {
		size_t slot = idd_digest_set_find(&set, &p.digests[i]);
		if (slot != (size_t)-1)
			v[w++] = set.aux[slot];
	}
	if (!rc && w && !(*from = idd_strdup(p.id, err)))
		rc = IDD_ENOMEM;
	if (!rc && w) {
		*blocks = v;
		*n = w;
	} else {
		free(v);
	}
	idd_boot_profile_free(&p);
	idd_digest_set_free(&set);
	return rc;
}

/* The index directory of o, locked (*lockfd) and with its catalog. */
static int open_index(const idd_profile_publish_opts *o, bool in_catalog, char **index_dir,
                      int *lockfd, idd_catalog **cat, idd_error *err)
{
	*cat = NULL;
	*lockfd = -1;
	if (!o->image || !*o->image)
		return idd_fail(err, "profile: an IMAGE is required");
	if (idd_index_path(o->repo, o->index_dir, index_dir, err))
		return IDD_ERR;
	int rc = idd_lock(*index_dir, o->no_wait, lockfd, err);
	if (!rc && (rc = idd_catalog_load(*index_dir, cat, err)) == IDD_ENOENT)
		idd_error_prefix(err, "no index (run 'imgdedup scan' and 'imgdedup map' first)");
	if (!rc && in_catalog && !idd_catalog_find(*cat, o->image))
		rc = idd_fail_code(err, IDD_ENOENT, "%s: not an image of the index %s", o->image,
		                   *index_dir);
	if (rc) {
		idd_catalog_free(*cat);
		*cat = NULL;
		if (*lockfd >= 0)
			idd_unlock(*lockfd);
		free(*index_dir);
		*index_dir = NULL;
	}
	return rc;
}

int idd_profile_publish(const idd_profile_publish_opts *o, uint64_t *digests, idd_error *err)
{
	*digests = 0;
	if (!o->file)
		return idd_fail(err, "profile publish: a profile FILE is required");
	idd_profile pf;
	int rc = idd_profile_load(o->file, &pf, err);
	if (rc)
		return rc;
	char *index_dir;
	int lockfd;
	idd_catalog *cat;
	if ((rc = open_index(o, true, &index_dir, &lockfd, &cat, err))) {
		idd_profile_free(&pf);
		return rc;
	}
	/* blocks recorded without their digest are named by the current map */
	idd_map *m = NULL;
	for (size_t i = 0; !rc && !m && i < pf.n; i++)
		if (!strcmp(pf.ids[i], o->image) && idd_digest_is_zero(&pf.digests[i]))
			rc = idd_map_load(index_dir, o->image, &m, err);
	idd_boot_profile bp = {.id = (char *)o->image, .block_size = cat->block_size};
	if (!rc)
		rc = idd_profile_digests(&pf, o->image, m, &bp.digests, &bp.n, err);
	if (!rc && !bp.n)
		rc = idd_fail_code(err, IDD_ENOENT, "%s: no block of %s is in the profile", o->file,
		                   o->image);
	if (!rc)
		rc = idd_boot_profile_store(index_dir, &bp, err);
	if (!rc) {
		idd_profiles_index x;
		bool found = false;
		if (!idd_profiles_index_load(index_dir, &x, err)) {
			for (size_t i = 0; i < x.n && !found; i++)
				if ((found = !strcmp(x.ids[i], o->image)))
					*digests = x.counts[i];
			idd_profiles_index_free(&x);
		}
	}
	free(bp.digests);
	idd_map_free(m);
	idd_catalog_free(cat);
	idd_unlock(lockfd);
	free(index_dir);
	idd_profile_free(&pf);
	return rc;
}

int idd_profile_unpublish(const idd_profile_publish_opts *o, idd_error *err)
{
	char *index_dir;
	int lockfd;
	idd_catalog *cat;
	/* a removed image's profile can still be removed */
	int rc = open_index(o, false, &index_dir, &lockfd, &cat, err);
	if (rc)
		return rc;
	rc = idd_boot_profile_remove(index_dir, o->image, err);
	idd_catalog_free(cat);
	idd_unlock(lockfd);
	free(index_dir);
	return rc;
}
