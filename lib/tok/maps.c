/* Hash maps, the byte-level alphabet and the added-token tries. */
#include "tok/tok_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

static size_t pow2_for(size_t expect)
{
	size_t cap = 16;
	while (cap < expect * 2 + 2)
		cap <<= 1;
	return cap;
}

int tok_pairmap_init(struct tok_pairmap *m, size_t expect)
{
	size_t cap = pow2_for(expect);
	m->slots = calloc(cap, sizeof *m->slots);
	m->mask = cap - 1;
	m->count = 0;
	return m->slots ? 0 : MOE_ENOMEM;
}

void tok_pairmap_release(struct tok_pairmap *m)
{
	free(m->slots);
	m->slots = NULL;
	m->count = 0;
}

static int pairmap_grow(struct tok_pairmap *m)
{
	struct tok_pairmap n;
	if (tok_pairmap_init(&n, (m->mask + 1)) < 0)
		return MOE_ENOMEM;
	for (size_t i = 0; i <= m->mask; i++) {
		if (!m->slots[i].key)
			continue;
		size_t j = tok_pair_hash(m->slots[i].key) & n.mask;
		while (n.slots[j].key)
			j = (j + 1) & n.mask;
		n.slots[j] = m->slots[i];
		n.count++;
	}
	tok_pairmap_release(m);
	*m = n;
	return 0;
}

int tok_pairmap_put(struct tok_pairmap *m, uint32_t a, uint32_t b, uint32_t rank, uint32_t id)
{
	if ((m->count + 1) * 2 > m->mask + 1 && pairmap_grow(m) < 0)
		return MOE_ENOMEM;
	uint64_t key = ((uint64_t)a << 32 | b) + 1;
	size_t i = tok_pair_hash(key) & m->mask;
	while (m->slots[i].key) {
		if (m->slots[i].key == key) {
			m->slots[i].val = (uint64_t)rank << 32 | id;
			return 1;
		}
		i = (i + 1) & m->mask;
	}
	m->slots[i].key = key;
	m->slots[i].val = (uint64_t)rank << 32 | id;
	m->count++;
	return 0;
}

uint64_t tok_str_hash(const void *s, size_t len)
{
	return XXH3_64bits(s, len);
}

int tok_strmap_init(struct tok_strmap *m, size_t expect)
{
	size_t cap = pow2_for(expect);
	m->slots = calloc(cap, sizeof *m->slots);
	m->mask = cap - 1;
	m->count = 0;
	return m->slots ? 0 : MOE_ENOMEM;
}

void tok_strmap_release(struct tok_strmap *m)
{
	free(m->slots);
	m->slots = NULL;
}

int tok_strmap_put(struct tok_strmap *m, char *const *strs, const uint32_t *lens, uint32_t id)
{
	if ((m->count + 1) * 2 > m->mask + 1) {
		struct tok_strmap n;
		if (tok_strmap_init(&n, m->mask + 1) < 0)
			return MOE_ENOMEM;
		for (size_t i = 0; i <= m->mask; i++) {
			uint32_t v = m->slots[i];
			if (!v)
				continue;
			size_t j = tok_str_hash(strs[v - 1], lens[v - 1]) & n.mask;
			while (n.slots[j])
				j = (j + 1) & n.mask;
			n.slots[j] = v;
			n.count++;
		}
		tok_strmap_release(m);
		*m = n;
	}
	size_t len = lens[id];
	size_t i = tok_str_hash(strs[id], len) & m->mask;
	while (m->slots[i]) {
		uint32_t o = m->slots[i] - 1;
		if (lens[o] == len && memcmp(strs[o], strs[id], len) == 0)
			return 1; /* keep the first */
		i = (i + 1) & m->mask;
	}
	m->slots[i] = id + 1;
	m->count++;
	return 0;
}

uint32_t tok_strmap_get(const struct tok_strmap *m, char *const *strs, const uint32_t *lens,
			const char *s, size_t len)
{
	if (!m->slots)
		return MOE_TOK_NONE;
	size_t i = tok_str_hash(s, len) & m->mask;
	for (;;) {
		uint32_t v = m->slots[i];
		if (!v)
			return MOE_TOK_NONE;
		if (lens[v - 1] == len && memcmp(strs[v - 1], s, len) == 0)
			return v - 1;
		i = (i + 1) & m->mask;
	}
}

/* ---- byte-level alphabet (GPT-2's bytes_to_unicode) ------------------------ */

static uint16_t byte_cp[256];
static int16_t cp_byte[512];
static pthread_once_t bl_once = PTHREAD_ONCE_INIT;

static void bytelevel_init(void)
{
	int n = 0;
	for (int b = 0; b < 256; b++) {
		bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
		byte_cp[b] = (uint16_t)(keep ? b : 256 + n++);
	}
	for (int i = 0; i < 512; i++)
		cp_byte[i] = -1;
	for (int b = 0; b < 256; b++)
		cp_byte[byte_cp[b]] = (int16_t)b;
}

static void bl_check(void)
{
	pthread_once(&bl_once, bytelevel_init);
}

int tok_cp_to_byte(uint32_t cp)
{
	bl_check();
	return cp < 512 ? cp_byte[cp] : -1;
}

char *tok_bytes_to_bytelevel(const char *b, size_t n)
{
	bl_check();
	char *s = malloc(n * 2 + 1), *p = s;
	if (!s)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		uint16_t cp = byte_cp[(uint8_t)b[i]];
		if (cp < 0x80)
			*p++ = (char)cp;
		else {
			*p++ = (char)(0xC0 | (cp >> 6));
			*p++ = (char)(0x80 | (cp & 0x3F));
		}
	}
	*p = 0;
	return s;
}

/* ---- tries ---------------------------------------------------------------- */

static int trie_child(struct tok_trie *tr, uint32_t node, uint8_t byte)
{
	struct tok_trie_node *nd = &tr->nodes[node];
	for (uint32_t k = 0; k < nd->n_children; k++)
		if (tr->edges[nd->first_child + k].byte == byte)
			return (int)tr->edges[nd->first_child + k].node;
	return -1;
}

/* Build by inserting into a temporary pointer trie, then flattening. */
struct btrie {
	struct btrie *child[256];
	int32_t token;
};

static void btrie_free(struct btrie *b)
{
	if (!b)
		return;
	for (int i = 0; i < 256; i++)
		btrie_free(b->child[i]);
	free(b);
}

static size_t btrie_count(const struct btrie *b, size_t *edges)
{
	size_t n = 1;
	for (int i = 0; i < 256; i++)
		if (b->child[i]) {
			(*edges)++;
			n += btrie_count(b->child[i], edges);
		}
	return n;
}

static uint32_t btrie_flatten(struct tok_trie *tr, const struct btrie *b)
{
	uint32_t me = (uint32_t)tr->n_nodes++;
	tr->nodes[me].token = b->token;
	uint16_t nc = 0;
	for (int i = 0; i < 256; i++)
		if (b->child[i])
			nc++;
	tr->nodes[me].n_children = nc;
	tr->nodes[me].first_child = (uint32_t)tr->n_edges;
	size_t base = tr->n_edges;
	tr->n_edges += nc;
	size_t k = 0;
	for (int i = 0; i < 256; i++)
		if (b->child[i]) {
			tr->edges[base + k].byte = (uint8_t)i;
			tr->edges[base + k].node = btrie_flatten(tr, b->child[i]);
			k++;
		}
	return me;
}

int tok_trie_build(struct tok_trie *tr, const struct tok_added *added, size_t n, bool normalized)
{
	memset(tr, 0, sizeof *tr);
	tr->empty = true;
	struct btrie *root = calloc(1, sizeof *root);
	if (!root)
		return MOE_ENOMEM;
	root->token = -1;
	int rc = 0;
	for (size_t i = 0; i < n; i++) {
		if (added[i].normalized != normalized || added[i].len == 0)
			continue;
		struct btrie *b = root;
		for (size_t k = 0; k < added[i].len; k++) {
			uint8_t c = (uint8_t)added[i].content[k];
			if (!b->child[c]) {
				b->child[c] = calloc(1, sizeof *b);
				if (!b->child[c]) {
					rc = MOE_ENOMEM;
					goto out;
				}
				b->child[c]->token = -1;
			}
			b = b->child[c];
		}
		if (b->token < 0)
			b->token = (int32_t)i; /* first of duplicates wins */
		uint8_t c0 = (uint8_t)added[i].content[0];
		int16_t c1 = added[i].len > 1 ? (uint8_t)added[i].content[1] : -1;
		if (!(tr->first[c0 >> 3] & (1u << (c0 & 7)))) {
			if (tr->n_firsts < 4) {
				tr->firsts[tr->n_firsts] = c0;
				tr->seconds[tr->n_firsts] = c1;
			}
			tr->n_firsts++;
		} else
			for (int k = 0; k < tr->n_firsts && k < 4; k++)
				if (tr->firsts[k] == c0 && tr->seconds[k] != c1)
					tr->seconds[k] = -1; /* several second bytes (or none) */
		tr->first[c0 >> 3] |= (uint8_t)(1u << (c0 & 7));
		if (added[i].len == 1)
			tr->single[c0 >> 3] |= (uint8_t)(1u << (c0 & 7));
		else {
			unsigned bg = (unsigned)c0 << 8 | (uint8_t)added[i].content[1];
			if (!tr->pair && !(tr->pair = calloc(8192, 1))) {
				rc = MOE_ENOMEM;
				goto out;
			}
			tr->pair[bg >> 3] |= (uint8_t)(1u << (bg & 7));
		}
		tr->empty = false;
	}
	size_t n_edges = 0, n_nodes = btrie_count(root, &n_edges);
	tr->nodes = calloc(n_nodes, sizeof *tr->nodes);
	tr->edges = calloc(n_edges + 1, sizeof *tr->edges);
	if (!tr->nodes || !tr->edges) {
		rc = MOE_ENOMEM;
		goto out;
	}
	btrie_flatten(tr, root);
out:
	btrie_free(root);
	return rc;
}

void tok_trie_release(struct tok_trie *tr)
{
	free(tr->pair);
	free(tr->nodes);
	free(tr->edges);
	memset(tr, 0, sizeof *tr);
}

/* 0x80 in each byte of w that equals b, 0 elsewhere (exact SWAR test) */
static inline uint64_t byte_mask(uint64_t w, uint8_t b)
{
	const uint64_t lo7 = 0x7F7F7F7F7F7F7F7Full;
	uint64_t x = w ^ (0x0101010101010101ull * b);
	return ~(((x & lo7) + lo7) | x | lo7);
}

int tok_trie_find(const struct tok_trie *tr, const uint8_t *s, size_t n, size_t from, size_t *start,
		  size_t *end, size_t *idx)
{
	if (tr->empty)
		return 0;
	for (size_t i = from; i < n; i++) {
		/* skip 7 bytes at a time (8-byte loads overlapping by one) that
		 * hold no possible start: a first byte, followed by its second
		 * byte when that is the only one possible */
		if (tr->n_firsts <= 4 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
			while (i + 8 <= n) {
				uint64_t w, hit = 0;
				memcpy(&w, s + i, 8);
				for (int k = 0; k < tr->n_firsts; k++) {
					uint64_t m = byte_mask(w, tr->firsts[k]);
					if (tr->seconds[k] >= 0)
						m &= byte_mask(w, (uint8_t)tr->seconds[k]) >> 8;
					hit |= m & 0x0080808080808080ull; /* starts in bytes 0..6 */
				}
				if (hit)
					break;
				i += 7;
			}
			if (i >= n)
				break;
		}
		uint8_t c = s[i];
		if (!(tr->first[c >> 3] & (1u << (c & 7))))
			continue;
		/* two-byte prefilter: most candidate starts fail here */
		if (!(tr->single[c >> 3] & (1u << (c & 7)))) {
			if (i + 1 >= n || !tr->pair)
				continue;
			unsigned bg = (unsigned)c << 8 | s[i + 1];
			if (!(tr->pair[bg >> 3] & (1u << (bg & 7))))
				continue;
		}
		uint32_t node = 0;
		int32_t best = -1;
		size_t best_end = 0;
		for (size_t j = i; j < n; j++) {
			int ch = trie_child((struct tok_trie *)tr, node, s[j]);
			if (ch < 0)
				break;
			node = (uint32_t)ch;
			if (tr->nodes[node].token >= 0) {
				best = tr->nodes[node].token;
				best_end = j + 1;
			}
		}
		if (best >= 0) {
			*start = i;
			*end = best_end;
			*idx = (size_t)best;
			return 1;
		}
	}
	return 0;
}
