/* error.h - filling an idd_error (error.c). */
#ifndef IDD_BASE_ERROR_H
#define IDD_BASE_ERROR_H

#include "base/util.h"

/* ---- errors (error.c) ---- */
/* Fill err (if non-NULL) and return IDD_ERR. */
int idd_fail(idd_error *err, const char *fmt, ...) IDD_PRINTF(2, 3);
/* "PATH: WHAT: strerror(errno)" */
int idd_fail_errno(idd_error *err, const char *path, const char *what);
/* Prepend "PREFIX: " to an existing message. */
void idd_error_prefix(idd_error *err, const char *fmt, ...) IDD_PRINTF(2, 3);

#endif
