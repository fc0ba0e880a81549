/*
 * The dense (cuBLAS) GEMMs of one seed-base training step, shape by shape
 * (GPU machine): for every linear layer the forward (rows x In -> Out), the
 * input gradient and the fp32 weight gradient (beta 0: gradients by
 * overwrite, beta 1: accumulation), through moe_cuda_gemm exactly as the
 * backend calls it (its tuned cuBLASLt plans unless MOE_CUDA_GEMM_TUNE=0).  Median of 20 runs after warm-up, CUDA events; prints ms,
 * TFLOP/s and the calls per step, then the step's total for each shape, to
 * show which shapes fall short of the large-GEMM rate; last, the router's
 * forward and input gradient through the one-group wgmma kernel, which the
 * backend uses for them on sm_90 (MOE_CUDA_NARROW).
 * -a: for every shape also each of cuBLASLt's candidates for the same
 * operation (moe_cuda_gemm_survey: the at most 8 the tuning considers,
 * whatever their bits), against cublasGemmEx's own choice (is a tuned
 * choice worth having?).  -r: random operands instead of
 * zeros (zeros draw less power, so the clocks run higher).
 *   bench_gemm [-B 16] [-T 2048] [-a] [-r]
 */
#include <cuda_runtime_api.h>
#include <getopt.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "kernels/kernels.h"

static struct moe_error err;

static int cmpf(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

static void *dzero(size_t bytes)
{
	void *d = NULL;
	if (cudaMalloc(&d, bytes) != cudaSuccess || cudaMemset(d, 0, bytes) != cudaSuccess) {
		fprintf(stderr, "bench_gemm: cudaMalloc of %zu bytes failed\n", bytes);
		exit(1);
	}
	return d;
}

struct shape {
	const char *name;
	int rows, In, Out; /* the layer: (rows, In) -> (rows, Out) */
	int per_step;      /* calls per seed-base step */
};

/* kind 0 forward, 1 input gradient, 2 weight gradient (fp32, beta) */
static float time_gemm(struct moe_cuda_blas *b, const struct shape *s, int kind, float beta, void *A, void *B,
		       void *C)
{
	cudaEvent_t e0, e1;
	cudaEventCreate(&e0);
	cudaEventCreate(&e1);
	float t[20];
	for (int r = -3; r < 20; r++) {
		cudaEventRecord(e0, 0);
		int rc;
		if (kind == 0) /* out (rows, Out) = x (rows, In) w^T */
			rc = moe_cuda_gemm(b, 0, 1, s->rows, s->Out, s->In, A, s->In, B, s->In, C, s->Out, 0, 1.f, 0.f,
					   &err);
		else if (kind == 1) /* dx (rows, In) = dy (rows, Out) w */
			rc = moe_cuda_gemm(b, 0, 0, s->rows, s->In, s->Out, A, s->Out, B, s->In, C, s->In, 0, 1.f, 0.f,
					   &err);
		else /* dw (Out, In) = dy^T x, fp32 */
			rc = moe_cuda_gemm(b, 1, 0, s->Out, s->In, s->rows, A, s->Out, B, s->In, C, s->In, 1, 1.f, beta,
					   &err);
		cudaEventRecord(e1, 0);
		cudaEventSynchronize(e1);
		if (rc) {
			fprintf(stderr, "bench_gemm: %s: %s\n", s->name, err.msg);
			exit(1);
		}
		if (r >= 0)
			cudaEventElapsedTime(&t[r], e0, e1);
	}
	qsort(t, 20, sizeof(float), cmpf);
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	return t[10];
}

/* The same operation as time_gemm's kind through each of cuBLASLt's
 * candidates (moe_cuda_gemm_survey): the best ms, *first the first
 * candidate's, *n the candidates. */
static float lt_best(struct moe_cuda_blas *b, const struct shape *s, int kind, float beta, void *A, void *B, void *C,
		     float *first, int *n)
{
	float best;
	int rc;
	if (kind == 0)
		rc = moe_cuda_gemm_survey(b, 0, 1, s->rows, s->Out, s->In, A, s->In, B, s->In, C, s->Out, 0, beta, first,
					  &best, n, &err);
	else if (kind == 1)
		rc = moe_cuda_gemm_survey(b, 0, 0, s->rows, s->In, s->Out, A, s->Out, B, s->In, C, s->In, 0, beta, first,
					  &best, n, &err);
	else
		rc = moe_cuda_gemm_survey(b, 1, 0, s->Out, s->In, s->rows, A, s->Out, B, s->In, C, s->In, 1, beta, first,
					  &best, n, &err);
	if (rc) {
		fprintf(stderr, "bench_gemm: %s: %s\n", s->name, err.msg);
		exit(1);
	}
	return best;
}

static void fill_rand(void *d, size_t n)
{
	uint16_t *h = malloc(n * 2);
	uint64_t x = 0x9e3779b97f4a7c15ull;
	for (size_t i = 0; i < n; i++) {
		x = x * 6364136223846793005ull + 1442695040888963407ull;
		float f = (float)((x >> 40) & 0xffff) / 32768.f - 1.f;
		uint32_t u;
		memcpy(&u, &f, 4);
		h[i] = (uint16_t)(u >> 16);
	}
	cudaMemcpy(d, h, n * 2, cudaMemcpyHostToDevice);
	free(h);
}

int main(int argc, char **argv)
{
	int B = 16, T = 2048, c, all = 0, rnd = 0;
	while ((c = getopt(argc, argv, "B:T:ar")) != -1) {
		switch (c) {
		case 'B': B = atoi(optarg); break;
		case 'T': T = atoi(optarg); break;
		case 'a': all = 1; break;
		case 'r': rnd = 1; break;
		default: fprintf(stderr, "usage: bench_gemm [-B 16] [-T 2048] [-a] [-r]\n"); return 2;
		}
	}
	int N = B * T;
	/* seed-base: D 768, 19 layers (1 dense of 3840, 18 MoE with a 64-way
	 * router and 2 shared experts of 640), vocabulary 50304 in 4096-row
	 * chunks */
	const struct shape sh[] = {
		{"q, k, v, o (768 -> 768)", N, 768, 768, 4 * 19},
		{"router (768 -> 64)", N, 768, 64, 18},
		{"shared gate_up (768 -> 1280)", N, 768, 1280, 2 * 18},
		{"shared down (640 -> 768)", N, 640, 768, 2 * 18},
		{"dense gate_up (768 -> 7680)", N, 768, 7680, 1},
		{"dense down (3840 -> 768)", N, 3840, 768, 1},
		{"LM head chunk (768 -> 50304)", 4096, 768, 50304, (N + 4095) / 4096},
	};
	int ns = sizeof(sh) / sizeof(sh[0]);
	struct moe_cuda_blas *b = moe_cuda_blas_new(0, &err);
	if (!b) {
		fprintf(stderr, "bench_gemm: %s\n", err.msg);
		return 1;
	}
	size_t maxa = 0, maxw = 0;
	for (int i = 0; i < ns; i++) {
		size_t a = (size_t)sh[i].rows * (sh[i].In > sh[i].Out ? sh[i].In : sh[i].Out);
		size_t w = (size_t)sh[i].In * sh[i].Out;
		maxa = a > maxa ? a : maxa;
		maxw = w > maxw ? w : maxw;
	}
	void *X = dzero(maxa * 2), *Y = dzero(maxa * 2), *W = dzero(maxw * 2), *O = dzero(maxa * 2),
	     *DW = dzero(maxw * 4);
	if (rnd) {
		fill_rand(X, maxa);
		fill_rand(Y, maxa);
		fill_rand(W, maxw);
	}
	printf("dense GEMMs of a seed-base step, B=%d T=%d (ms, TFLOP/s; step ms = ms x calls)\n", B, T);
	printf("%-32s %6s %9s %9s %9s %9s %9s %9s %9s\n", "layer", "calls", "fwd", "TF/s", "dgrad", "TF/s",
	       "wgrad b0", "wgrad b1", "TF/s b0");
	double tot[4] = {0, 0, 0, 0};
	for (int i = 0; i < ns; i++) {
		const struct shape *s = &sh[i];
		double fl = 2.0 * s->rows * s->In * s->Out;
		float f = time_gemm(b, s, 0, 0.f, X, W, O);
		float d = time_gemm(b, s, 1, 0.f, Y, W, O);
		float w0 = time_gemm(b, s, 2, 0.f, Y, X, DW);
		float w1 = time_gemm(b, s, 2, 1.f, Y, X, DW);
		printf("%-32s %6d %9.4f %9.1f %9.4f %9.1f %9.4f %9.4f %9.1f\n", s->name, s->per_step, f, fl / f / 1e9, d,
		       fl / d / 1e9, w0, w1, fl / w0 / 1e9);
		tot[0] += f * s->per_step;
		tot[1] += d * s->per_step;
		tot[2] += w0 * s->per_step;
		tot[3] += w1 * s->per_step;
	}
	printf("%-32s %6s %9.2f %9s %9.2f %9s %9.2f %9.2f   (ms per step)\n", "step total", "", tot[0], "", tot[1], "",
	       tot[2], tot[3]);
	if (all) {
		static const char *kn[] = {"fwd", "dgrad", "wgrad b1"};
		struct moe_cuda_blas *b0 = moe_cuda_blas_new(0, &err); /* cublasGemmEx's own choices */
		if (!b0) {
			fprintf(stderr, "bench_gemm: %s\n", err.msg);
			return 1;
		}
		moe_cuda_gemm_set_tune(b0, 0);
		printf("cuBLASLt's heuristic algorithms against cublasGemmEx (ms; saved = (default - best) x calls)\n");
		printf("%-32s %-8s %9s %9s %9s %5s %9s\n", "layer", "kind", "default", "lt first", "lt best", "algos",
		       "saved/step");
		double saved = 0;
		for (int i = 0; i < ns; i++)
			for (int k = 0; k < 3; k++) {
				const struct shape *s = &sh[i];
				float beta = k == 2 ? 1.f : 0.f, first;
				int n;
				float d = time_gemm(b0, s, k, beta, k == 0 ? X : Y, k == 2 ? X : W, k == 2 ? DW : O);
				float bt = lt_best(b, s, k, beta, k == 0 ? X : Y, k == 2 ? X : W, k == 2 ? DW : O, &first,
						   &n);
				double sv = (d - bt) * s->per_step;
				saved += sv > 0 ? sv : 0;
				printf("%-32s %-8s %9.4f %9.4f %9.4f %5d %9.3f\n", s->name, kn[k], d, first, bt, n, sv);
			}
		printf("%-32s %-8s %39s %9.3f   (ms per step, where the best is faster)\n", "total", "", "", saved);
		moe_cuda_blas_free(b0);
	}
	/* the router's forward and input gradient as the backend runs them on
	 * sm_90 (MOE_CUDA_NARROW): the grouped wgmma kernel with one group */
	if (moe_cuda_grouped_wgmma_supported()) {
		const struct shape *s = &sh[1];
		int32_t hoff[2] = {0, s->rows}, *off = dzero(sizeof hoff);
		cudaMemcpy(off, hoff, sizeof hoff, cudaMemcpyHostToDevice);
		double fl = 2.0 * s->rows * s->In * s->Out;
		float t[2];
		for (int k = 0; k < 2; k++) {
			cudaEvent_t e0, e1;
			cudaEventCreate(&e0);
			cudaEventCreate(&e1);
			float r[20];
			for (int i = -3; i < 20; i++) {
				cudaEventRecord(e0, 0);
				int rc = k == 0 ? moe_cuda_grouped_wgmma_fwd(O, X, W, off, s->rows, 1, s->In, s->Out, 0, &err)
						: moe_cuda_grouped_wgmma_dgrad(O, Y, W, off, s->rows, 1, s->In, s->Out, 0, &err);
				cudaEventRecord(e1, 0);
				cudaEventSynchronize(e1);
				if (rc) {
					fprintf(stderr, "bench_gemm: router (wgmma): %s\n", err.msg);
					return 1;
				}
				if (i >= 0)
					cudaEventElapsedTime(&r[i], e0, e1);
			}
			qsort(r, 20, sizeof(float), cmpf);
			t[k] = r[10];
		}
		printf("%-32s %6d %9.4f %9.1f %9.4f %9.1f   (one-group wgmma kernel)\n", "router (768 -> 64), wgmma",
		       s->per_step, t[0], fl / t[0] / 1e9, t[1], fl / t[1] / 1e9);
	}
	moe_cuda_blas_free(b);
	return 0;
}
