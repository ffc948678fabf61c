/* serve_store.c - a verified block kept: written into the export's partial
 * file and made known to the cache, or, once the image is complete, written
 * back into it in place (a repair). */
#include "node/serve_internal.h"
#include "base/file.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int serve_partial_open_locked(idd_export *e, idd_error *err)
{
	if (e->part)
		return IDD_OK;
	idd_server *s = e->srv;
	int rc = idd_partial_open(e->base, e->id, e->m, &e->part, err);
	if (!rc && (rc = idd_cache_partial_entry(s->cache, e->part->data_path, e->part->journal_path,
	                                         e->size, &e->part_entry, err))) {
		idd_partial_close(e->part);
		e->part = NULL;
	}
	return rc;
}

/* Caching is best effort: a block that was fetched and verified is served
 * whether or not the cache can keep it (a full disk, a cache directory
 * removed or tampered with).  Each failure is counted; the first one per
 * export is a warning, the rest would only repeat it. */
void serve_cache_write_failed(idd_export *e, const idd_error *why)
{
	idd_server *s = e->srv;
	atomic_fetch_add(&e->c.cache_write_errors, 1);
	atomic_store(&e->cache_failing, true);
	if (!atomic_exchange(&e->warned_cache_write, true))
		idd_warnf(s->o.node.warn, s->o.node.ctx,
		          "warning: %s: the cache cannot keep fetched blocks: %s; they are served "
		          "without being cached (counted as cache_write_errors)", e->id, why->msg);
}

/* The complete image should have held it (damaged, or written for an older
 * map): the verified block goes back into it, and the whole file gets
 * checked.  Trouble writing there does not fail the read. */
static bool repair_write_locked(idd_export *e, uint64_t block, const unsigned char *buf)
{
	idd_error e2 = {{0}, 0};
	if (e->repair_fd < 0) {
		e->repair_fd = idd_open_regular(e->final_path, O_RDWR, IDD_FILE_NOFOLLOW, &e2);
		/* in use: gc leaves it; removed meanwhile: nothing to repair */
		if (e->repair_fd >= 0 && idd_flock_shared(e->repair_fd, e->final_path) == 1) {
			close(e->repair_fd);
			e->repair_fd = -1;
			idd_fail_code(&e2, IDD_ENOENT, "%s: removed", e->final_path);
		}
	}
	uint64_t len = IDD_MIN((uint64_t)e->bs, e->size - block * e->bs);
	bool ok = e->repair_fd >= 0;
	if (ok && idd_pwrite_all(e->repair_fd, buf, (size_t)len, block * e->bs)) {
		idd_fail_errno(&e2, e->final_path, "write");
		ok = false;
	}
	if (ok)
		atomic_store(&e->repair_wanted, true);
	else if (!e->repair_warned) {
		e->repair_warned = true;
		idd_warnf(e->srv->o.node.warn, e->srv->o.node.ctx, "warning: %s: cannot repair the cached image: %s",
		          e->id, e2.msg);
	}
	return ok;
}

/* A verified block into the partial file, known to the cache from now on,
 * journaled at the next flush.  A failure is counted and returned; readers
 * serve the block anyway. */
int serve_store_block(idd_export *e, uint64_t block, const idd_digest *d, const unsigned char *buf,
                       idd_error *err)
{
	pthread_mutex_lock(&e->part_lock);
	if (e->complete) {
		/* own: here the blocks repaired (counted once, however often written) */
		bool added = false;
		if (repair_write_locked(e, block, buf) && idd_u64set_add(&e->own, block, &added))
			added = false;
		pthread_mutex_unlock(&e->part_lock);
		if (added)
			atomic_fetch_add(&e->c.blocks_filled, 1);
		return IDD_OK;
	}
	int rc = serve_partial_open_locked(e, err);
	bool added = false;
	if (!rc) {
		/* a block this file already holds is fetched only when its copy
		 * failed verification: writing it again repairs the file */
		uint64_t len = IDD_MIN((uint64_t)e->bs, e->size - block * e->bs);
		bool have = idd_u64set_has(&e->own, block);
		rc = idd_partial_write(e->part, block, buf, (size_t)len, err);
		if (!rc && !have)
			rc = idd_partial_note(e->part, block, d, err);
		if (!rc && !have)
			rc = idd_u64set_add(&e->own, block, &added);
	}
	size_t entry = e->part_entry;
	pthread_mutex_unlock(&e->part_lock);
	if (!rc)
		rc = idd_cache_add_block(e->srv->cache, entry, d, block, err);
	if (!rc && added)
		atomic_fetch_add(&e->c.blocks_filled, 1);
	if (rc)
		serve_cache_write_failed(e, err);
	else
		atomic_store(&e->cache_failing, false);
	return rc;
}
