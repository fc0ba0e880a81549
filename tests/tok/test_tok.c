/*
 * libmoetok unit tests: pre-tokenizer patterns (expected pieces derived by
 * hand from the regex semantics), UTF-8 validation and the replacement
 * policy, BPE merge order on hand-made vocabularies, added tokens, loader
 * errors, decoding and the trainer.  Exactness against the reference
 * libraries is in hf.sh.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tok/tok_internal.h"

/* ---- patterns -------------------------------------------------------------- */

/* Split s with pattern p and join the pieces with '|'. */
static char *split(enum tok_pattern p, const char *s)
{
	size_t n = strlen(s);
	char *out = malloc(n * 2 + 1), *o = out;
	tok_classes_init();
	for (size_t i = 0; i < n;) {
		size_t j = tok_pattern_next(p, (const uint8_t *)s, n, i);
		cr_assert(j > i && j <= n, "no progress at %zu in '%s'", i, s);
		if (i)
			*o++ = '|';
		memcpy(o, s + i, j - i);
		o += j - i;
		i = j;
	}
	*o = 0;
	return out;
}

#define SPLITS(p, in, want)                                                                    \
	do {                                                                                   \
		char *got_ = split(p, in);                                                     \
		cr_expect_str_eq(got_, want, "split of '%s'", in);                             \
		free(got_);                                                                    \
	} while (0)

Test(pattern, gpt2)
{
	SPLITS(PAT_GPT2, "Hello world", "Hello| world");
	SPLITS(PAT_GPT2, "Hello  world", "Hello| | world");
	SPLITS(PAT_GPT2, "a\n\nb", "a|\n|\n|b");
	SPLITS(PAT_GPT2, "x   ", "x|   ");
	SPLITS(PAT_GPT2, "x\t\ty", "x|\t|\t|y");
	SPLITS(PAT_GPT2, "it's", "it|'s");
	SPLITS(PAT_GPT2, "IT'S", "IT|'|S");
	SPLITS(PAT_GPT2, "'sup we'll", "'s|up| we|'ll");
	SPLITS(PAT_GPT2, "abc123def", "abc|123|def");
	SPLITS(PAT_GPT2, "  123", " | 123");
	SPLITS(PAT_GPT2, "?!  ok", "?!| | ok");
	SPLITS(PAT_GPT2, "\xc2\xa0x", "\xc2\xa0|x");                /* NBSP is \s, not ' ' */
	SPLITS(PAT_GPT2, "a \xe4\xb8\xad", "a| \xe4\xb8\xad");      /* CJK is \p{L} */
	SPLITS(PAT_GPT2, "x \xe2\x85\xa0", "x| \xe2\x85\xa0");      /* U+2160 is Nl */
	SPLITS(PAT_GPT2, "e\xcc\x81", "e|\xcc\x81");                 /* Mn is neither L nor N */
	SPLITS(PAT_GPT2, " ", " ");
	SPLITS(PAT_GPT2, "a \xf0\x9f\x98\x80!", "a| \xf0\x9f\x98\x80!");
}

Test(pattern, cl100k)
{
	SPLITS(PAT_CL100K, "Hello world", "Hello| world");
	SPLITS(PAT_CL100K, "IT'S we'Ll", "IT|'S| we|'Ll");
	SPLITS(PAT_CL100K, "x'\xc5\xbf", "x|'\xc5\xbf"); /* long s case-folds to s */
	SPLITS(PAT_CL100K, "12345", "123|45");
	SPLITS(PAT_CL100K, "a\n\n  b", "a|\n\n| | b");
	SPLITS(PAT_CL100K, "\tfoo", "\tfoo");
	SPLITS(PAT_CL100K, "...\n\nx", "...\n\n|x");
	SPLITS(PAT_CL100K, "a \n ", "a| \n| ");
	SPLITS(PAT_CL100K_TT, "a \n ", "a| \n ");
	SPLITS(PAT_CL100K_TT, "a \n b", "a| \n| b");
}

Test(pattern, regex_names)
{
	cr_expect_eq(tok_pattern_from_regex("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| "
					    "?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"),
		     PAT_GPT2);
	cr_expect_eq(tok_pattern_from_regex("\\w+"), PAT_NONE);
}

/* ---- UTF-8 ------------------------------------------------------------------- */

Test(utf8, validation)
{
	struct {
		const char *s;
		size_t valid;
	} cases[] = {
		{"abc", 3},
		{"caf\xc3\xa9", 5},
		{"\xf0\x9f\x98\x80", 4},
		{"a\xc0\xaf", 1},          /* overlong */
		{"ab\xed\xa0\x80", 2},     /* surrogate */
		{"\xf4\x90\x80\x80", 0},   /* > U+10FFFF */
		{"xyz\xe2\x82", 3},        /* truncated */
		{"\xe0\x9f\xbf", 0},       /* overlong 3-byte */
		{"12345678\x80", 8},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		cr_expect_eq(tok_utf8_valid_prefix((const uint8_t *)cases[i].s, strlen(cases[i].s)),
			     cases[i].valid, "case %zu", i);
}

/* Number of U+FFFD the lossy policy produces (cf. Python's errors="replace"). */
static size_t n_replacements(const char *s)
{
	size_t n = strlen(s), k = 0;
	for (size_t i = 0; i < n;) {
		size_t v = tok_utf8_valid_prefix((const uint8_t *)s + i, n - i);
		i += v;
		if (i < n) {
			i += tok_utf8_bad_len((const uint8_t *)s + i, n - i);
			k++;
		}
	}
	return k;
}

Test(utf8, maximal_subparts)
{
	cr_expect_eq(n_replacements("\xe0\x80\x80"), 3);
	cr_expect_eq(n_replacements("\xf0\x9f\x98"), 1);
	cr_expect_eq(n_replacements("\xed\xa0\x80"), 3);
	cr_expect_eq(n_replacements("\xc0\xaf"), 2);
	cr_expect_eq(n_replacements("\xf4\x90\x80\x80"), 4);
	cr_expect_eq(n_replacements("a\xff" "b\xfe"), 2);
	cr_expect_eq(n_replacements("\xe2\x82" "x"), 1);
}

/* ---- hand-made vocabularies ---------------------------------------------------- */

/* A byte-level tokenizer.json: 256 bytes (id = byte), then the given merges
 * (ids 256...), optional added tokens and normalizer. */
static json_t *make_json(const char *const *merges, size_t n, bool ignore_merges)
{
	json_t *vocab = json_object(), *mj = json_array();
	for (int b = 0; b < 256; b++) {
		char c = (char)b;
		char *s = tok_bytes_to_bytelevel(&c, 1);
		json_object_set_new(vocab, s, json_integer(b));
		free(s);
	}
	for (size_t i = 0; i < n; i++) {
		char *sp = strchr(merges[i], ' ');
		char joined[64];
		snprintf(joined, sizeof joined, "%.*s%s", (int)(sp - merges[i]), merges[i], sp + 1);
		if (!json_object_get(vocab, joined))
			json_object_set_new(vocab, joined, json_integer((json_int_t)json_object_size(vocab)));
		json_array_append_new(mj, json_string(merges[i]));
	}
	return json_pack("{s:n,s:n,s:[],s:n,s:{s:s,s:b,s:b,s:b},s:n,s:n,s:{s:s,s:b,s:o,s:o}}",
			 "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer", "type",
			 "ByteLevel", "add_prefix_space", 0, "trim_offsets", 1, "use_regex", 1,
			 "post_processor", "decoder", "model", "type", "BPE", "ignore_merges",
			 ignore_merges, "vocab", vocab, "merges", mj);
}

static struct moe_tok *load(json_t *j)
{
	struct moe_error err = {0};
	struct moe_tok *t = moe_tok_load_json(j, "test.json", &err);
	cr_assert(t, "load: %s", err.msg);
	json_decref(j);
	return t;
}

static size_t enc(struct moe_tok *t, const char *s, uint32_t *out, size_t cap)
{
	struct moe_error err = {0};
	struct moe_tok_ids ids = {0};
	cr_assert_eq(moe_tok_encode(t, NULL, s, strlen(s), 0, &ids, &err), 0, "%s", err.msg);
	cr_assert(ids.n <= cap);
	memcpy(out, ids.ids, ids.n * sizeof *out);
	size_t n = ids.n;
	moe_tok_ids_release(&ids);
	return n;
}

Test(bpe, merge_order)
{
	const char *m[] = {"a b", "b c", "ab c"};
	struct moe_tok *t = load(make_json(m, 3, false));
	uint32_t ids[16];
	/* (a,b) has the lower rank: ab, then (ab,c) */
	cr_assert_eq(enc(t, "abc", ids, 16), 1);
	cr_expect_eq(ids[0], 258);
	moe_tok_free(t);
	const char *m2[] = {"b c", "a b", "ab c"};
	t = load(make_json(m2, 3, false));
	cr_assert_eq(enc(t, "abc", ids, 16), 2);
	cr_expect_eq(ids[0], 'a');
	cr_expect_eq(ids[1], 256); /* "bc" */
	moe_tok_free(t);
}

Test(bpe, leftmost_on_ties_and_long_words)
{
	const char *m[] = {"a a", "aa aa"};
	struct moe_tok *t = load(make_json(m, 2, false));
	uint32_t ids[512];
	cr_assert_eq(enc(t, "aaa", ids, 512), 2);
	cr_expect_eq(ids[0], 256);
	cr_expect_eq(ids[1], 'a');
	/* short (array) and long (heap) merge paths agree */
	char w[1002];
	for (size_t n = 60; n <= 1001; n += 941) {
		memset(w, 'a', n);
		w[n] = 0;
		size_t k = enc(t, w, ids, 512);
		cr_expect_eq(k, n / 4 + (n % 4 ? 1 : 0), "length %zu", n);
		for (size_t i = 0; i < n / 4; i++)
			cr_expect_eq(ids[i], 257);
		if (n % 4 == 1)
			cr_expect_eq(ids[k - 1], 'a');
	}
	moe_tok_free(t);
}

Test(bpe, ignore_merges)
{
	/* "abc" is reachable only as ab + c; with ignore_merges a word that is
	 * in the vocabulary is taken whole */
	const char *m[] = {"b c", "a b", "ab c"};
	uint32_t ids[8];
	struct moe_tok *t = load(make_json(m, 3, true));
	cr_assert_eq(enc(t, "abc", ids, 8), 1);
	cr_expect_eq(ids[0], 258);
	moe_tok_free(t);
}

Test(added, split_before_pretokenization)
{
	const char *m[] = {"Ġ w", "Ġw o"};
	json_t *j = make_json(m, 2, false);
	json_array_append_new(json_object_get(j, "added_tokens"),
			      json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", 300, "content", "<x>",
					"single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special",
					1));
	json_array_append_new(json_object_get(j, "added_tokens"),
			      json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", 301, "content", "<xy>",
					"single_word", 0, "lstrip", 1, "rstrip", 0, "normalized", 0, "special",
					0));
	struct moe_tok *t = load(j);
	uint32_t ids[32];
	/* like HF, the ids written in the file (300, 301) are not used: tokens
	 * missing from the model vocabulary (258 entries) are numbered after it */
	cr_expect_eq(moe_tok_vocab_size(t), 260);
	cr_expect(moe_tok_is_special(t, 258));
	cr_expect(!moe_tok_is_special(t, 259));
	cr_expect_eq(moe_tok_token_id(t, "<x>", 3), 258);
	/* "a<x> wo": a, <x>, " wo" (merged: Ġw then Ġwo) */
	size_t n = enc(t, "a<x> wo", ids, 32);
	cr_assert_eq(n, 3);
	cr_expect_eq(ids[0], 'a');
	cr_expect_eq(ids[1], 258);
	cr_expect_eq(ids[2], 257);
	/* longest match wins; lstrip eats the spaces before <xy> */
	n = enc(t, "a  <xy>b", ids, 32);
	cr_assert_eq(n, 3);
	cr_expect_eq(ids[0], 'a');
	cr_expect_eq(ids[1], 259);
	cr_expect_eq(ids[2], 'b');
	/* NO_ADDED: the text is plain text */
	struct moe_tok_ids v = {0};
	struct moe_error err = {0};
	cr_assert_eq(moe_tok_encode(t, NULL, "<x>", 3, MOE_TOK_NO_ADDED, &v, &err), 0);
	cr_expect_eq(v.n, 3);
	moe_tok_ids_release(&v);
	moe_tok_free(t);
}

Test(added, normalized_tokens_match_after_nfc)
{
	json_t *j = make_json(NULL, 0, false);
	json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "NFC"));
	json_array_append_new(json_object_get(j, "added_tokens"),
			      json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", 300, "content", "caf\xc3\xa9",
					"single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 1, "special",
					0));
	json_array_append_new(json_object_get(j, "added_tokens"),
			      json_pack("{s:i,s:s,s:b,s:b,s:b,s:b,s:b}", "id", 301, "content", "n\xc3\xa9",
					"single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special",
					1));
	struct moe_tok *t = load(j);
	uint32_t ids[32];
	/* NFD input: the normalized token matches, the raw one does not */
	cr_assert_eq(enc(t, "cafe\xcc\x81", ids, 32), 1);
	cr_expect_eq(ids[0], 256);
	size_t n = enc(t, "ne\xcc\x81", ids, 32);
	cr_expect_eq(n, 3); /* n, and the two bytes of NFC é */
	cr_expect_eq(ids[1], 0xC3);
	moe_tok_free(t);
}

/* ---- loader errors ------------------------------------------------------------------ */

static void expect_load_error(json_t *j, int code, const char *needle)
{
	struct moe_error err = {0};
	struct moe_tok *t = moe_tok_load_json(j, "bad.json", &err);
	cr_expect_null(t);
	cr_expect_eq(err.code, code, "code %d for '%s'", err.code, err.msg);
	cr_expect(strstr(err.msg, needle) != NULL, "'%s' not in '%s'", needle, err.msg);
	cr_expect(strncmp(err.msg, "bad.json: ", 10) == 0, "file not named: %s", err.msg);
	moe_tok_free(t);
	json_decref(j);
}

Test(load, unsupported_keys_are_errors)
{
	json_t *j = make_json(NULL, 0, false);
	json_object_set_new(json_object_get(j, "model"), "type", json_string("WordPiece"));
	expect_load_error(j, MOE_EUNSUPPORTED, "model.type");

	j = make_json(NULL, 0, false);
	json_object_set_new(j, "normalizer",
			    json_pack("{s:s,s:[{s:s},{s:s}]}", "type", "Sequence", "normalizers", "type", "NFC",
				      "type", "Lowercase"));
	expect_load_error(j, MOE_EUNSUPPORTED, "normalizer.normalizers[1]: unsupported normalizer type 'Lowercase'");

	j = make_json(NULL, 0, false);
	json_object_set_new(j, "pre_tokenizer",
			    json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b}]}", "type", "Sequence",
				      "pretokenizers", "type", "Split", "pattern", "Regex", "\\p{L}+",
				      "behavior", "Isolated", "invert", 0, "type", "ByteLevel", "use_regex", 0));
	expect_load_error(j, MOE_EUNSUPPORTED, "pre_tokenizer.pretokenizers[0].pattern.Regex");

	j = make_json(NULL, 0, false);
	json_array_append_new(json_object_get(j, "added_tokens"),
			      json_pack("{s:i,s:s,s:b}", "id", 256, "content", "x", "single_word", 1));
	expect_load_error(j, MOE_EUNSUPPORTED, "added_tokens[0].single_word");

	j = make_json(NULL, 0, false);
	json_object_set_new(j, "post_processor", json_pack("{s:s}", "type", "TemplateProcessing"));
	expect_load_error(j, MOE_EUNSUPPORTED, "post_processor");

	j = make_json(NULL, 0, false);
	json_object_set_new(json_object_get(j, "model"), "dropout", json_real(0.1));
	expect_load_error(j, MOE_EUNSUPPORTED, "model.dropout");

	j = make_json(NULL, 0, false);
	json_array_append_new(json_object_get(json_object_get(j, "model"), "merges"), json_string("q zz"));
	expect_load_error(j, MOE_EFORMAT, "model.merges[0]");
}

Test(load, split_cl100k_sequence)
{
	json_t *j = make_json(NULL, 0, false);
	json_object_set_new(
		j, "pre_tokenizer",
		json_pack("{s:s,s:[{s:s,s:{s:s},s:s,s:b},{s:s,s:b,s:b}]}", "type", "Sequence",
			  "pretokenizers", "type", "Split", "pattern", "Regex",
			  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
			  "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
			  "behavior", "Removed", "invert", 1, "type", "ByteLevel", "add_prefix_space", 0,
			  "use_regex", 0));
	struct moe_tok *t = load(j);
	cr_expect_eq(t->n_splits, 1);
	cr_expect_eq(t->splits[0], PAT_CL100K);
	moe_tok_free(t);
}

Test(load, tiktoken_errors)
{
	char path[] = "/tmp/test_tok_XXXXXX";
	int fd = mkstemp(path);
	cr_assert(fd >= 0);
	FILE *f = fdopen(fd, "w");
	fputs("IQ== 0\nIg== 1\n", f);
	fclose(f);
	struct moe_error err = {0};
	cr_expect_null(moe_tok_load(path, &err));
	cr_expect_eq(err.code, MOE_EUNSUPPORTED);
	cr_expect(strstr(err.msg, "2 ranks") != NULL, "%s", err.msg);
	unlink(path);
}

/* ---- encode / decode with a trained vocabulary ---------------------------------------- */

static struct moe_tok *trained(uint32_t vocab)
{
	static const char *text[] = {
		"the quick brown fox jumps over the lazy dog. The dog sleeps; the fox runs!",
		"I'm here, you're there, we'll see. 123 4567 89\n\n\tindented\r\nline",
		"caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80\xf0\x9f\x98\x80 emoji",
	};
	struct moe_error err = {0};
	struct moe_tok_trainer *tr = moe_tok_trainer_new();
	for (int r = 0; r < 20; r++)
		for (size_t i = 0; i < 3; i++)
			cr_assert_eq(moe_tok_trainer_feed(tr, text[i], strlen(text[i]), &err), 0);
	const char *sp[] = {"<|endoftext|>", "<|pad|>"};
	struct moe_tok_train_opts o = {.vocab_size = vocab, .special = sp, .n_special = 2};
	json_t *j = moe_tok_trainer_finish(tr, &o, &err);
	cr_assert(j, "%s", err.msg);
	moe_tok_trainer_free(tr);
	return load(j);
}

Test(train, layout)
{
	struct moe_tok *t = trained(300);
	cr_expect_eq(moe_tok_vocab_size(t), 300);
	cr_expect_eq(moe_tok_eos_id(t), 0);
	cr_expect(moe_tok_is_special(t, 1));
	cr_expect_str_eq(moe_tok_token_str(t, 2 + ' '), "\xc4\xa0"); /* byte b at 2 + b, as Ġ */
	size_t len;
	cr_expect_eq(moe_tok_token_bytes(t, 2 + 'A', &len)[0], 'A');
	cr_expect_eq(len, 1);
	cr_expect_null(moe_tok_token_bytes(t, 300, &len));
	moe_tok_free(t);
	struct moe_error err = {0};
	struct moe_tok_trainer *tr = moe_tok_trainer_new();
	struct moe_tok_train_opts o = {.vocab_size = 200};
	cr_expect_null(moe_tok_trainer_finish(tr, &o, &err));
	cr_expect_eq(err.code, MOE_EINVAL);
	moe_tok_trainer_free(tr);
}

Test(encode, round_trip_and_lossy)
{
	struct moe_tok *t = trained(400);
	const char *cases[] = {"the dog", "  spaces   and\ttabs\n", "\xf0\x9f\x98\x80!", "",
			       "<|endoftext|>x<|pad|>", "quick\0nul"};
	size_t lens[] = {7, 20, 5, 0, 21, 9};
	struct moe_error err = {0};
	for (size_t i = 0; i < 6; i++) {
		struct moe_tok_ids ids = {0};
		struct moe_tok_bytes b = {0};
		cr_assert_eq(moe_tok_encode(t, NULL, cases[i], lens[i], 0, &ids, &err), 0, "%s", err.msg);
		cr_assert_eq(moe_tok_decode(t, ids.ids, ids.n, false, &b, &err), 0);
		cr_expect_eq(b.n, lens[i], "case %zu", i);
		cr_expect(memcmp(b.data, cases[i], lens[i]) == 0, "case %zu", i);
		moe_tok_ids_release(&ids);
		moe_tok_bytes_release(&b);
	}
	/* specials: matched in text, skipped on request */
	struct moe_tok_ids ids = {0};
	struct moe_tok_bytes b = {0};
	cr_assert_eq(moe_tok_encode(t, NULL, "a<|endoftext|>", 14, 0, &ids, &err), 0);
	cr_expect_eq(ids.ids[ids.n - 1], 0);
	cr_assert_eq(moe_tok_decode(t, ids.ids, ids.n, true, &b, &err), 0);
	cr_expect_str_eq(b.data, "a");
	uint32_t badid = 12345;
	cr_expect_eq(moe_tok_decode(t, &badid, 1, false, &b, &err), MOE_ERANGE);
	/* invalid UTF-8: error with the offset, or U+FFFD with LOSSY */
	ids.n = 0;
	cr_expect_eq(moe_tok_encode(t, NULL, "ok\xff", 3, 0, &ids, &err), MOE_EFORMAT);
	cr_expect_str_eq(err.msg, "invalid UTF-8 at byte offset 2");
	cr_expect_eq(ids.n, 0);
	cr_assert_eq(moe_tok_encode(t, NULL, "ok\xff\xe2\x82", 5, MOE_TOK_LOSSY, &ids, &err), 0);
	struct moe_tok_ids want = {0};
	cr_assert_eq(moe_tok_encode(t, NULL, "ok\xef\xbf\xbd\xef\xbf\xbd", 8, 0, &want, &err), 0);
	cr_assert_eq(ids.n, want.n);
	cr_expect(memcmp(ids.ids, want.ids, ids.n * sizeof *ids.ids) == 0);
	moe_tok_ids_release(&ids);
	moe_tok_ids_release(&want);
	moe_tok_bytes_release(&b);
	moe_tok_free(t);
}

Test(encode, describe)
{
	struct moe_tok *t = trained(300);
	json_t *d = moe_tok_describe(t);
	cr_assert(d);
	cr_expect_eq(json_integer_value(json_object_get(d, "vocab_size")), 300);
	cr_expect_eq(json_array_size(json_object_get(d, "added_tokens")), 2);
	cr_expect_str_eq(json_string_value(json_array_get(json_object_get(d, "splits"), 0)), "gpt2");
	json_decref(d);
	moe_tok_free(t);
}

/* ---- the JSONL scanner against jansson ------------------------------------------ */

Test(jsonl, agrees_with_jansson)
{
	static const char *lines[] = {
		"{\"text\":\"plain\"}",
		" { \"id\" : 3 , \"text\" : \"a\\nb\\t\\\"q\\\" \\\\ \\/ \\u00e9 \\ud83d\\ude00 \\u0000z\" } ",
		"{\"t\\u0065xt\":\"escaped key\"}",
		"{\"text\":\"first\",\"text\":\"last wins\"}",
		"{\"text\":5}",
		"{\"text\":\"x\",\"text\":null}",
		"{\"meta\":{\"text\":\"nested\"},\"a\":[1,-2.5e+3,0,true,false,null,{},[]],\"text\":\"ok\"}",
		"{}",
		"{\"title\":\"no text\"}",
		"{\"text\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"}",
		/* invalid */
		"{\"text\":\"x\"} junk",
		"{\"text\":\"x\",}",
		"{\"text\":01}",
		"{\"text\":\"\\ud800\"}",
		"{\"text\":\"\\udc00\\ud800\"}",
		"{\"text\":\"tab\there\"}",
		"{\"text\":\"bad \xff utf8\"}",
		"{\"text\":\"\xed\xa0\x80\"}",
		"{\"text\":\"unterminated}",
		"{\"text\":-}",
		"{\"text\":1.}",
		"{\"text\":1e}",
		"{\"text\":tru}",
		"{\"text\":\"\\x\"}",
		"{\"text\":\"\\u12G4\"}",
		"[\"text\"]",
		"\"text\"",
		"{\"a\":[1,2}",
		"{\"a\" 1}",
		"{'text':'single'}",
		"",
	};
	struct moe_tok_bytes scratch = {0};
	for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
		const char *l = lines[i];
		const char *v = NULL;
		size_t vl = 0;
		int r = tok_jsonl_field(l, strlen(l), "text", &scratch, &v, &vl);
		json_error_t je;
		json_t *o = json_loadb(l, strlen(l), JSON_ALLOW_NUL, &je);
		if (!o) {
			cr_expect_eq(r, -1, "line %zu: jansson rejects (%s), scanner returned %d", i, je.text, r);
			continue;
		}
		json_t *f = json_is_object(o) ? json_object_get(o, "text") : NULL;
		if (!json_is_object(o))
			cr_expect_eq(r, -1, "line %zu: not an object", i);
		else if (!json_is_string(f))
			cr_expect_eq(r, 0, "line %zu: no string field, scanner returned %d", i, r);
		else {
			cr_expect_eq(r, 1, "line %zu: scanner returned %d", i, r);
			if (r == 1) {
				cr_expect_eq(vl, json_string_length(f), "line %zu", i);
				cr_expect(memcmp(v, json_string_value(f), vl) == 0, "line %zu", i);
			}
		}
		json_decref(o);
	}
	moe_tok_bytes_release(&scratch);
}

/* ---- added-token matching against a naive leftmost-longest search ---------- */

static int naive_find(const struct tok_added *ad, size_t na, const uint8_t *s, size_t n, size_t from,
		      size_t *a, size_t *b, size_t *idx)
{
	for (size_t i = from; i < n; i++) {
		size_t best = 0;
		int bi = -1;
		for (size_t k = 0; k < na; k++)
			if (ad[k].len <= n - i && ad[k].len > best && memcmp(s + i, ad[k].content, ad[k].len) == 0) {
				best = ad[k].len;
				bi = (int)k;
			}
		if (bi >= 0) {
			*a = i;
			*b = i + best;
			*idx = (size_t)bi;
			return 1;
		}
	}
	return 0;
}

Test(added, trie_scan_matches_naive_search)
{
	static const char *toks[][3] = {
		{"  ", "   ", "<|x|>"},  /* one second byte per first byte */
		{"  ", " a", "|||A|||"}, /* several second bytes after ' ' */
		{"a", "<|x|>", "zz"},    /* a one-byte token */
	};
	const char alphabet[] = "  ab<|x>zA";
	unsigned seed = 12345;
	for (size_t set = 0; set < 3; set++) {
		struct tok_added ad[3];
		for (size_t k = 0; k < 3; k++)
			ad[k] = (struct tok_added){.content = (char *)toks[set][k], .len = strlen(toks[set][k]),
						   .id = (uint32_t)k};
		struct tok_trie tr;
		cr_assert_eq(tok_trie_build(&tr, ad, 3, false), 0);
		for (int round = 0; round < 2000; round++) {
			uint8_t s[64];
			size_t n = (size_t)(round % 64);
			for (size_t i = 0; i < n; i++) {
				seed = seed * 1103515245u + 12345u;
				s[i] = (uint8_t)alphabet[(seed >> 16) % (sizeof alphabet - 1)];
			}
			size_t from = 0;
			for (;;) {
				size_t a1 = 0, b1 = 0, i1 = 0, a2 = 0, b2 = 0, i2 = 0;
				int r1 = tok_trie_find(&tr, s, n, from, &a1, &b1, &i1);
				int r2 = naive_find(ad, 3, s, n, from, &a2, &b2, &i2);
				cr_assert_eq(r1, r2, "set %zu round %d from %zu", set, round, from);
				if (!r1)
					break;
				cr_assert_eq(a1, a2);
				cr_assert_eq(b1, b2);
				cr_assert_eq(i1, i2);
				from = b1;
			}
		}
		tok_trie_release(&tr);
	}
}
