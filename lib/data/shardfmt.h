/*
 * Internal to lib/data: the shard file layout (moe-shard(5)) and index.json,
 * shared by the writer, the reader and verify.
 *
 * Shard file (little-endian, every section 8-byte aligned):
 *   common header, magic "MOESHRD\0", version 1, header_size 192,
 *     payload_size = file size - 192, payload_hash = XXH3-64 of the payload,
 *     flags bit 0 = zstd blocks; format fields at offset 40:
 *      40 u32 vocab_size     44 u32 token_width   48 u32 eos_id
 *      52 u32 split          56 u32 shard_index   60 u32 block_tokens
 *      64 u64 n_docs         72 u64 n_tokens      80 u64 first_doc
 *      88 u64 first_token    96 u64 tokens_offset 104 u64 tokens_bytes
 *     112 u64 blocks_offset 120 u64 n_blocks     128 u64 docs_offset
 *     136 u64 ordinals_offset 144 u8[32] tokenizer sha256  176 u64 reserved
 *     184 u64 header hash
 *   tokens: n_tokens ids of token_width bytes, or (zstd) the compressed
 *     blocks back to back, each holding block_tokens ids (the last fewer);
 *   block index (zstd only): n_blocks x {u64 offset in file, u64 compressed
 *     size, u64 XXH3-64 of the uncompressed bytes};
 *   document index: n_docs + 1 u64 token offsets (0 ... n_tokens);
 *   ordinals: n_docs u64 positions of the documents in the input.
 */
#ifndef MOE_DATA_SHARDFMT_H
#define MOE_DATA_SHARDFMT_H

#include "data/data.h"

#define SHARD_FIELDS_LEN 144
#define SHARD_HEADER_SIZE (MOE_HEADER_COMMON + SHARD_FIELDS_LEN + 8)
#define SHARD_BLOCK_ENTRY 24

struct shard_hdr {
	uint32_t header_size;
	uint64_t payload_size;
	uint64_t payload_hash;
	uint64_t flags;
	uint32_t vocab_size, token_width, eos_id, split, shard_index, block_tokens;
	uint64_t n_docs, n_tokens, first_doc, first_token;
	uint64_t tokens_offset, tokens_bytes, blocks_offset, n_blocks, docs_offset, ordinals_offset;
	uint8_t tokenizer_sha256[32];
};

/* Encode h into buf (SHARD_HEADER_SIZE bytes). */
int shard_hdr_encode(const struct shard_hdr *h, uint8_t *buf, struct moe_error *err);
/* Parse and check the header and every section bound, the block index and
 * the document index / ordinals of a whole mapped file (len bytes). */
int shard_hdr_parse(const uint8_t *map, size_t len, const char *where, struct shard_hdr *h,
		    struct moe_error *err);

struct idx_shard {
	char *file;
	uint64_t docs, tokens, bytes, xxh3;
	uint8_t sha256[32];
};
struct idx_split {
	uint64_t docs, tokens;
	size_t n_shards;
	struct idx_shard *shards;
};
struct shard_index {
	uint32_t vocab_size, token_width, eos_id;
	uint8_t tokenizer_sha256[32];
	bool has_sha;
	bool compressed;
	uint32_t block_tokens;
	struct idx_split split[MOE_N_SPLITS];
	uint8_t index_sha256[32]; /* of the index.json bytes */
};
/* Read and check dir/index.json. */
int shard_index_load(const char *dir, struct shard_index *ix, json_t **json, struct moe_error *err);
void shard_index_release(struct shard_index *ix);

/* Check that a header agrees with its index entry. */
int shard_hdr_match(const struct shard_hdr *h, const struct shard_index *ix,
		    const struct idx_shard *e, enum moe_split split, uint32_t shard_index,
		    uint64_t first_doc, uint64_t first_token, const char *where,
		    struct moe_error *err);

/* A read-only mapping of a whole file. */
int shard_map(const char *path, const uint8_t **map, size_t *len, struct moe_error *err);
void shard_unmap(const uint8_t *map, size_t len);

/* sha256 of the index.json an open dataset was read from. */
const uint8_t *dataset_index_sha256(const struct moe_dataset *ds);

/* splitmix64 step: the PRNG of the val split and of the shuffles. */
static inline uint64_t moe_splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

#endif
