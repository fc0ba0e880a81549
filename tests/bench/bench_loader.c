/*
 * bench_loader: windows/s of the training loader on a shard directory.
 *   bench_loader DIR [SEQ_LEN [BATCH [BATCHES [PREFETCH [SHUFFLE]]]]]
 * Prints one line: windows/s, tokens/s and a checksum of what was read.
 */
#include <stdlib.h>

#include "core/core.h"
#include "data/data.h"

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: bench_loader DIR [SEQ_LEN [BATCH [BATCHES [PREFETCH [SHUFFLE]]]]]\n");
		return 2;
	}
	struct moe_loader_opts o;
	moe_loader_opts_init(&o);
	o.dir = argv[1];
	o.seq_len = argc > 2 ? atoi(argv[2]) : 2048;
	o.batch = argc > 3 ? atoi(argv[3]) : 16;
	int batches = argc > 4 ? atoi(argv[4]) : 1000;
	o.prefetch = argc > 5 ? atoi(argv[5]) : 2;
	o.shuffle = argc > 6 ? atoi(argv[6]) != 0 : true;
	o.seed = 1;
	struct moe_error err = {0};
	double t0 = moe_now();
	struct moe_loader *l = moe_loader_new(&o, &err);
	if (!l) {
		fprintf(stderr, "bench_loader: %s\n", err.msg);
		return 1;
	}
	double t1 = moe_now();
	size_t W = (size_t)o.seq_len + 1;
	int32_t *tok = malloc((size_t)o.batch * W * sizeof(int32_t));
	uint64_t sum = 0;
	for (int b = 0; b < batches; b++) {
		if (moe_loader_next(l, tok, &err) < 0) {
			fprintf(stderr, "bench_loader: %s\n", err.msg);
			return 1;
		}
		sum += (uint32_t)tok[b % ((size_t)o.batch * W)];
	}
	double t2 = moe_now();
	double wps = (double)batches * o.batch / (t2 - t1);
	printf("open %.3f s, %d batches of %d x %d (prefetch %d, shuffle %d): %.0f windows/s, %.1f M tokens/s (sum %llu)\n",
	       t1 - t0, batches, o.batch, o.seq_len, o.prefetch, o.shuffle, wps,
	       wps * o.seq_len / 1e6, (unsigned long long)sum);
	free(tok);
	moe_loader_free(l);
	return 0;
}
