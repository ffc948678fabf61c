/* testutil.h - helpers for the cmocka unit tests. */
#ifndef IDD_TESTUTIL_H
#define IDD_TESTUTIL_H

#include "base/util.h"
#include "base/error.h"
#include "base/digest.h"
#include "base/file.h"
#include "formats/image.h"
#include "formats/archive.h"
#include "index/indexfile.h"
#include "index/catalog.h"
#include "index/repo.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>



/* A fresh empty directory under $TMPDIR, removed by tu_rmtree. */
char *tu_mkdtemp(void);
void tu_rmtree(const char *path);
/* Write len bytes to dir/name; returns the malloc'd path.  The file's mtime
 * is set ten seconds back (tu_age): scan does not take it for racily clean. */
char *tu_write(const char *dir, const char *name, const void *data, size_t len);
void tu_age(const char *path);
/* Deterministic pseudo-random bytes (xorshift) for test images. */
void tu_fill_random(void *buf, size_t len, uint64_t seed);
/* Flip one byte of a file at off. */
void tu_flip_byte(const char *path, uint64_t off);
void tu_truncate(const char *path, uint64_t len);
uint64_t tu_file_size(const char *path);

#endif
