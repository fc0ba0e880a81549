/*
 * Test helper: a small synthetic shard directory with learnable structure
 * (each document is an arithmetic progression modulo the vocabulary, ended
 * by EOS 0); the first 8 documents are the validation split.
 */
#ifndef MOE_TEST_SYNTH_H
#define MOE_TEST_SYNTH_H

#include "data/data.h"

static inline int synth_shards(const char *dir, int n_docs, uint64_t s, struct moe_error *err)
{
	struct moe_shard_writer_opts o;
	moe_shard_writer_opts_init(&o);
	o.val_docs = 8;
	o.force = true;
	struct moe_tokstream_info info = { .vocab_size = 64, .token_width = 2, .eos_id = 0 };
	struct moe_shard_writer *w = moe_shard_writer_new(dir, &o, &info, err);
	if (!w)
		return err->code ? err->code : MOE_EIO;
	uint32_t ids[128];
	int rc = 0;
	for (int d = 0; d < n_docs && !rc; d++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		uint32_t a = (uint32_t)(s >> 33) % 62, step = 1 + (uint32_t)(s >> 20) % 3;
		size_t len = 20 + (size_t)((s >> 40) % 60);
		for (size_t i = 0; i < len; i++)
			ids[i] = 2 + (a + (uint32_t)i * step) % 62;
		ids[len] = 0;
		rc = moe_shard_writer_add(w, ids, len + 1, err);
	}
	if (!rc)
		rc = moe_shard_writer_commit(w, err);
	moe_shard_writer_free(w);
	return rc;
}

#endif
