/*
 * libFuzzer harness for the Parquet reader: parse the footer and decode
 * every column chunk of the input; escape the raw bytes as a JSON string.  Built by hand (see fuzz.sh):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I lib -I BUILD \
 *     -DPQ_MAX_VALUES='(1<<20)' -DPQ_MAX_PAGE='(1<<24)' ...
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "parquet/parquet.h"

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
	return 0;
}
