/* plan.c - sorting an image's blocks by where their content comes from,
 * and opening the sources a fetch asks (plan.h). */
#include "node/plan.h"
#include "node/source_pack.h"
#include "node/source_peer.h"
#include "node/source_remote.h"

#include <stdlib.h>
#include <string.h>

int idd_blist_push(idd_blist *l, uint64_t b, idd_error *err)
{
	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 1024;
		uint64_t *nv = idd_realloc_array(l->v, nc, sizeof *nv, err);
		if (!nv)
			return IDD_ENOMEM;
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n++] = b;
	return IDD_OK;
}

void idd_blist_free(idd_blist *l)
{
	free(l->v);
	memset(l, 0, sizeof *l);
}

int idd_plan_init(idd_plan *p, const idd_map *m, idd_error *err)
{
	memset(p, 0, sizeof *p);
	p->m = m;
	p->bs = m->block_size;
	uint64_t nd = m->ndistinct;
	p->origin = idd_calloc(nd + 1, 1, err);
	p->pos = p->origin ? idd_malloc((nd + 1) * sizeof *p->pos, err) : NULL;
	if (!p->pos) {
		idd_plan_free(p);
		return IDD_ENOMEM;
	}
	for (uint64_t k = 0; k <= nd; k++)
		p->pos[k] = UINT64_MAX;
	return IDD_OK;
}

void idd_plan_free(idd_plan *p)
{
	free(p->origin);
	free(p->pos);
	free(p->valid);
	memset(p, 0, sizeof *p);
}

void idd_plan_have(idd_plan *p, uint64_t block, uint32_t ref)
{
	if (p->pos[ref] == UINT64_MAX)
		p->pos[ref] = block;
	p->origin[ref] = IDD_PLAN_HAVE;
	if (p->nvalid == p->cap_valid) {
		size_t nc = p->cap_valid ? p->cap_valid * 2 : 1024;
		uint64_t *nv = realloc(p->valid, nc * sizeof *nv);
		if (!nv) {
			p->valid_oom = true;
			return;
		}
		p->valid = nv;
		p->cap_valid = nc;
	}
	p->valid[p->nvalid++] = block;
}

void idd_plan_locate(idd_plan *p, idd_block_source *src)
{
	if (!src || !src->ops->has)
		return;
	for (uint64_t k = 1; k <= p->m->ndistinct; k++)
		if (p->origin[k] == IDD_PLAN_FETCH && src->ops->has(src, &p->m->digests[k - 1]))
			p->origin[k] = IDD_PLAN_LOCAL;
}

uint64_t idd_plan_count_fetch(const idd_plan *p)
{
	uint64_t n = 0;
	for (uint64_t k = 1; k <= p->m->ndistinct; k++)
		n += p->origin[k] == IDD_PLAN_FETCH;
	return n;
}

static bool is_valid(const idd_plan *p, uint64_t b)
{
	size_t lo = 0, hi = p->nvalid;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (p->valid[mid] < b)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < p->nvalid && p->valid[lo] == b;
}

int idd_plan_sort(idd_plan *p, idd_blist *local, idd_blist *fetch, idd_blist *repeat,
                  idd_plan_settled *st, idd_error *err)
{
	const idd_map *m = p->m;
	memset(st, 0, sizeof *st);
	for (size_t ri = 0; ri < m->nruns; ri++) {
		const idd_map_span *sp = &m->runs[ri];
		if (sp->kind == IDD_RUN_ZERO) {
			uint64_t end = sp->block + sp->count;
			st->bytes_zero += IDD_MIN(end * p->bs, m->image_size) - sp->block * p->bs;
			continue;
		}
		for (uint64_t b = sp->block; b < sp->block + sp->count; b++) {
			uint64_t len = IDD_MIN((uint64_t)p->bs, m->image_size - b * p->bs);
			if (p->nvalid && is_valid(p, b)) {
				st->bytes_valid += len;
				continue;
			}
			uint32_t k = idd_map_span_ref(sp, b);
			int rc = IDD_OK;
			if (p->pos[k] != UINT64_MAX) {
				if (repeat)
					rc = idd_blist_push(repeat, b, err);
			} else {
				p->pos[k] = b; /* this block is the digest's first copy, whoever writes it */
				rc = idd_blist_push(p->origin[k] == IDD_PLAN_LOCAL ? local : fetch, b, err);
			}
			if (rc)
				return rc;
		}
	}
	return IDD_OK;
}

int idd_fetch_sources_open(idd_fetch_sources *fs, idd_remote_index *ri, const idd_image_info *info,
                           const idd_map *m, const idd_fetch_sources_opts *o, idd_error *err)
{
	memset(fs, 0, sizeof *fs);
	int rc;
	if (o->estimate) {
		rc = idd_remote_source_open_estimate(info, m->image_size, m->block_size, &fs->remote, err);
	} else {
		idd_fetch_opts fo = {.connections = o->connections, .warn = o->warn, .ctx = o->ctx,
		                     .timeout_s = o->timeout_s, .cancel = o->cancel};
		rc = idd_remote_source_open(idd_source_root(ri->src), info, m->image_size, m->block_size,
		                            o->tmp_dir, o->readers > 0 ? o->readers : 1, &fo, o->warn,
		                            o->ctx, &fs->remote, err);
	}
	if (rc)
		return rc;
	if (o->shared_peer && !o->estimate) {
		fs->peer = o->shared_peer;
		fs->peer_shared = true;
	} else if (o->n_peers && !o->estimate) {
		/* peers are a shortcut: failing to open them is a warning */
		idd_fetch_opts pfo = {.warn = o->warn, .ctx = o->ctx};
		idd_error e2;
		if (idd_peer_source_open(o->peers, o->n_peers, m->block_size, &pfo, o->warn, o->ctx,
		                         &fs->peer, &e2))
			idd_warnf(o->warn, o->ctx, "warning: peers not used: %s", e2.msg);
	}
	if (!o->no_pack) {
		/* the pack, when SOURCE has one for this image: fewer bytes; any
		 * trouble with it is a warning and the images are read instead */
		idd_error e2;
		int prc = o->estimate
		              ? idd_pack_source_open_estimate(ri->isrc, ri->prefix, m, o->warn, o->ctx,
		                                              &fs->pack, &e2)
		              : idd_pack_source_open(ri->isrc, ri->prefix, m, o->warn, o->ctx, &fs->pack, &e2);
		if (prc == IDD_ENOMEM) {
			*err = e2;
			idd_fetch_sources_close(fs);
			return prc;
		}
		if (prc && prc != IDD_ENOENT && o->name)
			idd_warnf(o->warn, o->ctx, "warning: %s: pack not used: %s", o->name, e2.msg);
		else if (prc && prc != IDD_ENOENT)
			idd_warnf(o->warn, o->ctx, "warning: pack not used: %s", e2.msg);
		if (!prc)
			fs->index_bytes = idd_pack_source_index_bytes(fs->pack);
	}
	return IDD_OK;
}

void idd_fetch_sources_chain(const idd_fetch_sources *fs, idd_block_chain *c)
{
	IDD_BLOCK_CHAIN_OF(c, fs->peer, fs->pack, fs->remote);
}

uint64_t idd_fetch_sources_bytes(const idd_fetch_sources *fs)
{
	idd_block_source_counters rc = {0}, kc = {0};
	idd_block_source_counters_get(fs->remote, &rc);
	idd_block_source_counters_get(fs->pack, &kc);
	return rc.bytes + kc.bytes;
}

void idd_fetch_sources_close(idd_fetch_sources *fs)
{
	if (!fs->peer_shared)
		idd_block_source_close(fs->peer);
	idd_block_source_close(fs->pack);
	idd_block_source_close(fs->remote);
	memset(fs, 0, sizeof *fs);
}
