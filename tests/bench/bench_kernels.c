/*
 * Kernel microbenchmarks at the seed-base training shapes (GPU machine):
 * grouped expert GEMMs (fwd, dgrad, wgrad; random balanced routing, or
 * skewed with -s) through
 * our mma.sync kernel, our Hopper wgmma kernel in each tile configuration, the
 * TMA warp-specialised kernel (fwd, dgrad, wgrad) in each configuration and
 * cuBLAS's grouped GEMM (fwd, dgrad), the same FLOPs through one dense cuBLAS
 * GEMM for reference, and causal flash attention forward/backward.  Median of 20 runs timed with CUDA events
 * after warm-up; prints ms and TFLOP/s per kernel.
 *   bench_kernels [-a] [-t] [-m [-W WIDTH]] [-r] [-s SIGMA | -x] [-E 64] [-g 0|1] [-B 8] [-T 2048] [-H 8] [-d 96]
 * -r: the routing kernels only, old against new (route_bench).
 * -m: the memory-bound kernels only, old against new (memk_bench); -W: at
 * rows of WIDTH columns (heads of 128) instead of seed-base's 768.
 * -a: attention only; -t: of the expert GEMMs only the TMA kernels (and the
 * dense reference); -s: expert e's share of the routed rows proportional to
 * exp(SIGMA z_e), z_e standard normal (imbalanced routing; 0: balanced);
 * -x: exactly balanced (every expert the same rows, to the last; with the
 * defaults 2,048 or 4,096, whole 128-row tiles); -E: experts (64; 1 runs
 * the grouped kernels as one dense GEMM, beside cuBLAS's of the same shape);
 * -g: of the expert GEMMs' two shapes only the first (0: 768 x 1280) or the
 * second (1: 640 x 768), so that a profiler's launch counts are simple;
 * -H, -d: attention heads and head size.  Every
 * attention kernel variant is timed, then the default one.
 */
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "kernels/kernels.h"

static struct moe_error err;

#define CK(x)                                                                        \
	do {                                                                         \
		if ((x) != 0) {                                                      \
			fprintf(stderr, "bench_kernels: %s: %s\n", #x, err.msg);     \
			exit(1);                                                     \
		}                                                                    \
	} while (0)

static void *dalloc_rand(size_t n_bf16)
{
	uint16_t *h = malloc(n_bf16 * 2);
	uint64_t r = 88172645463325252ull ^ n_bf16;
	for (size_t i = 0; i < n_bf16; i++) {
		r ^= r << 13, r ^= r >> 7, r ^= r << 17;
		h[i] = moe_f32_to_bf16(((float)(r % 2001) - 1000.f) / 1000.f);
	}
	void *d = NULL;
	if (cudaMalloc(&d, n_bf16 * 2) != cudaSuccess || cudaMemcpy(d, h, n_bf16 * 2, cudaMemcpyHostToDevice) != cudaSuccess) {
		fprintf(stderr, "bench_kernels: cudaMalloc failed\n");
		exit(1);
	}
	free(h);
	return d;
}

static int cmpf(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return x < y ? -1 : x > y;
}

typedef void (*fn_t)(void *);

static float time_it(fn_t f, void *arg)
{
	cudaEvent_t a, b;
	float t[20];
	cudaEventCreate(&a);
	cudaEventCreate(&b);
	for (int i = 0; i < 3; i++)
		f(arg);
	for (int i = 0; i < 20; i++) {
		cudaEventRecord(a, 0);
		f(arg);
		cudaEventRecord(b, 0);
		cudaEventSynchronize(b);
		cudaEventElapsedTime(&t[i], a, b);
	}
	qsort(t, 20, sizeof(float), cmpf);
	return t[10];
}

struct gg {
	void *x, *w, *y, *dw;
	int32_t *off;
	const int32_t *hoff; /* host copy */
	int rows, E, In, Out;
	struct moe_cuda_blas *blas;
	cublasHandle_t h;
	void **dptr; /* device (3 * E): cuBLAS grouped pointer arrays */
	int tb;      /* cuBLAS grouped: 1 fwd, 0 dgrad */
};

static void f_fwd(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_fwd(g->y, g->x, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
}
static void f_dgrad(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_dgrad(g->x, g->y, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
}
static void f_wgrad(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_wgrad(g->dw, g->y, g->x, g->off, g->E, g->In, g->Out, 0, &err));
}
static void f_wg_fwd(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_wgmma_fwd(g->y, g->x, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
}
static void f_wg_dgrad(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_wgmma_dgrad(g->x, g->y, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
}
static void f_wg_wgrad(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_wgmma_wgrad(g->dw, g->y, g->x, g->off, g->E, g->In, g->Out, 0, &err));
}

static void f_tma_fwd(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_tma_fwd(g->y, g->x, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
}
static void f_tma_dgrad(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_tma_dgrad(g->x, g->y, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
}
static void f_tma_wgrad(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_tma_wgrad_store(g->dw, g->y, g->x, g->off, g->E, g->In, g->Out, false, 0, &err));
}
/* the weight gradients stored (gradients by overwrite, the training default) */
static void f_wg_wgrad_st(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_wgmma_wgrad_store(g->dw, g->y, g->x, g->off, g->E, g->In, g->Out, true, 0, &err));
}
static void f_tma_wgrad_st(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_grouped_tma_wgrad_store(g->dw, g->y, g->x, g->off, g->E, g->In, g->Out, true, 0, &err));
}

/* The TMA kernels (configuration cfg) against the wgmma ones on fresh
 * inputs at the full shape (every block walks many tiles): elements whose
 * bits differ. */
static void tma_vs_wgmma(const struct gg *g, int cfg)
{
	size_t nx = (size_t)g->rows * g->In, ny = (size_t)g->rows * g->Out, n = nx > ny ? nx : ny;
	void *xr = dalloc_rand(nx), *yr = dalloc_rand(ny), *o1 = dalloc_rand(n), *o2 = dalloc_rand(n);
	uint16_t *h1 = malloc(n * 2), *h2 = malloc(n * 2);
	size_t nw = (size_t)g->E * g->In * g->Out, wd = 0;
	float *w1 = malloc(nw * 4), *w2 = malloc(nw * 4), *d1 = NULL, *d2 = NULL;
	double wmax = 0;
	if (cudaMalloc((void **)&d1, nw * 4) != cudaSuccess || cudaMalloc((void **)&d2, nw * 4) != cudaSuccess) {
		fprintf(stderr, "bench_kernels: cudaMalloc failed\n");
		exit(1);
	}
	CK(moe_cuda_grouped_wgmma_wgrad_store(d1, yr, xr, g->off, g->E, g->In, g->Out, true, 0, &err));
	CK(moe_cuda_grouped_tma_wgrad_store(d2, yr, xr, g->off, g->E, g->In, g->Out, true, 0, &err));
	cudaMemcpy(w1, d1, nw * 4, cudaMemcpyDeviceToHost);
	cudaMemcpy(w2, d2, nw * 4, cudaMemcpyDeviceToHost);
	for (size_t i = 0; i < nw; i++) {
		wd += memcmp(&w1[i], &w2[i], 4) != 0;
		wmax = fmax(wmax, fabs((double)w1[i] - w2[i]));
	}
	printf("tma cfg %d vs wgmma wgrad %4dx%4d: %zu of %zu elements differ (max |difference| %.3g)\n", cfg, g->In,
	       g->Out, wd, nw, wmax);
	free(w1);
	free(w2);
	cudaFree(d1);
	cudaFree(d2);
	for (int op = 0; op < 2; op++) {
		size_t m = op ? nx : ny, diff = 0;
		if (op == 0) {
			CK(moe_cuda_grouped_wgmma_fwd(o1, xr, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
			CK(moe_cuda_grouped_tma_fwd(o2, xr, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
		} else {
			CK(moe_cuda_grouped_wgmma_dgrad(o1, yr, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
			CK(moe_cuda_grouped_tma_dgrad(o2, yr, g->w, g->off, g->rows, g->E, g->In, g->Out, 0, &err));
		}
		cudaMemcpy(h1, o1, m * 2, cudaMemcpyDeviceToHost);
		cudaMemcpy(h2, o2, m * 2, cudaMemcpyDeviceToHost);
		for (size_t i = 0; i < m; i++)
			diff += h1[i] != h2[i];
		printf("tma cfg %d vs wgmma %-5s %4dx%4d: %zu of %zu elements differ\n", cfg, op ? "dgrad" : "fwd", g->In,
		       g->Out, diff, m);
	}
	free(h1);
	free(h2);
	cudaFree(xr);
	cudaFree(yr);
	cudaFree(o1);
	cudaFree(o2);
}

/* cublasGemmGroupedBatchedEx as backend_cuda.cu calls it (row-major C_e =
 * A_e op(B_e) as column-major C_e^T = op(B_e)^T A_e^T); pointer arrays
 * uploaded once, outside the timing. */
static void f_cublas_grouped(void *p)
{
	struct gg *g = p;
	int E = g->E, n = g->tb ? g->Out : g->In, k = g->tb ? g->In : g->Out, ng = 0;
	int m_[256], n_[256], k_[256], la[256], lb[256], lc[256], gs[256];
	cublasOperation_t oa[256], ob[256];
	float al[256], be[256];
	static void *hp[3 * 256];
	static int uploaded = -1;
	for (int e = 0; e < E && e < 256; e++) {
		int m = g->hoff[e + 1] - g->hoff[e];
		if (m <= 0)
			continue;
		m_[ng] = n;
		n_[ng] = m;
		k_[ng] = k;
		oa[ng] = g->tb ? CUBLAS_OP_T : CUBLAS_OP_N;
		ob[ng] = CUBLAS_OP_N;
		la[ng] = g->In;
		lb[ng] = k;
		lc[ng] = n;
		al[ng] = 1.f;
		be[ng] = 0.f;
		gs[ng] = 1;
		hp[ng] = (char *)g->w + (size_t)e * g->In * g->Out * 2;
		hp[E + ng] = (char *)(g->tb ? g->x : g->y) + (size_t)g->hoff[e] * k * 2;
		hp[2 * E + ng] = (char *)(g->tb ? g->y : g->x) + (size_t)g->hoff[e] * n * 2;
		ng++;
	}
	int key = g->tb * 100000 + g->In * 7 + g->Out;
	if (uploaded != key) {
		cudaMemcpy(g->dptr, hp, sizeof(void *) * 3 * E, cudaMemcpyHostToDevice);
		uploaded = key;
	}
	cublasStatus_t st = cublasGemmGroupedBatchedEx(g->h, oa, ob, m_, n_, k_, al, (const void *const *)g->dptr,
						      CUDA_R_16BF, la, (const void *const *)(g->dptr + E), CUDA_R_16BF,
						      lb, be, g->dptr + 2 * E, CUDA_R_16BF, lc, ng, gs,
						      CUBLAS_COMPUTE_32F);
	if (st != CUBLAS_STATUS_SUCCESS) {
		fprintf(stderr, "bench_kernels: cublasGemmGroupedBatchedEx: status %d\n", (int)st);
		exit(1);
	}
}

static void f_dense(void *p)
{
	struct gg *g = p;
	CK(moe_cuda_gemm(g->blas, 0, 1, g->rows, g->Out, g->In, g->x, g->In, g->w, g->In, g->y, g->Out, 0, 1.f, 0.f,
			 &err));
}

/* -m: the memory-bound kernels (moe_cuda_memk_legacy: the previous version
 * of each, then the default) at seed-base shapes, N = B*T rows of D 768
 * (8 heads of 96), top-4 of 64 experts, cross-entropy over 4096-row chunks
 * of a 50,304 vocabulary; each against a device-to-device copy of its bytes
 * (the bytes it must move, read and written, counted once). */
struct memk {
	int N, D, H, Dh, T, K, V, XR;
	void *x, *out, *dout, *dx, *yg, *dyg, *logits;
	float *w, *rstd, *dw, *cosb, *sinb, *gw, *gdw, *loss;
	int32_t *inv, *perm, *tgt;
	void *ca, *cb;
	size_t cbytes;
	int failed; /* a launcher refused the shape (the previous kernels past their widths) */
};

/* CK for the memory-bound kernels: a refused launch marks the kernel's
 * timing n/a instead of ending the run */
#define CKM(x)                                                                       \
	do {                                                                         \
		if ((x) != 0) {                                                      \
			if (!m->failed)                                              \
				fprintf(stderr, "bench_kernels: %s\n", err.msg);      \
			m->failed = 1;                                               \
			return;                                                      \
		}                                                                    \
	} while (0)

static void f_memk_copy(void *p)
{
	struct memk *m = p;
	cudaMemcpyAsync(m->cb, m->ca, m->cbytes, cudaMemcpyDeviceToDevice, 0);
}
static void f_memk_rms(void *p)
{
	struct memk *m = p;
	CKM(moe_cuda_rmsnorm_fwd(m->out, m->rstd, m->x, m->w, m->N, m->D, 1e-5f, 0, &err));
}
static void f_memk_rms_bwd(void *p)
{
	struct memk *m = p;
	CKM(moe_cuda_rmsnorm_bwd_add(m->dx, m->dw, NULL, m->dout, m->x, m->w, m->rstd, m->N, m->D, 0, &err));
}
/* QK-norm + RoPE: the fused kernels, or where they do not take the row
 * (the previous kernels past 1536 columns) the backend's two kernels */
static void f_memk_qr(void *p)
{
	struct memk *m = p;
	if (!moe_cuda_qknorm_rope_supported(m->H, m->Dh)) {
		CKM(moe_cuda_rmsnorm_fwd(m->out, m->rstd, m->x, m->w, m->N, m->D, 1e-5f, 0, &err));
		CKM(moe_cuda_rope(m->out, m->cosb, m->sinb, m->N / m->T, m->T, m->H, m->Dh, 0, 0, &err));
		return;
	}
	CKM(moe_cuda_qknorm_rope_fwd(m->out, m->rstd, m->x, m->w, m->cosb, m->sinb, m->N / m->T, m->T, m->H, m->Dh,
				    1e-5f, 0, &err));
}
static void f_memk_qr_bwd(void *p)
{
	struct memk *m = p;
	if (!moe_cuda_qknorm_rope_supported(m->H, m->Dh)) {
		CKM(moe_cuda_rope(m->dout, m->cosb, m->sinb, m->N / m->T, m->T, m->H, m->Dh, 1, 0, &err));
		CKM(moe_cuda_rmsnorm_bwd(m->dx, m->dw, NULL, m->dout, m->x, m->w, m->rstd, m->N, m->D, 0, &err));
		return;
	}
	CKM(moe_cuda_qknorm_rope_bwd(m->dx, m->dw, NULL, m->dout, m->x, m->w, m->rstd, m->cosb, m->sinb, m->N / m->T, m->T,
				    m->H, m->Dh, 0, &err));
}
static void f_memk_comb(void *p)
{
	struct memk *m = p;
	CKM(moe_cuda_combine_fwd(m->out, m->x, m->yg, m->gw, m->inv, m->N, m->K, m->D, 0, &err));
}
static void f_memk_comb_bwd(void *p)
{
	struct memk *m = p;
	CKM(moe_cuda_combine_bwd(m->dyg, m->gdw, m->dout, m->yg, m->gw, m->inv, m->N, m->K, m->D, 0, &err));
}
static void f_memk_scatter(void *p)
{
	struct memk *m = p;
	CKM(moe_cuda_scatter_add(m->dx, m->dyg, m->inv, m->N, m->K, m->D, 0, &err));
}
static void f_memk_gather(void *p)
{
	struct memk *m = p;
	CKM(moe_cuda_gather(m->dyg, m->x, m->perm, m->N * m->K, m->K, m->D, 0, &err));
}
static void f_memk_xent(void *p)
{
	struct memk *m = p;
	CKM(moe_cuda_xent(m->logits, m->loss, m->logits, m->tgt, m->XR, m->V, 1, 1.f / 32768, 0, &err));
}

static float *dalloc_f(size_t n, float v)
{
	float *h = malloc(n * 4), *d = NULL;
	for (size_t i = 0; i < n; i++)
		h[i] = v * (1.f + 0.001f * (float)(i % 97));
	if (cudaMalloc((void **)&d, n * 4) != cudaSuccess || cudaMemcpy(d, h, n * 4, cudaMemcpyHostToDevice) != cudaSuccess) {
		fprintf(stderr, "bench_kernels: cudaMalloc failed\n");
		exit(1);
	}
	free(h);
	return d;
}

static int memk_bench(int B, int T, int width)
{
	struct memk m = {0};
	m.T = T, m.N = B * T, m.H = 8, m.Dh = 96, m.D = 768, m.K = 4, m.V = 50304, m.XR = 4096;
	if (width) /* -W: rows of width columns, heads of 128 */
		m.D = width, m.Dh = 128, m.H = width / 128;
	size_t nd = (size_t)m.N * m.D, nk = (size_t)m.N * m.K;
	m.x = dalloc_rand(nd), m.out = dalloc_rand(nd), m.dout = dalloc_rand(nd), m.dx = dalloc_rand(nd);
	m.yg = dalloc_rand(nk * m.D), m.dyg = dalloc_rand(nk * m.D), m.logits = dalloc_rand((size_t)m.XR * m.V);
	m.w = dalloc_f(m.D, 1.f), m.dw = dalloc_f(m.D, 0.f), m.rstd = dalloc_f(m.N, 1.f);
	m.gw = dalloc_f(nk, 0.25f), m.gdw = dalloc_f(nk, 0.f), m.loss = dalloc_f(m.XR, 0.f);
	float *cs = malloc((size_t)T * m.Dh / 2 * 4), *sn = malloc((size_t)T * m.Dh / 2 * 4);
	moe_cuda_rope_table(cs, sn, T, m.Dh, 10000.f);
	cudaMalloc((void **)&m.cosb, (size_t)T * m.Dh / 2 * 4);
	cudaMalloc((void **)&m.sinb, (size_t)T * m.Dh / 2 * 4);
	cudaMemcpy(m.cosb, cs, (size_t)T * m.Dh / 2 * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(m.sinb, sn, (size_t)T * m.Dh / 2 * 4, cudaMemcpyHostToDevice);
	/* a random permutation of the N*K expert rows (perm) and its inverse */
	int32_t *perm = malloc(nk * 4), *inv = malloc(nk * 4), *tgt = malloc(m.XR * 4);
	uint64_t r = 777;
	for (size_t i = 0; i < nk; i++)
		perm[i] = (int32_t)i;
	for (size_t i = nk - 1; i > 0; i--) {
		r ^= r << 13, r ^= r >> 7, r ^= r << 17;
		size_t j = r % (i + 1);
		int32_t t = perm[i];
		perm[i] = perm[j], perm[j] = t;
	}
	for (size_t i = 0; i < nk; i++)
		inv[perm[i]] = (int32_t)i;
	for (int i = 0; i < m.XR; i++) {
		r ^= r << 13, r ^= r >> 7, r ^= r << 17;
		tgt[i] = (int32_t)(r % m.V);
	}
	cudaMalloc((void **)&m.perm, nk * 4);
	cudaMalloc((void **)&m.inv, nk * 4);
	cudaMalloc((void **)&m.tgt, m.XR * 4);
	cudaMemcpy(m.perm, perm, nk * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(m.inv, inv, nk * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(m.tgt, tgt, m.XR * 4, cudaMemcpyHostToDevice);
	/* the copy rate: 2 x 256 MiB moved (read + write); the buffers also
	 * take each kernel's half bytes (at most 412 MB, the xent chunk) */
	size_t cmax = (size_t)512 << 20;
	if (cudaMalloc(&m.ca, cmax) != cudaSuccess || cudaMalloc(&m.cb, cmax) != cudaSuccess) {
		fprintf(stderr, "bench_kernels: cudaMalloc failed\n");
		return 1;
	}
	cudaMemset(m.ca, 0, cmax);
	m.cbytes = (size_t)256 << 20;
	float tc = time_it(f_memk_copy, &m);
	double rate = 2.0 * m.cbytes / tc / 1e6; /* GB/s */
	double row = (double)m.D * 2, nb = m.N * row;
	struct {
		const char *name;
		fn_t f;
		double bytes;
	} ks[] = {
		{"rmsnorm", f_memk_rms, 2 * nb + m.N * 4.0},
		{"rmsnorm_bwd_add", f_memk_rms_bwd, 4 * nb + m.N * 4.0},
		{"qknorm_rope", f_memk_qr, 2 * nb + m.N * 4.0},
		{"qknorm_rope_bwd", f_memk_qr_bwd, 3 * nb + m.N * 4.0},
		{"combine (+ residual)", f_memk_comb, (m.K + 2) * nb + nk * 8.0},
		{"combine_bwd", f_memk_comb_bwd, (2 * m.K + 1) * nb + nk * 12.0},
		{"scatter_add", f_memk_scatter, (m.K + 2) * nb + nk * 4.0},
		{"gather", f_memk_gather, 2 * m.K * nb + nk * 4.0},
		{"xent (4096-row chunk)", f_memk_xent, 2.0 * m.XR * m.V * 2 + m.XR * 8.0},
	};
	printf("memory-bound kernels, N %d rows, D %d, K %d, V %d; copy rate %.0f GB/s (D2D, %.0f MiB)\n", m.N, m.D,
	       m.K, m.V, rate, m.cbytes / 1048576.0);
	printf("copy ms: cudaMemcpyAsync D2D of half the kernel's bytes (the same bytes read and written); nan: "
	       "the kernels refuse this width\n");
	printf("%-22s %7s %8s %8s %8s %8s %8s %8s\n", "kernel", "MB", "copy ms", "old ms", "new ms", "old GB/s",
	       "new GB/s", "new/copy");
	for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
		moe_cuda_memk_legacy(1);
		m.failed = 0;
		float to = time_it(ks[i].f, &m);
		if (m.failed)
			to = NAN;
		moe_cuda_memk_legacy(0);
		m.failed = 0;
		float tn = time_it(ks[i].f, &m);
		if (m.failed)
			tn = NAN;
		size_t cb = m.cbytes;
		m.cbytes = (size_t)(ks[i].bytes / 2) & ~(size_t)255;
		if (m.cbytes > cmax)
			m.cbytes = cmax;
		float tcopy = time_it(f_memk_copy, &m);
		m.cbytes = cb;
		printf("%-22s %7.1f %8.3f %8.3f %8.3f %8.0f %8.0f %7.0f%%\n", ks[i].name, ks[i].bytes / 1e6, tcopy, to, tn,
		       ks[i].bytes / to / 1e6, ks[i].bytes / tn / 1e6, 100.0 * tcopy / tn);
	}
	cudaError_t e = cudaDeviceSynchronize();
	if (e != cudaSuccess) {
		fprintf(stderr, "bench_kernels: %s\n", cudaGetErrorString(e));
		return 1;
	}
	return 0;
}

/* -r: the routing kernels (moe_cuda_route_legacy: the previous version of
 * each, then the default) at seed-base shapes: N = B*T rows, top-4 of 64
 * experts with a selection bias; each against a device-to-device copy of
 * the bytes it must move (read and written, counted once).  zloss is the
 * forward's loss value: before, a memset, the per-row kernel and a one-block
 * sum; now one launch.  gather: through perm (old) or in token order through
 * inv (new), D 768, not in the sum. */
struct rk {
	int N, E, K;
	void *logits, *dlogits;
	float *bias, *probs, *topk_w, *dtopk_w, *dprobs, *psum, *g;
	int32_t *idx, *ids, *cnt, *counts, *offsets, *perm, *inv;
	void *sc_stats, *sc_group, *sc_z;
	float *rowz;
	double *acc;
	void *ca, *cb;
	size_t cbytes;
	void *x, *xg; /* (N, 768), (N*K, 768) */
};

static void f_rk_copy(void *p)
{
	struct rk *m = p;
	cudaMemcpyAsync(m->cb, m->ca, m->cbytes, cudaMemcpyDeviceToDevice, 0);
}
static void f_rk_fwd(void *p)
{
	struct rk *m = p;
	CK(moe_cuda_router_fwd(m->idx, m->topk_w, m->probs, m->logits, m->bias, m->N, m->E, m->K, 0, 0, &err));
}
static void f_rk_group(void *p)
{
	struct rk *m = p;
	CK(moe_cuda_route_group(m->counts, m->offsets, m->perm, m->inv, m->sc_group, m->idx, m->N, m->K, m->E, 0,
				&err));
}
static void f_rk_stats(void *p)
{
	struct rk *m = p;
	CK(moe_cuda_router_stats(m->psum, m->cnt, m->probs, m->idx, m->ids, -1, m->N, m->E, m->K, m->sc_stats, 0,
				 &err));
}
static void f_rk_zloss(void *p)
{
	struct rk *m = p;
	if (moe_cuda_route_legacy_on()) { /* the backend's previous sequence */
		cudaMemsetAsync(m->acc, 0, 2 * sizeof(double), 0);
		CK(moe_cuda_zloss(NULL, m->rowz, m->logits, m->N, m->E, 0.f, 0, &err));
		CK(moe_cuda_sum_loss(m->acc, m->rowz, NULL, m->N, 0, 0, &err));
	} else {
		CK(moe_cuda_zloss_sum(m->acc, NULL, m->logits, m->N, m->E, 0.f, m->sc_z, 0, &err));
	}
}
static void f_rk_aux(void *p)
{
	struct rk *m = p;
	CK(moe_cuda_aux_dprobs(m->dprobs, m->g, m->ids, -1, m->N, m->E, 0, &err));
}
static void f_rk_gather(void *p) /* old: through perm (slot order); new: through inv (token order) */
{
	struct rk *m = p;
	if (moe_cuda_route_legacy_on())
		CK(moe_cuda_gather(m->xg, m->x, m->perm, m->N * m->K, m->K, 768, 0, &err));
	else
		CK(moe_cuda_gather_inv(m->xg, m->x, m->inv, m->N, m->K, 768, 0, &err));
}
static void f_rk_bwd(void *p)
{
	struct rk *m = p;
	CK(moe_cuda_router_bwd(m->dlogits, m->dtopk_w, m->dprobs, m->probs, m->idx, m->topk_w, m->N, m->E, m->K, 0,
			       0, &err));
}

static int route_bench(int B, int T)
{
	struct rk m = {.N = B * T, .E = 64, .K = 4};
	size_t NE = (size_t)m.N * m.E, NK = (size_t)m.N * m.K;
	float hg[64], hb[64];
	for (int e = 0; e < m.E; e++) {
		hg[e] = 1e-3f * (float)(e % 7);
		hb[e] = 0.01f * (float)(e % 5) - 0.02f;
	}
	m.g = hg;
	m.logits = dalloc_rand(NE);
	m.dlogits = dalloc_rand(NE);
	cudaMalloc((void **)&m.dtopk_w, NK * 4); /* zeros: the work does not depend on the values */
	cudaMemset(m.dtopk_w, 0, NK * 4);
	cudaMalloc((void **)&m.bias, m.E * 4);
	cudaMemcpy(m.bias, hb, m.E * 4, cudaMemcpyHostToDevice);
	cudaMalloc((void **)&m.probs, NE * 4);
	cudaMalloc((void **)&m.dprobs, NE * 4);
	cudaMalloc((void **)&m.topk_w, NK * 4);
	cudaMalloc((void **)&m.psum, m.E * 4);
	cudaMalloc((void **)&m.idx, NK * 4);
	cudaMalloc((void **)&m.ids, (size_t)m.N * 4);
	cudaMemset(m.ids, 0, (size_t)m.N * 4);
	cudaMalloc((void **)&m.cnt, m.E * 4);
	cudaMalloc((void **)&m.counts, m.E * 4);
	cudaMalloc((void **)&m.offsets, (m.E + 1) * 4);
	cudaMalloc((void **)&m.perm, NK * 4);
	cudaMalloc((void **)&m.inv, NK * 4);
	cudaMalloc((void **)&m.rowz, (size_t)m.N * 4);
	cudaMalloc((void **)&m.acc, 4 * sizeof(double));
	cudaMalloc(&m.sc_stats, moe_cuda_router_stats_scratch(m.N, m.E));
	cudaMalloc(&m.sc_group, moe_cuda_route_group_scratch(m.N, m.K, m.E));
	cudaMalloc(&m.sc_z, moe_cuda_zloss_scratch(m.N, m.E));
	size_t cmax = NK * 768 * 2;
	cudaMalloc(&m.ca, cmax);
	cudaMalloc(&m.cb, cmax);
	m.x = dalloc_rand((size_t)m.N * 768);
	cudaMalloc(&m.xg, NK * 768 * 2);
	f_rk_fwd(&m); /* a real routing for the others */
	f_rk_aux(&m);
	f_rk_group(&m);
	struct {
		const char *name;
		fn_t f;
		double bytes;
	} ks[] = {
		{"router fwd", f_rk_fwd, NE * 2.0 + NE * 4.0 + NK * 8.0},
		{"route_group", f_rk_group, NK * 4.0 * 3},
		{"router_stats", f_rk_stats, NE * 4.0 + NK * 4.0},
		{"zloss (value)", f_rk_zloss, NE * 2.0},
		{"aux_dprobs", f_rk_aux, NE * 4.0},
		{"router bwd", f_rk_bwd, NE * 4.0 * 2 + NE * 2.0 + NK * 12.0},
		{"gather (D 768)", f_rk_gather, (double)m.N * 768 * 2 + NK * 768 * 2.0 + NK * 4.0},
	};
	printf("routing kernels, N %d rows, top-%d of %d experts (MOE_CUDA_ROUTE=legacy: old)\n", m.N, m.K, m.E);
	printf("%-16s %7s %8s %8s %8s %8s\n", "kernel", "MB", "copy ms", "old ms", "new ms", "old/new");
	float so = 0, sn = 0, sc = 0;
	size_t nsum = sizeof(ks) / sizeof(ks[0]) - 1; /* the sum: the routing kernels, not gather */
	for (size_t i = 0; i < sizeof(ks) / sizeof(ks[0]); i++) {
		moe_cuda_route_legacy(1);
		float to = time_it(ks[i].f, &m);
		moe_cuda_route_legacy(0);
		float tn = time_it(ks[i].f, &m);
		m.cbytes = (size_t)(ks[i].bytes / 2) & ~(size_t)255;
		if (m.cbytes > cmax)
			m.cbytes = cmax;
		float tcopy = time_it(f_rk_copy, &m);
		if (i < nsum)
			so += to, sn += tn, sc += tcopy;
		printf("%-16s %7.2f %8.4f %8.4f %8.4f %7.1fx\n", ks[i].name, ks[i].bytes / 1e6, tcopy, to, tn, to / tn);
	}
	printf("%-16s %7s %8.4f %8.4f %8.4f %7.1fx  (a layer; x18 a seed-base step)\n", "sum", "", sc, so, sn,
	       so / sn);
	cudaError_t e = cudaDeviceSynchronize();
	if (e != cudaSuccess) {
		fprintf(stderr, "bench_kernels: %s\n", cudaGetErrorString(e));
		return 1;
	}
	return 0;
}

struct att {
	void *q, *k, *v, *o, *dq, *dk, *dv, *dout;
	float *lse;
	void *delta;
	int B, T, H, Dh;
};

static void f_afwd(void *p)
{
	struct att *a = p;
	int ld = a->H * a->Dh;
	CK(moe_cuda_attention_fwd(a->o, a->lse, a->q, a->k, a->v, ld, ld, ld, ld, a->B, a->T, a->H, a->Dh, 0, &err));
}
static void f_abwd(void *p)
{
	struct att *a = p;
	int ld = a->H * a->Dh;
	CK(moe_cuda_attention_bwd(a->dq, a->dk, a->dv, a->delta, a->dout, a->q, a->k, a->v, a->o, a->lse, ld, ld, ld,
				  ld, a->B, a->T, a->H, a->Dh, 0, &err));
}

int main(int argc, char **argv)
{
	int B = 8, T = 2048, c, att_only = 0, tma_only = 0, H = 8, Dh = 96, memk = 0;
	double skew = 0;
	int route = 0;
	int width = 0, E = 64, exact = 0, only = -1;
	while ((c = getopt(argc, argv, "B:T:H:d:ats:mrW:E:xg:")) != -1) {
		if (c == 'B')
			B = atoi(optarg);
		else if (c == 'T')
			T = atoi(optarg);
		else if (c == 'H')
			H = atoi(optarg);
		else if (c == 'd')
			Dh = atoi(optarg);
		else if (c == 'a')
			att_only = 1;
		else if (c == 't')
			tma_only = 1;
		else if (c == 's')
			skew = atof(optarg);
		else if (c == 'm')
			memk = 1;
		else if (c == 'r')
			route = 1;
		else if (c == 'W')
			width = atoi(optarg);
		else if (c == 'E')
			E = atoi(optarg);
		else if (c == 'x')
			exact = 1;
		else if (c == 'g')
			only = atoi(optarg);
		else
			return 2;
	}
	if (E < 1 || E > 1024) {
		fprintf(stderr, "bench_kernels: -E %d: experts from 1 to 1024\n", E);
		return 2;
	}
	if (only < -1 || only > 1) {
		fprintf(stderr, "bench_kernels: -g %d: the expert GEMMs' shape 0 or 1\n", only);
		return 2;
	}
	if (memk) /* -m: the memory-bound kernels only */
		return memk_bench(B, T, width);
	if (route) /* -r: the routing kernels only */
		return route_bench(B, T);
	int N = B * T, K = 4, D = 768, I = 640;
	int rows = N * K;
	/* balanced-ish random routing: counts from a multinomial; with -s,
	 * expert e drawn with probability proportional to exp(skew z_e) */
	int32_t *cnt = calloc(E, 4), *off = malloc((E + 1) * 4);
	double *cum = malloc(E * sizeof(double)), tot = 0;
	uint64_t r = 12345;
	for (int e = 0; e < E; e++) {
		double u1, u2;
		r ^= r << 13, r ^= r >> 7, r ^= r << 17;
		u1 = ((r >> 11) + 0.5) / 9007199254740992.0;
		r ^= r << 13, r ^= r >> 7, r ^= r << 17;
		u2 = ((r >> 11) + 0.5) / 9007199254740992.0;
		tot += exp(skew * sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2));
		cum[e] = tot;
	}
	for (int i = 0; i < rows; i++) {
		if (exact) { /* -x: row i to expert i E / rows */
			cnt[(int)((int64_t)i * E / rows)]++;
			continue;
		}
		r ^= r << 13, r ^= r >> 7, r ^= r << 17;
		double u = (r >> 11) / 9007199254740992.0 * tot;
		int e = 0;
		while (e < E - 1 && cum[e] <= u)
			e++;
		cnt[e]++;
	}
	free(cum);
	int cmin = rows, cmax = 0;
	for (int e = 0; e < E; e++) {
		cmin = cnt[e] < cmin ? cnt[e] : cmin;
		cmax = cnt[e] > cmax ? cnt[e] : cmax;
	}
	if (exact)
		printf("routing: %d rows over %d experts, exactly balanced: rows per expert %d..%d\n", rows, E, cmin,
		       cmax);
	else
		printf("routing: %d rows over %d experts, skew %g: rows per expert %d..%d (mean %d)\n", rows, E, skew,
		       cmin, cmax, rows / E);
	off[0] = 0;
	for (int e = 0; e < E; e++)
		off[e + 1] = off[e] + cnt[e];
	struct gg g;
	g.rows = rows;
	g.E = E;
	g.blas = moe_cuda_blas_new(0, &err);
	if (!g.blas) {
		fprintf(stderr, "bench_kernels: %s\n", err.msg);
		return 1;
	}
	cudaMalloc((void **)&g.off, (E + 1) * 4);
	cudaMemcpy(g.off, off, (E + 1) * 4, cudaMemcpyHostToDevice);
	g.hoff = off;
	if (cublasCreate(&g.h) != CUBLAS_STATUS_SUCCESS || cudaMalloc((void **)&g.dptr, sizeof(void *) * 3 * E) != cudaSuccess) {
		fprintf(stderr, "bench_kernels: cuBLAS setup failed\n");
		return 1;
	}
	printf("%-34s %9s %9s\n", "kernel (seed-base shapes)", "ms", "TFLOP/s");
	int shapes[2][2] = {{D, 2 * I}, {I, D}};
	for (int s = 0; s < (att_only ? 0 : 2); s++) { /* -a: attention only */
		if (only >= 0 && s != only)
			continue;
		g.In = shapes[s][0];
		g.Out = shapes[s][1];
		g.x = dalloc_rand((size_t)rows * (g.In > g.Out ? g.In : g.Out));
		g.y = dalloc_rand((size_t)rows * (g.In > g.Out ? g.In : g.Out));
		g.w = dalloc_rand((size_t)E * g.In * g.Out);
		cudaMalloc(&g.dw, (size_t)E * g.In * g.Out * 4);
		cudaMemset(g.dw, 0, (size_t)E * g.In * g.Out * 4);
		double fl = 2.0 * rows * g.In * g.Out;
		char nm[64];
		float t;
		if (tma_only)
			goto tma;
		snprintf(nm, sizeof(nm), "grouped fwd   %4dx%4d", g.In, g.Out);
		t = time_it(f_fwd, &g);
		printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
		snprintf(nm, sizeof(nm), "grouped dgrad %4dx%4d", g.In, g.Out);
		t = time_it(f_dgrad, &g);
		printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
		snprintf(nm, sizeof(nm), "grouped wgrad %4dx%4d", g.In, g.Out);
		t = time_it(f_wgrad, &g);
		printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
		for (int cfg = 0; cfg <= 4; cfg++) {
			moe_cuda_grouped_wgmma_config(cfg);
			snprintf(nm, sizeof(nm), "wgmma fwd   %4dx%4d cfg %d", g.In, g.Out, cfg);
			t = time_it(f_wg_fwd, &g);
			printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
			snprintf(nm, sizeof(nm), "wgmma dgrad %4dx%4d cfg %d", g.In, g.Out, cfg);
			t = time_it(f_wg_dgrad, &g);
			printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
			snprintf(nm, sizeof(nm), "wgmma wgrad %4dx%4d cfg %d", g.In, g.Out, cfg);
			t = time_it(f_wg_wgrad, &g);
			printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
		}
		moe_cuda_grouped_wgmma_config(0);
		snprintf(nm, sizeof(nm), "wgmma wgrad store %4dx%4d", g.In, g.Out);
		t = time_it(f_wg_wgrad_st, &g);
		printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
	tma:
		/* cfg 0: the default, then 1 and 3 forced (grouped_tma.cu) */
		for (int cfg = 0; cfg <= 3 && moe_cuda_grouped_tma_supported(); cfg += cfg == 1 ? 2 : 1) {
			moe_cuda_grouped_tma_config(cfg, 0);
			snprintf(nm, sizeof(nm), "tma fwd     %4dx%4d cfg %d", g.In, g.Out, cfg);
			t = time_it(f_tma_fwd, &g);
			printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
			snprintf(nm, sizeof(nm), "tma dgrad   %4dx%4d cfg %d", g.In, g.Out, cfg);
			t = time_it(f_tma_dgrad, &g);
			printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
			snprintf(nm, sizeof(nm), "tma wgrad store %4dx%4d cfg %d", g.In, g.Out, cfg);
			t = time_it(f_tma_wgrad_st, &g);
			printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
			if (cfg == 0) {
				snprintf(nm, sizeof(nm), "tma wgrad +=    %4dx%4d cfg %d", g.In, g.Out, cfg);
				t = time_it(f_tma_wgrad, &g);
				printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
			}
		}
		for (int cfg = 0; cfg <= 3 && moe_cuda_grouped_tma_supported(); cfg += 3) {
			moe_cuda_grouped_tma_config(cfg, 0);
			tma_vs_wgmma(&g, cfg);
			printf("tma launches that fell back to wgmma: %d\n", moe_cuda_grouped_tma_config(0, 0));
		}
		moe_cuda_grouped_tma_config(0, 0);
		if (tma_only)
			goto dense;
		g.tb = 1;
		snprintf(nm, sizeof(nm), "cuBLAS grouped fwd   %4dx%4d", g.In, g.Out);
		t = time_it(f_cublas_grouped, &g);
		printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
		g.tb = 0;
		snprintf(nm, sizeof(nm), "cuBLAS grouped dgrad %4dx%4d", g.In, g.Out);
		t = time_it(f_cublas_grouped, &g);
		printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
	dense:
		snprintf(nm, sizeof(nm), "cuBLAS dense same FLOPs %4dx%4d", g.In, g.Out);
		t = time_it(f_dense, &g);
		printf("%-34s %9.3f %9.1f\n", nm, t, fl / t / 1e9);
		cudaFree(g.x);
		cudaFree(g.y);
		cudaFree(g.w);
		cudaFree(g.dw);
	}
	struct att a = {0};
	a.B = B;
	a.T = T;
	a.H = H;
	a.Dh = Dh;
	size_t n = (size_t)B * T * H * Dh;
	a.q = dalloc_rand(n);
	a.k = dalloc_rand(n);
	a.v = dalloc_rand(n);
	a.o = dalloc_rand(n);
	a.dout = dalloc_rand(n);
	a.dq = dalloc_rand(n);
	a.dk = dalloc_rand(n);
	a.dv = dalloc_rand(n);
	cudaMalloc((void **)&a.lse, (size_t)B * H * T * 4);
	double afl = 2.0 * 2.0 * B * H * (double)T * T / 2 * Dh; /* causal: half of QK^T and PV */
	/* every kernel variant (moe_cuda_attention_*_config), then the default */
	printf("attention B=%d T=%d H=%d Dh=%d (causal; bwd TFLOP/s counts 2.5x the fwd FLOPs)\n", B, T, H, Dh);
	const char *vn;
	for (int v = 1; (vn = moe_cuda_attention_fwd_config(v)) != NULL; v++) {
		char nm[64];
		snprintf(nm, sizeof(nm), "attention fwd %s", vn);
		float t = time_it(f_afwd, &a);
		printf("%-34s %9.3f %9.1f\n", nm, t, afl / t / 1e9);
	}
	/* the persistent forward, the one it repeats and fa3, interleaved
	 * twice (later rows of the table drift slower) */
	static const char *const again[] = {"fa3", "fa3k128", "fa3pk128"};
	for (int rep = 0; rep < 2; rep++)
		for (size_t i = 0; i < sizeof(again) / sizeof(again[0]); i++)
			for (int v = 1; (vn = moe_cuda_attention_fwd_config(v)) != NULL; v++) {
				if (strcmp(vn, again[i]) != 0)
					continue;
				char nm[64];
				snprintf(nm, sizeof(nm), "attention fwd %s (again)", vn);
				float t = time_it(f_afwd, &a);
				printf("%-34s %9.3f %9.1f\n", nm, t, afl / t / 1e9);
				break;
			}
	moe_cuda_attention_fwd_config(0);
	const char *dflt = moe_cuda_attention_fwd_name(Dh);
	char nm[64];
	snprintf(nm, sizeof(nm), "attention fwd %s (default)", dflt);
	float t = time_it(f_afwd, &a); /* also leaves a valid out and lse for bwd */
	printf("%-34s %9.3f %9.1f\n", nm, t, afl / t / 1e9);
	/* MOE_BENCH_ATT_SKIP: backward variants not to time (names between
	 * commas, e.g. one whose test hung) */
	const char *skip = getenv("MOE_BENCH_ATT_SKIP");
	for (int v = 1; (vn = moe_cuda_attention_bwd_config(v)) != NULL; v++) {
		char key[40];
		snprintf(key, sizeof(key), ",%s,", vn);
		if (skip) {
			char list[256];
			snprintf(list, sizeof(list), ",%s,", skip);
			if (strstr(list, key))
				continue;
		}
		snprintf(nm, sizeof(nm), "attention bwd %s", vn);
		cudaMalloc(&a.delta, moe_cuda_attention_bwd_scratch(B, T, H, Dh));
		t = time_it(f_abwd, &a);
		printf("%-34s %9.3f %9.1f\n", nm, t, 2.5 * afl / t / 1e9);
		cudaFree(a.delta);
	}
	moe_cuda_attention_bwd_config(0);
	dflt = moe_cuda_attention_bwd_name(Dh);
	snprintf(nm, sizeof(nm), "attention bwd %s (default)", dflt);
	cudaMalloc(&a.delta, moe_cuda_attention_bwd_scratch(B, T, H, Dh));
	t = time_it(f_abwd, &a);
	printf("%-34s %9.3f %9.1f\n", nm, t, 2.5 * afl / t / 1e9);
	cudaError_t e = cudaDeviceSynchronize();
	if (e != cudaSuccess) {
		fprintf(stderr, "bench_kernels: %s\n", cudaGetErrorString(e));
		return 1;
	}
	return 0;
}
