/*
 * A strict one-line JSON scanner for the encode pipeline: it checks that a
 * line is one JSON object (RFC 8259: strings with valid UTF-8 and escapes,
 * numbers, literals, nesting) and returns the value of one top-level string
 * field without building a tree.  A string without escapes is returned in
 * place; one with escapes is decoded into a scratch buffer.  When a line is
 * rejected the caller asks jansson for its error message, so messages stay
 * those of the JSON library.
 */
#include "tok/tok_internal.h"

#include <string.h>

#define MAX_DEPTH 512

struct scan {
	const uint8_t *s;
	size_t n, i;
};

static inline void ws(struct scan *p)
{
	while (p->i < p->n) {
		uint8_t c = p->s[p->i];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		p->i++;
	}
}

static int hex4(const uint8_t *s, uint32_t *v)
{
	uint32_t x = 0;
	for (int k = 0; k < 4; k++) {
		uint8_t c = s[k];
		x <<= 4;
		if (c >= '0' && c <= '9')
			x |= (uint32_t)(c - '0');
		else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
			x |= (uint32_t)((c | 0x20) - 'a' + 10);
		else
			return -1;
	}
	*v = x;
	return 0;
}

/* A string at p->i (the opening quote): sets [*b, *e) to the raw contents
 * and *esc when it has escapes.  0 or -1. */
static int string(struct scan *p, size_t *b, size_t *e, bool *esc)
{
	const uint8_t *s = p->s;
	size_t i = p->i + 1;
	*esc = false;
	*b = i;
	for (;;) {
		/* run of plain bytes */
		size_t j = i;
		while (j < p->n && s[j] != '"' && s[j] != '\\' && s[j] >= 0x20)
			j++;
		if (tok_utf8_valid_prefix(s + i, j - i) != j - i)
			return -1;
		i = j;
		if (i >= p->n || s[i] < 0x20)
			return -1;
		if (s[i] == '"')
			break;
		/* escape */
		*esc = true;
		if (i + 1 >= p->n)
			return -1;
		uint8_t c = s[i + 1];
		if (c == 'u') {
			uint32_t v;
			if (i + 6 > p->n || hex4(s + i + 2, &v) < 0)
				return -1;
			i += 6;
			if (v >= 0xD800 && v < 0xDC00) {
				uint32_t w;
				if (i + 6 > p->n || s[i] != '\\' || s[i + 1] != 'u' || hex4(s + i + 2, &w) < 0 ||
				    w < 0xDC00 || w >= 0xE000)
					return -1;
				i += 6;
			} else if (v >= 0xDC00 && v < 0xE000)
				return -1;
		} else if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
			   c == 't')
			i += 2;
		else
			return -1;
	}
	*e = i;
	p->i = i + 1;
	return 0;
}

static int number(struct scan *p)
{
	const uint8_t *s = p->s;
	size_t i = p->i;
	if (i < p->n && s[i] == '-')
		i++;
	if (i >= p->n)
		return -1;
	if (s[i] == '0')
		i++;
	else if (s[i] >= '1' && s[i] <= '9')
		while (i < p->n && s[i] >= '0' && s[i] <= '9')
			i++;
	else
		return -1;
	if (i < p->n && s[i] == '.') {
		i++;
		if (i >= p->n || s[i] < '0' || s[i] > '9')
			return -1;
		while (i < p->n && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
		i++;
		if (i < p->n && (s[i] == '+' || s[i] == '-'))
			i++;
		if (i >= p->n || s[i] < '0' || s[i] > '9')
			return -1;
		while (i < p->n && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	p->i = i;
	return 0;
}

static int value(struct scan *p, int depth);

static int container(struct scan *p, int depth, bool object)
{
	uint8_t close = object ? '}' : ']';
	if (depth > MAX_DEPTH)
		return -1;
	p->i++;
	ws(p);
	if (p->i < p->n && p->s[p->i] == close) {
		p->i++;
		return 0;
	}
	for (;;) {
		if (object) {
			size_t b, e;
			bool esc;
			if (p->i >= p->n || p->s[p->i] != '"' || string(p, &b, &e, &esc) < 0)
				return -1;
			ws(p);
			if (p->i >= p->n || p->s[p->i] != ':')
				return -1;
			p->i++;
			ws(p);
		}
		if (value(p, depth + 1) < 0)
			return -1;
		ws(p);
		if (p->i >= p->n)
			return -1;
		if (p->s[p->i] == close) {
			p->i++;
			return 0;
		}
		if (p->s[p->i] != ',')
			return -1;
		p->i++;
		ws(p);
	}
}

static int literal(struct scan *p, const char *w, size_t l)
{
	if (p->n - p->i < l || memcmp(p->s + p->i, w, l) != 0)
		return -1;
	p->i += l;
	return 0;
}

static int value(struct scan *p, int depth)
{
	if (p->i >= p->n)
		return -1;
	size_t b, e;
	bool esc;
	switch (p->s[p->i]) {
	case '{':
		return container(p, depth, true);
	case '[':
		return container(p, depth, false);
	case '"':
		return string(p, &b, &e, &esc);
	case 't':
		return literal(p, "true", 4);
	case 'f':
		return literal(p, "false", 5);
	case 'n':
		return literal(p, "null", 4);
	default:
		return number(p);
	}
}

static void put_utf8(uint8_t *o, size_t *k, uint32_t cp)
{
	if (cp < 0x80)
		o[(*k)++] = (uint8_t)cp;
	else if (cp < 0x800) {
		o[(*k)++] = (uint8_t)(0xC0 | cp >> 6);
		o[(*k)++] = (uint8_t)(0x80 | (cp & 0x3F));
	} else if (cp < 0x10000) {
		o[(*k)++] = (uint8_t)(0xE0 | cp >> 12);
		o[(*k)++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
		o[(*k)++] = (uint8_t)(0x80 | (cp & 0x3F));
	} else {
		o[(*k)++] = (uint8_t)(0xF0 | cp >> 18);
		o[(*k)++] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
		o[(*k)++] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
		o[(*k)++] = (uint8_t)(0x80 | (cp & 0x3F));
	}
}

/* Decode the (checked) raw contents s[0, n) of a string into o (room for n
 * bytes: decoding never grows a string). */
static size_t unescape(const uint8_t *s, size_t n, uint8_t *o)
{
	size_t k = 0;
	for (size_t i = 0; i < n;) {
		if (s[i] != '\\') {
			o[k++] = s[i++];
			continue;
		}
		uint8_t c = s[i + 1];
		uint32_t v, w;
		switch (c) {
		case 'b': o[k++] = '\b'; i += 2; break;
		case 'f': o[k++] = '\f'; i += 2; break;
		case 'n': o[k++] = '\n'; i += 2; break;
		case 'r': o[k++] = '\r'; i += 2; break;
		case 't': o[k++] = '\t'; i += 2; break;
		case 'u':
			hex4(s + i + 2, &v);
			i += 6;
			if (v >= 0xD800 && v < 0xDC00) {
				hex4(s + i + 2, &w);
				i += 6;
				v = 0x10000 + ((v - 0xD800) << 10) + (w - 0xDC00);
			}
			put_utf8(o, &k, v);
			break;
		default: o[k++] = c; i += 2; break;
		}
	}
	return k;
}

int tok_jsonl_field(const char *line, size_t len, const char *field, struct moe_tok_bytes *scratch,
		    const char **val, size_t *vlen)
{
	struct scan p = {(const uint8_t *)line, len, 0};
	size_t flen = strlen(field);
	bool found = false, found_esc = false;
	size_t fb = 0, fe = 0;
	ws(&p);
	if (p.i >= p.n || p.s[p.i] != '{')
		return -1;
	p.i++;
	ws(&p);
	if (p.i < p.n && p.s[p.i] == '}')
		p.i++;
	else
		for (;;) {
			size_t kb, ke;
			bool kesc;
			if (p.i >= p.n || p.s[p.i] != '"' || string(&p, &kb, &ke, &kesc) < 0)
				return -1;
			bool match;
			if (!kesc)
				match = ke - kb == flen && memcmp(p.s + kb, field, flen) == 0;
			else {
				uint8_t tmp[256];
				match = ke - kb <= sizeof tmp &&
					unescape(p.s + kb, ke - kb, tmp) == flen && memcmp(tmp, field, flen) == 0;
			}
			ws(&p);
			if (p.i >= p.n || p.s[p.i] != ':')
				return -1;
			p.i++;
			ws(&p);
			if (match) {
				/* the last occurrence wins, as in jansson */
				found = false;
				if (p.i < p.n && p.s[p.i] == '"') {
					if (string(&p, &fb, &fe, &found_esc) < 0)
						return -1;
					found = true;
				} else if (value(&p, 1) < 0)
					return -1;
			} else if (value(&p, 1) < 0)
				return -1;
			ws(&p);
			if (p.i >= p.n)
				return -1;
			if (p.s[p.i] == '}') {
				p.i++;
				break;
			}
			if (p.s[p.i] != ',')
				return -1;
			p.i++;
			ws(&p);
		}
	ws(&p);
	if (p.i != p.n)
		return -1;
	if (!found)
		return 0;
	if (!found_esc) {
		*val = line + fb;
		*vlen = fe - fb;
		return 1;
	}
	if (scratch->cap < fe - fb + 1) {
		size_t nc = scratch->cap ? scratch->cap : 4096;
		while (nc < fe - fb + 1)
			nc *= 2;
		char *q = realloc(scratch->data, nc);
		if (!q)
			return MOE_ENOMEM;
		scratch->data = q;
		scratch->cap = nc;
	}
	scratch->n = unescape(p.s + fb, fe - fb, (uint8_t *)scratch->data);
	*val = scratch->data;
	*vlen = scratch->n;
	return 1;
}
