/* indexdir.h - the files of an index directory (indexdir.c): how a
 * temporary is named, one iterator over a directory of the index that
 * tells index files from leftovers, the collector that removes what no one
 * needs, and the bytes a directory holds.  Every module that lists, sizes
 * or cleans the index goes through here, so the rules are written once. */
#ifndef IDD_INDEX_INDEXDIR_H
#define IDD_INDEX_INDEXDIR_H

#include "base/util.h"

#include <sys/stat.h>

/* ---- directories ---- */
int idd_fsync_dir(const char *dir, idd_error *err);
int idd_mkdir_p(const char *path, idd_error *err);

/* ---- names ---- */
/* The temporary this process writes before renaming onto FINAL:
 * FINAL.tmp.PID (so that a later run can tell whether its writer lives). */
char *idd_tmp_path(const char *final, idd_error *err);
/* Is NAME (a file name, no directory) a temporary: does it contain ".tmp."?
 * *pid (may be NULL) receives its writer's process id when the suffix
 * starts with one (NAME.tmp.PID, sort.tmp.PID.XXXXXX), else 0. */
bool idd_tmp_name(const char *name, long *pid);

/* ---- iterating ---- */
typedef enum idd_entry_kind {
	IDD_ENTRY_FILE,  /* a regular file or a link with an index file's name */
	IDD_ENTRY_TEMP,  /* a temporary (see idd_tmp_name) */
	IDD_ENTRY_DOT,   /* a name starting with '.': never the index's own */
	IDD_ENTRY_OTHER, /* a directory (when not descended), fifo, socket or device */
} idd_entry_kind;

typedef struct idd_dir_entry {
	const char *name; /* within its directory */
	const char *rel;  /* relative to the directory walked */
	const char *path; /* the full path */
	struct stat st;   /* lstat (links not followed) with IDD_DIR_STAT; else only
	                   * st_mode's file type is sure to be set */
	idd_entry_kind kind;
	long pid;         /* a temporary's writer, 0 when unknown */
	bool writer_alive; /* a temporary whose writer is still running */
} idd_dir_entry;

/* A callback returns IDD_OK to go on; anything else stops the walk and is
 * returned. */
typedef int (*idd_dir_fn)(void *ctx, const idd_dir_entry *e, idd_error *err);

#define IDD_DIR_RECURSE 1u /* descend into subdirectories (at most 8 deep) */
#define IDD_DIR_STAT 2u    /* fill every entry's st (a stat per file; without it the
                            * directory listing's file types suffice where known) */

/* Every entry of DIR ("." and ".." aside): index files to on_file, the rest
 * (temporaries, dotfiles, other kinds) to on_leftover; either may be NULL.
 * A missing DIR is empty.  With IDD_DIR_RECURSE, directories not starting
 * with '.' are walked rather than handed to on_leftover. */
int idd_dir_for_each(const char *dir, unsigned flags, idd_dir_fn on_file, idd_dir_fn on_leftover,
                     void *ctx, idd_error *err);

/* ---- collecting garbage ---- */
/* Whether to keep E, a file or a temporary (E's st holds its file type
 * only: see IDD_DIR_STAT). */
typedef bool (*idd_keep_fn)(void *ctx, const idd_dir_entry *e);
/* Remove from DIR (one level) every file and temporary that keep rejects
 * (keep NULL: all of them).  Never removed: dotfiles (not the index's: an
 * NFS client's .nfsXXXX, say), directories and other kinds of files.  In a
 * directory whose writers hold the index lock, as the caller does, every
 * temporary is a dead run's; elsewhere keep spares running writers' (see
 * idd_keep_live_temporaries).  When anything was removed, DIR is fsynced.
 * *removed (may be NULL) counts the files, not temporaries, removed.
 * Failures to remove or sync are reported. */
int idd_dir_gc(const char *dir, idd_keep_fn keep, void *ctx, uint64_t *removed, idd_error *err);
/* Keep every index file, and the temporaries of running writers and of
 * writers that cannot be told (no pid in the name): only dead writers'
 * temporaries go. */
bool idd_keep_live_temporaries(void *ctx, const idd_dir_entry *e);

/* ---- size ---- */
/* Bytes of the index files (regular, neither temporaries nor dotfiles)
 * directly in DIR; with only_own, of those no other directory links to. */
uint64_t idd_dir_bytes(const char *dir, bool only_own);

#endif
