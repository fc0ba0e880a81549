/*
 * lib/data: shard directories (moe-shard(5)) and the training data loader.
 *
 * A shard directory holds index.json and shard files for two splits, "train"
 * and "val".  Each split is one concatenation of documents (in input order)
 * spread over shard files; token ids are uint16 when the vocabulary fits,
 * else uint32, optionally in zstd-compressed blocks.
 *
 *   struct moe_dataset  one split, opened read-only: counts, random access to
 *                       tokens and documents (routing traces, evaluation).
 *   struct moe_loader   training/eval batches of seq_len+1 token windows,
 *                       shuffled per epoch from a seed, split across ranks,
 *                       prefetched on a thread, with an exact resume state.
 *   struct moe_shard_writer  what moe-shard uses to write a directory.
 *
 * Nothing here prints or exits; errors name the file and offset/field.
 * Objects are not thread-safe (the loader's own prefetch thread is internal).
 */
#ifndef MOE_DATA_H
#define MOE_DATA_H

#include "core/core.h"
#include "data/tokstream.h"

#define MOE_SHARD_MAGIC "MOESHRD"   /* 8 bytes with the NUL */
#define MOE_SHARD_VERSION 1
#define MOE_SHARD_INDEX "index.json"
#define MOE_SHARD_FLAG_ZSTD 1u      /* header flags bit: tokens in zstd blocks */
#define MOE_SHARD_MAX_BLOCK (1u << 24) /* tokens per zstd block at most */

enum moe_split { MOE_SPLIT_TRAIN = 0, MOE_SPLIT_VAL = 1 };
#define MOE_N_SPLITS 2

/* "train" / "val". */
const char *moe_split_name(enum moe_split s);
/* Parse "train" or "val"; MOE_EINVAL otherwise. */
int moe_split_parse(const char *s, enum moe_split *out, struct moe_error *err);

/* ---- one split of a shard directory ------------------------------------ */

/* Facts from index.json about the whole directory and the opened split. */
struct moe_dataset_info {
	uint32_t vocab_size;
	uint32_t token_width;           /* 2 or 4 */
	uint32_t eos_id;                /* MOE_NO_EOS when none */
	uint8_t tokenizer_sha256[32];   /* zeros when unknown */
	bool has_tokenizer_sha256;
	bool compressed;                /* zstd blocks */
	enum moe_split split;           /* the opened split */
	uint64_t n_docs;                /* in the opened split */
	uint64_t n_tokens;              /* in the opened split */
	uint32_t n_shards;              /* files of the opened split */
	uint64_t split_docs[MOE_N_SPLITS];   /* both splits, by enum moe_split */
	uint64_t split_tokens[MOE_N_SPLITS];
};

struct moe_dataset;
/* Open one split of the shard directory dir: reads index.json, maps every
 * shard file of the split and checks headers, sizes and the document index
 * against the index (not the payload checksums: see moe_shard_verify()).
 * Returns NULL and fills err on failure.  Free with moe_dataset_free(). */
struct moe_dataset *moe_dataset_open(const char *dir, enum moe_split split, struct moe_error *err);
void moe_dataset_free(struct moe_dataset *ds);
const struct moe_dataset_info *moe_dataset_info(const struct moe_dataset *ds);
uint64_t moe_dataset_n_tokens(const struct moe_dataset *ds);
uint64_t moe_dataset_n_docs(const struct moe_dataset *ds);

/* Copy tokens [start, start + n) of the concatenated split into dst (n
 * entries).  Every id is checked against vocab_size (a corrupt shard gives
 * MOE_EFORMAT naming the file and offset).  MOE_ERANGE past the end. */
int moe_dataset_read(struct moe_dataset *ds, uint64_t start, size_t n, uint32_t *dst,
		     struct moe_error *err);

/* Document doc (0-based within the split): its first token in the split and
 * its length.  MOE_ERANGE when doc >= n_docs. */
int moe_dataset_doc(const struct moe_dataset *ds, uint64_t doc, uint64_t *start, uint64_t *len,
		    struct moe_error *err);
/* Copy document doc into dst (capacity cap tokens); *n gets its length.
 * MOE_ERANGE (with *n set) when cap is too small. */
int moe_dataset_read_doc(struct moe_dataset *ds, uint64_t doc, uint32_t *dst, size_t cap,
			 size_t *n, struct moe_error *err);
/* Position of document doc in the original input stream(s) (its ordinal
 * across all splits), as recorded by moe-shard. */
int moe_dataset_doc_ordinal(const struct moe_dataset *ds, uint64_t doc, uint64_t *ordinal,
			    struct moe_error *err);

/* ---- the loader -------------------------------------------------------- */
/*
 * Windows: window w covers tokens [w*T, w*T + T + 1) of the concatenated
 * split (T = seq_len), so n_windows = floor((n_tokens - 1) / T); the inputs
 * [:, :T] of all windows partition the first n_windows*T tokens.
 * Epoch e visits the windows in order (shuffle off) or in a permutation
 * seeded by (seed, e); rank r of world_size takes every world_size-th entry
 * of that order starting at r, so ranks are disjoint and each has
 * floor(n_windows / world_size) windows per epoch.  Batches run on across
 * epoch ends (training) unless single_epoch is set (evaluation).
 */
struct moe_loader_opts {
	const char *dir;        /* shard directory */
	enum moe_split split;   /* default MOE_SPLIT_TRAIN */
	int seq_len;            /* T, > 0 */
	int batch;              /* B, micro-batch rows, > 0 */
	uint64_t seed;          /* shuffle seed */
	int rank;               /* 0 <= rank < world_size */
	int world_size;         /* >= 1 */
	bool shuffle;           /* default true */
	bool single_epoch;      /* stop after one epoch (eval); default false */
	int prefetch;           /* batches prepared ahead by a thread; 0 = none; default 2 */
};
/* Defaults: split train, seq_len 0 (must be set), batch 1, seed 0, rank 0,
 * world_size 1, shuffle true, single_epoch false, prefetch 2. */
void moe_loader_opts_init(struct moe_loader_opts *o);

struct moe_loader;
/* Open the split and start the prefetch thread.  NULL + err on failure
 * (including a split with fewer windows than world_size). */
struct moe_loader *moe_loader_new(const struct moe_loader_opts *o, struct moe_error *err);
/* Stops the thread and frees everything; accepts NULL. */
void moe_loader_free(struct moe_loader *l);

/* Fill tokens (B, T+1) row-major: row b = one window; inputs are [:, :T],
 * targets [:, 1:].  Returns the number of rows filled: B, or in
 * single_epoch mode fewer at the end of the epoch (unused rows are left
 * untouched) and 0 once it is exhausted; negative on error. */
int moe_loader_next(struct moe_loader *l, int32_t *tokens, struct moe_error *err);

const struct moe_dataset_info *moe_loader_info(const struct moe_loader *l);
uint64_t moe_loader_n_tokens(const struct moe_loader *l);   /* tokens in the split */
uint64_t moe_loader_n_windows(const struct moe_loader *l);  /* windows in the split */
uint64_t moe_loader_windows_per_epoch(const struct moe_loader *l); /* for this rank */
/* Position of the next batch to be returned: epoch and window index within
 * this rank's epoch. */
void moe_loader_position(const struct moe_loader *l, uint64_t *epoch, uint64_t *window);
/* Start again at epoch 0, window 0 (e.g. before each evaluation pass). */
int moe_loader_rewind(struct moe_loader *l, struct moe_error *err);

/* The resume state as a JSON object (caller json_decref): position plus
 * the options and data identity it is valid for:
 *   {"version":1,"epoch":E,"window":W,"seed":S,"seq_len":T,"rank":R,
 *    "world_size":N,"shuffle":true,"split":"train","n_windows":M,
 *    "n_tokens":K,"index_sha256":"..."}
 * NULL only on allocation failure. */
json_t *moe_loader_state(const struct moe_loader *l);
/* Restore a state from moe_loader_state(): the next batch is the one that
 * followed when the state was taken.  MOE_EINVAL naming the field when it
 * belongs to other data or options (seed, seq_len, rank, world_size,
 * shuffle, split, n_windows, index sha256); batch and prefetch may differ. */
int moe_loader_restore(struct moe_loader *l, const json_t *state, struct moe_error *err);

/* ---- writing and checking shard directories (moe-shard) ---------------- */

struct moe_shard_writer_opts {
	uint64_t shard_tokens;   /* target tokens per shard file (default 100M) */
	int compress_level;      /* 0 = no compression, else zstd level 1..22 */
	uint32_t block_tokens;   /* tokens per zstd block (default 65536, at most MOE_SHARD_MAX_BLOCK) */
	uint64_t val_docs;       /* first N documents go to val ... */
	double val_fraction;     /* ... or, when > 0, each document with this
				  * probability decided by (seed, ordinal) */
	uint64_t seed;
	bool force;              /* replace an existing non-empty directory */
};
void moe_shard_writer_opts_init(struct moe_shard_writer_opts *o);

struct moe_shard_writer;
/* Start writing the directory dir (built under a temporary name beside it
 * and renamed into place on commit).  Fails if dir exists and is not empty
 * unless opts->force.  info gives vocab/eos/tokenizer; its token_width is
 * ignored (uint16 when vocab_size <= 65536, else uint32). */
struct moe_shard_writer *moe_shard_writer_new(const char *dir,
					      const struct moe_shard_writer_opts *opts,
					      const struct moe_tokstream_info *info,
					      struct moe_error *err);
/* Append the next document of the input. */
int moe_shard_writer_add(struct moe_shard_writer *w, const uint32_t *ids, size_t n,
			 struct moe_error *err);
/* Finish the files, write index.json and rename the directory into place. */
int moe_shard_writer_commit(struct moe_shard_writer *w, struct moe_error *err);
/* Totals so far (after commit: final). */
void moe_shard_writer_counts(const struct moe_shard_writer *w, uint64_t docs[MOE_N_SPLITS],
			     uint64_t tokens[MOE_N_SPLITS]);
/* Removes the temporary directory unless committed; accepts NULL. */
void moe_shard_writer_free(struct moe_shard_writer *w);

/* Check every checksum of a shard directory: index.json, each file's
 * sha256 and xxh3, header and payload hashes, every zstd block, the
 * document index and every token id.  Returns 0 or the first error (naming
 * the file and offset).  progress, when not NULL, is called with bytes done
 * so far. */
int moe_shard_verify(const char *dir, void (*progress)(uint64_t bytes, void *arg), void *arg,
		     struct moe_error *err);

/* index.json of dir as loaded JSON (caller json_decref), checked for the
 * required keys.  For moe-shard info. */
json_t *moe_shard_index_load(const char *dir, struct moe_error *err);

#endif
