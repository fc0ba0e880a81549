/* Loading tokenizer.json and tiktoken rank files; accessors; decoding. */
#include "tok/tok_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void moe_tok_ids_release(struct moe_tok_ids *v)
{
	free(v->ids);
	v->ids = NULL;
	v->n = v->cap = 0;
}

void moe_tok_bytes_release(struct moe_tok_bytes *b)
{
	free(b->data);
	b->data = NULL;
	b->n = b->cap = 0;
}

void moe_tok_free(struct moe_tok *t)
{
	if (!t)
		return;
	if (t->tok_str)
		for (uint32_t i = 0; i < t->vocab_size; i++) {
			if (t->tok_bytes && t->tok_bytes[i] != t->tok_str[i])
				free(t->tok_bytes[i]);
			free(t->tok_str[i]);
		}
	free(t->tok_str);
	free(t->tok_bytes);
	free(t->tok_len);
	free(t->tok_slen);
	free(t->tok_flags);
	tok_strmap_release(&t->str_map);
	tok_strmap_release(&t->bytes_map);
	tok_pairmap_release(&t->merges);
	for (size_t i = 0; i < t->n_added; i++)
		free(t->added[i].content);
	free(t->added);
	tok_trie_release(&t->trie_raw);
	tok_trie_release(&t->trie_norm);
	json_decref(t->desc_normalizer);
	json_decref(t->desc_pre_tokenizer);
	free(t->path);
	free(t);
}

/* ---- helpers ------------------------------------------------------------ */

/* The map from token strings (added content or byte-level form) to ids. */
static int build_str_map(struct moe_tok *t, struct moe_error *err)
{
	t->tok_slen = malloc(t->vocab_size * sizeof *t->tok_slen);
	if (!t->tok_slen)
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", t->path);
	for (uint32_t i = 0; i < t->vocab_size; i++)
		t->tok_slen[i] = t->tok_str[i] ? (uint32_t)strlen(t->tok_str[i]) : 0;
	int rc = tok_strmap_init(&t->str_map, t->vocab_size);
	/* added tokens first, so that their content wins over a vocab string */
	for (uint32_t pass = 0; pass < 2 && rc == 0; pass++)
		for (uint32_t i = 0; i < t->vocab_size && rc >= 0; i++) {
			if (!t->tok_str[i] || (((t->tok_flags[i] & 4) != 0) != (pass == 0)))
				continue;
			rc = tok_strmap_put(&t->str_map, t->tok_str, t->tok_slen, i);
		}
	if (rc < 0)
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", t->path);
	return 0;
}

uint32_t moe_tok_token_id(const struct moe_tok *t, const char *s, size_t len)
{
	return tok_strmap_get(&t->str_map, t->tok_str, t->tok_slen, s, len);
}
/* Decode a byte-level string to bytes; NULL if a character is not in the
 * byte-level alphabet. */
static char *bytelevel_decode(const char *s, size_t n, uint32_t *outlen)
{
	char *o = malloc(n + 1);
	size_t k = 0;
	if (!o)
		return NULL;
	for (size_t i = 0; i < n;) {
		size_t l;
		uint32_t cp = tok_utf8_decode((const uint8_t *)s, n, i, &l);
		int b = tok_cp_to_byte(cp);
		if (b < 0) {
			free(o);
			return NULL;
		}
		o[k++] = (char)b;
		i += l;
	}
	o[k] = 0;
	*outlen = (uint32_t)k;
	return o;
}

static int alloc_vocab(struct moe_tok *t, uint32_t n, struct moe_error *err)
{
	t->vocab_size = n;
	t->tok_str = calloc(n, sizeof *t->tok_str);
	t->tok_bytes = calloc(n, sizeof *t->tok_bytes);
	t->tok_len = calloc(n, sizeof *t->tok_len);
	t->tok_flags = calloc(n, 1);
	if (!t->tok_str || !t->tok_bytes || !t->tok_len || !t->tok_flags)
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", t->path);
	return 0;
}

/* Fill tok_bytes from tok_str (HF ByteLevel decoder: a token whose
 * characters are not all byte-level symbols decodes to its own UTF-8). */
static int fill_bytes(struct moe_tok *t, uint32_t id, struct moe_error *err)
{
	const char *s = t->tok_str[id];
	size_t n = strlen(s);
	uint32_t bl;
	char *b = bytelevel_decode(s, n, &bl);
	if (b) {
		t->tok_bytes[id] = b;
		t->tok_len[id] = bl;
	} else {
		t->tok_bytes[id] = t->tok_str[id];
		t->tok_len[id] = (uint32_t)n;
	}
	(void)err;
	return 0;
}

static void find_eos(struct moe_tok *t)
{
	static const char *const names[] = {"<|endoftext|>", "</s>", "<|end_of_text|>"};
	t->eos_id = MOE_TOK_NONE;
	for (size_t k = 0; k < 3; k++) {
		uint32_t id = moe_tok_token_id(t, names[k], strlen(names[k]));
		if (id != MOE_TOK_NONE) {
			t->eos_id = id;
			return;
		}
	}
}

/* ---- tokenizer.json ------------------------------------------------------- */

static int bad(struct moe_error *err, const char *where, const char *key, const char *what)
{
	return moe_error_set(err, MOE_EUNSUPPORTED, "%s: %s: %s", where, key, what);
}

static const char *jtype(const json_t *o)
{
	const json_t *ty = json_is_object(o) ? json_object_get(o, "type") : NULL;
	return json_is_string(ty) ? json_string_value(ty) : NULL;
}

static int parse_normalizer(struct moe_tok *t, const json_t *n, const char *where, const char *key,
			    struct moe_error *err)
{
	if (json_is_null(n))
		return 0;
	const char *ty = jtype(n);
	if (!ty)
		return moe_error_set(err, MOE_EFORMAT, "%s: %s: missing \"type\"", where, key);
	enum tok_norm k;
	if (strcmp(ty, "Sequence") == 0) {
		json_t *arr = json_object_get(n, "normalizers");
		if (!json_is_array(arr))
			return moe_error_set(err, MOE_EFORMAT, "%s: %s.normalizers: not an array", where, key);
		for (size_t i = 0; i < json_array_size(arr); i++) {
			char sub[256];
			snprintf(sub, sizeof sub, "%s.normalizers[%zu]", key, i);
			int rc = parse_normalizer(t, json_array_get(arr, i), where, sub, err);
			if (rc < 0)
				return rc;
		}
		return 0;
	} else if (strcmp(ty, "NFC") == 0)
		k = NORM_NFC;
	else if (strcmp(ty, "NFD") == 0)
		k = NORM_NFD;
	else if (strcmp(ty, "NFKC") == 0)
		k = NORM_NFKC;
	else if (strcmp(ty, "NFKD") == 0)
		k = NORM_NFKD;
	else {
		char msg[200];
		snprintf(msg, sizeof msg, "unsupported normalizer type '%s'", ty);
		return bad(err, where, key, msg);
	}
	if (t->n_norms == TOK_MAX_NORMS)
		return bad(err, where, key, "too many normalizers");
	t->norms[t->n_norms++] = k;
	return 0;
}

static int parse_pretok(struct moe_tok *t, const json_t *p, const char *where, const char *key,
			bool *have_bytelevel, struct moe_error *err)
{
	if (json_is_null(p))
		return 0;
	const char *ty = jtype(p);
	if (!ty)
		return moe_error_set(err, MOE_EFORMAT, "%s: %s: missing \"type\"", where, key);
	if (*have_bytelevel)
		return bad(err, where, key, "pre-tokenizers after ByteLevel are not supported");
	if (strcmp(ty, "Sequence") == 0) {
		json_t *arr = json_object_get(p, "pretokenizers");
		if (!json_is_array(arr))
			return moe_error_set(err, MOE_EFORMAT, "%s: %s.pretokenizers: not an array", where, key);
		for (size_t i = 0; i < json_array_size(arr); i++) {
			char sub[256];
			snprintf(sub, sizeof sub, "%s.pretokenizers[%zu]", key, i);
			int rc = parse_pretok(t, json_array_get(arr, i), where, sub, have_bytelevel, err);
			if (rc < 0)
				return rc;
		}
		return 0;
	}
	if (strcmp(ty, "ByteLevel") == 0) {
		json_t *aps = json_object_get(p, "add_prefix_space");
		json_t *ur = json_object_get(p, "use_regex");
		bool use_regex = ur ? json_is_true(ur) : true;
		if (aps && json_is_true(aps)) {
			if (t->n_splits > 0)
				return bad(err, where, key,
					   "add_prefix_space after a Split pre-tokenizer is not supported");
			t->add_prefix_space = true;
		}
		if (use_regex) {
			if (t->n_splits == TOK_MAX_SPLITS)
				return bad(err, where, key, "too many pre-tokenizers");
			t->splits[t->n_splits++] = PAT_GPT2;
		}
		*have_bytelevel = true;
		return 0;
	}
	if (strcmp(ty, "Split") == 0) {
		json_t *pat = json_object_get(p, "pattern");
		json_t *re = json_is_object(pat) ? json_object_get(pat, "Regex") : NULL;
		char sub[300];
		if (!json_is_string(re)) {
			snprintf(sub, sizeof sub, "%s.pattern", key);
			return bad(err, where, sub, "only {\"Regex\": ...} patterns are supported");
		}
		enum tok_pattern pt = tok_pattern_from_regex(json_string_value(re));
		if (pt == PAT_NONE) {
			snprintf(sub, sizeof sub, "%s.pattern.Regex", key);
			return bad(err, where, sub,
				   "unknown regex (supported: the GPT-2 and cl100k patterns)");
		}
		const char *beh = json_string_value(json_object_get(p, "behavior"));
		bool invert = json_is_true(json_object_get(p, "invert"));
		/* The supported patterns match every character, so the pieces are
		 * the matches for Isolated (either way) and for Removed+invert. */
		if (!beh || !(strcmp(beh, "Isolated") == 0 || (strcmp(beh, "Removed") == 0 && invert))) {
			snprintf(sub, sizeof sub, "%s.behavior", key);
			return bad(err, where, sub,
				   "only \"Isolated\", or \"Removed\" with invert, is supported");
		}
		if (t->n_splits == TOK_MAX_SPLITS)
			return bad(err, where, key, "too many pre-tokenizers");
		t->splits[t->n_splits++] = pt;
		return 0;
	}
	char msg[200];
	snprintf(msg, sizeof msg, "unsupported pre-tokenizer type '%s'", ty);
	return bad(err, where, key, msg);
}

static int check_null_or(const json_t *root, const char *key, const char *allowed_type,
			 const char *where, struct moe_error *err)
{
	const json_t *v = json_object_get(root, key);
	if (!v || json_is_null(v))
		return 0;
	const char *ty = jtype(v);
	if (allowed_type && ty && strcmp(ty, allowed_type) == 0)
		return 0;
	char msg[200];
	snprintf(msg, sizeof msg, "unsupported %s%s%s", ty ? "type '" : "value", ty ? ty : "",
		 ty ? "'" : "");
	return bad(err, where, key, msg);
}

static struct moe_tok *load_json(const json_t *root, const char *where, struct moe_error *err)
{
	uint32_t *added_ids = NULL;
	struct moe_tok *t = calloc(1, sizeof *t);
	if (!t) {
		moe_error_set(err, MOE_ENOMEM, "%s: out of memory", where);
		return NULL;
	}
	t->path = strdup(where);
	int rc = 0;
	if (!json_is_object(root)) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: not a JSON object", where);
		goto fail;
	}
	if ((rc = check_null_or(root, "truncation", NULL, where, err)) < 0 ||
	    (rc = check_null_or(root, "padding", NULL, where, err)) < 0 ||
	    (rc = check_null_or(root, "post_processor", "ByteLevel", where, err)) < 0 ||
	    (rc = check_null_or(root, "decoder", "ByteLevel", where, err)) < 0)
		goto fail;
	json_t *model = json_object_get(root, "model");
	if (!json_is_object(model)) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: model: missing or not an object", where);
		goto fail;
	}
	const char *mty = jtype(model);
	if (mty && strcmp(mty, "BPE") != 0) {
		char msg[200];
		snprintf(msg, sizeof msg, "unsupported model type '%s' (only BPE)", mty);
		rc = bad(err, where, "model.type", msg);
		goto fail;
	}
	json_t *v;
	if ((v = json_object_get(model, "dropout")) && !json_is_null(v) &&
	    !(json_is_number(v) && json_number_value(v) == 0.0)) {
		rc = bad(err, where, "model.dropout", "BPE dropout is not supported");
		goto fail;
	}
	static const char *const empty_keys[] = {"continuing_subword_prefix", "end_of_word_suffix"};
	for (int k = 0; k < 2; k++) {
		v = json_object_get(model, empty_keys[k]);
		if (v && !json_is_null(v) && !(json_is_string(v) && json_string_length(v) == 0)) {
			char key[80];
			snprintf(key, sizeof key, "model.%s", empty_keys[k]);
			rc = bad(err, where, key, "not supported");
			goto fail;
		}
	}
	if (json_is_true(json_object_get(model, "byte_fallback"))) {
		rc = bad(err, where, "model.byte_fallback", "not supported");
		goto fail;
	}
	t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
	t->fuse_unk = json_is_true(json_object_get(model, "fuse_unk"));
	json_t *vocab = json_object_get(model, "vocab");
	json_t *merges = json_object_get(model, "merges");
	if (!json_is_object(vocab)) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: model.vocab: missing or not an object", where);
		goto fail;
	}
	if (!json_is_array(merges)) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: model.merges: missing or not an array", where);
		goto fail;
	}
	json_t *added = json_object_get(root, "added_tokens");
	if (added && !json_is_null(added) && !json_is_array(added)) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: added_tokens: not an array", where);
		goto fail;
	}
	/* vocabulary size */
	int64_t maxid = -1;
	const char *k;
	json_object_foreach(vocab, k, v)
	{
		if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (1 << 30)) {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: model.vocab[\"%.40s\"]: bad id", where, k);
			goto fail;
		}
		if (json_integer_value(v) > maxid)
			maxid = json_integer_value(v);
	}
	/* Ids of added tokens as Hugging Face assigns them when it loads the
	 * file: the id of the same content added before, else its id in the
	 * model vocabulary, else the next id after the vocabulary and the
	 * added tokens so far.  The "id" written in the file is not used. */
	size_t n_added = added ? json_array_size(added) : 0;
	size_t model_n = json_object_size(vocab);
	int64_t added_max = -1;
	added_ids = calloc(n_added ? n_added : 1, sizeof *added_ids);
	if (!added_ids)
		goto nomem;
	for (size_t i = 0; i < n_added; i++) {
		json_t *a = json_array_get(added, i);
		json_t *id = json_object_get(a, "id");
		json_t *content = json_object_get(a, "content");
		if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 30) ||
		    !json_is_string(content)) {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: added_tokens[%zu]: bad id or content", where, i);
			goto fail;
		}
		int64_t hid = -1;
		for (size_t q = 0; q < i && hid < 0; q++)
			if (json_equal(json_object_get(json_array_get(added, q), "content"), content))
				hid = added_ids[q];
		json_t *mv = hid < 0 ? json_object_get(vocab, json_string_value(content)) : NULL;
		if (hid < 0 && mv)
			hid = json_integer_value(mv);
		if (hid < 0)
			hid = added_max < 0 ? (int64_t)model_n
					    : added_max >= (int64_t)model_n ? added_max + 1 : (int64_t)model_n;
		added_ids[i] = (uint32_t)hid;
		if (hid > added_max)
			added_max = hid;
		if (hid > maxid)
			maxid = hid;
	}
	if (maxid < 0) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: model.vocab: empty", where);
		goto fail;
	}
	if ((rc = alloc_vocab(t, (uint32_t)maxid + 1, err)) < 0)
		goto fail;
	json_object_foreach(vocab, k, v)
	{
		uint32_t id = (uint32_t)json_integer_value(v);
		if (t->tok_str[id]) {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: model.vocab: id %u used twice", where, id);
			goto fail;
		}
		if (!(t->tok_str[id] = strdup(k))) {
			rc = moe_error_set(err, MOE_ENOMEM, "%s: out of memory", where);
			goto fail;
		}
		t->tok_flags[id] = 1;
		fill_bytes(t, id, err);
	}
	/* raw-bytes map of the model vocabulary (byte-level tokens only) */
	if ((rc = tok_strmap_init(&t->bytes_map, t->vocab_size)) < 0)
		goto nomem;
	for (uint32_t i = 0; i < t->vocab_size; i++)
		if (t->tok_str[i] && t->tok_bytes[i] != t->tok_str[i] &&
		    tok_strmap_put(&t->bytes_map, t->tok_bytes, t->tok_len, i) < 0)
			goto nomem;
	for (int b = 0; b < 256; b++) {
		char c = (char)b;
		t->byte_id[b] = tok_strmap_get(&t->bytes_map, t->tok_bytes, t->tok_len, &c, 1);
	}
	t->unk_id = MOE_TOK_NONE;
	if ((v = json_object_get(model, "unk_token")) && !json_is_null(v)) {
		json_t *u = json_is_string(v) ? json_object_get(vocab, json_string_value(v)) : NULL;
		if (!u) {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: model.unk_token: not in the vocabulary", where);
			goto fail;
		}
		t->unk_id = (uint32_t)json_integer_value(u);
	}
	/* merges */
	size_t n_merges = json_array_size(merges);
	if ((rc = tok_pairmap_init(&t->merges, n_merges)) < 0)
		goto nomem;
	for (size_t i = 0; i < n_merges; i++) {
		json_t *m = json_array_get(merges, i);
		const char *a, *b;
		size_t la, lb;
		char *tmp = NULL;
		if (json_is_string(m)) {
			const char *s = json_string_value(m);
			const char *sp = strchr(s, ' ');
			if (!sp || strchr(sp + 1, ' ')) {
				rc = moe_error_set(err, MOE_EFORMAT, "%s: model.merges[%zu]: not \"a b\"", where, i);
				goto fail;
			}
			a = s;
			la = (size_t)(sp - s);
			b = sp + 1;
			lb = strlen(b);
		} else if (json_is_array(m) && json_array_size(m) == 2 &&
			   json_is_string(json_array_get(m, 0)) && json_is_string(json_array_get(m, 1))) {
			a = json_string_value(json_array_get(m, 0));
			la = json_string_length(json_array_get(m, 0));
			b = json_string_value(json_array_get(m, 1));
			lb = json_string_length(json_array_get(m, 1));
		} else {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: model.merges[%zu]: not a pair", where, i);
			goto fail;
		}
		tmp = malloc(la + lb + 1);
		if (!tmp)
			goto nomem;
		memcpy(tmp, a, la);
		memcpy(tmp + la, b, lb);
		tmp[la + lb] = 0;
		json_t *ia = NULL, *ib = NULL, *ic = json_object_get(vocab, tmp);
		char *sa = strndup(a, la), *sb = strndup(b, lb);
		if (sa && sb) {
			ia = json_object_get(vocab, sa);
			ib = json_object_get(vocab, sb);
		}
		free(sa);
		free(sb);
		if (!ia || !ib || !ic) {
			rc = moe_error_set(err, MOE_EFORMAT,
					   "%s: model.merges[%zu]: token '%.60s' not in the vocabulary", where, i,
					   !ia ? a : !ib ? b : tmp);
			free(tmp);
			goto fail;
		}
		free(tmp);
		if (tok_pairmap_put(&t->merges, (uint32_t)json_integer_value(ia),
				    (uint32_t)json_integer_value(ib), (uint32_t)i,
				    (uint32_t)json_integer_value(ic)) < 0)
			goto nomem;
	}
	t->n_merges = (uint32_t)n_merges;
	/* added tokens */
	t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
	if (!t->added)
		goto nomem;
	for (size_t i = 0; i < n_added; i++) {
		json_t *a = json_array_get(added, i);
		struct tok_added *ad = &t->added[t->n_added];
		uint32_t id = added_ids[i];
		json_t *content = json_object_get(a, "content");
		if (json_is_true(json_object_get(a, "single_word"))) {
			char key[64];
			snprintf(key, sizeof key, "added_tokens[%zu].single_word", i);
			rc = bad(err, where, key, "single_word tokens are not supported");
			goto fail;
		}
		ad->len = json_string_length(content);
		ad->content = malloc(ad->len + 1);
		if (!ad->content)
			goto nomem;
		memcpy(ad->content, json_string_value(content), ad->len + 1);
		ad->id = id;
		ad->special = json_is_true(json_object_get(a, "special"));
		json_t *nz = json_object_get(a, "normalized");
		ad->normalized = nz ? json_is_true(nz) : !ad->special;
		ad->lstrip = json_is_true(json_object_get(a, "lstrip"));
		ad->rstrip = json_is_true(json_object_get(a, "rstrip"));
		t->n_added++;
		if (t->tok_str[id] && t->tok_bytes[id] != t->tok_str[id])
			free(t->tok_bytes[id]);
		free(t->tok_str[id]);
		t->tok_str[id] = strdup(ad->content);
		if (!t->tok_str[id])
			goto nomem;
		fill_bytes(t, id, err);
		t->tok_flags[id] = (uint8_t)(1 | 4 | (ad->special ? 2 : 0));
	}
	/* pipeline */
	t->desc_normalizer = json_incref(json_object_get(root, "normalizer"));
	t->desc_pre_tokenizer = json_incref(json_object_get(root, "pre_tokenizer"));
	if (t->desc_normalizer &&
	    (rc = parse_normalizer(t, t->desc_normalizer, where, "normalizer", err)) < 0)
		goto fail;
	bool have_bl = false;
	if (t->desc_pre_tokenizer &&
	    (rc = parse_pretok(t, t->desc_pre_tokenizer, where, "pre_tokenizer", &have_bl, err)) < 0)
		goto fail;
	if (!have_bl) {
		rc = bad(err, where, "pre_tokenizer", "a ByteLevel pre-tokenizer is required");
		goto fail;
	}
	/* normalized added tokens are matched in normalized text */
	for (size_t i = 0; i < t->n_added; i++) {
		struct tok_added *ad = &t->added[i];
		if (!ad->normalized || t->n_norms == 0 || ad->len == 0)
			continue;
		uint8_t *o;
		size_t ol;
		if ((rc = tok_normalize(t, (const uint8_t *)ad->content, ad->len, &o, &ol, err)) < 0)
			goto fail;
		if (o) {
			free(ad->content);
			ad->content = (char *)o;
			ad->len = ol;
		}
	}
	if (tok_trie_build(&t->trie_raw, t->added, t->n_added, false) < 0 ||
	    tok_trie_build(&t->trie_norm, t->added, t->n_added, true) < 0)
		goto nomem;
	if ((rc = build_str_map(t, err)) < 0)
		goto fail;
	find_eos(t);
	free(added_ids);
	return t;
nomem:
	rc = moe_error_set(err, MOE_ENOMEM, "%s: out of memory", where);
fail:
	(void)rc;
	free(added_ids);
	moe_tok_free(t);
	return NULL;
}

struct moe_tok *moe_tok_load_json(const json_t *root, const char *where, struct moe_error *err)
{
	tok_classes_init();
	struct moe_tok *t = load_json(root, where, err);
	if (t) {
		char *s = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
		if (s) {
			moe_sha256_buf(s, strlen(s), t->sha256);
			free(s);
		}
	}
	return t;
}

/* ---- tiktoken ------------------------------------------------------------- */

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

static long b64dec(const char *s, size_t n, char *out)
{
	size_t k = 0;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '=')
			break;
		int v = b64val((unsigned char)s[i]);
		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[k++] = (char)(acc >> bits);
		}
	}
	return (long)k;
}

static struct moe_tok *load_tiktoken(const char *buf, size_t len, const char *where,
				     struct moe_error *err)
{
	/* count lines */
	size_t lines = 0;
	for (size_t i = 0; i < len; i++)
		lines += buf[i] == '\n';
	if (len && buf[len - 1] != '\n')
		lines++;
	struct {
		const char *name;
		uint32_t n_ranks;
		enum tok_pattern pat;
		struct {
			const char *s;
			uint32_t id;
		} sp[5];
	} kinds[] = {
		{"r50k_base", 50256, PAT_GPT2, {{"<|endoftext|>", 50256}}},
		{"cl100k_base",
		 100256,
		 PAT_CL100K_TT,
		 {{"<|endoftext|>", 100257},
		  {"<|fim_prefix|>", 100258},
		  {"<|fim_middle|>", 100259},
		  {"<|fim_suffix|>", 100260},
		  {"<|endofprompt|>", 100276}}},
	};
	int kind = -1;
	for (int i = 0; i < 2; i++)
		if (lines == kinds[i].n_ranks)
			kind = i;
	if (kind < 0) {
		moe_error_set(err, MOE_EUNSUPPORTED,
			      "%s: tiktoken file with %zu ranks: only r50k_base (50256) and cl100k_base "
			      "(100256) are supported",
			      where, lines);
		return NULL;
	}
	struct moe_tok *t = calloc(1, sizeof *t);
	if (!t) {
		moe_error_set(err, MOE_ENOMEM, "%s: out of memory", where);
		return NULL;
	}
	t->path = strdup(where);
	t->tiktoken = true;
	t->unk_id = MOE_TOK_NONE;
	t->ignore_merges = true; /* tiktoken looks the whole piece up first */
	uint32_t vs = kinds[kind].n_ranks;
	for (int s = 0; s < 5; s++)
		if (kinds[kind].sp[s].s && kinds[kind].sp[s].id + 1 > vs)
			vs = kinds[kind].sp[s].id + 1;
	if (alloc_vocab(t, vs, err) < 0)
		goto fail;
	size_t lineno = 0;
	for (size_t i = 0; i < len;) {
		const char *e = memchr(buf + i, '\n', len - i);
		size_t end = e ? (size_t)(e - buf) : len;
		lineno++;
		const char *sp = memchr(buf + i, ' ', end - i);
		char tmp[1024];
		long nb;
		if (!sp || (size_t)(sp - (buf + i)) > 1300 ||
		    (nb = b64dec(buf + i, (size_t)(sp - (buf + i)), tmp)) <= 0) {
			moe_error_set(err, MOE_EFORMAT, "%s:%zu: expected 'base64 rank'", where, lineno);
			goto fail;
		}
		char num[16];
		size_t nl = end - (size_t)(sp + 1 - buf);
		if (nl == 0 || nl >= sizeof num) {
			moe_error_set(err, MOE_EFORMAT, "%s:%zu: bad rank", where, lineno);
			goto fail;
		}
		memcpy(num, sp + 1, nl);
		num[nl] = 0;
		char *ep;
		errno = 0;
		unsigned long r = strtoul(num, &ep, 10);
		if (*ep || errno || r >= kinds[kind].n_ranks || t->tok_str[r]) {
			moe_error_set(err, MOE_EFORMAT, "%s:%zu: bad or duplicate rank '%s'", where, lineno, num);
			goto fail;
		}
		t->tok_bytes[r] = malloc((size_t)nb + 1);
		if (!t->tok_bytes[r])
			goto nomem;
		memcpy(t->tok_bytes[r], tmp, (size_t)nb);
		t->tok_bytes[r][nb] = 0;
		t->tok_len[r] = (uint32_t)nb;
		t->tok_str[r] = tok_bytes_to_bytelevel(tmp, (size_t)nb);
		if (!t->tok_str[r])
			goto nomem;
		t->tok_flags[r] = 1;
		i = end + 1;
	}
	if (tok_strmap_init(&t->bytes_map, vs) < 0)
		goto nomem;
	for (uint32_t i = 0; i < kinds[kind].n_ranks; i++) {
		if (!t->tok_str[i]) {
			moe_error_set(err, MOE_EFORMAT, "%s: rank %u missing", where, i);
			goto fail;
		}
		if (tok_strmap_put(&t->bytes_map, t->tok_bytes, t->tok_len, i) < 0)
			goto nomem;
	}
	for (int b = 0; b < 256; b++) {
		char c = (char)b;
		t->byte_id[b] = tok_strmap_get(&t->bytes_map, t->tok_bytes, t->tok_len, &c, 1);
	}
	/* pairs: (a, b) -> a+b for every split of every token */
	if (tok_pairmap_init(&t->merges, kinds[kind].n_ranks * 2) < 0)
		goto nomem;
	for (uint32_t id = 0; id < kinds[kind].n_ranks; id++) {
		const char *s = t->tok_bytes[id];
		uint32_t n = t->tok_len[id];
		for (uint32_t cut = 1; cut < n; cut++) {
			uint32_t a = tok_strmap_get(&t->bytes_map, t->tok_bytes, t->tok_len, s, cut);
			if (a == MOE_TOK_NONE)
				continue;
			uint32_t b = tok_strmap_get(&t->bytes_map, t->tok_bytes, t->tok_len, s + cut, n - cut);
			if (b == MOE_TOK_NONE)
				continue;
			if (tok_pairmap_put(&t->merges, a, b, id, id) < 0)
				goto nomem;
		}
	}
	t->n_merges = (uint32_t)t->merges.count;
	t->splits[t->n_splits++] = kinds[kind].pat;
	size_t nsp = 0;
	for (int s = 0; s < 5; s++)
		nsp += kinds[kind].sp[s].s != NULL;
	t->added = calloc(nsp, sizeof *t->added);
	if (!t->added)
		goto nomem;
	for (int s = 0; s < 5; s++) {
		if (!kinds[kind].sp[s].s)
			continue;
		struct tok_added *ad = &t->added[t->n_added++];
		uint32_t id = kinds[kind].sp[s].id;
		ad->content = strdup(kinds[kind].sp[s].s);
		if (!ad->content)
			goto nomem;
		ad->len = strlen(ad->content);
		ad->id = id;
		ad->special = true;
		t->tok_str[id] = strdup(ad->content);
		if (!t->tok_str[id])
			goto nomem;
		t->tok_bytes[id] = t->tok_str[id];
		t->tok_len[id] = (uint32_t)ad->len;
		t->tok_flags[id] = 1 | 2 | 4;
	}
	t->desc_pre_tokenizer = json_pack("{s:s,s:s}", "type", "tiktoken", "pattern",
					  tok_pattern_name(kinds[kind].pat));
	if (tok_trie_build(&t->trie_raw, t->added, t->n_added, false) < 0 ||
	    tok_trie_build(&t->trie_norm, t->added, t->n_added, true) < 0)
		goto nomem;
	if (build_str_map(t, err) < 0)
		goto fail;
	find_eos(t);
	return t;
nomem:
	moe_error_set(err, MOE_ENOMEM, "%s: out of memory", where);
fail:
	moe_tok_free(t);
	return NULL;
}

struct moe_tok *moe_tok_load(const char *path, struct moe_error *err)
{
	tok_classes_init();
	char *buf;
	size_t len;
	if (moe_read_file(path, &buf, &len, err) < 0)
		return NULL;
	size_t i = 0;
	while (i < len && (buf[i] == ' ' || buf[i] == '\t' || buf[i] == '\n' || buf[i] == '\r'))
		i++;
	struct moe_tok *t;
	if (i < len && buf[i] == '{') {
		json_error_t je;
		json_t *root = json_loadb(buf, len, JSON_ALLOW_NUL, &je);
		if (!root) {
			moe_error_set(err, MOE_EFORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
			free(buf);
			return NULL;
		}
		t = load_json(root, path, err);
		json_decref(root);
	} else {
		t = load_tiktoken(buf, len, path, err);
	}
	if (t)
		moe_sha256_buf(buf, len, t->sha256);
	free(buf);
	return t;
}

/* ---- accessors -------------------------------------------------------------- */

uint32_t moe_tok_vocab_size(const struct moe_tok *t)
{
	return t->vocab_size;
}

uint32_t moe_tok_eos_id(const struct moe_tok *t)
{
	return t->eos_id;
}

void moe_tok_sha256(const struct moe_tok *t, uint8_t out[32])
{
	memcpy(out, t->sha256, 32);
}

const char *moe_tok_token_bytes(const struct moe_tok *t, uint32_t id, size_t *len)
{
	if (id >= t->vocab_size || !t->tok_str[id]) {
		*len = 0;
		return NULL;
	}
	*len = t->tok_len[id];
	return t->tok_bytes[id];
}

const char *moe_tok_token_str(const struct moe_tok *t, uint32_t id)
{
	return id < t->vocab_size ? t->tok_str[id] : NULL;
}

bool moe_tok_is_special(const struct moe_tok *t, uint32_t id)
{
	return id < t->vocab_size && (t->tok_flags[id] & 2);
}

int moe_tok_decode(const struct moe_tok *t, const uint32_t *ids, size_t n, bool skip_special,
		   struct moe_tok_bytes *out, struct moe_error *err)
{
	size_t n0 = out->n;
	for (size_t i = 0; i < n; i++) {
		uint32_t id = ids[i];
		if (id >= t->vocab_size || !t->tok_str[id]) {
			out->n = n0;
			if (out->data)
				out->data[n0] = 0;
			return moe_error_set(err, MOE_ERANGE, "token %zu: id %u is not in the vocabulary", i, id);
		}
		if (skip_special && (t->tok_flags[id] & 2))
			continue;
		size_t l = t->tok_len[id];
		if (out->n + l + 1 > out->cap) {
			size_t cap = out->cap ? out->cap : 256;
			while (cap < out->n + l + 1)
				cap *= 2;
			char *p = realloc(out->data, cap);
			if (!p) {
				out->n = n0;
				return moe_error_set(err, MOE_ENOMEM, "out of memory");
			}
			out->data = p;
			out->cap = cap;
		}
		memcpy(out->data + out->n, t->tok_bytes[id], l);
		out->n += l;
	}
	if (out->data)
		out->data[out->n] = 0;
	else if (n == 0 || out->n == 0) {
		out->data = malloc(1);
		if (!out->data)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		out->data[0] = 0;
		out->cap = 1;
	}
	return 0;
}

json_t *moe_tok_describe(const struct moe_tok *t)
{
	char hex[65];
	moe_hex(t->sha256, 32, hex);
	json_t *norm = json_array();
	static const char *const nn[] = {"", "NFC", "NFD", "NFKC", "NFKD"};
	for (int i = 0; i < t->n_norms; i++)
		json_array_append_new(norm, json_string(nn[t->norms[i]]));
	json_t *sp = json_array();
	for (int i = 0; i < t->n_splits; i++)
		json_array_append_new(sp, json_string(tok_pattern_name(t->splits[i])));
	json_t *ad = json_array();
	for (size_t i = 0; i < t->n_added; i++) {
		const struct tok_added *a = &t->added[i];
		json_array_append_new(ad, json_pack("{s:I,s:s%,s:b,s:b}", "id", (json_int_t)a->id, "content",
						    t->tok_str[a->id], strlen(t->tok_str[a->id]), "special",
						    a->special, "normalized", a->normalized));
	}
	return json_pack("{s:s,s:s,s:s,s:I,s:I,s:o,s:o,s:o,s:b,s:b,s:o,s:O?,s:O?}", "path", t->path,
			 "format", t->tiktoken ? "tiktoken" : "tokenizer.json", "sha256", hex,
			 "vocab_size", (json_int_t)t->vocab_size, "n_merges", (json_int_t)t->n_merges,
			 "eos_id", t->eos_id == MOE_TOK_NONE ? json_null() : json_integer(t->eos_id),
			 "normalizers", norm, "splits", sp, "add_prefix_space", t->add_prefix_space,
			 "ignore_merges", t->ignore_merges, "added_tokens", ad, "normalizer",
			 t->desc_normalizer, "pre_tokenizer", t->desc_pre_tokenizer);
}
