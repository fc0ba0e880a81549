/* Internal structures of libmoetok (not installed; see tok.h). */
#ifndef MOE_TOK_INTERNAL_H
#define MOE_TOK_INTERNAL_H

#include "tok/tok.h"

/* ---- Unicode classes used by the pre-tokenizer patterns ------------------ */
enum tok_class {
	TC_OTHER = 0, /* not \s, not \p{L}, not \p{N} */
	TC_L = 1,     /* \p{L}: Lu Ll Lt Lm Lo */
	TC_N = 2,     /* \p{N}: Nd Nl No */
	TC_WS = 3,    /* \s: Unicode White_Space */
};
/* Class of a code point (thread-safe; tables built on first use). */
int tok_class_of(uint32_t cp);
/* Build the class tables now (they are otherwise built on first use). */
void tok_classes_init(void);
/* Decode one code point of valid UTF-8 at s[i] (i < n); sets *len. */
uint32_t tok_utf8_decode(const uint8_t *s, size_t n, size_t i, size_t *len);
/* Length of the longest valid UTF-8 prefix of s (== n when all valid). */
size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n);
/* Length of the invalid sequence at s[0] under the maximal-subpart rule (>= 1). */
size_t tok_utf8_bad_len(const uint8_t *s, size_t n);

/* ---- pre-tokenizer patterns --------------------------------------------- */
enum tok_pattern {
	PAT_NONE = 0,  /* the whole piece is one word */
	PAT_GPT2,      /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
	PAT_CL100K,    /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
	PAT_CL100K_TT, /* tiktoken's newer cl100k form with \s++$ before \s*[\r\n] */
	PAT_CL100K_TT_ONIG, /* the same regex run by Oniguruma (Hugging Face): its Ruby
			     * syntax reads \p{N}{1,3}+ as (\p{N}{1,3})+, so digit
			     * runs are not cut in threes */
};
/* End of the pattern match that starts at s[i] (i < n); always > i, since
 * the supported patterns match every character. */
size_t tok_pattern_next(enum tok_pattern p, const uint8_t *s, size_t n, size_t i);
const char *tok_pattern_name(enum tok_pattern p);
/* Recognise a regex string from a tokenizer.json; PAT_NONE if unknown. */
enum tok_pattern tok_pattern_from_regex(const char *re);

/* ---- hash maps ------------------------------------------------------------ */
/* (left id, right id) -> (rank, new id): open addressing, power-of-2. */
struct tok_pair_slot {
	uint64_t key; /* (left << 32 | right) + 1; 0 = empty */
	uint64_t val; /* rank << 32 | new id */
};
struct tok_pairmap {
	struct tok_pair_slot *slots; /* key and value side by side: one miss per probe */
	size_t mask;
	size_t count;
};
/* byte string -> id */
struct tok_strmap {
	uint32_t *slots; /* id + 1, 0 = empty */
	size_t mask;
	size_t count;
};

/* ---- added tokens -------------------------------------------------------- */
struct tok_added {
	char *content; /* as in the file (normalized for normalized tokens) */
	size_t len;
	uint32_t id;
	bool special, normalized, lstrip, rstrip;
};
/* A byte trie over added-token contents for leftmost-longest matching. */
struct tok_trie_node {
	uint32_t first_child; /* index into edges, count n_children */
	uint16_t n_children;
	int32_t token;        /* index into added[], -1 if none ends here */
};
struct tok_trie_edge {
	uint8_t byte;
	uint32_t node;
};
struct tok_trie {
	struct tok_trie_node *nodes;
	struct tok_trie_edge *edges;
	size_t n_nodes, n_edges;
	uint8_t first[32];    /* bitmap of first bytes */
	uint8_t single[32];   /* bitmap of one-byte tokens */
	uint8_t n_firsts;     /* number of distinct first bytes (for the word scan) */
	uint8_t firsts[4];    /* the first bytes when there are at most 4 */
	int16_t seconds[4];   /* the only second byte after firsts[k], or -1 */
	uint8_t *pair;        /* 65536-bit bitmap of first two bytes */
	bool empty;
};

enum tok_norm { NORM_NFC = 1, NORM_NFD, NORM_NFKC, NORM_NFKD };

#define TOK_MAX_NORMS 8
#define TOK_MAX_SPLITS 4

struct moe_tok {
	char *path;
	uint8_t sha256[32];
	bool tiktoken; /* loaded from a rank file */

	/* vocabulary, indexed by id (size vocab_size) */
	uint32_t vocab_size;
	char **tok_str;      /* byte-level form (or added content), NUL-terminated */
	char **tok_bytes;    /* decoded bytes, NUL-terminated */
	uint32_t *tok_len;   /* length of tok_bytes */
	uint32_t *tok_slen;  /* length of tok_str */
	uint8_t *tok_flags;  /* 1 = assigned, 2 = special, 4 = added */
	struct tok_strmap str_map;   /* tok_str -> id */
	struct tok_strmap bytes_map; /* model tokens: raw bytes -> id */

	uint32_t byte_id[256];       /* id of each single byte, MOE_TOK_NONE if absent */
	struct tok_pairmap merges;
	uint32_t n_merges;
	bool ignore_merges;          /* whole word in vocab -> that id */
	uint32_t unk_id;             /* MOE_TOK_NONE: symbols missing from the vocab are dropped */
	bool fuse_unk;

	/* pipeline */
	int n_norms;
	enum tok_norm norms[TOK_MAX_NORMS];
	int n_splits;
	enum tok_pattern splits[TOK_MAX_SPLITS];
	bool add_prefix_space;

	struct tok_added *added;
	size_t n_added;
	struct tok_trie trie_raw;  /* normalized == false: matched before normalizing */
	struct tok_trie trie_norm; /* normalized == true: matched after */

	uint32_t eos_id;
	json_t *desc_normalizer;    /* copies for describe() */
	json_t *desc_pre_tokenizer;
};

/* maps */
int tok_pairmap_init(struct tok_pairmap *m, size_t expect);
void tok_pairmap_release(struct tok_pairmap *m);
/* Returns 0, 1 when the pair already existed (kept), or MOE_ENOMEM. */
int tok_pairmap_put(struct tok_pairmap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id);
static inline uint64_t tok_pair_hash(uint64_t k)
{
	k ^= k >> 31;
	k *= 0x9E3779B97F4A7C15ull;
	return k ^ (k >> 29);
}
/* Lookup: returns rank << 32 | id, or UINT64_MAX. */
static inline uint64_t tok_pairmap_get(const struct tok_pairmap *m, uint32_t a, uint32_t b)
{
	uint64_t key = ((uint64_t)a << 32 | b) + 1;
	size_t i = tok_pair_hash(key) & m->mask;
	for (;;) {
		uint64_t k = m->slots[i].key;
		if (k == key)
			return m->slots[i].val;
		if (k == 0)
			return UINT64_MAX;
		i = (i + 1) & m->mask;
	}
}
int tok_strmap_init(struct tok_strmap *m, size_t expect);
void tok_strmap_release(struct tok_strmap *m);
uint64_t tok_str_hash(const void *s, size_t len);
/* keys are looked up through the table of strings strs/lens (by id). */
int tok_strmap_put(struct tok_strmap *m, char *const *strs, const uint32_t *lens, uint32_t id);
uint32_t tok_strmap_get(const struct tok_strmap *m, char *const *strs, const uint32_t *lens,
			const char *s, size_t len);

/* byte-level mapping (GPT-2 bytes_to_unicode) */
/* code point -> byte, or -1 */
int tok_cp_to_byte(uint32_t cp);
/* Encode raw bytes in byte-level form (UTF-8) into a malloc'd string. */
char *tok_bytes_to_bytelevel(const char *b, size_t n);

/* added-token tries */
int tok_trie_build(struct tok_trie *tr, const struct tok_added *added, size_t n, bool normalized);
void tok_trie_release(struct tok_trie *tr);
/* Leftmost-longest match in s[from, n): returns 1 and sets *start, *end, *idx
 * (index into added[]) or 0 when none. */
int tok_trie_find(const struct tok_trie *tr, const uint8_t *s, size_t n, size_t from, size_t *start,
		  size_t *end, size_t *idx);

/* JSONL: check that line is one JSON object and find the top-level string
 * field `field` (the last one if repeated).  Returns 1 with *val, *vlen
 * (in place, or decoded into scratch), 0 when the object has no such string
 * field, -1 when the line is not valid JSON, MOE_ENOMEM. */
int tok_jsonl_field(const char *line, size_t len, const char *field, struct moe_tok_bytes *scratch,
		    const char **val, size_t *vlen);

/* normalization: apply t's normalizers to s (valid UTF-8); result in *out
 * (malloc'd by utf8proc) or *out = NULL when s is unchanged. */
int tok_normalize(const struct moe_tok *t, const uint8_t *s, size_t n, uint8_t **out, size_t *outlen,
		  struct moe_error *err);

#endif
