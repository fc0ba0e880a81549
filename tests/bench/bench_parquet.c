/*
 * Benchmark: the `moe-fetch cat` decode path (Parquet -> JSONL, text column)
 * in one thread, without libcurl, for machines that lack it.
 *   bench_parquet [-r REPS] [-n RUNS] [-c COLUMNS] FILE...
 * Decodes each FILE REPS times per run (default 20) to /dev/null, best of
 * RUNS (default 5); prints MB/s of string bytes (before JSON escaping), by
 * wall-clock time and by the thread's CPU time (steadier on a busy machine).
 */
#define _GNU_SOURCE
#include "config.h"

#include <sched.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "parquet/parquet.h"

static double cpu_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	int reps = 20, runs = 5, c;
	const char *cols = "text";
	while ((c = getopt(argc, argv, "r:n:c:")) != -1) {
		if (c == 'r')
			reps = atoi(optarg);
		else if (c == 'n')
			runs = atoi(optarg);
		else if (c == 'c')
			cols = optarg;
		else
			return 2;
	}
	if (optind >= argc || reps < 1 || runs < 1) {
		fprintf(stderr, "usage: bench_parquet [-r REPS] [-n RUNS] [-c COLUMNS] FILE...\n");
		return 2;
	}
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &set);
	sched_setaffinity(0, sizeof(set), &set);
	FILE *null = fopen("/dev/null", "w");
	char *colbuf = strdup(cols);
	const char *names[64];
	int nnames = 0;
	for (char *t = strtok(colbuf, ","); t && nnames < 64; t = strtok(NULL, ","))
		names[nnames++] = t;
	struct moe_pq_cat_opts o = {.columns = names, .ncolumns = nnames};
	printf("%-28s %10s %8s %10s %10s %10s\n", "file", "text MB", "docs", "best s", "MB/s",
	       "cpu MB/s");
	for (int i = optind; i < argc; i++) {
		double best = 1e30, best_cpu = 1e30;
		uint64_t bytes = 0, rows = 0;
		for (int r = 0; r < runs; r++) {
			struct moe_error err = {0};
			struct moe_jsonl_out *out = moe_jsonl_out_new(null);
			rows = 0;
			double t0 = moe_now(), c0 = cpu_now();
			for (int k = 0; k < reps; k++)
				if (moe_pq_cat(argv[i], &o, out, &rows, &err) < 0) {
					fprintf(stderr, "bench_parquet: %s\n", err.msg);
					return 1;
				}
			moe_jsonl_out_flush(out, &err);
			double dt = moe_now() - t0, dc = cpu_now() - c0;
			bytes = moe_jsonl_out_text_bytes(out);
			moe_jsonl_out_free(out);
			if (dt < best)
				best = dt;
			if (dc < best_cpu)
				best_cpu = dc;
		}
		const char *base = strrchr(argv[i], '/');
		printf("%-28s %10.1f %8llu %10.3f %10.0f %10.0f\n", base ? base + 1 : argv[i],
		       bytes / 1e6, (unsigned long long)rows, best, bytes / 1e6 / best,
		       bytes / 1e6 / best_cpu);
	}
	free(colbuf);
	fclose(null);
	return 0;
}
