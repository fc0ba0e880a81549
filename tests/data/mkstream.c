/*
 * mkstream: write a random token stream for the tests and benchmarks.
 *   mkstream [-s SEED] [-n DOCS] [-V VOCAB] [-l MAXLEN] [-e EOS] [-w WIDTH]
 *            [-t TOKENS] [-x TOKENIZER_SHA256_HEX]
 * Documents have 0..MAXLEN tokens (uniform) and end with EOS when given;
 * with -t, documents are written until TOKENS tokens are reached.  -T
 * prints the same documents as text instead (one line of ids per document),
 * an independent reference for `moe-shard cat --format ids`.  -Z draws ids
 * from a skewed distribution (small ids common, as in real text) instead of
 * a uniform one.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "data/tokstream.h"

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

int main(int argc, char **argv)
{
	uint64_t seed = 1, docs = 100, maxlen = 300, tokens = 0;
	struct moe_tokstream_info info = {.vocab_size = 50280, .eos_id = MOE_NO_EOS};
	struct moe_error err = {0};
	int c;
	bool text = false, skew = false;
	while ((c = getopt(argc, argv, "s:n:V:l:e:w:t:x:TZ")) != -1) {
		switch (c) {
		case 's': seed = strtoull(optarg, NULL, 0); break;
		case 'n': docs = strtoull(optarg, NULL, 0); break;
		case 'V': info.vocab_size = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'l': maxlen = strtoull(optarg, NULL, 0); break;
		case 'e': info.eos_id = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 'w': info.token_width = (uint32_t)strtoul(optarg, NULL, 0); break;
		case 't': tokens = strtoull(optarg, NULL, 0); docs = UINT64_MAX; break;
		case 'T': text = true; break;
		case 'Z': skew = true; break;
		case 'x':
			if (moe_unhex(optarg, info.tokenizer_sha256, 32) < 0)
				return 2;
			break;
		default:
			fprintf(stderr, "usage: mkstream [-s SEED] [-n DOCS] [-V VOCAB] [-l MAXLEN] "
					"[-e EOS] [-w WIDTH] [-t TOKENS] [-x SHA]\n");
			return 2;
		}
	}
	struct moe_tokstream_writer *w = NULL;
	if (!text && !(w = moe_tokstream_writer_new(stdout, &info, "<stdout>", &err))) {
		fprintf(stderr, "mkstream: %s\n", err.msg);
		return 1;
	}
	uint32_t *ids = malloc((maxlen + 2) * sizeof(*ids));
	uint64_t s = seed, total = 0;
	for (uint64_t d = 0; d < docs && (!tokens || total < tokens); d++) {
		size_t n = (size_t)(rng(&s) % (maxlen + 1));
		for (size_t i = 0; i < n; i++) {
			if (skew) {
				double u = (double)(rng(&s) >> 11) * 0x1p-53;
				ids[i] = (uint32_t)(info.vocab_size * u * u * u * u);
			} else {
				ids[i] = (uint32_t)(rng(&s) % info.vocab_size);
			}
		}
		if (info.eos_id != MOE_NO_EOS)
			ids[n++] = info.eos_id;
		if (text) {
			for (size_t i = 0; i < n; i++)
				printf(i ? " %u" : "%u", ids[i]);
			putchar('\n');
		} else if (moe_tokstream_write_doc(w, ids, n, &err) < 0) {
			fprintf(stderr, "mkstream: %s\n", err.msg);
			return 1;
		}
		total += n;
	}
	if (w && moe_tokstream_writer_finish(w, &err) < 0) {
		fprintf(stderr, "mkstream: %s\n", err.msg);
		return 1;
	}
	moe_tokstream_writer_free(w);
	free(ids);
	return 0;
}
