/* lib/parquet internals: the Thrift compact reader and the parsed footer. */
#ifndef MOE_PARQUET_INTERNAL_H
#define MOE_PARQUET_INTERNAL_H

#include "parquet/parquet.h"

/* Thrift compact types. */
enum {
	TC_STOP = 0, TC_TRUE = 1, TC_FALSE = 2, TC_I8 = 3, TC_I16 = 4, TC_I32 = 5,
	TC_I64 = 6, TC_DOUBLE = 7, TC_BINARY = 8, TC_LIST = 9, TC_SET = 10,
	TC_MAP = 11, TC_STRUCT = 12,
};

/* A bounds-checked cursor over Thrift compact bytes.  On any error `bad`
 * is set with a static reason and every later read fails. */
struct tc {
	const uint8_t *p, *start, *end;
	int depth;
	const char *bad;
};

int tc_varint(struct tc *t, uint64_t *v);
int tc_i64(struct tc *t, int64_t *v);
int tc_i32(struct tc *t, int32_t *v);
/* Read a field header; *type is TC_STOP at the end of a struct. */
int tc_field(struct tc *t, int16_t *last, int *type, int16_t *id);
int tc_binary(struct tc *t, const uint8_t **p, uint32_t *len);
int tc_list(struct tc *t, int *etype, uint32_t *n);
int tc_skip(struct tc *t, int type);
/* Read an integer field of any integer type into *v. */
int tc_int(struct tc *t, int type, int64_t *v);

enum {
	PQ_CODEC_UNCOMPRESSED = 0, PQ_CODEC_SNAPPY = 1, PQ_CODEC_GZIP = 2, PQ_CODEC_LZO = 3,
	PQ_CODEC_BROTLI = 4, PQ_CODEC_LZ4 = 5, PQ_CODEC_ZSTD = 6, PQ_CODEC_LZ4_RAW = 7,
};
enum {
	PQ_ENC_PLAIN = 0, PQ_ENC_PLAIN_DICTIONARY = 2, PQ_ENC_RLE = 3, PQ_ENC_BIT_PACKED = 4,
	PQ_ENC_DELTA_BINARY_PACKED = 5, PQ_ENC_DELTA_LENGTH_BYTE_ARRAY = 6,
	PQ_ENC_DELTA_BYTE_ARRAY = 7, PQ_ENC_RLE_DICTIONARY = 8, PQ_ENC_BYTE_STREAM_SPLIT = 9,
};
enum { PQ_PAGE_DATA = 0, PQ_PAGE_INDEX = 1, PQ_PAGE_DICT = 2, PQ_PAGE_DATA_V2 = 3 };

struct pq_chunk_meta {
	int type;
	int codec;
	int64_t num_values;
	int64_t total_compressed_size;
	int64_t data_page_offset;
	int64_t dictionary_page_offset; /* 0 when absent */
	int64_t total_uncompressed_size;
	uint32_t encodings;             /* bit e set for each listed Encoding e < 32 */
	bool has_file_path;
	bool has_meta;
	char *path; /* dotted path_in_schema */
};

struct pq_row_group {
	int64_t num_rows;
	struct pq_chunk_meta *cols; /* one per leaf column, in schema order */
	int ncols;
};

struct moe_pq_file {
	char *path;
	int fd;
	const uint8_t *mem; /* whole file in memory, or NULL (then fd) */
	uint64_t size;
	int64_t num_rows;
	char *created_by;
	struct moe_pq_column_info *columns;
	int ncolumns;
	struct pq_row_group *rgs;
	int nrgs;
};

int pq_parse_footer(struct moe_pq_file *f, const uint8_t *buf, size_t len, struct moe_error *err);
void pq_free_meta(struct moe_pq_file *f);
const char *pq_codec_name(int codec);
const char *pq_encoding_name(int enc);

/* Snappy (raw blocks, lib/parquet/snappy.c). */
/* Read the uncompressed length at the start of a block: 0, with *dlen and
 * the header's size *hdr, or -1 when it is malformed. */
int pq_snappy_length(const uint8_t *src, size_t slen, size_t *dlen, size_t *hdr);
/* Decompress the block src[0..slen) into exactly dlen bytes at dst.
 * Returns NULL, or a static reason the data is corrupt. */
const char *pq_snappy_decompress(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen);
/* The same with a choice of build (tests and benchmarks): BMI2 uses the
 * BMI2 build when the CPU has BMI2; AUTO and GENERIC the generic build. */
enum pq_snappy_impl { PQ_SNAPPY_AUTO, PQ_SNAPPY_GENERIC, PQ_SNAPPY_BMI2 };
const char *pq_snappy_decompress_impl(enum pq_snappy_impl impl, const uint8_t *src, size_t slen,
				      uint8_t *dst, size_t dlen);
/* Whether the CPU can run the BMI2 build. */
bool pq_snappy_have_bmi2(void);

#endif
