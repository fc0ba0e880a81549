/*
 * The token stream: what `moe-tokenize encode` writes and `moe-shard` reads.
 * Works through pipes (no seeking).  See moe-tokstream(5).
 *
 * Layout (little-endian):
 *   common header (core.h) with magic "MOETOKS\0", version 1,
 *   payload_size = MOE_SIZE_UNKNOWN, payload_hash = 0, flags = 0, fields:
 *     u32 vocab_size, u32 token_width (2 or 4), u32 eos_id (0xFFFFFFFF: none),
 *     u32 reserved (0), u8[32] tokenizer sha256 (zeros when unknown)
 *   then one record per document:
 *     u32 n_tokens (< 0xFFFFFFFF), u32 check (low 32 bits of XXH3-64 of the
 *     token bytes), n_tokens tokens of token_width bytes
 *   then the end record:
 *     u32 0xFFFFFFFF, u32 0, u64 n_docs, u64 n_tokens, u64 XXH3-64 of the
 *     previous 24 bytes
 * A stream without its end record is truncated and is an error.
 */
#ifndef MOE_TOKSTREAM_H
#define MOE_TOKSTREAM_H

#include "core/core.h"

#define MOE_TOKSTREAM_MAGIC "MOETOKS"
#define MOE_TOKSTREAM_VERSION 1
#define MOE_NO_EOS 0xFFFFFFFFu

struct moe_tokstream_info {
	uint32_t vocab_size;
	uint32_t token_width; /* 2 when vocab_size <= 65536, else 4 */
	uint32_t eos_id;      /* MOE_NO_EOS when none */
	uint8_t tokenizer_sha256[32];
};

struct moe_tokstream_writer;
/* Writes the header to fp at once.  token_width 0 picks the smallest width.
 * `where` names the output for messages.  fp stays owned by the caller. */
struct moe_tokstream_writer *moe_tokstream_writer_new(FILE *fp, const struct moe_tokstream_info *info,
						      const char *where, struct moe_error *err);
/* Append one document; every id must be < vocab_size. */
int moe_tokstream_write_doc(struct moe_tokstream_writer *w, const uint32_t *ids, size_t n,
			    struct moe_error *err);
/* Write the end record and fflush (does not close fp). */
int moe_tokstream_writer_finish(struct moe_tokstream_writer *w, struct moe_error *err);
void moe_tokstream_writer_free(struct moe_tokstream_writer *w);

struct moe_tokstream_reader;
/* Reads and checks the header.  fp stays owned by the caller. */
struct moe_tokstream_reader *moe_tokstream_reader_new(FILE *fp, const char *where,
						      struct moe_error *err);
const struct moe_tokstream_info *moe_tokstream_reader_info(const struct moe_tokstream_reader *r);
/* Next document: returns 1 and sets *ids and *n (buffer owned by the reader,
 * valid until the next call), 0 at the verified end record, or a negative
 * code (truncation, bad check, id >= vocab_size) with the byte offset and
 * document number in the message. */
int moe_tokstream_read_doc(struct moe_tokstream_reader *r, const uint32_t **ids, size_t *n,
			   struct moe_error *err);
void moe_tokstream_reader_free(struct moe_tokstream_reader *r);

#endif
