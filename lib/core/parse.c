/* Checked number parsing: whole string, range-checked, clear messages. */
#include "core/core.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>

int moe_parse_i64(const char *s, int64_t min, int64_t max, int64_t *out, const char *what,
		  struct moe_error *err)
{
	char *end;
	long long v;

	if (!s || !*s || isspace((unsigned char)*s))
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s ? s : "");
	errno = 0;
	v = strtoll(s, &end, 10);
	if (*end)
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s);
	if (errno == ERANGE || v < min || v > max)
		return moe_error_set(err, MOE_ERANGE, "%s '%s' out of range [%lld, %lld]", what, s,
				     (long long)min, (long long)max);
	*out = v;
	return 0;
}

int moe_parse_u64(const char *s, uint64_t max, uint64_t *out, const char *what,
		  struct moe_error *err)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || !isdigit((unsigned char)*s))
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s ? s : "");
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end)
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s);
	if (errno == ERANGE || v > max)
		return moe_error_set(err, MOE_ERANGE, "%s '%s' out of range [0, %llu]", what, s,
				     (unsigned long long)max);
	*out = v;
	return 0;
}

int moe_parse_double(const char *s, double min, double max, double *out, const char *what,
		     struct moe_error *err)
{
	char *end;
	double v;

	if (!s || !*s || isspace((unsigned char)*s))
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s ? s : "");
	errno = 0;
	v = strtod(s, &end);
	if (*end || isnan(v))
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s);
	if (errno == ERANGE || v < min || v > max)
		return moe_error_set(err, MOE_ERANGE, "%s '%s' out of range [%g, %g]", what, s, min,
				     max);
	*out = v;
	return 0;
}

int moe_parse_size(const char *s, uint64_t *out, const char *what, struct moe_error *err)
{
	char *end;
	double v;
	double mul = 1;

	if (!s || !*s || !(isdigit((unsigned char)*s) || *s == '.'))
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s ? s : "");
	errno = 0;
	v = strtod(s, &end);
	if (errno == ERANGE || isnan(v) || v < 0)
		return moe_error_set(err, MOE_ERANGE, "%s '%s' out of range", what, s);
	if (*end) {
		switch (*end) {
		case 'K': mul = 1024.0; break;
		case 'M': mul = 1024.0 * 1024; break;
		case 'G': mul = 1024.0 * 1024 * 1024; break;
		case 'T': mul = 1024.0 * 1024 * 1024 * 1024; break;
		case 'k': mul = 1e3; break;
		case 'm': mul = 1e6; break;
		case 'g': mul = 1e9; break;
		case 't': mul = 1e12; break;
		default: return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s);
		}
		end++;
		if (*end == 'B' || *end == 'i')
			end++;
		if (*end)
			return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", what, s);
	}
	v *= mul;
	if (v >= 18446744073709551615.0)
		return moe_error_set(err, MOE_ERANGE, "%s '%s' out of range", what, s);
	if (v != floor(v))
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s' (not a whole number)", what, s);
	*out = (uint64_t)v;
	return 0;
}
