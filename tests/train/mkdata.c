/*
 * Test helper: write the synthetic shard directory of synth.h.
 *   mkdata DIR [N_DOCS [SEED]]
 */
#include <stdio.h>
#include <stdlib.h>

#include "synth.h"

int main(int argc, char **argv)
{
	struct moe_error err = { 0 };
	if (argc < 2) {
		fprintf(stderr, "usage: mkdata DIR [N_DOCS [SEED]]\n");
		return 2;
	}
	int n_docs = argc > 2 ? atoi(argv[2]) : 200;
	uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 7;
	if (synth_shards(argv[1], n_docs, seed, &err)) {
		fprintf(stderr, "mkdata: %s\n", err.msg);
		return 1;
	}
	return 0;
}
