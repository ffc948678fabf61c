/* error.c - filling idd_error messages. */
#include "base/error.h"
#include "base/util.h"

#include <errno.h>
#include <string.h>

int idd_fail(idd_error *err, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
	}
	return IDD_ERR;
}

int idd_fail_errno(idd_error *err, const char *path, const char *what)
{
	int e = errno;
	return idd_fail(err, "%s: %s: %s", path, what, strerror(e));
}

void idd_error_prefix(idd_error *err, const char *fmt, ...)
{
	if (!err)
		return;
	char prefix[512], old[sizeof err->msg];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof old);
	old[sizeof old - 1] = 0;
	/* Assemble by hand: the result is cut at the buffer's end on purpose. */
	size_t pl = strnlen(prefix, sizeof prefix), cap = sizeof err->msg - 1, n = 0;
	size_t k = IDD_MIN(pl, cap);
	memcpy(err->msg, prefix, k);
	n = k;
	for (const char *s = ": "; *s && n < cap; s++)
		err->msg[n++] = *s;
	k = IDD_MIN(strlen(old), cap - n);
	memcpy(err->msg + n, old, k);
	err->msg[n + k] = 0;
}
