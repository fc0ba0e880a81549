/*
 * Pre-tokenizer patterns, written by hand over utf8proc's Unicode categories.
 *
 * Why not a regex library: the patterns need a negative lookahead
 * (`\s+(?!\S)`), which RE2-style engines lack, and a backtracking engine
 * (PCRE2, Oniguruma) costs most of the encode time.  Each supported pattern is
 * a fixed alternation whose leftmost-first semantics (the semantics of
 * Oniguruma in Hugging Face tokenizers and of fancy-regex in tiktoken) reduce
 * to a few lines of scanning: the first alternative that matches at the
 * current position wins, each alternative is greedy, and the only
 * backtracking is `\s+(?!\S)` giving back the last whitespace character when
 * the run is followed by a non-space.  The character classes are the Unicode
 * ones the engines use: \p{L} = Lu Ll Lt Lm Lo, \p{N} = Nd Nl No, \s = the
 * White_Space property.  Unknown patterns are refused when loading.
 */
#include "tok/tok_internal.h"

#include <pthread.h>
#include <string.h>
#include <utf8proc.h>

/* ---- UTF-8 -------------------------------------------------------------- */

uint32_t tok_utf8_decode(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	uint8_t c = s[i];
	if (c < 0x80) {
		*len = 1;
		return c;
	}
	if (c < 0xE0 && i + 1 < n) {
		*len = 2;
		return (uint32_t)(c & 0x1F) << 6 | (s[i + 1] & 0x3F);
	}
	if (c < 0xF0 && i + 2 < n) {
		*len = 3;
		return (uint32_t)(c & 0x0F) << 12 | (uint32_t)(s[i + 1] & 0x3F) << 6 | (s[i + 2] & 0x3F);
	}
	if (i + 3 < n) {
		*len = 4;
		return (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[i + 1] & 0x3F) << 12 |
		       (uint32_t)(s[i + 2] & 0x3F) << 6 | (s[i + 3] & 0x3F);
	}
	*len = 1; /* not reached for valid input */
	return 0xFFFD;
}

/* Length of a valid sequence starting at s[0], or 0 if invalid. */
static size_t utf8_seq_len(const uint8_t *s, size_t n)
{
	uint8_t c = s[0];
	if (c < 0x80)
		return 1;
	if (c < 0xC2)
		return 0;
	if (c < 0xE0)
		return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
	if (c < 0xF0) {
		if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
			return 0;
		if (c == 0xE0 && s[1] < 0xA0)
			return 0; /* overlong */
		if (c == 0xED && s[1] >= 0xA0)
			return 0; /* surrogate */
		return 3;
	}
	if (c < 0xF5) {
		if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
			return 0;
		if (c == 0xF0 && s[1] < 0x90)
			return 0;
		if (c == 0xF4 && s[1] >= 0x90)
			return 0;
		return 4;
	}
	return 0;
}

size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		/* ASCII fast path, 8 bytes at a time */
		while (i + 8 <= n) {
			uint64_t w;
			memcpy(&w, s + i, 8);
			if (w & 0x8080808080808080ull)
				break;
			i += 8;
		}
		if (i >= n)
			break;
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t l = utf8_seq_len(s + i, n - i);
		if (l == 0)
			return i;
		i += l;
	}
	return n;
}

size_t tok_utf8_bad_len(const uint8_t *s, size_t n)
{
	/* maximal subpart: the longest prefix of a valid sequence, at least 1 */
	uint8_t c = s[0];
	size_t need;
	uint8_t lo = 0x80, hi = 0xBF;
	if (c >= 0xC2 && c < 0xE0)
		need = 2;
	else if (c >= 0xE0 && c < 0xF0) {
		need = 3;
		if (c == 0xE0)
			lo = 0xA0;
		if (c == 0xED)
			hi = 0x9F;
	} else if (c >= 0xF0 && c < 0xF5) {
		need = 4;
		if (c == 0xF0)
			lo = 0x90;
		if (c == 0xF4)
			hi = 0x8F;
	} else
		return 1;
	size_t k = 1;
	if (k < n && s[k] >= lo && s[k] <= hi) {
		k++;
		while (k < need && k < n && (s[k] & 0xC0) == 0x80)
			k++;
	}
	return k;
}

/* ---- classes -------------------------------------------------------------- */

static uint8_t bmp_class[65536];
static pthread_once_t bmp_once = PTHREAD_ONCE_INIT;

static bool is_white_space(uint32_t cp)
{
	return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
	       (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
	       cp == 0x205F || cp == 0x3000;
}

static int slow_class(uint32_t cp)
{
	if (is_white_space(cp))
		return TC_WS;
	switch (utf8proc_category((utf8proc_int32_t)cp)) {
	case UTF8PROC_CATEGORY_LU:
	case UTF8PROC_CATEGORY_LL:
	case UTF8PROC_CATEGORY_LT:
	case UTF8PROC_CATEGORY_LM:
	case UTF8PROC_CATEGORY_LO:
		return TC_L;
	case UTF8PROC_CATEGORY_ND:
	case UTF8PROC_CATEGORY_NL:
	case UTF8PROC_CATEGORY_NO:
		return TC_N;
	default:
		return TC_OTHER;
	}
}

static void bmp_init(void)
{
	for (uint32_t cp = 0; cp < 65536; cp++)
		bmp_class[cp] = (cp >= 0xD800 && cp < 0xE000) ? TC_OTHER : (uint8_t)slow_class(cp);
}

void tok_classes_init(void)
{
	pthread_once(&bmp_once, bmp_init);
}

int tok_class_of(uint32_t cp)
{
	if (cp < 65536) {
		pthread_once(&bmp_once, bmp_init);
		return bmp_class[cp];
	}
	return slow_class(cp);
}

/* Class of the character at s[i]; *len its byte length. */
static inline int class_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	if (s[i] < 0x80) {
		*len = 1;
		return bmp_class[s[i]];
	}
	uint32_t cp = tok_utf8_decode(s, n, i, len);
	return cp < 65536 ? bmp_class[cp] : slow_class(cp);
}

/* End of the run of characters of class c starting at i. */
static inline size_t run_of(const uint8_t *s, size_t n, size_t i, int c)
{
	while (i < n) {
		size_t l;
		if (s[i] < 0x80) {
			if (bmp_class[s[i]] != c)
				break;
			i++;
			continue;
		}
		if (class_at(s, n, i, &l) != c)
			break;
		i += l;
	}
	return i;
}

/* Whitespace run from i; *last is the start of its last character. */
static inline size_t ws_run(const uint8_t *s, size_t n, size_t i, size_t *last)
{
	size_t l;
	*last = i;
	while (i < n && class_at(s, n, i, &l) == TC_WS) {
		*last = i;
		i += l;
	}
	return i;
}

static size_t match_gpt2(const uint8_t *s, size_t n, size_t i)
{
	uint8_t c0 = s[i];
	size_t l;
	if (c0 == '\'' && i + 1 < n) {
		uint8_t c1 = s[i + 1];
		if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
			return i + 2;
		if (i + 2 < n) {
			uint8_t c2 = s[i + 2];
			if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l'))
				return i + 3;
		}
	}
	size_t j = i;
	if (c0 == ' ' && i + 1 < n)
		j = i + 1;
	int c = class_at(s, n, j, &l);
	if (c == TC_WS && j != i) {
		j = i;
		c = TC_WS;
	}
	if (c != TC_WS)
		return run_of(s, n, j + l, c);
	size_t last;
	size_t k = ws_run(s, n, i, &last);
	if (k == n || last == i)
		return k;
	return last;
}

static inline bool is_s_ci(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	uint8_t c = s[i];
	*len = 1;
	if (c == 's' || c == 'S' || c == 't' || c == 'T' || c == 'm' || c == 'M' || c == 'd' || c == 'D')
		return true;
	/* U+017F LATIN SMALL LETTER LONG S case-folds to 's' */
	if (c == 0xC5 && i + 1 < n && s[i + 1] == 0xBF) {
		*len = 2;
		return true;
	}
	return false;
}

static inline bool eq_ci(uint8_t c, char lower)
{
	return (c | 0x20) == (uint8_t)lower;
}

static size_t match_cl100k(const uint8_t *s, size_t n, size_t i, bool tt, bool onig)
{
	uint8_t c0 = s[i];
	size_t l, l1;
	if (c0 == '\'' && i + 1 < n) {
		if (is_s_ci(s, n, i + 1, &l1))
			return i + 1 + l1;
		if (i + 2 < n) {
			uint8_t c1 = s[i + 1], c2 = s[i + 2];
			if ((eq_ci(c1, 'r') && eq_ci(c2, 'e')) || (eq_ci(c1, 'v') && eq_ci(c2, 'e')) ||
			    (eq_ci(c1, 'l') && eq_ci(c2, 'l')))
				return i + 3;
		}
	}
	int c = class_at(s, n, i, &l);
	if (c == TC_L)
		return run_of(s, n, i + l, TC_L);
	if (c != TC_N && c0 != '\r' && c0 != '\n' && i + l < n) {
		size_t l2;
		if (class_at(s, n, i + l, &l2) == TC_L)
			return run_of(s, n, i + l + l2, TC_L);
	}
	if (c == TC_N) {
		if (onig)
			return run_of(s, n, i + l, TC_N);
		size_t j = i + l;
		for (int k = 1; k < 3 && j < n; k++) {
			size_t l2;
			if (class_at(s, n, j, &l2) != TC_N)
				break;
			j += l2;
		}
		return j;
	}
	/* ` ?[^\s\p{L}\p{N}]+[\r\n]*` */
	size_t j = i;
	int cj = c;
	size_t lj = l;
	if (c0 == ' ' && i + 1 < n) {
		size_t l2;
		if (class_at(s, n, i + 1, &l2) == TC_OTHER) {
			j = i + 1;
			cj = TC_OTHER;
			lj = l2;
		}
	}
	if (cj == TC_OTHER) {
		size_t k = run_of(s, n, j + lj, TC_OTHER);
		while (k < n && (s[k] == '\r' || s[k] == '\n'))
			k++;
		return k;
	}
	/* whitespace */
	size_t last;
	size_t k = ws_run(s, n, i, &last);
	if (tt && k == n)
		return k; /* \s++$ */
	for (size_t m = k; m > i; m--) /* \s*[\r\n]+ : up to the last CR/LF */
		if (s[m - 1] == '\r' || s[m - 1] == '\n')
			return m;
	if (k == n || last == i)
		return k;
	return last;
}

/* The class tables must be built (tok_classes_init, called when loading). */
size_t tok_pattern_next(enum tok_pattern p, const uint8_t *s, size_t n, size_t i)
{
	switch (p) {
	case PAT_GPT2:
		return match_gpt2(s, n, i);
	case PAT_CL100K:
		return match_cl100k(s, n, i, false, false);
	case PAT_CL100K_TT:
		return match_cl100k(s, n, i, true, false);
	case PAT_CL100K_TT_ONIG:
		return match_cl100k(s, n, i, true, true);
	case PAT_NONE:
	default:
		return n;
	}
}

const char *tok_pattern_name(enum tok_pattern p)
{
	switch (p) {
	case PAT_GPT2:
		return "gpt2";
	case PAT_CL100K:
		return "cl100k";
	case PAT_CL100K_TT:
		return "cl100k-tiktoken";
	case PAT_CL100K_TT_ONIG:
		return "cl100k-tiktoken-oniguruma";
	default:
		return "none";
	}
}

/* The spellings found in tokenizer.json files, with the meaning Oniguruma
 * (Hugging Face tokenizers) gives them. */
static const struct {
	const char *re;
	enum tok_pattern p;
} known_patterns[] = {
	{"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+", PAT_GPT2},
	{"'(?:[sdmt]|ll|ve|re)| ?\\p{L}++| ?\\p{N}++| ?[^\\s\\p{L}\\p{N}]++|\\s++$|\\s+(?!\\S)|\\s",
	 PAT_GPT2},
	{"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
	 "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
	 PAT_CL100K},
	{"'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| "
	 "?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s",
	 PAT_CL100K_TT_ONIG},
};

enum tok_pattern tok_pattern_from_regex(const char *re)
{
	for (size_t i = 0; i < sizeof known_patterns / sizeof known_patterns[0]; i++)
		if (strcmp(re, known_patterns[i].re) == 0)
			return known_patterns[i].p;
	return PAT_NONE;
}
