/*
 * Writing a shard directory (moe-shard): documents stream in, each goes to
 * the train or val split, each split fills shard files of about
 * shard_tokens tokens; index.json is written last and the temporary
 * directory is renamed into place.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "data/shardfmt.h"

#define DEFAULT_SHARD_TOKENS 100000000ull
#define DEFAULT_BLOCK_TOKENS 65536u

struct split_state {
	/* the shard file being written (fp == NULL: none open) */
	FILE *fp;
	char *path;
	char *name;
	struct moe_hash64_state *payload;
	uint64_t offset; /* bytes written to fp so far */
	struct shard_hdr h;
	uint64_t *docs;  /* n_docs + 1 token offsets */
	uint64_t *ords;  /* n_docs ordinals */
	size_t docs_cap;
	uint8_t *blocks; /* block index entries */
	size_t blocks_len, blocks_cap;
	uint8_t *raw;    /* pending uncompressed block bytes */
	size_t raw_len;
	/* totals of the split */
	uint32_t n_shards;
	uint64_t n_docs, n_tokens;
	json_t *shards; /* index entries */
};

struct moe_shard_writer {
	struct moe_shard_writer_opts o;
	struct moe_tokstream_info info;
	struct moe_atomic_dir dir;
	bool dir_open, committed, failed;
	uint64_t ordinal;
	struct split_state sp[MOE_N_SPLITS];
	uint8_t *conv;  /* token bytes of one document */
	size_t conv_cap;
	void *cbuf;     /* compressed block */
	size_t cbuf_cap;
	ZSTD_CCtx *cctx;
};

void moe_shard_writer_opts_init(struct moe_shard_writer_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->shard_tokens = DEFAULT_SHARD_TOKENS;
	o->block_tokens = DEFAULT_BLOCK_TOKENS;
}

/* 1 when path is a directory with entries, 0 when absent or empty, < 0 on error. */
static int dir_state(const char *path, struct moe_error *err)
{
	struct stat st;
	if (stat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		return moe_error_errno(err, "cannot stat '%s'", path);
	}
	if (!S_ISDIR(st.st_mode))
		return moe_error_set(err, MOE_EINVAL, "'%s' exists and is not a directory", path);
	DIR *d = opendir(path);
	if (!d)
		return moe_error_errno(err, "cannot open '%s'", path);
	int full = 0;
	struct dirent *e;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
			full = 1;
			break;
		}
	closedir(d);
	return full;
}

struct moe_shard_writer *moe_shard_writer_new(const char *dir,
					      const struct moe_shard_writer_opts *opts,
					      const struct moe_tokstream_info *info,
					      struct moe_error *err)
{
	struct moe_shard_writer *w = calloc(1, sizeof(*w));
	if (!w) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	w->o = *opts;
	w->info = *info;
	if (w->o.shard_tokens == 0)
		w->o.shard_tokens = DEFAULT_SHARD_TOKENS;
	if (w->o.block_tokens == 0)
		w->o.block_tokens = DEFAULT_BLOCK_TOKENS;
	if (w->info.vocab_size == 0 ||
	    (w->info.eos_id != MOE_NO_EOS && w->info.eos_id >= w->info.vocab_size)) {
		moe_error_set(err, MOE_EINVAL, "bad vocab_size %u / eos_id %u", w->info.vocab_size,
			      w->info.eos_id);
		goto out_free;
	}
	w->info.token_width = w->info.vocab_size <= 65536 ? 2 : 4;
	if (w->o.val_fraction < 0 || w->o.val_fraction > 1) {
		moe_error_set(err, MOE_EINVAL, "val fraction %g not in [0, 1]", w->o.val_fraction);
		goto out_free;
	}
	if (w->o.compress_level < 0 || w->o.compress_level > ZSTD_maxCLevel()) {
		moe_error_set(err, MOE_EINVAL, "compression level %d not in 1..%d", w->o.compress_level,
			      ZSTD_maxCLevel());
		goto out_free;
	}
	if (w->o.block_tokens > MOE_SHARD_MAX_BLOCK) {
		moe_error_set(err, MOE_EINVAL, "block size %u tokens too large", w->o.block_tokens);
		goto out_free;
	}
	int st = dir_state(dir, err);
	if (st < 0)
		goto out_free;
	if (st == 1 && !w->o.force) {
		moe_error_set(err, MOE_EINVAL, "'%s' exists and is not empty (use --force to replace it)",
			      dir);
		goto out_free;
	}
	if (w->o.compress_level > 0) {
		w->cctx = ZSTD_createCCtx();
		if (!w->cctx) {
			moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out_free;
		}
		ZSTD_CCtx_setParameter(w->cctx, ZSTD_c_compressionLevel, w->o.compress_level);
	}
	for (int s = 0; s < MOE_N_SPLITS; s++) {
		w->sp[s].shards = json_array();
		if (!w->sp[s].shards) {
			moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out_free;
		}
	}
	/* "out/" must name out itself, not a temporary inside it */
	char *clean = strdup(dir);
	if (!clean) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out_free;
	}
	for (size_t k = strlen(clean); k > 1 && clean[k - 1] == '/'; k--)
		clean[k - 1] = 0;
	/* create missing parents, like mkdir -p */
	char *slash = strrchr(clean, '/');
	if (slash && slash != clean) {
		*slash = 0;
		struct stat pst;
		int mrc = stat(clean, &pst) == 0 ? 0 : moe_mkdirs(clean, err);
		*slash = '/';
		if (mrc < 0) {
			free(clean);
			goto out_free;
		}
	}
	int orc = moe_atomic_dir_open(&w->dir, clean, err);
	free(clean);
	if (orc < 0)
		goto out_free;
	w->dir_open = true;
	return w;
out_free:
	moe_shard_writer_free(w);
	return NULL;
}

static int out_write(struct moe_shard_writer *w, struct split_state *s, const void *p, size_t n,
		     struct moe_error *err)
{
	if (n == 0)
		return 0;
	if (fwrite(p, 1, n, s->fp) != n)
		return moe_error_errno(err, "%s: write failed", s->path);
	moe_hash64_update(s->payload, p, n);
	s->offset += n;
	return 0;
}

static int out_pad8(struct moe_shard_writer *w, struct split_state *s, struct moe_error *err)
{
	static const uint8_t zero[8];
	return out_write(w, s, zero, (8 - s->offset % 8) % 8, err);
}

static int shard_open(struct moe_shard_writer *w, enum moe_split sp, struct moe_error *err)
{
	struct split_state *s = &w->sp[sp];
	char name[64];
	snprintf(name, sizeof(name), "%s-%05u.shard", moe_split_name(sp), s->n_shards);
	s->name = strdup(name);
	s->path = moe_path_join(w->dir.tmp_path, name);
	s->payload = moe_hash64_new();
	if (!s->name || !s->path || !s->payload)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	s->fp = fopen(s->path, "wb");
	if (!s->fp)
		return moe_error_errno(err, "cannot create '%s'", s->path);
	memset(&s->h, 0, sizeof(s->h));
	s->h.vocab_size = w->info.vocab_size;
	s->h.token_width = w->info.token_width;
	s->h.eos_id = w->info.eos_id;
	s->h.split = (uint32_t)sp;
	s->h.shard_index = s->n_shards;
	s->h.first_doc = s->n_docs;
	s->h.first_token = s->n_tokens;
	memcpy(s->h.tokenizer_sha256, w->info.tokenizer_sha256, 32);
	if (w->cctx) {
		s->h.flags = MOE_SHARD_FLAG_ZSTD;
		s->h.block_tokens = w->o.block_tokens;
	}
	/* placeholder header, rewritten at the end */
	uint8_t zero[SHARD_HEADER_SIZE] = {0};
	if (fwrite(zero, 1, sizeof(zero), s->fp) != sizeof(zero))
		return moe_error_errno(err, "%s: write failed", s->path);
	s->offset = SHARD_HEADER_SIZE;
	s->h.tokens_offset = SHARD_HEADER_SIZE;
	s->docs[0] = 0;
	s->blocks_len = 0;
	s->raw_len = 0;
	return 0;
}

static int flush_block(struct moe_shard_writer *w, struct split_state *s, struct moe_error *err)
{
	if (s->raw_len == 0)
		return 0;
	size_t bound = ZSTD_compressBound(s->raw_len);
	if (bound > w->cbuf_cap) {
		void *p = realloc(w->cbuf, bound);
		if (!p)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		w->cbuf = p;
		w->cbuf_cap = bound;
	}
	size_t cs = ZSTD_compress2(w->cctx, w->cbuf, w->cbuf_cap, s->raw, s->raw_len);
	if (ZSTD_isError(cs))
		return moe_error_set(err, MOE_EIO, "%s: zstd: %s", s->path, ZSTD_getErrorName(cs));
	if (s->blocks_len + SHARD_BLOCK_ENTRY > s->blocks_cap) {
		size_t cap = s->blocks_cap ? 2 * s->blocks_cap : 64 * SHARD_BLOCK_ENTRY;
		uint8_t *p = realloc(s->blocks, cap);
		if (!p)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		s->blocks = p;
		s->blocks_cap = cap;
	}
	uint8_t *e = s->blocks + s->blocks_len;
	moe_put_u64(e, s->offset);
	moe_put_u64(e + 8, cs);
	moe_put_u64(e + 16, moe_hash64(s->raw, s->raw_len));
	s->blocks_len += SHARD_BLOCK_ENTRY;
	s->h.n_blocks++;
	s->raw_len = 0;
	return out_write(w, s, w->cbuf, cs, err);
}

static int put_tokens(struct moe_shard_writer *w, struct split_state *s, const uint8_t *p,
		      size_t bytes, struct moe_error *err)
{
	if (!w->cctx)
		return out_write(w, s, p, bytes, err);
	size_t bb = (size_t)w->o.block_tokens * w->info.token_width;
	if (!s->raw) {
		s->raw = malloc(bb);
		if (!s->raw)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	while (bytes) {
		size_t take = bb - s->raw_len;
		if (take > bytes)
			take = bytes;
		memcpy(s->raw + s->raw_len, p, take);
		s->raw_len += take;
		p += take;
		bytes -= take;
		if (s->raw_len == bb && flush_block(w, s, err) < 0)
			return err ? err->code : MOE_EIO;
	}
	return 0;
}

static void hex64(uint64_t v, char out[17])
{
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (56 - 8 * i));
	moe_hex(b, 8, out);
}

/* sha256 and XXH3-64 of a whole file. */
static int file_sums(const char *path, uint8_t sha[32], uint64_t *xxh, struct moe_error *err)
{
	FILE *fp = fopen(path, "rb");
	if (!fp)
		return moe_error_errno(err, "cannot open '%s'", path);
	struct moe_sha256 s;
	struct moe_hash64_state *h = moe_hash64_new();
	uint8_t *buf = malloc(1 << 20);
	int rc = 0;
	if (!h || !buf) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	moe_sha256_init(&s);
	size_t n;
	while ((n = fread(buf, 1, 1 << 20, fp)) > 0) {
		moe_sha256_update(&s, buf, n);
		moe_hash64_update(h, buf, n);
	}
	if (ferror(fp)) {
		rc = moe_error_errno(err, "%s: read failed", path);
		goto out;
	}
	moe_sha256_final(&s, sha);
	*xxh = moe_hash64_digest(h);
out:
	moe_hash64_free(h);
	free(buf);
	fclose(fp);
	return rc;
}

static int shard_close(struct moe_shard_writer *w, enum moe_split sp, struct moe_error *err)
{
	struct split_state *s = &w->sp[sp];
	int rc = 0;
	if (!s->fp)
		return 0;
	if (w->cctx && (rc = flush_block(w, s, err)) < 0)
		goto out;
	s->h.tokens_bytes = s->offset - s->h.tokens_offset;
	if ((rc = out_pad8(w, s, err)) < 0)
		goto out;
	if (w->cctx) {
		s->h.blocks_offset = s->offset;
		if ((rc = out_write(w, s, s->blocks, s->blocks_len, err)) < 0)
			goto out;
	}
	uint8_t b8[8];
	s->h.docs_offset = s->offset;
	for (uint64_t i = 0; i <= s->h.n_docs; i++) {
		moe_put_u64(b8, s->docs[i]);
		if ((rc = out_write(w, s, b8, 8, err)) < 0)
			goto out;
	}
	s->h.ordinals_offset = s->offset;
	for (uint64_t i = 0; i < s->h.n_docs; i++) {
		moe_put_u64(b8, s->ords[i]);
		if ((rc = out_write(w, s, b8, 8, err)) < 0)
			goto out;
	}
	s->h.header_size = SHARD_HEADER_SIZE;
	s->h.payload_size = s->offset - SHARD_HEADER_SIZE;
	s->h.payload_hash = moe_hash64_digest(s->payload);
	uint8_t hb[SHARD_HEADER_SIZE];
	if ((rc = shard_hdr_encode(&s->h, hb, err)) < 0)
		goto out;
	if (fseek(s->fp, 0, SEEK_SET) != 0 || fwrite(hb, 1, sizeof(hb), s->fp) != sizeof(hb) ||
	    fflush(s->fp) != 0 || fsync(fileno(s->fp)) != 0) {
		rc = moe_error_errno(err, "%s: write failed", s->path);
		goto out;
	}
	int c = fclose(s->fp);
	s->fp = NULL;
	if (c != 0) {
		rc = moe_error_errno(err, "%s: write failed", s->path);
		goto out;
	}
	uint8_t sha[32];
	uint64_t xxh = 0;
	if ((rc = file_sums(s->path, sha, &xxh, err)) < 0)
		goto out;
	char shahex[65], xhex[17];
	moe_hex(sha, 32, shahex);
	hex64(xxh, xhex);
	json_t *e = json_pack("{s:s, s:I, s:I, s:I, s:I, s:s, s:s}", "file", s->name, "docs",
			      (json_int_t)s->h.n_docs, "tokens", (json_int_t)s->h.n_tokens,
			      "first_token", (json_int_t)s->h.first_token, "bytes",
			      (json_int_t)s->offset, "sha256", shahex, "xxh3", xhex);
	if (!e || json_array_append_new(s->shards, e) < 0) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	s->n_shards++;
out:
	if (s->fp) {
		fclose(s->fp);
		s->fp = NULL;
	}
	moe_hash64_free(s->payload);
	s->payload = NULL;
	free(s->path);
	free(s->name);
	s->path = s->name = NULL;
	return rc;
}

static enum moe_split pick_split(const struct moe_shard_writer *w, uint64_t ordinal)
{
	if (w->o.val_fraction > 0) {
		uint64_t st = w->o.seed ^ 0x5EEDull;
		uint64_t a = moe_splitmix64(&st);
		st = a ^ ordinal * 0xD1B54A32D192ED03ull;
		double u = (double)(moe_splitmix64(&st) >> 11) * 0x1p-53;
		return u < w->o.val_fraction ? MOE_SPLIT_VAL : MOE_SPLIT_TRAIN;
	}
	return ordinal < w->o.val_docs ? MOE_SPLIT_VAL : MOE_SPLIT_TRAIN;
}

int moe_shard_writer_add(struct moe_shard_writer *w, const uint32_t *ids, size_t n,
			 struct moe_error *err)
{
	if (w->failed || w->committed)
		return moe_error_set(err, MOE_EINVAL, "shard writer is finished or failed");
	int rc;
	enum moe_split sp = pick_split(w, w->ordinal);
	struct split_state *s = &w->sp[sp];
	if (s->fp && s->h.n_tokens >= w->o.shard_tokens && (rc = shard_close(w, sp, err)) < 0)
		goto fail;
	if (s->h.n_docs + 2 > s->docs_cap || !s->fp) {
		size_t cap = s->docs_cap ? s->docs_cap : 1024;
		while (s->h.n_docs + 2 > cap)
			cap *= 2;
		uint64_t *d = realloc(s->docs, cap * sizeof(*d));
		if (d)
			s->docs = d;
		uint64_t *o = realloc(s->ords, cap * sizeof(*o));
		if (o)
			s->ords = o;
		if (!d || !o) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto fail;
		}
		s->docs_cap = cap;
	}
	if (!s->fp && (rc = shard_open(w, sp, err)) < 0)
		goto fail;
	size_t width = w->info.token_width, bytes = n * width;
	if (bytes > w->conv_cap) {
		size_t cap = w->conv_cap ? w->conv_cap : 65536;
		while (cap < bytes)
			cap *= 2;
		uint8_t *p = realloc(w->conv, cap);
		if (!p) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto fail;
		}
		w->conv = p;
		w->conv_cap = cap;
	}
	for (size_t i = 0; i < n; i++) {
		if (ids[i] >= w->info.vocab_size) {
			rc = moe_error_set(err, MOE_ERANGE,
					   "document %llu token %zu: id %u >= vocab_size %u",
					   (unsigned long long)w->ordinal, i, ids[i], w->info.vocab_size);
			goto fail;
		}
		if (width == 2) {
			w->conv[2 * i] = (uint8_t)ids[i];
			w->conv[2 * i + 1] = (uint8_t)(ids[i] >> 8);
		} else {
			moe_put_u32(w->conv + 4 * i, ids[i]);
		}
	}
	if ((rc = put_tokens(w, s, w->conv, bytes, err)) < 0)
		goto fail;
	s->ords[s->h.n_docs] = w->ordinal;
	s->h.n_docs++;
	s->h.n_tokens += n;
	s->docs[s->h.n_docs] = s->h.n_tokens;
	s->n_docs++;
	s->n_tokens += n;
	w->ordinal++;
	return 0;
fail:
	w->failed = true;
	return rc;
}

int moe_shard_writer_commit(struct moe_shard_writer *w, struct moe_error *err)
{
	if (w->failed || w->committed)
		return moe_error_set(err, MOE_EINVAL, "shard writer is finished or failed");
	int rc;
	json_t *root = NULL;
	for (int s = 0; s < MOE_N_SPLITS; s++)
		if ((rc = shard_close(w, (enum moe_split)s, err)) < 0)
			goto fail;
	char shahex[65];
	bool has_sha = false;
	for (int i = 0; i < 32; i++)
		has_sha |= w->info.tokenizer_sha256[i] != 0;
	moe_hex(w->info.tokenizer_sha256, 32, shahex);
	json_t *split;
	if (w->o.val_fraction > 0)
		split = json_pack("{s:s, s:f, s:I}", "method", "val-fraction", "val_fraction",
				  w->o.val_fraction, "seed", (json_int_t)w->o.seed);
	else
		split = json_pack("{s:s, s:I}", "method", "val-docs", "val_docs",
				  (json_int_t)w->o.val_docs);
	root = json_pack("{s:s, s:i, s:I, s:i, s:o, s:o, s:s, s:i, s:I, s:I, s:o}", "format",
			 "moe-shards", "version", MOE_SHARD_VERSION, "vocab_size",
			 (json_int_t)w->info.vocab_size, "token_width", (int)w->info.token_width,
			 "eos_id",
			 w->info.eos_id == MOE_NO_EOS ? json_null() : json_integer(w->info.eos_id),
			 "tokenizer_sha256", has_sha ? json_string(shahex) : json_null(),
			 "compression", w->cctx ? "zstd" : "none", "compression_level",
			 w->o.compress_level, "block_tokens",
			 (json_int_t)(w->cctx ? w->o.block_tokens : 0), "documents",
			 (json_int_t)w->ordinal, "split", split);
	if (!root) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto fail;
	}
	for (int s = 0; s < MOE_N_SPLITS; s++) {
		json_t *o = json_pack("{s:I, s:I, s:O}", "docs", (json_int_t)w->sp[s].n_docs, "tokens",
				      (json_int_t)w->sp[s].n_tokens, "shards", w->sp[s].shards);
		if (!o || json_object_set_new(root, moe_split_name((enum moe_split)s), o) < 0) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto fail;
		}
	}
	char *ipath = moe_path_join(w->dir.tmp_path, MOE_SHARD_INDEX);
	if (!ipath) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto fail;
	}
	rc = moe_json_save_file(root, ipath, err);
	free(ipath);
	if (rc < 0)
		goto fail;
	if ((rc = moe_atomic_dir_commit(&w->dir, true, err)) < 0)
		goto fail;
	json_decref(root);
	w->committed = true;
	return 0;
fail:
	json_decref(root);
	w->failed = true;
	return rc;
}

void moe_shard_writer_counts(const struct moe_shard_writer *w, uint64_t docs[MOE_N_SPLITS],
			     uint64_t tokens[MOE_N_SPLITS])
{
	for (int s = 0; s < MOE_N_SPLITS; s++) {
		docs[s] = w->sp[s].n_docs;
		tokens[s] = w->sp[s].n_tokens;
	}
}

void moe_shard_writer_free(struct moe_shard_writer *w)
{
	if (!w)
		return;
	for (int s = 0; s < MOE_N_SPLITS; s++) {
		struct split_state *st = &w->sp[s];
		if (st->fp)
			fclose(st->fp);
		moe_hash64_free(st->payload);
		free(st->path);
		free(st->name);
		free(st->docs);
		free(st->ords);
		free(st->blocks);
		free(st->raw);
		json_decref(st->shards);
	}
	if (w->dir_open)
		moe_atomic_dir_abort(&w->dir); /* a no-op after commit */
	ZSTD_freeCCtx(w->cctx);
	free(w->conv);
	free(w->cbuf);
	free(w);
}
