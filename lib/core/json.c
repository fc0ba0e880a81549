/* JSON through jansson: loading with positions, typed getters that name the
 * key, atomic saving. */
#include "core/core.h"

#include <stdlib.h>
#include <string.h>

json_t *moe_json_load_file(const char *path, struct moe_error *err)
{
	json_error_t je;
	json_t *v = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (!v) {
		FILE *fp = fopen(path, "rb");
		if (!fp) {
			moe_error_errno(err, "cannot open '%s'", path);
			return NULL;
		}
		fclose(fp);
		moe_error_set(err, MOE_EFORMAT, "%s:%d:%d: invalid JSON: %s", path, je.line,
			      je.column, je.text);
	}
	return v;
}

static int lookup(const json_t *obj, const char *key, bool required, json_t **out,
		  const char *where, struct moe_error *err)
{
	if (!json_is_object(obj))
		return moe_error_set(err, MOE_EFORMAT, "%s: expected a JSON object", where);
	*out = json_object_get(obj, key);
	if (!*out || json_is_null(*out)) {
		if (required)
			return moe_error_set(err, MOE_ENOTFOUND, "%s: missing key '%s'", where, key);
		return MOE_ENOTFOUND;
	}
	return 0;
}

int moe_json_get_int(const json_t *obj, const char *key, bool required, int64_t *out,
		     const char *where, struct moe_error *err)
{
	json_t *v = NULL;
	int rc = lookup(obj, key, required, &v, where, err);
	if (rc)
		return rc;
	if (json_is_integer(v)) {
		*out = json_integer_value(v);
		return 0;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);
		if (d == (double)(int64_t)d) {
			*out = (int64_t)d;
			return 0;
		}
	}
	return moe_error_set(err, MOE_EFORMAT, "%s: key '%s' must be an integer", where, key);
}

int moe_json_get_double(const json_t *obj, const char *key, bool required, double *out,
			const char *where, struct moe_error *err)
{
	json_t *v = NULL;
	int rc = lookup(obj, key, required, &v, where, err);
	if (rc)
		return rc;
	if (!json_is_number(v))
		return moe_error_set(err, MOE_EFORMAT, "%s: key '%s' must be a number", where, key);
	*out = json_number_value(v);
	return 0;
}

int moe_json_get_bool(const json_t *obj, const char *key, bool required, bool *out,
		      const char *where, struct moe_error *err)
{
	json_t *v = NULL;
	int rc = lookup(obj, key, required, &v, where, err);
	if (rc)
		return rc;
	if (!json_is_boolean(v))
		return moe_error_set(err, MOE_EFORMAT, "%s: key '%s' must be true or false", where,
				     key);
	*out = json_is_true(v);
	return 0;
}

int moe_json_get_string(const json_t *obj, const char *key, bool required, const char **out,
			const char *where, struct moe_error *err)
{
	json_t *v = NULL;
	int rc = lookup(obj, key, required, &v, where, err);
	if (rc)
		return rc;
	if (!json_is_string(v))
		return moe_error_set(err, MOE_EFORMAT, "%s: key '%s' must be a string", where, key);
	*out = json_string_value(v);
	return 0;
}

int moe_json_save_file(const json_t *v, const char *path, struct moe_error *err)
{
	char *s = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(17));
	int rc;
	if (!s)
		return moe_error_set(err, MOE_ENOMEM, "%s: cannot serialise JSON", path);
	size_t n = strlen(s);
	char *t = realloc(s, n + 2);
	if (!t) {
		free(s);
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
	}
	t[n] = '\n';
	t[n + 1] = 0;
	rc = moe_atomic_write_file(path, t, n + 1, err);
	free(t);
	return rc;
}
