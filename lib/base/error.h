/* error.h - filling an idd_error (error.c). */
#ifndef IDD_BASE_ERROR_H
#define IDD_BASE_ERROR_H

#include "base/util.h"

/* Each of these returns the code it puts into err (and returns it when err
 * is NULL too), so a caller passes a failure on with `return idd_fail...`.
 * Fill err (if non-NULL) with code IDD_ERR and return IDD_ERR. */
int idd_fail(idd_error *err, const char *fmt, ...) IDD_PRINTF(2, 3);
/* Fill err with the given code and return it. */
int idd_fail_code(idd_error *err, int code, const char *fmt, ...) IDD_PRINTF(3, 4);
/* "PATH: WHAT: strerror(errno)", code from errno (ENOENT: IDD_ENOENT,
 * ENOMEM: IDD_ENOMEM, EACCES/EPERM/ELOOP: IDD_EPERM, else IDD_EIO); returns
 * that code. */
int idd_fail_errno(idd_error *err, const char *path, const char *what);
/* One warning line through a warn callback (nothing when warn is NULL). */
void idd_warnf(idd_warn_fn warn, void *ctx, const char *fmt, ...) IDD_PRINTF(3, 4);
/* The same with a va_list, for wrappers that add their own bookkeeping. */
void idd_vwarnf(idd_warn_fn warn, void *ctx, const char *fmt, va_list ap) IDD_PRINTF(3, 0);
/* Prepend "PREFIX: " to an existing message. */
void idd_error_prefix(idd_error *err, const char *fmt, ...) IDD_PRINTF(2, 3);

#endif
