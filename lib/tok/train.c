/*
 * Byte-level BPE trainer.  Documents are split with the GPT-2 pattern (no
 * normalizer); identical words are counted once with their frequency.
 * Training repeatedly merges the most frequent adjacent pair (ties: the
 * smaller (left id, right id)), updating pair counts incrementally through
 * an index from each pair to the words that contain it, and a lazy max-heap
 * of pair counts.  The result is a Hugging Face tokenizer.json: specials at
 * ids 0..S-1, byte b at S+b, then one id per merge.
 */
#include "tok/tok_internal.h"

#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

/* ---- word counts ------------------------------------------------------------ */

struct wslot {
	uint64_t hash;
	uint64_t count;
	uint64_t off; /* into arena */
	uint32_t len;
	uint32_t used;
};

struct moe_tok_trainer {
	struct wslot *slots;
	size_t mask, n;
	char *arena;
	size_t alen, acap;
};

struct moe_tok_trainer *moe_tok_trainer_new(void)
{
	tok_classes_init();
	struct moe_tok_trainer *tr = calloc(1, sizeof *tr);
	if (!tr)
		return NULL;
	tr->mask = (1u << 16) - 1;
	tr->slots = calloc(tr->mask + 1, sizeof *tr->slots);
	if (!tr->slots) {
		free(tr);
		return NULL;
	}
	return tr;
}

void moe_tok_trainer_free(struct moe_tok_trainer *tr)
{
	if (!tr)
		return;
	free(tr->slots);
	free(tr->arena);
	free(tr);
}

static int wc_grow(struct moe_tok_trainer *tr)
{
	size_t nm = (tr->mask + 1) * 2 - 1;
	struct wslot *ns = calloc(nm + 1, sizeof *ns);
	if (!ns)
		return MOE_ENOMEM;
	for (size_t i = 0; i <= tr->mask; i++) {
		if (!tr->slots[i].used)
			continue;
		size_t j = tr->slots[i].hash & nm;
		while (ns[j].used)
			j = (j + 1) & nm;
		ns[j] = tr->slots[i];
	}
	free(tr->slots);
	tr->slots = ns;
	tr->mask = nm;
	return 0;
}

static int wc_add(struct moe_tok_trainer *tr, const char *w, size_t len, uint64_t hash, uint64_t count)
{
	size_t i = hash & tr->mask;
	while (tr->slots[i].used) {
		struct wslot *s = &tr->slots[i];
		if (s->hash == hash && s->len == len && memcmp(tr->arena + s->off, w, len) == 0) {
			s->count += count;
			return 0;
		}
		i = (i + 1) & tr->mask;
	}
	if (tr->alen + len > tr->acap) {
		size_t nc = tr->acap ? tr->acap * 2 : 1u << 20;
		while (nc < tr->alen + len)
			nc *= 2;
		char *q = realloc(tr->arena, nc);
		if (!q)
			return MOE_ENOMEM;
		tr->arena = q;
		tr->acap = nc;
	}
	memcpy(tr->arena + tr->alen, w, len);
	tr->slots[i] = (struct wslot){hash, count, tr->alen, (uint32_t)len, 1};
	tr->alen += len;
	tr->n++;
	if (tr->n * 2 > tr->mask + 1)
		return wc_grow(tr);
	return 0;
}

int moe_tok_trainer_feed(struct moe_tok_trainer *tr, const char *text, size_t len,
			 struct moe_error *err)
{
	const uint8_t *s = (const uint8_t *)text;
	char *fixed = NULL;
	size_t v = tok_utf8_valid_prefix(s, len);
	if (v < len) {
		/* replace invalid sequences by U+FFFD */
		fixed = malloc(len * 3 + 1);
		if (!fixed)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		size_t k = 0, i = 0;
		while (i < len) {
			size_t good = tok_utf8_valid_prefix(s + i, len - i);
			memcpy(fixed + k, s + i, good);
			k += good;
			i += good;
			if (i < len) {
				i += tok_utf8_bad_len(s + i, len - i);
				memcpy(fixed + k, "\xEF\xBF\xBD", 3);
				k += 3;
			}
		}
		s = (const uint8_t *)fixed;
		len = k;
	}
	int rc = 0;
	for (size_t i = 0; i < len && rc == 0;) {
		size_t j = tok_pattern_next(PAT_GPT2, s, len, i);
		rc = wc_add(tr, (const char *)s + i, j - i, XXH3_64bits(s + i, j - i), 1);
		i = j;
	}
	free(fixed);
	if (rc < 0)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	return 0;
}

int moe_tok_trainer_merge(struct moe_tok_trainer *dst, struct moe_tok_trainer *src,
			  struct moe_error *err)
{
	for (size_t i = 0; i <= src->mask; i++) {
		struct wslot *s = &src->slots[i];
		if (s->used && wc_add(dst, src->arena + s->off, s->len, s->hash, s->count) < 0)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	memset(src->slots, 0, (src->mask + 1) * sizeof *src->slots);
	src->n = 0;
	src->alen = 0;
	return 0;
}

/* ---- training ------------------------------------------------------------------ */

struct pinfo {
	uint64_t key;   /* (a << 32 | b) + 1, 0 = empty slot */
	int64_t count;
	uint32_t *words; /* indices of words that contain (or contained) the pair */
	uint32_t nw, cw;
};

struct ptab {
	struct pinfo *p;
	size_t mask, n;
};

struct hent {
	int64_t count;
	uint64_t key;
};

struct heap {
	struct hent *e;
	size_t n, cap;
};

static bool hless(const struct hent *x, const struct hent *y)
{
	/* max-heap on count; ties: the smaller key first */
	return x->count < y->count || (x->count == y->count && x->key > y->key);
}

static int hpush(struct heap *h, struct hent v)
{
	if (h->n == h->cap) {
		size_t nc = h->cap ? h->cap * 2 : 4096;
		struct hent *q = realloc(h->e, nc * sizeof *q);
		if (!q)
			return MOE_ENOMEM;
		h->e = q;
		h->cap = nc;
	}
	size_t i = h->n++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (!hless(&h->e[p], &v))
			break;
		h->e[i] = h->e[p];
		i = p;
	}
	h->e[i] = v;
	return 0;
}

static struct hent hpop(struct heap *h)
{
	struct hent top = h->e[0], last = h->e[--h->n];
	size_t i = 0;
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		const struct hent *mv = &last;
		if (l < h->n && hless(mv, &h->e[l])) {
			m = l;
			mv = &h->e[l];
		}
		if (r < h->n && hless(mv, &h->e[r]))
			m = r;
		if (m == i)
			break;
		h->e[i] = h->e[m];
		i = m;
	}
	if (h->n > 0)
		h->e[i] = last;
	return top;
}

static struct pinfo *ptab_get(struct ptab *t, uint32_t a, uint32_t b, bool create)
{
	uint64_t key = ((uint64_t)a << 32 | b) + 1;
	size_t i = tok_pair_hash(key) & t->mask;
	while (t->p[i].key) {
		if (t->p[i].key == key)
			return &t->p[i];
		i = (i + 1) & t->mask;
	}
	if (!create)
		return NULL;
	if ((t->n + 1) * 2 > t->mask + 1) {
		size_t nm = (t->mask + 1) * 2 - 1;
		struct pinfo *np = calloc(nm + 1, sizeof *np);
		if (!np)
			return NULL;
		for (size_t k = 0; k <= t->mask; k++) {
			if (!t->p[k].key)
				continue;
			size_t j = tok_pair_hash(t->p[k].key) & nm;
			while (np[j].key)
				j = (j + 1) & nm;
			np[j] = t->p[k];
		}
		free(t->p);
		t->p = np;
		t->mask = nm;
		return ptab_get(t, a, b, true);
	}
	t->p[i].key = key;
	t->n++;
	return &t->p[i];
}

static int pair_add(struct ptab *t, uint32_t a, uint32_t b, int64_t delta, uint32_t word)
{
	struct pinfo *p = ptab_get(t, a, b, true);
	if (!p)
		return MOE_ENOMEM;
	p->count += delta;
	if (delta > 0 && word != UINT32_MAX) {
		if (p->nw && p->words[p->nw - 1] == word)
			return 0;
		if (p->nw == p->cw) {
			uint32_t nc = p->cw ? p->cw * 2 : 4;
			uint32_t *q = realloc(p->words, nc * sizeof *q);
			if (!q)
				return MOE_ENOMEM;
			p->words = q;
			p->cw = nc;
		}
		p->words[p->nw++] = word;
	}
	return 0;
}

/* pairs whose count grew during one merge (duplicates allowed) */
struct touched {
	uint64_t *k;
	size_t n, cap;
};

static int touch_add(struct touched *t, uint32_t a, uint32_t b)
{
	uint64_t key = ((uint64_t)a << 32 | b) + 1;
	if (t->n && t->k[t->n - 1] == key)
		return 0;
	if (t->n == t->cap) {
		size_t nc = t->cap ? t->cap * 2 : 1024;
		uint64_t *q = realloc(t->k, nc * sizeof *q);
		if (!q)
			return MOE_ENOMEM;
		t->k = q;
		t->cap = nc;
	}
	t->k[t->n++] = key;
	return 0;
}

static json_t *added_json(uint32_t id, const char *content)
{
	return json_pack("{s:I,s:s,s:b,s:b,s:b,s:b,s:b}", "id", (json_int_t)id, "content", content,
			 "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special", 1);
}

json_t *moe_tok_trainer_finish(struct moe_tok_trainer *tr, const struct moe_tok_train_opts *opts,
			       struct moe_error *err)
{
	uint32_t S = (uint32_t)opts->n_special;
	uint32_t base = S + 256;
	json_t *root = NULL;
	if (opts->vocab_size < base) {
		moe_error_set(err, MOE_EINVAL, "vocabulary size %u is below %u (256 bytes + %u specials)",
			      opts->vocab_size, base, S);
		return NULL;
	}
	uint64_t minf = opts->min_frequency ? opts->min_frequency : 1;
	size_t nw = tr->n;
	uint32_t **wsym = calloc(nw ? nw : 1, sizeof *wsym);
	uint32_t *wlen = calloc(nw ? nw : 1, sizeof *wlen);
	int64_t *wcnt = calloc(nw ? nw : 1, sizeof *wcnt);
	/* token table: bytes of each id */
	size_t cap_tok = opts->vocab_size;
	char **tbytes = calloc(cap_tok, sizeof *tbytes);
	uint32_t *tlen = calloc(cap_tok, sizeof *tlen);
	uint32_t (*merges)[2] = calloc(opts->vocab_size, sizeof *merges);
	size_t n_merges = 0;
	struct ptab pt = {0};
	struct heap hp = {0};
	struct tok_strmap seen = {0};
	struct touched touched = {0};
	uint32_t n_tok = base;
	if (!wsym || !wlen || !wcnt || !tbytes || !tlen || !merges)
		goto nomem;
	pt.mask = 65535;
	pt.p = calloc(pt.mask + 1, sizeof *pt.p);
	if (!pt.p || tok_strmap_init(&seen, opts->vocab_size) < 0)
		goto nomem;
	for (uint32_t i = 0; i < S; i++) {
		tlen[i] = (uint32_t)strlen(opts->special[i]);
		if (!(tbytes[i] = strdup(opts->special[i])))
			goto nomem;
	}
	for (uint32_t b = 0; b < 256; b++) {
		tlen[S + b] = 1;
		if (!(tbytes[S + b] = malloc(2)))
			goto nomem;
		tbytes[S + b][0] = (char)b;
		tbytes[S + b][1] = 0;
		if (tok_strmap_put(&seen, tbytes, tlen, S + b) < 0)
			goto nomem;
	}
	/* words and initial pair counts */
	size_t w = 0;
	for (size_t i = 0; i <= tr->mask; i++) {
		struct wslot *s = &tr->slots[i];
		if (!s->used)
			continue;
		wsym[w] = malloc((s->len ? s->len : 1) * sizeof **wsym);
		if (!wsym[w])
			goto nomem;
		for (uint32_t k = 0; k < s->len; k++)
			wsym[w][k] = S + (uint8_t)tr->arena[s->off + k];
		wlen[w] = s->len;
		wcnt[w] = (int64_t)s->count;
		for (uint32_t k = 0; k + 1 < s->len; k++)
			if (pair_add(&pt, wsym[w][k], wsym[w][k + 1], wcnt[w], (uint32_t)w) < 0)
				goto nomem;
		w++;
	}
	for (size_t i = 0; i <= pt.mask; i++)
		if (pt.p[i].key && pt.p[i].count > 0 &&
		    hpush(&hp, (struct hent){pt.p[i].count, pt.p[i].key}) < 0)
			goto nomem;
	/* merge loop */
	while (n_tok < opts->vocab_size && hp.n) {
		struct hent top = hpop(&hp);
		uint32_t a = (uint32_t)((top.key - 1) >> 32), b = (uint32_t)(top.key - 1);
		struct pinfo *p = ptab_get(&pt, a, b, false);
		if (!p || p->count <= 0)
			continue;
		if (p->count != top.count) {
			if (hpush(&hp, (struct hent){p->count, p->key}) < 0)
				goto nomem;
			continue;
		}
		if ((uint64_t)p->count < minf)
			break;
		/* new token */
		size_t nl = tlen[a] + tlen[b];
		char *nb = malloc(nl + 1);
		if (!nb)
			goto nomem;
		memcpy(nb, tbytes[a], tlen[a]);
		memcpy(nb + tlen[a], tbytes[b], tlen[b]);
		nb[nl] = 0;
		uint32_t nid = tok_strmap_get(&seen, tbytes, tlen, nb, nl);
		if (nid == MOE_TOK_NONE) {
			nid = n_tok++;
			tbytes[nid] = nb;
			tlen[nid] = (uint32_t)nl;
			if (tok_strmap_put(&seen, tbytes, tlen, nid) < 0)
				goto nomem;
		} else
			free(nb);
		merges[n_merges][0] = a;
		merges[n_merges][1] = b;
		n_merges++;
		if (n_merges == opts->vocab_size)
			break;
		/* apply to every word that contains the pair; the word list
		 * is detached because pair_add may move the table */
		uint32_t *wl = p->words, nwl = p->nw;
		p->words = NULL;
		p->nw = p->cw = 0;
		p->count = 0;
		for (uint32_t k = 0; k < nwl; k++) {
			uint32_t wi = wl[k];
			uint32_t *sy = wsym[wi];
			uint32_t L = wlen[wi];
			int64_t c = wcnt[wi];
			uint32_t o = 0;
			for (uint32_t i = 0; i < L;) {
				if (i + 1 < L && sy[i] == a && sy[i + 1] == b) {
					if (o > 0) {
						if (pair_add(&pt, sy[o - 1], a, -c, UINT32_MAX) < 0 ||
						    pair_add(&pt, sy[o - 1], nid, c, wi) < 0 ||
						    touch_add(&touched, sy[o - 1], nid) < 0)
							goto nomem_wl;
					}
					if (i + 2 < L) {
						uint32_t nx = sy[i + 2];
						if (pair_add(&pt, b, nx, -c, UINT32_MAX) < 0 ||
						    pair_add(&pt, nid, nx, c, wi) < 0)
							goto nomem_wl;
						if (touch_add(&touched, nid, nx) < 0)
							goto nomem_wl;
					}
					sy[o++] = nid;
					i += 2;
				} else
					sy[o++] = sy[i++];
			}
			wlen[wi] = o;
		}
		free(wl);
		p = ptab_get(&pt, a, b, false);
		if (p)
			p->count = 0;
		/* counts only grew for pairs next to nid: push them */
		for (size_t k = 0; k < touched.n; k++) {
			uint64_t key = touched.k[k];
			struct pinfo *q = ptab_get(&pt, (uint32_t)((key - 1) >> 32), (uint32_t)(key - 1), false);
			if (q && q->count > 0 && hpush(&hp, (struct hent){q->count, q->key}) < 0)
				goto nomem;
		}
		touched.n = 0;
		continue;
nomem_wl:
		free(wl);
		goto nomem;
	}
	/* output */
	root = json_object();
	json_t *added = json_array(), *vocab = json_object(), *mj = json_array();
	if (!root || !added || !vocab || !mj) {
		json_decref(added);
		json_decref(vocab);
		json_decref(mj);
		goto nomem;
	}
	for (uint32_t i = 0; i < S; i++)
		json_array_append_new(added, added_json(i, opts->special[i]));
	char **tstr = calloc(n_tok, sizeof *tstr);
	if (!tstr)
		goto nomem_out;
	for (uint32_t i = 0; i < n_tok; i++) {
		tstr[i] = i < S ? strdup(tbytes[i]) : tok_bytes_to_bytelevel(tbytes[i], tlen[i]);
		if (!tstr[i])
			goto nomem_out;
		json_object_set_new(vocab, tstr[i], json_integer(i));
	}
	for (size_t m = 0; m < n_merges; m++)
		json_array_append_new(mj, json_pack("[s,s]", tstr[merges[m][0]], tstr[merges[m][1]]));
	for (uint32_t i = 0; i < n_tok; i++)
		free(tstr[i]);
	free(tstr);
	tstr = NULL;
	json_object_set_new(root, "version", json_string("1.0"));
	json_object_set_new(root, "truncation", json_null());
	json_object_set_new(root, "padding", json_null());
	json_object_set_new(root, "added_tokens", added);
	json_object_set_new(root, "normalizer", json_null());
	json_object_set_new(root, "pre_tokenizer",
			    json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0,
				      "trim_offsets", 1, "use_regex", 1));
	json_object_set_new(root, "post_processor",
			    json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 0,
				      "trim_offsets", 0, "use_regex", 1));
	json_object_set_new(root, "decoder",
			    json_pack("{s:s,s:b,s:b,s:b}", "type", "ByteLevel", "add_prefix_space", 1,
				      "trim_offsets", 1, "use_regex", 1));
	json_object_set_new(root, "model",
			    json_pack("{s:s,s:n,s:n,s:n,s:n,s:b,s:b,s:b,s:o,s:o}", "type", "BPE", "dropout",
				      "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
				      "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0, "vocab", vocab,
				      "merges", mj));
	goto out;
nomem_out:
	if (tstr)
		for (uint32_t i = 0; i < n_tok; i++)
			free(tstr[i]);
	free(tstr);
	json_decref(added);
	json_decref(vocab);
	json_decref(mj);
nomem:
	json_decref(root);
	root = NULL;
	moe_error_set(err, MOE_ENOMEM, "out of memory");
out:
	if (wsym)
		for (size_t i = 0; i < nw; i++)
			free(wsym[i]);
	free(wsym);
	free(wlen);
	free(wcnt);
	if (tbytes)
		for (size_t i = 0; i < cap_tok; i++)
			free(tbytes[i]);
	free(tbytes);
	free(tlen);
	free(merges);
	if (pt.p)
		for (size_t i = 0; i <= pt.mask; i++)
			free(pt.p[i].words);
	free(pt.p);
	free(hp.e);
	free(touched.k);
	tok_strmap_release(&seen);
	return root;
}
