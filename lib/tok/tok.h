/*
 * libmoetok: byte-level BPE tokenizers that give the same ids as Hugging Face
 * `tokenizers` (and tiktoken for .tiktoken rank files), plus a trainer.
 *
 * Accepted inputs:
 *   - a Hugging Face tokenizer.json with model.type "BPE" over byte-level
 *     symbols (ByteLevel pre-tokenizer / decoder), merges as "a b" strings or
 *     ["a","b"] pairs, NFC/NFD/NFKC/NFKD/Sequence/null normalizers, added and
 *     special tokens;
 *   - a tiktoken rank file (lines "base64 rank"): r50k_base (GPT-2 pattern,
 *     <|endoftext|> = 50256) or cl100k_base (cl100k pattern and specials).
 * Anything else is refused with an error naming the unsupported key.
 *
 * Ownership: a struct moe_tok is immutable after loading and may be shared
 * by any number of threads.  Each encoding thread uses its own
 * struct moe_tok_ctx (scratch buffers and a word cache).  Output buffers
 * (struct moe_tok_ids, struct moe_tok_bytes) are owned by the caller, grown
 * by the library with realloc, and released with the matching _release().
 */
#ifndef MOE_TOK_H
#define MOE_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#define MOE_TOK_NONE 0xFFFFFFFFu /* "no such token" (same value as MOE_NO_EOS) */

struct moe_tok;
struct moe_tok_ctx;

/* A growable array of token ids.  Zero-initialise; encode appends. */
struct moe_tok_ids {
	uint32_t *ids;
	size_t n, cap;
};
void moe_tok_ids_release(struct moe_tok_ids *v);

/* A growable byte buffer.  Zero-initialise; decode appends.  The bytes are
 * always followed by a NUL that is not counted in n. */
struct moe_tok_bytes {
	char *data;
	size_t n, cap;
};
void moe_tok_bytes_release(struct moe_tok_bytes *b);

/* ---- loading ----------------------------------------------------------- */

/* Load a tokenizer.json (detected by a leading '{') or a .tiktoken rank file.
 * Returns NULL and fills err (naming the file and the key/line) on failure.
 * Free with moe_tok_free(). */
struct moe_tok *moe_tok_load(const char *path, struct moe_error *err);
/* Same from a parsed tokenizer.json object (not kept; `where` names it in
 * messages).  The sha256 is that of the compact JSON serialisation. */
struct moe_tok *moe_tok_load_json(const json_t *root, const char *where, struct moe_error *err);
void moe_tok_free(struct moe_tok *t);

/* Number of ids: one more than the largest id in the vocabulary or the added
 * tokens (50280 for the OLMo tokenizer, 50257 for GPT-2). */
uint32_t moe_tok_vocab_size(const struct moe_tok *t);
/* The end-of-text id: the added/special token "<|endoftext|>" if present,
 * else "</s>" or "<|end_of_text|>", else MOE_TOK_NONE. */
uint32_t moe_tok_eos_id(const struct moe_tok *t);
/* sha256 of the file as loaded (all zeros for a trained, unsaved tokenizer). */
void moe_tok_sha256(const struct moe_tok *t, uint8_t out[32]);
/* Id of a token given by its text: an added/special token's content
 * ("<|endoftext|>") or a vocabulary string in byte-level form ("Ġthe").
 * Returns MOE_TOK_NONE when there is none. */
uint32_t moe_tok_token_id(const struct moe_tok *t, const char *s, size_t len);

/* The raw bytes a single token decodes to (e.g. " the"; a special token's
 * content; possibly a partial UTF-8 sequence).  Returns a pointer into t
 * (valid until moe_tok_free) and sets *len; NULL for an id that is not
 * assigned (*len = 0). */
const char *moe_tok_token_bytes(const struct moe_tok *t, uint32_t id, size_t *len);
/* The vocabulary string of a token as it appears in tokenizer.json
 * ("Ġthe"), NUL-terminated, pointer into t; NULL for an unassigned id. */
const char *moe_tok_token_str(const struct moe_tok *t, uint32_t id);
/* true when id is an added token marked special (e.g. <|endoftext|>). */
bool moe_tok_is_special(const struct moe_tok *t, uint32_t id);

/* ---- encoding ---------------------------------------------------------- */

/* Per-thread encoder state (scratch and a cache of frequent words).
 * Returns NULL on allocation failure. */
struct moe_tok_ctx *moe_tok_ctx_new(const struct moe_tok *t);
void moe_tok_ctx_free(struct moe_tok_ctx *c);

enum moe_tok_flags {
	/* Replace each invalid UTF-8 sequence by U+FFFD instead of failing
	 * (maximal-subpart rule, like Python's errors="replace"). */
	MOE_TOK_LOSSY = 1u << 0,
	/* Do not match added/special tokens in the text (tiktoken's
	 * encode_ordinary); by default they are matched like HF does. */
	MOE_TOK_NO_ADDED = 1u << 1,
};

/* Encode len bytes of UTF-8 text (NULs allowed) and append the ids to out.
 * ctx may be NULL (a temporary one is made: slower; a context holds a
 * 4 MiB word cache, so reuse one per thread for many documents).  Returns 0, or
 * MOE_EFORMAT for invalid UTF-8 (message gives the byte offset) unless
 * MOE_TOK_LOSSY, or MOE_ENOMEM.  On error out->n is restored. */
int moe_tok_encode(const struct moe_tok *t, struct moe_tok_ctx *ctx, const char *text, size_t len,
		   unsigned flags, struct moe_tok_ids *out, struct moe_error *err);

/* ---- decoding ---------------------------------------------------------- */

/* Append the bytes of ids to out (ByteLevel decoding; special tokens give
 * their content unless skip_special).  Returns 0, MOE_ERANGE for an id
 * that is not assigned (message names its index), or MOE_ENOMEM.  The
 * result may be invalid UTF-8 when ids split a character. */
int moe_tok_decode(const struct moe_tok *t, const uint32_t *ids, size_t n, bool skip_special,
		   struct moe_tok_bytes *out, struct moe_error *err);

/* ---- description (moe-tokenize info) ----------------------------------- */

/* A JSON object describing the tokenizer: path, sha256, vocab_size,
 * n_merges, eos_id, normalizer, pre_tokenizer, added_tokens [...].
 * Caller json_decref()s it.  NULL on allocation failure. */
json_t *moe_tok_describe(const struct moe_tok *t);

/* ---- training ---------------------------------------------------------- */

struct moe_tok_trainer;

struct moe_tok_train_opts {
	uint32_t vocab_size;        /* final size including the 256 bytes and specials */
	const char *const *special; /* special tokens, given the first ids; may be NULL */
	size_t n_special;
	uint32_t min_frequency;     /* stop when the best pair is seen fewer times (0, 1: never) */
	int threads;                /* reserved (merging is single-threaded; count
				     * with one trainer per thread, see below) */
};

/* A trainer that counts GPT-2-pre-tokenized words fed to it (no
 * normalization).  A trainer is not thread-safe: use one per thread and
 * merge them with _merge() before _finish().  Ties between equally frequent
 * pairs go to the smaller (left id, right id), so the result does not
 * depend on how the documents were split between trainers. */
struct moe_tok_trainer *moe_tok_trainer_new(void);
/* Count the words of one document (UTF-8; invalid sequences are replaced). */
int moe_tok_trainer_feed(struct moe_tok_trainer *tr, const char *text, size_t len,
			 struct moe_error *err);
/* Move src's counts into dst (src is left empty). */
int moe_tok_trainer_merge(struct moe_tok_trainer *dst, struct moe_tok_trainer *src,
			  struct moe_error *err);
/* Learn merges until opts->vocab_size; returns the tokenizer JSON
 * (Hugging Face tokenizer.json layout: no normalizer, ByteLevel
 * pre-tokenizer and decoder, BPE model with pair merges, the specials as
 * added special tokens) or NULL with err filled.  Caller json_decref()s. */
json_t *moe_tok_trainer_finish(struct moe_tok_trainer *tr, const struct moe_tok_train_opts *opts,
			       struct moe_error *err);
void moe_tok_trainer_free(struct moe_tok_trainer *tr);

/* ---- the document pipeline (moe-tokenize encode/train) ------------------ */

struct moe_tok_input {
	FILE *fp;         /* read line by line; owned by the caller */
	const char *name; /* for messages ("-" for stdin) */
};

/* Reads documents (one per line: a JSON object with a string field, or raw
 * text lines) and either encodes them, handing the ids to sink in input
 * order, or feeds them to trainers[thread].  Workers run on `threads`
 * threads; at most 2 * threads + 2 batches of ~1 MiB are in flight. */
struct moe_tok_job {
	const struct moe_tok *tok;   /* for encoding */
	int threads;                 /* >= 1 */
	bool text_lines;             /* lines are raw text, not JSON */
	const char *field;           /* JSON field holding the text ("text") */
	unsigned flags;              /* moe_tok_flags */
	uint32_t eos;                /* appended to each document; MOE_TOK_NONE: none */
	/* called in input order with the ids (eos included) and the raw line;
	 * a negative return stops the job with that error */
	int (*sink)(void *ud, const uint32_t *ids, size_t n, const char *line, size_t len,
		    struct moe_error *err);
	void *ud;
	void (*progress)(void *ud, uint64_t bytes_read); /* optional */
	struct moe_tok_trainer **trainers; /* non-NULL: count words instead (threads of them) */
	/* results */
	uint64_t docs, tokens, bytes;
};
/* Run the job over the inputs in order.  Errors name the file and line
 * ("docs.jsonl:12: invalid JSON: ...").  Returns 0 or a negative code. */
int moe_tok_job_run(struct moe_tok_job *job, const struct moe_tok_input *in, size_t n_in,
		    struct moe_error *err);

#endif
