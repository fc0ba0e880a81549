/*
 * Encoding: UTF-8 check, added tokens, normalization, pre-tokenization and
 * BPE merges, in the order Hugging Face tokenizers applies them:
 *   1. added tokens with normalized=false are cut out of the raw text
 *      (leftmost-longest, like its Aho-Corasick matcher);
 *   2. each remaining piece is normalized, then added tokens with
 *      normalized=true are cut out of it;
 *   3. each remaining piece gets the optional prefix space and is split by
 *      the pre-tokenizer patterns into words;
 *   4. each word's bytes are merged: repeatedly the adjacent pair with the
 *      lowest merge rank, the leftmost on ties.
 */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#define CACHE_SLOTS 65536 /* power of 2; 4 MiB per context */
#define CACHE_WORD 22     /* longest cached word, bytes */
#define CACHE_IDS 8       /* most ids of a cached word */
#define SMALL_WORD 96     /* longer words use the heap merge */

/* One 64-byte line per slot: a lookup touches a single cache line. */
struct cache_slot {
	uint64_t hash;
	uint8_t len; /* 0 = empty */
	uint8_t nids;
	uint8_t bytes[CACHE_WORD];
	uint32_t ids[CACHE_IDS];
};

struct heap_ent {
	uint32_t rank, pos;
	uint32_t left, right; /* ids the pair had when pushed */
};

struct moe_tok_ctx {
	const struct moe_tok *t;
	struct cache_slot *cache;
	void *cache_mem;
	/* merge scratch */
	uint32_t *sym, *rank, *nid, *prev, *next;
	size_t sym_cap;
	struct heap_ent *heap;
	size_t heap_cap;
	/* text scratch (lossy copy, prefix space) */
	uint8_t *buf;
	size_t buf_cap;
	bool oom;
};

struct moe_tok_ctx *moe_tok_ctx_new(const struct moe_tok *t)
{
	struct moe_tok_ctx *c = calloc(1, sizeof *c);
	if (!c)
		return NULL;
	c->t = t;
	_Static_assert(sizeof(struct cache_slot) == 64, "cache slot is one line");
	/* calloc (lazily zeroed pages), aligned by hand to 64 bytes */
	c->cache_mem = calloc(CACHE_SLOTS + 1, sizeof *c->cache);
	if (c->cache_mem)
		c->cache = (struct cache_slot *)(((uintptr_t)c->cache_mem + 63) & ~(uintptr_t)63);
	if (!c->cache) {
		free(c);
		return NULL;
	}
	return c;
}

void moe_tok_ctx_free(struct moe_tok_ctx *c)
{
	if (!c)
		return;
	free(c->cache_mem);
	free(c->sym);
	free(c->rank);
	free(c->nid);
	free(c->prev);
	free(c->next);
	free(c->heap);
	free(c->buf);
	free(c);
}

static bool grow_bytes(uint8_t **p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return true;
	size_t nc = *cap ? *cap : 4096;
	while (nc < need)
		nc *= 2;
	uint8_t *q = realloc(*p, nc);
	if (!q)
		return false;
	*p = q;
	*cap = nc;
	return true;
}

static bool grow_syms(struct moe_tok_ctx *c, size_t n)
{
	if (n <= c->sym_cap)
		return true;
	size_t nc = c->sym_cap ? c->sym_cap : 256;
	while (nc < n)
		nc *= 2;
	uint32_t **arrs[5] = {&c->sym, &c->rank, &c->nid, &c->prev, &c->next};
	for (int i = 0; i < 5; i++) {
		uint32_t *q = realloc(*arrs[i], nc * sizeof(uint32_t));
		if (!q)
			return false;
		*arrs[i] = q;
	}
	c->sym_cap = nc;
	return true;
}

static inline void emit(struct moe_tok_ctx *c, struct moe_tok_ids *o, uint32_t id)
{
	if (o->n == o->cap) {
		size_t nc = o->cap ? o->cap * 2 : 1024;
		uint32_t *q = realloc(o->ids, nc * sizeof *q);
		if (!q) {
			c->oom = true;
			return;
		}
		o->ids = q;
		o->cap = nc;
	}
	o->ids[o->n++] = id;
}

/* ---- merging ------------------------------------------------------------ */

static inline uint32_t pair_rank(const struct moe_tok *t, uint32_t a, uint32_t b, uint32_t *nid)
{
	uint64_t v = tok_pairmap_get(&t->merges, a, b);
	if (v == UINT64_MAX)
		return UINT32_MAX;
	*nid = (uint32_t)v;
	return (uint32_t)(v >> 32);
}

/* O(n^2) merge for short words; sym[0..n) -> returns the new n. */
static size_t merge_small(const struct moe_tok *t, uint32_t *sym, uint32_t *rank, uint32_t *nid,
			  size_t n)
{
	if (n < 2)
		return n;
	for (size_t i = 0; i + 1 < n; i++)
		rank[i] = pair_rank(t, sym[i], sym[i + 1], &nid[i]);
	for (;;) {
		uint32_t best = UINT32_MAX;
		size_t bi = 0;
		for (size_t i = 0; i + 1 < n; i++)
			if (rank[i] < best) {
				best = rank[i];
				bi = i;
			}
		if (best == UINT32_MAX)
			break;
		sym[bi] = nid[bi];
		memmove(sym + bi + 1, sym + bi + 2, (n - bi - 2) * sizeof *sym);
		memmove(rank + bi + 1, rank + bi + 2, (n - bi - 2) * sizeof *rank);
		memmove(nid + bi + 1, nid + bi + 2, (n - bi - 2) * sizeof *nid);
		n--;
		if (bi > 0)
			rank[bi - 1] = pair_rank(t, sym[bi - 1], sym[bi], &nid[bi - 1]);
		if (bi + 1 < n)
			rank[bi] = pair_rank(t, sym[bi], sym[bi + 1], &nid[bi]);
	}
	return n;
}

static inline bool heap_less(const struct heap_ent *a, const struct heap_ent *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static bool heap_push(struct moe_tok_ctx *c, size_t *hn, struct heap_ent e)
{
	if (*hn == c->heap_cap) {
		size_t nc = c->heap_cap ? c->heap_cap * 2 : 1024;
		struct heap_ent *q = realloc(c->heap, nc * sizeof *q);
		if (!q)
			return false;
		c->heap = q;
		c->heap_cap = nc;
	}
	size_t i = (*hn)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!heap_less(&e, &c->heap[p]))
			break;
		c->heap[i] = c->heap[p];
		i = p;
	}
	c->heap[i] = e;
	return true;
}

static struct heap_ent heap_pop(struct moe_tok_ctx *c, size_t *hn)
{
	struct heap_ent top = c->heap[0];
	struct heap_ent last = c->heap[--(*hn)];
	size_t i = 0, n = *hn;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const struct heap_ent *mv = &last;
		if (l < n && heap_less(&c->heap[l], mv)) {
			m = l;
			mv = &c->heap[l];
		}
		if (r < n && heap_less(&c->heap[r], mv))
			m = r;
		if (m == i)
			break;
		c->heap[i] = c->heap[m];
		i = m;
	}
	if (n > 0)
		c->heap[i] = last;
	return top;
}

#define NIL UINT32_MAX

/* Heap merge for long words (same result as merge_small). */
static size_t merge_heap(struct moe_tok_ctx *c, size_t n)
{
	const struct moe_tok *t = c->t;
	uint32_t *sym = c->sym, *prev = c->prev, *next = c->next;
	size_t hn = 0;
	for (size_t i = 0; i < n; i++) {
		prev[i] = i ? (uint32_t)i - 1 : NIL;
		next[i] = i + 1 < n ? (uint32_t)i + 1 : NIL;
	}
	for (size_t i = 0; i + 1 < n; i++) {
		uint32_t id = 0, r = pair_rank(t, sym[i], sym[i + 1], &id);
		if (r != UINT32_MAX &&
		    !heap_push(c, &hn, (struct heap_ent){r, (uint32_t)i, sym[i], sym[i + 1]}))
			goto oom;
	}
	while (hn) {
		struct heap_ent e = heap_pop(c, &hn);
		uint32_t p = e.pos, q = next[p];
		if (sym[p] == NIL || q == NIL || sym[p] != e.left || sym[q] != e.right)
			continue;
		uint32_t id = 0;
		pair_rank(t, e.left, e.right, &id);
		sym[p] = id;
		sym[q] = NIL;
		next[p] = next[q];
		if (next[q] != NIL)
			prev[next[q]] = p;
		if (prev[p] != NIL) {
			uint32_t a = prev[p], nid, r = pair_rank(t, sym[a], sym[p], &nid);
			if (r != UINT32_MAX && !heap_push(c, &hn, (struct heap_ent){r, a, sym[a], sym[p]}))
				goto oom;
		}
		if (next[p] != NIL) {
			uint32_t b = next[p], nid, r = pair_rank(t, sym[p], sym[b], &nid);
			if (r != UINT32_MAX && !heap_push(c, &hn, (struct heap_ent){r, p, sym[p], sym[b]}))
				goto oom;
		}
	}
	size_t k = 0;
	for (uint32_t i = 0; i != NIL; i = next[i])
		sym[k++] = sym[i];
	return k;
oom:
	c->oom = true;
	return 0;
}

/* ---- words ------------------------------------------------------------------ */

static void bpe_word(struct moe_tok_ctx *c, const uint8_t *s, size_t n, struct moe_tok_ids *out)
{
	const struct moe_tok *t = c->t;
	if (n == 1) {
		uint32_t id = t->byte_id[s[0]];
		if (id != MOE_TOK_NONE)
			emit(c, out, id);
		else if (t->unk_id != MOE_TOK_NONE)
			emit(c, out, t->unk_id);
		return;
	}
	if (t->ignore_merges) {
		uint32_t id = tok_strmap_get(&t->bytes_map, t->tok_bytes, t->tok_len, (const char *)s, n);
		if (id != MOE_TOK_NONE) {
			emit(c, out, id);
			return;
		}
	}
	struct cache_slot *slot = NULL;
	uint64_t h = 0;
	if (n <= CACHE_WORD) {
		h = XXH3_64bits(s, n);
		slot = &c->cache[h & (CACHE_SLOTS - 1)];
		if (slot->len == n && slot->hash == h && memcmp(slot->bytes, s, n) == 0) {
			for (size_t i = 0; i < slot->nids; i++)
				emit(c, out, slot->ids[i]);
			return;
		}
	}
	if (!grow_syms(c, n)) {
		c->oom = true;
		return;
	}
	size_t m = 0;
	bool last_unk = false;
	for (size_t i = 0; i < n; i++) {
		uint32_t id = t->byte_id[s[i]];
		if (id == MOE_TOK_NONE) {
			/* HF drops a symbol missing from the vocabulary unless
			 * there is an unk token (fused when fuse_unk) */
			if (t->unk_id == MOE_TOK_NONE || (t->fuse_unk && last_unk))
				continue;
			id = t->unk_id;
			last_unk = true;
		} else
			last_unk = false;
		c->sym[m++] = id;
	}
	if (m <= SMALL_WORD)
		m = merge_small(t, c->sym, c->rank, c->nid, m);
	else
		m = merge_heap(c, m);
	for (size_t i = 0; i < m; i++)
		emit(c, out, c->sym[i]);
	if (slot && m <= CACHE_IDS) {
		slot->hash = h;
		slot->len = (uint8_t)n;
		slot->nids = (uint8_t)m;
		memcpy(slot->bytes, s, n);
		memcpy(slot->ids, c->sym, m * sizeof *c->sym);
	}
}

static void split_words(struct moe_tok_ctx *c, int stage, const uint8_t *s, size_t n,
			struct moe_tok_ids *out)
{
	const struct moe_tok *t = c->t;
	if (stage == t->n_splits) {
		bpe_word(c, s, n, out);
		return;
	}
	enum tok_pattern p = t->splits[stage];
	for (size_t i = 0; i < n;) {
		size_t j = tok_pattern_next(p, s, n, i);
		split_words(c, stage + 1, s + i, j - i, out);
		i = j;
	}
}

static void pretokenize(struct moe_tok_ctx *c, const uint8_t *s, size_t n, struct moe_tok_ids *out)
{
	if (n == 0)
		return;
	if (c->t->add_prefix_space && s[0] != ' ') {
		uint8_t *tmp = malloc(n + 1);
		if (!tmp) {
			c->oom = true;
			return;
		}
		tmp[0] = ' ';
		memcpy(tmp + 1, s, n);
		split_words(c, 0, tmp, n + 1, out);
		free(tmp);
		return;
	}
	split_words(c, 0, s, n, out);
}

static bool is_ws_at(const uint8_t *s, size_t n, size_t i, size_t *len)
{
	uint32_t cp = tok_utf8_decode(s, n, i, len);
	return tok_class_of(cp) == TC_WS;
}

/* Cut added tokens of trie tr out of s; pieces go to fn. */
static void cut_added(struct moe_tok_ctx *c, const struct tok_trie *tr, const uint8_t *s, size_t n,
		      struct moe_tok_ids *out,
		      void (*fn)(struct moe_tok_ctx *, const uint8_t *, size_t, struct moe_tok_ids *))
{
	const struct moe_tok *t = c->t;
	size_t pos = 0, from = 0, a, b, idx;
	while (tok_trie_find(tr, s, n, from, &a, &b, &idx)) {
		const struct tok_added *ad = &t->added[idx];
		size_t start = a, stop = b;
		if (ad->lstrip) {
			/* extend over the whitespace that ends s[pos, a) */
			size_t i = pos, ws_start = a;
			while (i < a) {
				size_t l;
				if (!is_ws_at(s, n, i, &l))
					ws_start = a;
				else if (ws_start == a)
					ws_start = i;
				i += l;
			}
			start = ws_start;
		}
		if (ad->rstrip) {
			size_t l;
			while (stop < n && is_ws_at(s, n, stop, &l))
				stop += l;
		}
		if (start > pos)
			fn(c, s + pos, start - pos, out);
		emit(c, out, ad->id);
		pos = stop;
		from = stop > b ? stop : b;
	}
	if (pos < n)
		fn(c, s + pos, n - pos, out);
}

static void normalized_piece(struct moe_tok_ctx *c, const uint8_t *s, size_t n,
			     struct moe_tok_ids *out)
{
	const struct moe_tok *t = c->t;
	uint8_t *norm = NULL;
	size_t nn = n;
	if (t->n_norms) {
		struct moe_error e = {0};
		if (tok_normalize(t, s, n, &norm, &nn, &e) < 0) {
			c->oom = true;
			return;
		}
		if (norm)
			s = norm;
	}
	cut_added(c, &t->trie_norm, s, nn, out, pretokenize);
	free(norm);
}

static void raw_piece_plain(struct moe_tok_ctx *c, const uint8_t *s, size_t n, struct moe_tok_ids *out)
{
	const struct moe_tok *t = c->t;
	uint8_t *norm = NULL;
	size_t nn = n;
	if (t->n_norms) {
		struct moe_error e = {0};
		if (tok_normalize(t, s, n, &norm, &nn, &e) < 0) {
			c->oom = true;
			return;
		}
		if (norm)
			s = norm;
	}
	pretokenize(c, s, nn, out);
	free(norm);
}

int moe_tok_encode(const struct moe_tok *t, struct moe_tok_ctx *ctx, const char *text, size_t len,
		   unsigned flags, struct moe_tok_ids *out, struct moe_error *err)
{
	struct moe_tok_ctx *c = ctx;
	if (!c && !(c = moe_tok_ctx_new(t)))
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	size_t n0 = out->n;
	const uint8_t *s = (const uint8_t *)text;
	size_t v = tok_utf8_valid_prefix(s, len);
	int rc = 0;
	if (v < len) {
		if (!(flags & MOE_TOK_LOSSY)) {
			rc = moe_error_set(err, MOE_EFORMAT, "invalid UTF-8 at byte offset %zu", v);
			goto out;
		}
		/* replace each maximal invalid subpart by U+FFFD */
		if (!grow_bytes(&c->buf, &c->buf_cap, len * 3 + 1)) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out;
		}
		size_t k = 0, i = 0;
		while (i < len) {
			size_t good = tok_utf8_valid_prefix(s + i, len - i);
			memcpy(c->buf + k, s + i, good);
			k += good;
			i += good;
			if (i < len) {
				i += tok_utf8_bad_len(s + i, len - i);
				memcpy(c->buf + k, "\xEF\xBF\xBD", 3);
				k += 3;
			}
		}
		s = c->buf;
		len = k;
	}
	c->oom = false;
	if (flags & MOE_TOK_NO_ADDED)
		raw_piece_plain(c, s, len, out);
	else
		cut_added(c, &t->trie_raw, s, len, out, normalized_piece);
	if (c->oom)
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
out:
	if (rc < 0)
		out->n = n0;
	if (c != ctx)
		moe_tok_ctx_free(c);
	return rc;
}
