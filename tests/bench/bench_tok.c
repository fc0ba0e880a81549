/*
 * bench_tok: single-thread encode rate of libmoetok on the documents of
 * JSONL files (documents are parsed first; only encoding is timed, which is
 * what the Hugging Face reference timing measures too).
 *
 *   bench_tok TOKENIZER FILE.jsonl [REPEAT]
 * prints: "<MB/s> MB/s <bytes> bytes <tokens> tokens <seconds> s cpu <MB/s> MB/s"
 * (best of REPEAT rounds; the second rate uses the thread's CPU time, which
 * is steadier on a busy machine)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "tok/tok.h"

static double cpu_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: bench_tok TOKENIZER FILE.jsonl [REPEAT]\n");
		return 2;
	}
	int repeat = argc > 3 ? atoi(argv[3]) : 3;
	struct moe_error err = {0};
	struct moe_tok *t = moe_tok_load(argv[1], &err);
	if (!t) {
		fprintf(stderr, "bench_tok: %s\n", err.msg);
		return 1;
	}
	FILE *f = fopen(argv[2], "r");
	if (!f) {
		perror(argv[2]);
		return 1;
	}
	char *line = NULL;
	size_t cap = 0, nd = 0, dcap = 0, bytes = 0;
	json_t **docs = NULL;
	ssize_t n;
	while ((n = getline(&line, &cap, f)) > 0) {
		json_t *o = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, NULL);
		json_t *s = json_object_get(o, "text");
		if (!json_is_string(s))
			continue;
		if (nd == dcap) {
			dcap = dcap ? dcap * 2 : 256;
			docs = realloc(docs, dcap * sizeof *docs);
		}
		docs[nd++] = json_incref(s);
		bytes += json_string_length(s);
		json_decref(o);
	}
	fclose(f);
	free(line);
	struct moe_tok_ctx *c = moe_tok_ctx_new(t);
	struct moe_tok_ids ids = {0};
	double best = 1e30, best_cpu = 1e30;
	size_t tokens = 0;
	for (int r = 0; r < repeat; r++) {
		/* a fresh context each round: the word cache starts cold */
		moe_tok_ctx_free(c);
		c = moe_tok_ctx_new(t);
		double t0 = moe_now(), c0 = cpu_now();
		tokens = 0;
		for (size_t i = 0; i < nd; i++) {
			ids.n = 0;
			if (moe_tok_encode(t, c, json_string_value(docs[i]), json_string_length(docs[i]), 0, &ids,
					   &err) < 0) {
				fprintf(stderr, "bench_tok: %s\n", err.msg);
				return 1;
			}
			tokens += ids.n;
		}
		double dt = moe_now() - t0, dc = cpu_now() - c0;
		if (dt < best)
			best = dt;
		if (dc < best_cpu)
			best_cpu = dc;
	}
	printf("%.3f MB/s %zu bytes %zu tokens %.3f s cpu %.3f MB/s\n", (double)bytes / 1e6 / best, bytes,
	       tokens, best, (double)bytes / 1e6 / best_cpu);
	for (size_t i = 0; i < nd; i++)
		json_decref(docs[i]);
	free(docs);
	moe_tok_ids_release(&ids);
	moe_tok_ctx_free(c);
	moe_tok_free(t);
	return 0;
}
