/*
 * libFuzzer harness for the Parquet reader: parse the footer and decode
 * every column chunk of the input; escape the raw bytes as a JSON string;
 * decode the raw bytes as a snappy block and compare with libsnappy.
 * Built by hand (see fuzz.sh):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I lib -I BUILD \
 *     -DPQ_MAX_VALUES='(1<<20)' -DPQ_MAX_PAGE='(1<<24)' ...
 */
#include <stddef.h>
#include <stdint.h>
#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>

#include "parquet/internal.h"

/* Our snappy decoder must agree with libsnappy: same bytes, or both reject
 * (we are stricter in one case, below). */
static void check_snappy(const uint8_t *data, size_t size)
{
	size_t ul, hdr;
	if (pq_snappy_length(data, size, &ul, &hdr) < 0 || ul > (1u << 20))
		return;
	uint8_t *out = malloc(ul ? ul : 1);
	char *ref = malloc(ul ? ul : 1);
	size_t rl = ul;
	bool lib_ok = ref && snappy_uncompress((const char *)data, size, ref, &rl) == SNAPPY_OK;
	for (int b = 0; out && ref && b < (pq_snappy_have_bmi2() ? 2 : 1); b++) {
		const char *why = pq_snappy_decompress_impl(b ? PQ_SNAPPY_BMI2 : PQ_SNAPPY_GENERIC, data,
							    size, out, ul);
		/* libsnappy 1.1.9 wraps a literal length of 2^32 to 0; we refuse it */
		bool wrap = why && strstr(why, "overflows");
		if ((!lib_ok && !why) || (lib_ok && why && !wrap) ||
		    (lib_ok && !why && memcmp(out, ref, ul) != 0))
			abort();
	}
	free(out);
	free(ref);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct moe_error err = {0};
	moe_pq_check_buffer(data, size, &err);
	/* the JSON string escaper on the raw bytes (exact-size buffer) */
	size_t n = size < 4096 ? size : 4096;
	char *buf = malloc(6 * n + 2);
	if (buf) {
		moe_jsonl_escape(buf, data, n);
		free(buf);
	}
	check_snappy(data, size);
	return 0;
}
