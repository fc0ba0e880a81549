/*
 * libmoeparquet: a native, bounds-checked Parquet reader for flat schemas.
 *
 * Supported: the footer and its Thrift compact encoding, row groups, column
 * chunks, data pages v1 and v2, dictionary pages (also found at the data
 * page offset), PLAIN, PLAIN_DICTIONARY, RLE_DICTIONARY and RLE (booleans)
 * encodings, definition levels (nulls), a chunk that falls back from
 * dictionary to PLAIN pages, codecs UNCOMPRESSED, SNAPPY, GZIP (several
 * members) and ZSTD, page CRCs when present.  Repeated columns, DELTA_*
 * and BYTE_STREAM_SPLIT encodings, LZ4/LZO/BROTLI codecs and encryption
 * are refused with a message naming the file, row group, column and page.
 *
 * Memory: the reader holds the footer plus, per column being read, one
 * column chunk (its compressed bytes and its decompressed pages).
 *
 * Errors follow lib/core: functions return 0 or a negative MOE_E* code and
 * fill the caller's struct moe_error; constructors return NULL.
 */
#ifndef MOE_PARQUET_H
#define MOE_PARQUET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* Physical types (parquet.thrift Type). */
enum moe_pq_type {
	MOE_PQ_BOOLEAN = 0,
	MOE_PQ_INT32 = 1,
	MOE_PQ_INT64 = 2,
	MOE_PQ_INT96 = 3,
	MOE_PQ_FLOAT = 4,
	MOE_PQ_DOUBLE = 5,
	MOE_PQ_BYTE_ARRAY = 6,
	MOE_PQ_FIXED_LEN_BYTE_ARRAY = 7,
};

/* A leaf column of the schema. */
struct moe_pq_column_info {
	char *name;          /* dotted path, e.g. "text" or "a.b" */
	enum moe_pq_type type;
	int32_t type_length; /* FIXED_LEN_BYTE_ARRAY width */
	int converted_type;  /* parquet ConvertedType or -1 */
	bool is_string;      /* UTF8 / STRING / ENUM / JSON annotation */
	int max_def;         /* maximum definition level */
	int max_rep;         /* maximum repetition level (>0: unsupported) */
};

/* A byte string that points into a decoded page (valid until the column
 * reader decodes its next chunk or is freed). */
struct moe_pq_bytes {
	const uint8_t *ptr;
	uint32_t len;
};

/* One decoded column chunk: n values, one per row.  valid[i] is 0 for a
 * null (valid is NULL when the column has no nulls in this chunk).
 * Values: bytes[] for BYTE_ARRAY and FIXED_LEN_BYTE_ARRAY; otherwise data
 * holds n packed little-endian elements of the physical type (BOOLEAN: one
 * byte 0/1 each; INT96: 12 bytes each).  Nulls hold zeros.  Everything is
 * owned by the column reader. */
struct moe_pq_chunk {
	enum moe_pq_type type;
	size_t n;
	const uint8_t *valid;
	const struct moe_pq_bytes *bytes;
	const void *data;
};

struct moe_pq_file;
struct moe_pq_reader;

/* Open a Parquet file and parse its footer; "-" reads standard input into
 * an unlinked temporary file first (Parquet needs random access).  Returns
 * NULL and fills err on failure.  Free with moe_pq_close(). */
struct moe_pq_file *moe_pq_open(const char *path, struct moe_error *err);
void moe_pq_close(struct moe_pq_file *f);

/* Metadata accessors. */
int64_t moe_pq_num_rows(const struct moe_pq_file *f);
int moe_pq_num_row_groups(const struct moe_pq_file *f);
int64_t moe_pq_row_group_rows(const struct moe_pq_file *f, int rg);
int moe_pq_num_columns(const struct moe_pq_file *f);
const struct moe_pq_column_info *moe_pq_column(const struct moe_pq_file *f, int col);
/* Index of the leaf column named name, or -1. */
int moe_pq_find_column(const struct moe_pq_file *f, const char *name);
const char *moe_pq_path(const struct moe_pq_file *f);

/* What the footer says about one column chunk. */
struct moe_pq_chunk_info {
	const char *codec;       /* "SNAPPY", ... (static) */
	uint32_t encodings;      /* bit e set for each Encoding e listed (PLAIN = 0, RLE = 3,
				  * PLAIN_DICTIONARY = 2, RLE_DICTIONARY = 8, ...) */
	int64_t num_values;
	int64_t compressed_size;   /* bytes, page headers included */
	int64_t uncompressed_size;
	bool has_dictionary_offset;
};
int moe_pq_chunk_info(const struct moe_pq_file *f, int rg, int col, struct moe_pq_chunk_info *out);
/* Name of Encoding e ("RLE_DICTIONARY"...), static. */
const char *moe_pq_encoding_name(int e);
/* The writer named in the footer, or NULL. */
const char *moe_pq_created_by(const struct moe_pq_file *f);

/* A column reader: decodes chunks of one column and keeps their buffers
 * (reused from chunk to chunk).  Returns NULL on allocation failure. */
struct moe_pq_reader *moe_pq_reader_new(void);
void moe_pq_reader_free(struct moe_pq_reader *r);

/* Decode column col of row group rg into *out (pointers owned by r, valid
 * until the next call on r).  Errors name the file, row group, column and
 * page. */
int moe_pq_read_chunk(struct moe_pq_file *f, int rg, int col, struct moe_pq_reader *r,
		      struct moe_pq_chunk *out, struct moe_error *err);

/* Static name of a physical type ("BYTE_ARRAY"...). */
const char *moe_pq_type_name(enum moe_pq_type t);

/* ---- JSONL output (moe-fetch cat) ---------------------------------------- */

/* Options for moe_pq_cat().  columns: names to print in this order (NULL
 * or ncolumns == 0: every column of the file).  A filter on min_score
 * (column "score", double) or min_int_score (column "int_score") drops rows
 * whose value is null or smaller.  limit: stop after that many rows
 * (0 = no limit). */
struct moe_pq_cat_opts {
	const char *const *columns;
	int ncolumns;
	bool use_min_score;
	double min_score;
	bool use_min_int_score;
	int64_t min_int_score;
	uint64_t limit;
	/* Called after each row group with the rows written so far; may be NULL. */
	void (*progress)(void *ctx, uint64_t rows);
	void *progress_ctx;
};

/* A buffered writer of JSONL documents to a stream (not owned). */
struct moe_jsonl_out;
struct moe_jsonl_out *moe_jsonl_out_new(FILE *fp);
/* Flushes (errors are reported by moe_jsonl_out_flush) and frees. */
void moe_jsonl_out_free(struct moe_jsonl_out *o);
int moe_jsonl_out_flush(struct moe_jsonl_out *o, struct moe_error *err);
/* Bytes of string values written so far (before escaping). */
uint64_t moe_jsonl_out_text_bytes(const struct moe_jsonl_out *o);

/* Stream the rows of the Parquet file at path to o as JSON objects, one per
 * line: strings JSON-escaped (invalid UTF-8 replaced by U+FFFD), numbers
 * printed so that they read back exactly, nulls as null.  *rows (in/out)
 * counts rows written and is compared with opts->limit.  Returns 0 or a
 * negative code. */
int moe_pq_cat(const char *path, const struct moe_pq_cat_opts *opts, struct moe_jsonl_out *o,
	       uint64_t *rows, struct moe_error *err);

/* Append s (n bytes) to buf as a JSON string literal with quotes; buf must
 * have room for 6 * n + 2 bytes.  Returns the number of bytes written. */
size_t moe_jsonl_escape(char *buf, const uint8_t *s, size_t n);

/* Decode a Parquet file held in memory (used by the fuzzer): parses the
 * footer and decodes every column chunk.  Returns 0 or a negative code. */
int moe_pq_check_buffer(const uint8_t *buf, size_t len, struct moe_error *err);

#endif
