/*
 * Reading one split of a shard directory: mapped shard files, random access
 * to tokens and documents, zstd blocks decoded through a small cache.
 */
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "data/shardfmt.h"

#define CACHE_SLOTS 4

struct shard {
	char *path;
	const uint8_t *map;
	size_t len;
	struct shard_hdr h;
};

struct cache_slot {
	int64_t shard; /* -1: empty */
	uint64_t block;
	uint8_t *raw;
	size_t raw_len; /* bytes of the block */
	size_t raw_cap;
	uint64_t used; /* LRU clock */
};

struct moe_dataset {
	struct moe_dataset_info info;
	struct shard_index ix;
	struct shard *shards;
	size_t n_shards;
	ZSTD_DCtx *dctx;
	struct cache_slot cache[CACHE_SLOTS];
	uint64_t clock;
};

struct moe_dataset *moe_dataset_open(const char *dir, enum moe_split split, struct moe_error *err)
{
	struct moe_dataset *ds = calloc(1, sizeof(*ds));
	if (!ds) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	for (int i = 0; i < CACHE_SLOTS; i++)
		ds->cache[i].shard = -1;
	if (shard_index_load(dir, &ds->ix, NULL, err) < 0)
		goto out_free;
	const struct idx_split *is = &ds->ix.split[split];
	ds->shards = calloc(is->n_shards ? is->n_shards : 1, sizeof(*ds->shards));
	if (!ds->shards) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out_free;
	}
	uint64_t doc = 0, tok = 0;
	for (size_t i = 0; i < is->n_shards; i++) {
		struct shard *s = &ds->shards[i];
		ds->n_shards = i + 1;
		s->path = moe_path_join(dir, is->shards[i].file);
		if (!s->path) {
			moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out_free;
		}
		if (shard_map(s->path, &s->map, &s->len, err) < 0)
			goto out_free;
		if (shard_hdr_parse(s->map, s->len, s->path, &s->h, err) < 0 ||
		    shard_hdr_match(&s->h, &ds->ix, &is->shards[i], split, (uint32_t)i, doc, tok,
				    s->path, err) < 0)
			goto out_free;
		doc += s->h.n_docs;
		tok += s->h.n_tokens;
	}
	if (ds->ix.compressed) {
		ds->dctx = ZSTD_createDCtx();
		if (!ds->dctx) {
			moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out_free;
		}
	}
	struct moe_dataset_info *in = &ds->info;
	in->vocab_size = ds->ix.vocab_size;
	in->token_width = ds->ix.token_width;
	in->eos_id = ds->ix.eos_id;
	memcpy(in->tokenizer_sha256, ds->ix.tokenizer_sha256, 32);
	in->has_tokenizer_sha256 = ds->ix.has_sha;
	in->compressed = ds->ix.compressed;
	in->split = split;
	in->n_docs = is->docs;
	in->n_tokens = is->tokens;
	in->n_shards = (uint32_t)is->n_shards;
	for (int s = 0; s < MOE_N_SPLITS; s++) {
		in->split_docs[s] = ds->ix.split[s].docs;
		in->split_tokens[s] = ds->ix.split[s].tokens;
	}
	return ds;
out_free:
	moe_dataset_free(ds);
	return NULL;
}

void moe_dataset_free(struct moe_dataset *ds)
{
	if (!ds)
		return;
	for (size_t i = 0; i < ds->n_shards; i++) {
		shard_unmap(ds->shards[i].map, ds->shards[i].len);
		free(ds->shards[i].path);
	}
	free(ds->shards);
	for (int i = 0; i < CACHE_SLOTS; i++)
		free(ds->cache[i].raw);
	ZSTD_freeDCtx(ds->dctx);
	shard_index_release(&ds->ix);
	free(ds);
}

const struct moe_dataset_info *moe_dataset_info(const struct moe_dataset *ds)
{
	return &ds->info;
}

uint64_t moe_dataset_n_tokens(const struct moe_dataset *ds)
{
	return ds->info.n_tokens;
}

uint64_t moe_dataset_n_docs(const struct moe_dataset *ds)
{
	return ds->info.n_docs;
}

/* The uncompressed bytes of block b of shard si, decoded and checked once
 * and kept in the cache. */
static const uint8_t *get_block(struct moe_dataset *ds, size_t si, uint64_t b, size_t *len,
				struct moe_error *err)
{
	struct shard *s = &ds->shards[si];
	struct cache_slot *slot = &ds->cache[0];
	for (int i = 0; i < CACHE_SLOTS; i++) {
		struct cache_slot *c = &ds->cache[i];
		if (c->shard == (int64_t)si && c->block == b) {
			c->used = ++ds->clock;
			*len = c->raw_len;
			return c->raw;
		}
		if (c->used < slot->used)
			slot = c;
	}
	uint64_t first = b * s->h.block_tokens;
	uint64_t ntok = s->h.n_tokens - first;
	if (ntok > s->h.block_tokens)
		ntok = s->h.block_tokens;
	size_t want = (size_t)ntok * s->h.token_width;
	const uint8_t *e = s->map + s->h.blocks_offset + b * SHARD_BLOCK_ENTRY;
	uint64_t off = moe_get_u64(e), cs = moe_get_u64(e + 8), hash = moe_get_u64(e + 16);
	size_t cap = (size_t)s->h.block_tokens * s->h.token_width;
	slot->shard = -1;
	if (slot->raw_cap < cap) {
		uint8_t *p = realloc(slot->raw, cap);
		if (!p) {
			moe_error_set(err, MOE_ENOMEM, "out of memory");
			return NULL;
		}
		slot->raw = p;
		slot->raw_cap = cap;
	}
	/* a frame must decode to exactly want bytes */
	unsigned long long fs = ZSTD_getFrameContentSize(s->map + off, cs);
	size_t got = ZSTD_decompressDCtx(ds->dctx, slot->raw, cap, s->map + off, cs);
	if (ZSTD_isError(got) || got != want || (fs != ZSTD_CONTENTSIZE_UNKNOWN && fs != want)) {
		moe_error_set(err, MOE_EFORMAT, "%s: offset %llu: zstd block %llu is corrupt (%s)",
			      s->path, (unsigned long long)off, (unsigned long long)b,
			      ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong size");
		return NULL;
	}
	if (moe_hash64(slot->raw, want) != hash) {
		moe_error_set(err, MOE_ECHECKSUM, "%s: offset %llu: zstd block %llu checksum mismatch",
			      s->path, (unsigned long long)off, (unsigned long long)b);
		return NULL;
	}
	slot->shard = (int64_t)si;
	slot->block = b;
	slot->raw_len = want;
	slot->used = ++ds->clock;
	*len = want;
	return slot->raw;
}

/* Convert n ids of width bytes, checking each against the vocabulary. */
static int convert(const struct shard *s, const uint8_t *p, size_t n, uint32_t *dst,
		   uint64_t tok0, struct moe_error *err)
{
	uint32_t V = s->h.vocab_size, bad = 0;
	if (s->h.token_width == 2) {
		for (size_t i = 0; i < n; i++) {
			uint32_t v = (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8;
			dst[i] = v;
			bad |= v >= V;
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			uint32_t v = moe_get_u32(p + 4 * i);
			dst[i] = v;
			bad |= v >= V;
		}
	}
	if (!bad)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (dst[i] >= V)
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: token %llu of the shard (%s offset %llu): id %u >= vocab_size %u",
					     s->path, (unsigned long long)(tok0 + i),
					     s->h.flags & MOE_SHARD_FLAG_ZSTD ? "uncompressed" : "file",
					     (unsigned long long)((s->h.flags & MOE_SHARD_FLAG_ZSTD
								   ? 0 : s->h.tokens_offset) +
								  (tok0 + i) * s->h.token_width),
					     dst[i], V);
	return 0;
}

/* Index of the shard holding token t of the split (t < n_tokens). */
static size_t find_shard(const struct moe_dataset *ds, uint64_t t)
{
	size_t lo = 0, hi = ds->n_shards;
	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;
		if (ds->shards[mid].h.first_token <= t)
			lo = mid;
		else
			hi = mid;
	}
	/* skip empty shards (none are written, but be safe) */
	while (lo + 1 < ds->n_shards && t >= ds->shards[lo].h.first_token + ds->shards[lo].h.n_tokens)
		lo++;
	return lo;
}

int moe_dataset_read(struct moe_dataset *ds, uint64_t start, size_t n, uint32_t *dst,
		     struct moe_error *err)
{
	if (start > ds->info.n_tokens || n > ds->info.n_tokens - start)
		return moe_error_set(err, MOE_ERANGE, "tokens %llu..%llu past the end of the %s split (%llu)",
				     (unsigned long long)start, (unsigned long long)(start + n),
				     moe_split_name(ds->info.split),
				     (unsigned long long)ds->info.n_tokens);
	if (n == 0)
		return 0;
	size_t si = find_shard(ds, start);
	while (n > 0) {
		const struct shard *s = &ds->shards[si];
		uint64_t t = start - s->h.first_token; /* within the shard */
		uint64_t avail = s->h.n_tokens - t;
		size_t take = n < avail ? n : (size_t)avail;
		if (!ds->ix.compressed) {
			const uint8_t *p = s->map + s->h.tokens_offset + t * s->h.token_width;
			if (convert(s, p, take, dst, t, err) < 0)
				return err ? err->code : MOE_EFORMAT;
		} else {
			size_t left = take;
			uint32_t *d = dst;
			uint64_t tt = t;
			while (left > 0) {
				uint64_t b = tt / s->h.block_tokens, in = tt % s->h.block_tokens;
				size_t blen;
				const uint8_t *raw = get_block(ds, si, b, &blen, err);
				if (!raw)
					return err ? err->code : MOE_EFORMAT;
				size_t bt = blen / s->h.token_width - (size_t)in;
				if (bt > left)
					bt = left;
				if (convert(s, raw + in * s->h.token_width, bt, d, tt, err) < 0)
					return err ? err->code : MOE_EFORMAT;
				d += bt;
				tt += bt;
				left -= bt;
			}
		}
		dst += take;
		start += take;
		n -= take;
		si++;
	}
	return 0;
}

/* Shard and local index of document doc. */
static size_t find_doc(const struct moe_dataset *ds, uint64_t doc)
{
	size_t lo = 0, hi = ds->n_shards;
	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;
		if (ds->shards[mid].h.first_doc <= doc)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

int moe_dataset_doc(const struct moe_dataset *ds, uint64_t doc, uint64_t *start, uint64_t *len,
		    struct moe_error *err)
{
	if (doc >= ds->info.n_docs)
		return moe_error_set(err, MOE_ERANGE, "document %llu past the end of the %s split (%llu)",
				     (unsigned long long)doc, moe_split_name(ds->info.split),
				     (unsigned long long)ds->info.n_docs);
	const struct shard *s = &ds->shards[find_doc(ds, doc)];
	uint64_t i = doc - s->h.first_doc;
	const uint8_t *d = s->map + s->h.docs_offset + 8 * i;
	uint64_t a = moe_get_u64(d), b = moe_get_u64(d + 8);
	*start = s->h.first_token + a;
	*len = b - a;
	return 0;
}

int moe_dataset_read_doc(struct moe_dataset *ds, uint64_t doc, uint32_t *dst, size_t cap,
			 size_t *n, struct moe_error *err)
{
	uint64_t start, len;
	int rc = moe_dataset_doc(ds, doc, &start, &len, err);
	if (rc < 0)
		return rc;
	*n = (size_t)len;
	if (len > cap)
		return moe_error_set(err, MOE_ERANGE, "document %llu has %llu tokens (buffer holds %zu)",
				     (unsigned long long)doc, (unsigned long long)len, cap);
	return moe_dataset_read(ds, start, (size_t)len, dst, err);
}

int moe_dataset_doc_ordinal(const struct moe_dataset *ds, uint64_t doc, uint64_t *ordinal,
			    struct moe_error *err)
{
	if (doc >= ds->info.n_docs)
		return moe_error_set(err, MOE_ERANGE, "document %llu past the end of the %s split (%llu)",
				     (unsigned long long)doc, moe_split_name(ds->info.split),
				     (unsigned long long)ds->info.n_docs);
	const struct shard *s = &ds->shards[find_doc(ds, doc)];
	*ordinal = moe_get_u64(s->map + s->h.ordinals_offset + 8 * (doc - s->h.first_doc));
	return 0;
}

const uint8_t *dataset_index_sha256(const struct moe_dataset *ds)
{
	return ds->ix.index_sha256;
}
