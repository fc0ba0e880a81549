/*
 * Benchmark: the `moe-fetch cat` decode path (Parquet -> JSONL, text column)
 * in one thread, without libcurl, for machines that lack it.
 *   bench_parquet [-a] [-r REPS] [-n RUNS] [-c COLUMNS] FILE...
 * Decodes each FILE REPS times per run (default 20) to /dev/null, best of
 * RUNS (default 5); prints MB/s of string bytes (before JSON escaping), by
 * wall-clock time and by the thread's CPU time (steadier on a busy machine).
 * -a: alternate the snappy decoders run by run (libsnappy, selected with
 * MOE_PARQUET_SNAPPY=libsnappy; lib/parquet's own, the default, built for
 * any x86-64; and on CPUs with BMI2 the decoder's BMI2 build,
 * MOE_PARQUET_SNAPPY=bmi2) and print a row for each, so that all see the
 * same machine load.
 */
#define _GNU_SOURCE
#include "config.h"

#include <sched.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "parquet/internal.h"

static double cpu_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* The CPU's model name, for the record. */
static void print_cpu(void)
{
	FILE *f = fopen("/proc/cpuinfo", "r");
	char line[256];
	while (f && fgets(line, sizeof(line), f)) {
		if (strncmp(line, "model name", 10) == 0) {
			char *v = strchr(line, ':');
			printf("cpu: %s", v ? v + 2 : line);
			break;
		}
	}
	if (f)
		fclose(f);
}

int main(int argc, char **argv)
{
	int reps = 20, runs = 5, c;
	bool alternate = false;
	const char *cols = "text";
	while ((c = getopt(argc, argv, "ar:n:c:")) != -1) {
		if (c == 'a')
			alternate = true;
		else if (c == 'r')
			reps = atoi(optarg);
		else if (c == 'n')
			runs = atoi(optarg);
		else if (c == 'c')
			cols = optarg;
		else
			return 2;
	}
	if (optind >= argc || reps < 1 || runs < 1) {
		fprintf(stderr, "usage: bench_parquet [-a] [-r REPS] [-n RUNS] [-c COLUMNS] FILE...\n");
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
	/* decoder 0: as the environment says; with -a: libsnappy, ours (the
	 * generic build) and, where the CPU has BMI2, ours built with BMI2 */
	static const char *const envs[3] = {"libsnappy", NULL, "bmi2"};
	const char *env = getenv("MOE_PARQUET_SNAPPY");
	const char *label[3] = {env && *env ? env : "native", "native", "bmi2"};
	int ndec = 1;
	if (alternate) {
		label[0] = "libsnappy";
		ndec = pq_snappy_have_bmi2() ? 3 : 2;
	}
	print_cpu();
	printf("snappy: the default decoder is lib/parquet's generic build%s\n",
	       pq_snappy_have_bmi2() ? " (this CPU could also run the BMI2 build)" : "");
	printf("%-28s %-10s %10s %8s %10s %10s %10s\n", "file", "snappy", "text MB", "docs",
	       "best s", "MB/s", "cpu MB/s");
	for (int i = optind; i < argc; i++) {
		double best[3] = {1e30, 1e30, 1e30}, best_cpu[3] = {1e30, 1e30, 1e30};
		uint64_t bytes = 0, rows = 0;
		for (int r = 0; r < runs; r++) {
			for (int d = 0; d < ndec; d++) {
				if (alternate) {
					if (envs[d])
						setenv("MOE_PARQUET_SNAPPY", envs[d], 1);
					else
						unsetenv("MOE_PARQUET_SNAPPY");
				}
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
				if (dt < best[d])
					best[d] = dt;
				if (dc < best_cpu[d])
					best_cpu[d] = dc;
			}
		}
		const char *base = strrchr(argv[i], '/');
		for (int d = 0; d < ndec; d++)
			printf("%-28s %-10s %10.1f %8llu %10.3f %10.0f %10.0f\n", base ? base + 1 : argv[i],
			       label[d], bytes / 1e6, (unsigned long long)rows, best[d],
			       bytes / 1e6 / best[d], bytes / 1e6 / best_cpu[d]);
	}
	free(colbuf);
	fclose(null);
	return 0;
}
