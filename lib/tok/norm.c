/*
 * Unicode normalization through utf8proc, with a quick check that skips
 * text that is already normalized (the common case) without calling it.
 */
#include "tok/tok_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define NCP 0x110000
/* bit k set: code point is "quick-check yes" for normal form k+1 (NORM_NFC...) */
static uint8_t *qc_table;
static pthread_once_t qc_once = PTHREAD_ONCE_INIT;

static int decomp(uint32_t cp, utf8proc_int32_t *buf, int cap, bool compat)
{
	int opts = UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0);
	utf8proc_int32_t last = 0;
	utf8proc_ssize_t n = utf8proc_decompose_char((utf8proc_int32_t)cp, buf, cap, opts, &last);
	return n < 0 ? -1 : (int)n;
}

static bool nfc_of_char_is_self(uint32_t cp)
{
	uint8_t in[4];
	utf8proc_ssize_t l = utf8proc_encode_char((utf8proc_int32_t)cp, in);
	utf8proc_uint8_t *out = NULL;
	utf8proc_ssize_t ol = utf8proc_map(in, l, &out, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
	bool same = ol == l && memcmp(out, in, (size_t)l) == 0;
	free(out);
	return same;
}

static void qc_init(void)
{
	uint8_t *tb = calloc(NCP, 1);
	uint8_t *maybe = calloc(NCP, 1);
	if (!tb || !maybe) {
		free(tb);
		free(maybe);
		return; /* qc_table stays NULL: everything is normalized the slow way */
	}
	utf8proc_int32_t buf[32];
	/* characters that can combine with a preceding one */
	for (uint32_t cp = 0; cp < NCP; cp++) {
		if (cp >= 0xD800 && cp < 0xE000)
			continue;
		if (cp >= 0xAC00 && cp <= 0xD7A3)
			continue; /* Hangul syllables: handled below */
		int n = decomp(cp, buf, 32, false);
		for (int k = 1; k < n; k++)
			maybe[buf[k]] = 1;
	}
	for (uint32_t cp = 0x1161; cp <= 0x1175; cp++)
		maybe[cp] = 1; /* Hangul V jamo */
	for (uint32_t cp = 0x11A8; cp <= 0x11C2; cp++)
		maybe[cp] = 1; /* Hangul T jamo */
	for (uint32_t cp = 0; cp < NCP; cp++) {
		if (cp >= 0xD800 && cp < 0xE000)
			continue;
		const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
		if (p->combining_class != 0)
			continue;
		utf8proc_int32_t kb[32];
		int nc = decomp(cp, buf, 32, false);
		int nk = decomp(cp, kb, 32, true);
		bool dc_self = nc == 1 && (uint32_t)buf[0] == cp;
		bool dk_self = nk == 1 && (uint32_t)kb[0] == cp;
		bool dk_eq_dc = nk == nc && memcmp(kb, buf, (size_t)nc * sizeof buf[0]) == 0;
		uint8_t bits = 0;
		if (dc_self)
			bits |= 1u << (NORM_NFD - 1);
		if (dk_self)
			bits |= 1u << (NORM_NFKD - 1);
		bool nfc = !maybe[cp] && (dc_self || (cp >= 0xAC00 && cp <= 0xD7A3) || nfc_of_char_is_self(cp));
		if (nfc)
			bits |= 1u << (NORM_NFC - 1);
		if (nfc && dk_eq_dc)
			bits |= 1u << (NORM_NFKC - 1);
		tb[cp] = bits;
	}
	free(maybe);
	qc_table = tb;
}

/* true when s is certainly already in normal form k. */
static bool quick_yes(enum tok_norm k, const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n && s[i] < 0x80)
		i++;
	if (i == n)
		return true;
	pthread_once(&qc_once, qc_init);
	if (!qc_table)
		return false;
	uint8_t bit = (uint8_t)(1u << (k - 1));
	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t l;
		uint32_t cp = tok_utf8_decode(s, n, i, &l);
		if (!(qc_table[cp] & bit))
			return false;
		i += l;
	}
	return true;
}

/*
 * Hugging Face's normalization tables are older (Unicode 11) than
 * utf8proc's: they lack the one canonical composition added since,
 * U+11935 U+11930 -> U+11938 (DIVES AKURU VOWEL SIGN O), and the
 * compatibility mappings of characters added in Unicode 12.0-15.0 (listed
 * below).  Everything else normalizes the same (checked in tests/tok/hf.sh
 * over every assigned code point, in NFC and NFD form).  To match, those
 * code points are hidden from utf8proc as private-use stand-ins
 * (U+10F000 + index; all are starters that compose with nothing else) and
 * restored afterwards.  Text that already holds a stand-in is normalized
 * without this adjustment.
 */
static const uint32_t newer_compat[][2] = {
	{0x32FF, 0x32FF},   {0xA7F2, 0xA7F4},   {0xAB69, 0xAB69},   {0x10781, 0x10785},
	{0x10787, 0x107B0}, {0x107B2, 0x107BA}, {0x1E030, 0x1E06D}, {0x1F16C, 0x1F16C},
	{0x1FBF0, 0x1FBF9},
};
#define STAND_IN 0x10F000u

struct hide {
	enum tok_norm k;
	uint32_t n; /* replacements made */
};

/* Index of cp among the code points hidden for form k, or -1. */
static int hidden_index(uint32_t cp, enum tok_norm k)
{
	bool compose = k == NORM_NFC || k == NORM_NFKC, compat = k == NORM_NFKC || k == NORM_NFKD;
	if (cp == (compose ? 0x11930u : 0x11938u))
		return 0;
	if (!compat)
		return -1;
	int idx = 1;
	for (size_t r = 0; r < sizeof newer_compat / sizeof newer_compat[0]; r++) {
		if (cp >= newer_compat[r][0] && cp <= newer_compat[r][1])
			return idx + (int)(cp - newer_compat[r][0]);
		idx += (int)(newer_compat[r][1] - newer_compat[r][0] + 1);
	}
	return -1;
}

static uint32_t hidden_cp(int idx, enum tok_norm k)
{
	if (idx == 0)
		return (k == NORM_NFC || k == NORM_NFKC) ? 0x11930u : 0x11938u;
	idx--;
	for (size_t r = 0; r < sizeof newer_compat / sizeof newer_compat[0]; r++) {
		int len = (int)(newer_compat[r][1] - newer_compat[r][0] + 1);
		if (idx < len)
			return newer_compat[r][0] + (uint32_t)idx;
		idx -= len;
	}
	return 0xFFFD;
}

static utf8proc_int32_t hide_cb(utf8proc_int32_t cp, void *data)
{
	struct hide *h = data;
	if (cp < 0x3000)
		return cp;
	int idx = hidden_index((uint32_t)cp, h->k);
	if (idx < 0)
		return cp;
	h->n++;
	return (utf8proc_int32_t)(STAND_IN + (uint32_t)idx);
}

/* true when s holds a code point of the stand-in block U+10F000..U+10F0FF */
static bool has_stand_in(const uint8_t *s, size_t n)
{
	for (size_t i = 0; i + 3 < n; i++)
		if (s[i] == 0xF4 && s[i + 1] == 0x8F && s[i + 2] >= 0x80 && s[i + 2] <= 0x83)
			return true;
	return false;
}

/* Replace the stand-ins in o[0, n) by the hidden code points (same length:
 * all are 4-byte or shorter; shorter ones shift the rest). */
static size_t restore(uint8_t *o, size_t n, enum tok_norm k)
{
	size_t w = 0;
	for (size_t i = 0; i < n;) {
		if (i + 3 < n && o[i] == 0xF4 && o[i + 1] == 0x8F && o[i + 2] >= 0x80 && o[i + 2] <= 0x83) {
			int idx = ((o[i + 2] & 0x3F) << 6) | (o[i + 3] & 0x3F);
			w += (size_t)utf8proc_encode_char((utf8proc_int32_t)hidden_cp(idx, k), o + w);
			i += 4;
		} else
			o[w++] = o[i++];
	}
	return w;
}

int tok_normalize(const struct moe_tok *t, const uint8_t *s, size_t n, uint8_t **out, size_t *outlen,
		  struct moe_error *err)
{
	*out = NULL;
	*outlen = n;
	const uint8_t *cur = s;
	size_t curlen = n;
	uint8_t *owned = NULL;
	for (int i = 0; i < t->n_norms; i++) {
		enum tok_norm k = t->norms[i];
		if (quick_yes(k, cur, curlen))
			continue;
		int opts = UTF8PROC_STABLE;
		switch (k) {
		case NORM_NFC:
			opts |= UTF8PROC_COMPOSE;
			break;
		case NORM_NFD:
			opts |= UTF8PROC_DECOMPOSE;
			break;
		case NORM_NFKC:
			opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
			break;
		case NORM_NFKD:
			opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
			break;
		}
		utf8proc_uint8_t *o = NULL;
		struct hide h = {k, 0};
		bool hide = !has_stand_in(cur, curlen);
		utf8proc_ssize_t ol = utf8proc_map_custom(cur, (utf8proc_ssize_t)curlen, &o, opts,
							  hide ? hide_cb : NULL, &h);
		if (ol > 0 && h.n)
			ol = (utf8proc_ssize_t)restore(o, (size_t)ol, k);
		if (ol < 0) {
			free(owned);
			return moe_error_set(err, ol == UTF8PROC_ERROR_NOMEM ? MOE_ENOMEM : MOE_EFORMAT,
					     "normalization failed: %s", utf8proc_errmsg(ol));
		}
		free(owned);
		owned = o;
		cur = o;
		curlen = (size_t)ol;
	}
	*out = owned;
	*outlen = curlen;
	return 0;
}
