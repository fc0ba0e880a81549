/* Error codes and the caller-owned error struct. */
#include "core/core.h"

#include <errno.h>
#include <string.h>

int moe_error_set(struct moe_error *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
	}
	return code;
}

int moe_error_prefix(struct moe_error *err, const char *fmt, ...)
{
	char prefix[MOE_ERRMSG_MAX], old[MOE_ERRMSG_MAX];
	va_list ap;

	if (!err)
		return MOE_EINVAL;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof prefix, fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof old);
	snprintf(err->msg, sizeof err->msg, "%.250s: %.250s", prefix, old);
	return err->code;
}

int moe_error_errno(struct moe_error *err, const char *fmt, ...)
{
	int saved = errno;

	if (err) {
		char buf[MOE_ERRMSG_MAX];
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(buf, sizeof buf, fmt, ap);
		va_end(ap);
		err->code = MOE_EIO;
		snprintf(err->msg, sizeof err->msg, "%.400s: %.100s", buf, strerror(saved));
	}
	errno = saved;
	return MOE_EIO;
}

const char *moe_strerror(int code)
{
	switch (code) {
	case MOE_OK: return "success";
	case MOE_EIO: return "input/output error";
	case MOE_ENOMEM: return "out of memory";
	case MOE_EINVAL: return "invalid argument";
	case MOE_EFORMAT: return "format error";
	case MOE_EVERSION: return "unsupported version";
	case MOE_ECHECKSUM: return "checksum mismatch";
	case MOE_ETRUNC: return "truncated input";
	case MOE_ERANGE: return "out of range";
	case MOE_EUNSUPPORTED: return "unsupported";
	case MOE_ENET: return "network error";
	case MOE_EINTR: return "interrupted";
	case MOE_ECUDA: return "CUDA error";
	case MOE_ENOTFOUND: return "not found";
	default: return "unknown error";
	}
}
