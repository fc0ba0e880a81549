/* Thrift compact protocol: a small bounds-checked reader. */
#include "parquet/internal.h"

#define TC_MAX_DEPTH 64

static int tc_fail(struct tc *t, const char *why)
{
	if (!t->bad)
		t->bad = why;
	return -1;
}

int tc_varint(struct tc *t, uint64_t *v)
{
	uint64_t r = 0;
	for (int shift = 0; shift < 64; shift += 7) {
		if (t->bad || t->p >= t->end)
			return tc_fail(t, "truncated varint");
		uint8_t b = *t->p++;
		r |= (uint64_t)(b & 0x7f) << shift;
		if (!(b & 0x80)) {
			*v = r;
			return 0;
		}
	}
	return tc_fail(t, "varint too long");
}

int tc_i64(struct tc *t, int64_t *v)
{
	uint64_t u;
	if (tc_varint(t, &u) < 0)
		return -1;
	*v = (int64_t)(u >> 1) ^ -(int64_t)(u & 1);
	return 0;
}

int tc_i32(struct tc *t, int32_t *v)
{
	int64_t x;
	if (tc_i64(t, &x) < 0)
		return -1;
	if (x < INT32_MIN || x > INT32_MAX)
		return tc_fail(t, "i32 out of range");
	*v = (int32_t)x;
	return 0;
}

int tc_int(struct tc *t, int type, int64_t *v)
{
	switch (type) {
	case TC_I8:
		if (t->bad || t->p >= t->end)
			return tc_fail(t, "truncated i8");
		*v = (int8_t)*t->p++;
		return 0;
	case TC_I16:
	case TC_I32:
	case TC_I64:
		return tc_i64(t, v);
	default:
		return tc_fail(t, "integer field has a non-integer type");
	}
}

int tc_field(struct tc *t, int16_t *last, int *type, int16_t *id)
{
	if (t->bad || t->p >= t->end)
		return tc_fail(t, "truncated field header");
	uint8_t b = *t->p++;
	*type = b & 0x0f;
	if (*type == TC_STOP) {
		*id = 0;
		return 0;
	}
	int delta = b >> 4;
	if (delta) {
		*id = (int16_t)(*last + delta);
	} else {
		int64_t x;
		if (tc_i64(t, &x) < 0)
			return -1;
		if (x < INT16_MIN || x > INT16_MAX)
			return tc_fail(t, "field id out of range");
		*id = (int16_t)x;
	}
	if (*type > TC_STRUCT)
		return tc_fail(t, "unknown field type");
	*last = *id;
	return 0;
}

int tc_binary(struct tc *t, const uint8_t **p, uint32_t *len)
{
	uint64_t n;
	if (tc_varint(t, &n) < 0)
		return -1;
	if (n > (uint64_t)(t->end - t->p))
		return tc_fail(t, "binary field runs past the end");
	*p = t->p;
	*len = (uint32_t)n;
	t->p += n;
	return 0;
}

int tc_list(struct tc *t, int *etype, uint32_t *n)
{
	if (t->bad || t->p >= t->end)
		return tc_fail(t, "truncated list header");
	uint8_t b = *t->p++;
	*etype = b & 0x0f;
	uint64_t size = b >> 4;
	if (size == 15 && tc_varint(t, &size) < 0)
		return -1;
	/* every element takes at least one byte */
	if (size > (uint64_t)(t->end - t->p))
		return tc_fail(t, "list size runs past the end");
	if (*etype == TC_STOP || *etype > TC_STRUCT)
		return tc_fail(t, "bad list element type");
	*n = (uint32_t)size;
	return 0;
}

int tc_skip(struct tc *t, int type)
{
	uint64_t u;
	const uint8_t *p;
	uint32_t len, n;
	int et;

	if (t->bad)
		return -1;
	switch (type) {
	case TC_TRUE:
	case TC_FALSE:
		return 0; /* value is in the field header */
	case TC_I8:
		if (t->p >= t->end)
			return tc_fail(t, "truncated i8");
		t->p++;
		return 0;
	case TC_I16:
	case TC_I32:
	case TC_I64:
		return tc_varint(t, &u);
	case TC_DOUBLE:
		if (t->end - t->p < 8)
			return tc_fail(t, "truncated double");
		t->p += 8;
		return 0;
	case TC_BINARY:
		return tc_binary(t, &p, &len);
	case TC_LIST:
	case TC_SET:
		if (tc_list(t, &et, &n) < 0)
			return -1;
		if (++t->depth > TC_MAX_DEPTH)
			return tc_fail(t, "nesting too deep");
		for (uint32_t i = 0; i < n; i++) {
			if (et == TC_TRUE || et == TC_FALSE) {
				if (t->p >= t->end)
					return tc_fail(t, "truncated bool");
				t->p++;
			} else if (tc_skip(t, et) < 0) {
				return -1;
			}
		}
		t->depth--;
		return 0;
	case TC_MAP: {
		if (tc_varint(t, &u) < 0)
			return -1;
		if (u == 0)
			return 0;
		if (u > (uint64_t)(t->end - t->p))
			return tc_fail(t, "map size runs past the end");
		if (t->p >= t->end)
			return tc_fail(t, "truncated map header");
		uint8_t kv = *t->p++;
		int kt = kv >> 4, vt = kv & 0x0f;
		if (++t->depth > TC_MAX_DEPTH)
			return tc_fail(t, "nesting too deep");
		for (uint64_t i = 0; i < u; i++) {
			int ts[2] = {kt, vt};
			for (int k = 0; k < 2; k++) {
				if (ts[k] == TC_TRUE || ts[k] == TC_FALSE) {
					if (t->p >= t->end)
						return tc_fail(t, "truncated bool");
					t->p++;
				} else if (ts[k] == TC_STOP || ts[k] > TC_STRUCT || tc_skip(t, ts[k]) < 0) {
					return tc_fail(t, "bad map entry");
				}
			}
		}
		t->depth--;
		return 0;
	}
	case TC_STRUCT: {
		int16_t last = 0, id;
		int ft;
		if (++t->depth > TC_MAX_DEPTH)
			return tc_fail(t, "nesting too deep");
		for (;;) {
			if (tc_field(t, &last, &ft, &id) < 0)
				return -1;
			if (ft == TC_STOP)
				break;
			if (tc_skip(t, ft) < 0)
				return -1;
		}
		t->depth--;
		return 0;
	}
	default:
		return tc_fail(t, "unknown type");
	}
}
