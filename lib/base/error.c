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
		err->code = IDD_ERR;
	}
	return IDD_ERR;
}

int idd_fail_code(idd_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

int idd_fail_errno(idd_error *err, const char *path, const char *what)
{
	int e = errno;
	int code = e == ENOENT ? IDD_ENOENT
	         : e == ENOMEM ? IDD_ENOMEM
	         : (e == EACCES || e == EPERM || e == ELOOP) ? IDD_EPERM
	         : IDD_EIO;
	return idd_fail_code(err, code, "%s: %s: %s", path, what, strerror(e));
}

const char *idd_strerror(int code)
{
	switch (code) {
	case IDD_OK: return "ok";
	case IDD_EBUSY: return "busy";
	case IDD_ENOENT: return "not found";
	case IDD_ECORRUPT: return "corrupt";
	case IDD_EIO: return "i/o error";
	case IDD_ENET: return "network error";
	case IDD_ENOMEM: return "out of memory";
	case IDD_EPERM: return "refused";
	case IDD_ETIMEDOUT: return "timed out";
	case IDD_ECANCELED: return "stopped";
	default: return "error";
	}
}

void idd_vwarnf(idd_warn_fn warn, void *ctx, const char *fmt, va_list ap)
{
	if (!warn)
		return;
	char msg[2048];
	vsnprintf(msg, sizeof msg, fmt, ap);
	warn(ctx, msg);
}

void idd_warnf(idd_warn_fn warn, void *ctx, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	idd_vwarnf(warn, ctx, fmt, ap);
	va_end(ap);
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
