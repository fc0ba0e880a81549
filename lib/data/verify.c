/*
 * moe_shard_verify(): every checksum and every structural rule of a shard
 * directory.
 */
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "data/shardfmt.h"

/* Every id in p[0, n) below V; on failure the byte offset of the first bad one. */
static bool ids_ok(const uint8_t *p, size_t n, uint32_t width, uint32_t V, size_t *bad)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t v = width == 2 ? (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8
					: moe_get_u32(p + 4 * i);
		if (v >= V) {
			*bad = i * width;
			return false;
		}
	}
	return true;
}

static int verify_blocks(const char *path, const uint8_t *map, const struct shard_hdr *h,
			 ZSTD_DCtx *dctx, uint8_t **buf, size_t *cap, struct moe_error *err)
{
	size_t bb = (size_t)h->block_tokens * h->token_width;
	if (*cap < bb) {
		uint8_t *p = realloc(*buf, bb);
		if (!p)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		*buf = p;
		*cap = bb;
	}
	uint64_t expect_off = h->tokens_offset;
	for (uint64_t b = 0; b < h->n_blocks; b++) {
		const uint8_t *e = map + h->blocks_offset + b * SHARD_BLOCK_ENTRY;
		uint64_t off = moe_get_u64(e), cs = moe_get_u64(e + 8), hash = moe_get_u64(e + 16);
		if (off != expect_off)
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: offset %llu: block %llu starts at %llu, expected %llu",
					     path, (unsigned long long)(h->blocks_offset + b * SHARD_BLOCK_ENTRY),
					     (unsigned long long)b, (unsigned long long)off,
					     (unsigned long long)expect_off);
		expect_off = off + cs;
		uint64_t ntok = h->n_tokens - b * h->block_tokens;
		if (ntok > h->block_tokens)
			ntok = h->block_tokens;
		size_t want = (size_t)ntok * h->token_width;
		size_t got = ZSTD_decompressDCtx(dctx, *buf, *cap, map + off, cs);
		if (ZSTD_isError(got) || got != want)
			return moe_error_set(err, MOE_EFORMAT, "%s: offset %llu: zstd block %llu is corrupt (%s)",
					     path, (unsigned long long)off, (unsigned long long)b,
					     ZSTD_isError(got) ? ZSTD_getErrorName(got) : "wrong size");
		if (moe_hash64(*buf, want) != hash)
			return moe_error_set(err, MOE_ECHECKSUM,
					     "%s: offset %llu: zstd block %llu checksum mismatch", path,
					     (unsigned long long)off, (unsigned long long)b);
		size_t bad;
		if (!ids_ok(*buf, ntok, h->token_width, h->vocab_size, &bad))
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: offset %llu: zstd block %llu, byte %zu: id >= vocab_size %u",
					     path, (unsigned long long)off, (unsigned long long)b, bad,
					     h->vocab_size);
	}
	if (expect_off != h->tokens_offset + h->tokens_bytes)
		return moe_error_set(err, MOE_EFORMAT, "%s: blocks end at %llu, token section at %llu",
				     path, (unsigned long long)expect_off,
				     (unsigned long long)(h->tokens_offset + h->tokens_bytes));
	return 0;
}

int moe_shard_verify(const char *dir, void (*progress)(uint64_t bytes, void *arg), void *arg,
		     struct moe_error *err)
{
	struct shard_index ix;
	int rc = shard_index_load(dir, &ix, NULL, err);
	if (rc < 0)
		return rc;
	ZSTD_DCtx *dctx = ZSTD_createDCtx();
	uint8_t *buf = NULL;
	size_t cap = 0;
	uint64_t done = 0;
	if (!dctx) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (int sp = 0; sp < MOE_N_SPLITS; sp++) {
		const struct idx_split *is = &ix.split[sp];
		uint64_t doc = 0, tok = 0, next_ord = 0;
		for (size_t i = 0; i < is->n_shards; i++) {
			const struct idx_shard *e = &is->shards[i];
			char *path = moe_path_join(dir, e->file);
			const uint8_t *map = NULL;
			size_t len = 0;
			struct shard_hdr h;
			if (!path) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
			if ((rc = shard_map(path, &map, &len, err)) < 0)
				goto next;
			if (len != e->bytes) {
				rc = moe_error_set(err, MOE_ETRUNC,
						   "%s: file is %zu bytes, %s says %llu (offset %zu)", path,
						   len, MOE_SHARD_INDEX, (unsigned long long)e->bytes,
						   len < e->bytes ? len : (size_t)e->bytes);
				goto next;
			}
			uint8_t sha[32];
			moe_sha256_buf(map, len, sha);
			if (memcmp(sha, e->sha256, 32) != 0) {
				rc = moe_error_set(err, MOE_ECHECKSUM,
						   "%s: sha256 differs from %s (offset 0, %zu bytes)", path,
						   MOE_SHARD_INDEX, len);
				goto next;
			}
			if (moe_hash64(map, len) != e->xxh3) {
				rc = moe_error_set(err, MOE_ECHECKSUM, "%s: xxh3 differs from %s", path,
						   MOE_SHARD_INDEX);
				goto next;
			}
			if ((rc = shard_hdr_parse(map, len, path, &h, err)) < 0 ||
			    (rc = shard_hdr_match(&h, &ix, e, (enum moe_split)sp, (uint32_t)i, doc, tok,
						  path, err)) < 0)
				goto next;
			if (moe_hash64(map + h.header_size, len - h.header_size) != h.payload_hash) {
				rc = moe_error_set(err, MOE_ECHECKSUM,
						   "%s: payload checksum mismatch (offset %u, %llu bytes)",
						   path, h.header_size, (unsigned long long)h.payload_size);
				goto next;
			}
			if (h.flags & MOE_SHARD_FLAG_ZSTD) {
				rc = verify_blocks(path, map, &h, dctx, &buf, &cap, err);
			} else {
				size_t bad;
				if (!ids_ok(map + h.tokens_offset, h.n_tokens, h.token_width, h.vocab_size,
					    &bad))
					rc = moe_error_set(err, MOE_EFORMAT,
							   "%s: offset %llu: id >= vocab_size %u", path,
							   (unsigned long long)(h.tokens_offset + bad),
							   h.vocab_size);
			}
			if (rc == 0 && h.n_docs > 0) {
				/* ordinals increase across the shards of a split too */
				uint64_t first = moe_get_u64(map + h.ordinals_offset);
				if (first < next_ord)
					rc = moe_error_set(err, MOE_EFORMAT,
							   "%s: offset %llu: document ordinals not increasing",
							   path, (unsigned long long)h.ordinals_offset);
				next_ord = moe_get_u64(map + h.ordinals_offset + 8 * (h.n_docs - 1)) + 1;
			}
			doc += h.n_docs;
			tok += h.n_tokens;
			done += len;
			if (progress)
				progress(done, arg);
next:
			shard_unmap(map, len);
			free(path);
			if (rc < 0)
				goto out;
		}
	}
	rc = 0;
out:
	free(buf);
	ZSTD_freeDCtx(dctx);
	shard_index_release(&ix);
	return rc;
}
