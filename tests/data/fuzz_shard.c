/*
 * libFuzzer harness for the shard reader (not part of make check).  The
 * input is one shard file; a fixed index.json that matches its header
 * fields is written beside it, so that the reader gets past the index and
 * the header/section checks, the loader and verify are exercised:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ilib -I<builddir> \
 *     tests/data/fuzz_shard.c lib/data/[a-z]*.c lib/core/[a-z]*.c \
 *     -ljansson -lzstd -lm -lpthread -o fuzz_shard
 *   ./fuzz_shard -max_total_time=180 corpus/
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "data/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64];

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
	/* Fix up the payload size and both hashes of a mutated header (half
	 * of the time), so that the fuzzer reaches the field and section
	 * checks behind the checksums. */
	uint8_t *data = malloc(size ? size : 1);
	memcpy(data, in, size);
	if (size >= 192 && (in[size - 1] & 1) && moe_get_u32(data + 12) == 192) {
		moe_put_u64(data + 16, size - 192);
		moe_put_u64(data + 24, moe_hash64(data + 192, size - 192));
		moe_put_u64(data + 184, moe_hash64(data, 184));
	}
	if (!dir[0]) {
		const char *td = getenv("TMPDIR");
		snprintf(dir, sizeof(dir), "%s/moe-fuzz-shard.XXXXXX", td ? td : "/tmp");
		if (!mkdtemp(dir))
			abort();
	}
	char path[128], ipath[128];
	snprintf(path, sizeof(path), "%s/train-00000.shard", dir);
	snprintf(ipath, sizeof(ipath), "%s/index.json", dir);
	FILE *fp = fopen(path, "wb");
	fwrite(data, 1, size, fp);
	fclose(fp);
	/* an index that agrees with whatever the header claims */
	uint64_t docs = 0, toks = 0;
	uint32_t vocab = 1000, width = 2, eos = 0xFFFFFFFFu;
	uint64_t flags = 0;
	if (size >= 192) {
		flags = moe_get_u64(data + 32);
		vocab = moe_get_u32(data + 40);
		width = moe_get_u32(data + 44);
		eos = moe_get_u32(data + 48);
		docs = moe_get_u64(data + 64) & 0xFFFFFFFFFFFFull;
		toks = moe_get_u64(data + 72) & 0xFFFFFFFFFFFFull;
	}
	if (vocab == 0 || vocab > 100000000)
		vocab = 1000;
	if (width != 4)
		width = vocab > 65536 ? 4 : 2;
	uint8_t sha[32];
	char shahex[65];
	moe_sha256_buf(data, size, sha);
	moe_hex(sha, 32, shahex);
	unsigned long long xxh = moe_hash64(data, size);
	fp = fopen(ipath, "w");
	fprintf(fp,
		"{\"format\":\"moe-shards\",\"version\":1,\"vocab_size\":%u,\"token_width\":%u,"
		"\"eos_id\":%s%u,\"tokenizer_sha256\":null,\"compression\":\"%s\","
		"\"train\":{\"docs\":%llu,\"tokens\":%llu,\"shards\":[{\"file\":\"train-00000.shard\","
		"\"docs\":%llu,\"tokens\":%llu,\"bytes\":%zu,\"sha256\":\"%s\",\"xxh3\":\"%016llx\"}]},"
		"\"val\":{\"docs\":0,\"tokens\":0,\"shards\":[]}}",
		vocab, width, eos < vocab ? "" : "null,\"x\":", eos, flags & 1 ? "zstd" : "none",
		(unsigned long long)docs, (unsigned long long)toks, (unsigned long long)docs,
		(unsigned long long)toks, size, shahex, xxh);
	fclose(fp);
	struct moe_error err = {0};
	struct moe_dataset *ds = moe_dataset_open(dir, MOE_SPLIT_TRAIN, &err);
	if (ds) {
		uint64_t nd = moe_dataset_n_docs(ds);
		uint32_t buf[4096];
		for (uint64_t d = 0; d < nd && d < 64; d++) {
			size_t n;
			moe_dataset_read_doc(ds, d, buf, 4096, &n, &err);
			uint64_t ord;
			moe_dataset_doc_ordinal(ds, d, &ord, &err);
		}
		uint64_t nt = moe_dataset_n_tokens(ds);
		if (nt > 0)
			moe_dataset_read(ds, nt - 1, 1, buf, &err);
		moe_dataset_free(ds);
		struct moe_loader_opts o;
		moe_loader_opts_init(&o);
		o.dir = dir;
		o.seq_len = 7;
		o.batch = 3;
		o.prefetch = 0;
		struct moe_loader *l = moe_loader_new(&o, &err);
		if (l) {
			int32_t tok[3 * 8];
			for (int i = 0; i < 8; i++)
				if (moe_loader_next(l, tok, &err) < 0)
					break;
			moe_loader_free(l);
		}
	} else if (!err.msg[0]) {
		__builtin_trap();
	}
	moe_shard_verify(dir, NULL, NULL, &err);
	free(data);
	return 0;
}
