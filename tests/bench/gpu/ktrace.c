/* ktrace: where the GPU sits idle between kernels.  A CUDA injection
 * library (CUDA_INJECTION64_PATH=ktrace.so, no change to the program) that
 * records every kernel, memset and memcpy through CUPTI's activity API and
 * at exit writes them, in start order, to $KTRACE_OUT (default
 * ktrace.csv): start_ns,end_ns,kind,name (memsets and copies named with
 * their bytes).  tests/bench/gpu/ktrace.py
 * summarises a window of it (busy time, idle gaps, kernels a step).
 * For the device machine (no Nsight Systems there).  Build:
 *   cc -O2 -shared -fPIC -I/usr/local/cuda/include ktrace.c \
 *      -L/usr/local/cuda/lib -lcupti -o ktrace.so */
#include <cupti.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct rec {
	unsigned long long s, e;
	int kind;
	char name[64];
};
static struct rec *recs;
static size_t nrec, cap, lost; /* lost: records not kept (out of memory) */

static void add(unsigned long long s, unsigned long long e, int kind, const char *name)
{
	if (nrec == cap) {
		size_t nc = cap ? 2 * cap : 1 << 16;
		struct rec *r = realloc(recs, nc * sizeof(*r));
		if (!r) {
			lost++;
			return;
		}
		recs = r;
		cap = nc;
	}
	struct rec *r = &recs[nrec++];
	r->s = s;
	r->e = e;
	r->kind = kind;
	snprintf(r->name, sizeof(r->name), "%s", name ? name : "?");
	for (char *p = r->name; *p; p++)
		if (*p == ',')
			*p = ';';
}

static void CUPTIAPI buf_req(uint8_t **buf, size_t *size, size_t *maxrec)
{
	*buf = aligned_alloc(8, 8 << 20);
	*size = *buf ? 8 << 20 : 0; /* none: CUPTI drops the records */
	*maxrec = 0;
}

static void CUPTIAPI buf_done(CUcontext ctx, uint32_t sid, uint8_t *buf, size_t size, size_t valid)
{
	CUpti_Activity *a = NULL;
	(void)ctx, (void)sid, (void)size;
	while (cuptiActivityGetNextRecord(buf, valid, &a) == CUPTI_SUCCESS) {
		if (a->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || a->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
			CUpti_ActivityKernel10 *k = (CUpti_ActivityKernel10 *)a;
			add(k->start, k->end, 0, k->name);
		} else if (a->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
			CUpti_ActivityMemset4 *m = (CUpti_ActivityMemset4 *)a;
			char nm[40];
			snprintf(nm, sizeof nm, "memset %llu B", (unsigned long long)m->bytes);
			add(m->start, m->end, 1, nm);
		} else if (a->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
			CUpti_ActivityMemcpy6 *m = (CUpti_ActivityMemcpy6 *)a;
			char nm[40];
			snprintf(nm, sizeof nm, "memcpy %llu B", (unsigned long long)m->bytes);
			add(m->start, m->end, 2, nm);
		}
	}
	free(buf);
}

static int cmp(const void *x, const void *y)
{
	const struct rec *a = x, *b = y;
	return a->s < b->s ? -1 : a->s > b->s;
}

static void done(void)
{
	cuptiActivityFlushAll(1);
	const char *path = getenv("KTRACE_OUT") ? getenv("KTRACE_OUT") : "ktrace.csv";
	FILE *f = fopen(path, "w");
	if (!f) {
		fprintf(stderr, "ktrace: %s: cannot write\n", path);
		return;
	}
	qsort(recs, nrec, sizeof(*recs), cmp);
	for (size_t i = 0; i < nrec; i++)
		fprintf(f, "%llu,%llu,%d,%s\n", recs[i].s, recs[i].e, recs[i].kind, recs[i].name);
	fclose(f);
	fprintf(stderr, "ktrace: %zu records in %s\n", nrec, path);
	if (lost)
		fprintf(stderr, "ktrace: %zu records lost (out of memory): the trace is incomplete\n", lost);
}

int InitializeInjection(void)
{
	if (cuptiActivityRegisterCallbacks(buf_req, buf_done) != CUPTI_SUCCESS ||
	    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
		fprintf(stderr, "ktrace: CUPTI activity API unavailable\n");
		return 0;
	}
	cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
	cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
	atexit(done);
	return 1;
}
