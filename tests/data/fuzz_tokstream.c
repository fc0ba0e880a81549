/*
 * libFuzzer harness for the token stream reader (not part of make check):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ilib -I<builddir> \
 *     tests/data/fuzz_tokstream.c lib/data/tokstream.c lib/core/[a-z]*.c \
 *     -ljansson -lzstd -lm -o fuzz_tokstream
 *   ./fuzz_tokstream -max_total_time=180 corpus/
 * Any input must be read to a clean end or a clean error, never a crash.
 */
#include <stdio.h>
#include <string.h>

#include "core/core.h"
#include "data/tokstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	FILE *fp = fmemopen(size ? (void *)data : (void *)"", size, "rb");
	if (!fp)
		return 0;
	struct moe_error err = {0};
	struct moe_tokstream_reader *r = moe_tokstream_reader_new(fp, "fuzz", &err);
	if (r) {
		const uint32_t *ids;
		size_t n;
		uint32_t V = moe_tokstream_reader_info(r)->vocab_size;
		while (moe_tokstream_read_doc(r, &ids, &n, &err) > 0)
			for (size_t i = 0; i < n; i++)
				if (ids[i] >= V)
					__builtin_trap();
		moe_tokstream_reader_free(r);
	}
	if (!r || err.code)
		if (!err.msg[0])
			__builtin_trap(); /* every error has a message */
	fclose(fp);
	return 0;
}
