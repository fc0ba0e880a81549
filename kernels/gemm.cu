/* Dense GEMMs through cuBLAS: bf16 operands on tensor cores, fp32
 * accumulation, bf16 or fp32 output (fp32 with beta = 1 accumulates weight
 * gradients in fp32).  Row-major wrapper over column-major cuBLAS:
 * C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T. */
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"
#include "kernels.h"

/* A GEMM shape as cuBLASLt plans it: transposes, sizes, leading
 * dimensions, fp32 output, a residual C other than D (res), batch and
 * strides (0 unless batched), and whether beta is non-zero */
struct lt_key {
	int ta, tb, M, N, K, lda, ldb, ldc, c_f32, res, batch, beta_nz;
	long long sA, sB, sC;
};

/* A cuBLASLt plan of one GEMM shape: the operation, its layouts and the
 * algorithm chosen for it (see lt_tune) */
struct lt_plan {
	struct lt_key k;
	cublasLtMatmulDesc_t op;
	cublasLtMatrixLayout_t a, b, c;
	cublasLtMatmulAlgo_t algo;
	cublasLtMatmulHeuristicResult_t cand[8]; /* the heuristic's candidates, best first */
	int n_algos, n_same, chosen; /* candidates, those with the first's bits, the one kept */
	float ms_first, ms_best;     /* timed at the tuning (0: not timed) */
	long calls;
	bool tuned;
};
#define LT_PLANS 64

struct moe_cuda_blas {
	cublasHandle_t h;
	void *ws;
	size_t ws_size;
	cudaStream_t s;
	cublasLtHandle_t lt;
	struct lt_plan plans[LT_PLANS];
	int n_plans;
	int tune; /* MOE_CUDA_GEMM_TUNE: 1 (default) cuBLASLt with timed algorithms, 0 cublasGemmEx;
		   * 2 (tests) cuBLASLt's first candidate */
	int *cmp; /* device counter of differing words (tuning) */
	size_t tune_bytes; /* the most scratch a tuning held at once */
};

static void lt_plan_destroy(struct lt_plan *p)
{
	if (p->a)
		cublasLtMatrixLayoutDestroy(p->a);
	if (p->b)
		cublasLtMatrixLayoutDestroy(p->b);
	if (p->c)
		cublasLtMatrixLayoutDestroy(p->c);
	if (p->op)
		cublasLtMatmulDescDestroy(p->op);
}

extern "C" struct moe_cuda_blas *moe_cuda_blas_new(cudaStream_t s, struct moe_error *err)
{
	struct moe_cuda_blas *b = (struct moe_cuda_blas *)calloc(1, sizeof(*b));
	if (!b) {
		moe_error_set(err, MOE_ENOMEM, "cuBLAS handle: out of memory");
		return NULL;
	}
	/* MOE_CUDA_GEMM_WS: the workspace in MiB (default 64; 0: only
	 * algorithms without one), for measurements */
	long ws;
	if (!env_long("MOE_CUDA_GEMM_WS", 64, 0, 4096, &ws)) {
		moe_error_set(err, MOE_EINVAL, "MOE_CUDA_GEMM_WS='%s': expected MiB, 0..4096", getenv("MOE_CUDA_GEMM_WS"));
		free(b);
		return NULL;
	}
	b->ws_size = (size_t)ws << 20;
	b->s = s;
	b->tune = !env_is("MOE_CUDA_GEMM_TUNE", "0");
	if (CUBLAS_OK(cublasCreate(&b->h), err)) {
		free(b);
		return NULL;
	}
	if ((b->ws_size && CUDA_OK(cudaMalloc(&b->ws, b->ws_size), err)) || CUBLAS_OK(cublasSetStream(b->h, s), err) ||
	    CUBLAS_OK(cublasSetWorkspace(b->h, b->ws, b->ws_size), err) ||
	    CUBLAS_OK(cublasSetMathMode(b->h, CUBLAS_DEFAULT_MATH), err)) {
		moe_cuda_blas_free(b);
		return NULL;
	}
	return b;
}

extern "C" void moe_cuda_blas_free(struct moe_cuda_blas *b)
{
	if (!b)
		return;
	if (b->h)
		cublasDestroy(b->h);
	for (int i = 0; i < b->n_plans; i++)
		lt_plan_destroy(&b->plans[i]);
	if (b->lt)
		cublasLtDestroy(b->lt);
	cudaFree(b->ws);
	cudaFree(b->cmp);
	free(b);
}

/* The words (32-bit, then bytes) where x and y differ, added to *n. */
__global__ void cmp_kernel(const uint32_t *x, const uint32_t *y, size_t nw, const uint8_t *xb, const uint8_t *yb,
			   size_t nb, int *n)
{
	MOE_PDL_ENTRY();
	int d = 0;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nw; i += (size_t)gridDim.x * blockDim.x)
		d += x[i] != y[i];
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < nb; i += (size_t)gridDim.x * blockDim.x)
		d += xb[i] != yb[i];
	if (d)
		atomicAdd(n, d);
}

/* D = alpha op(A) op(B) + beta C through plan p with algorithm algo */
static cublasStatus_t lt_run(struct moe_cuda_blas *b, const struct lt_plan *p, const cublasLtMatmulAlgo_t *algo,
			     float alpha, const bf16_t *A, const bf16_t *B, float beta, const void *C, void *D)
{
	return cublasLtMatmul(b->lt, p->op, &alpha, B, p->a, A, p->b, &beta, C, p->c, D, p->c, algo, b->ws,
			      b->ws_size, b->s);
}

/* The median of 5 timed runs of algo (ms; -1 when a run fails) */
static float lt_time(struct moe_cuda_blas *b, const struct lt_plan *p, const cublasLtMatmulAlgo_t *algo, float alpha,
		     const bf16_t *A, const bf16_t *B, float beta, const void *C, void *D, cudaEvent_t e0,
		     cudaEvent_t e1)
{
	float t[5];
	for (int r = 0; r < 5; r++) {
		cudaEventRecord(e0, b->s);
		if (lt_run(b, p, algo, alpha, A, B, beta, C, D) != CUBLAS_STATUS_SUCCESS)
			return -1.f;
		cudaEventRecord(e1, b->s);
		if (cudaEventSynchronize(e1) != cudaSuccess)
			return -1.f;
		cudaEventElapsedTime(&t[r], e0, e1);
	}
	for (int x = 1; x < 5; x++)
		for (int y = x; y > 0 && t[y] < t[y - 1]; y--) {
			float z = t[y];
			t[y] = t[y - 1];
			t[y - 1] = z;
		}
	return t[2];
}

/* Choose among cuBLASLt's heuristic candidates by time, keeping only those
 * whose output has the same bits as the first candidate's on this call's
 * operands (so the choice, which timing noise can change from run to run,
 * never changes a result: steps stay bit-reproducible).  The candidates
 * write into scratch, or, when the call overwrites its whole output (beta 0,
 * C = D, no gaps between rows or batches), into that output, which the call
 * then writes.  On any failure (no memory for the scratch): the first
 * candidate. */
static void lt_tune(struct moe_cuda_blas *b, struct lt_plan *p, float alpha, const bf16_t *A, const bf16_t *B,
		    float beta, const void *C)
{
	const cublasLtMatmulHeuristicResult_t *res = p->cand;
	int found = p->n_algos;
	p->tuned = true;
	p->n_same = 1;
	if (found < 2)
		return;
	const struct lt_key *k = &p->k;
	size_t el = k->c_f32 ? 4 : 2;
	size_t ext = ((size_t)(k->batch - 1) * (size_t)k->sC + (size_t)k->ldc * (k->M - 1) + (size_t)k->N) * el;
	/* an output the call overwrites whole (beta 0, C = D, no gaps) takes
	 * the candidates' results itself: one scratch buffer, not two */
	bool gaps = k->ldc != k->N || (k->batch > 1 && k->sC != (long long)k->ldc * k->M);
	bool own = beta != 0.f || k->res || gaps;
	void *ref = NULL, *tst = own ? NULL : (void *)C;
	cudaEvent_t e0 = NULL, e1 = NULL;
	if (cudaStreamSynchronize(b->s) != cudaSuccess || (!b->cmp && cudaMalloc(&b->cmp, sizeof(int)) != cudaSuccess) ||
	    cudaMalloc(&ref, ext) != cudaSuccess || (own && cudaMalloc(&tst, ext) != cudaSuccess) ||
	    cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess)
		goto out;
	b->tune_bytes = ext * (own ? 2 : 1) > b->tune_bytes ? ext * (own ? 2 : 1) : b->tune_bytes;
	{
		const void *cin = beta != 0.f ? C : ref;
		cudaMemsetAsync(ref, 0xff, ext, b->s); /* as tst: the gaps between rows compare equal */
		if (lt_run(b, p, &res[0].algo, alpha, A, B, beta, cin, ref) != CUBLAS_STATUS_SUCCESS)
			goto out;
		float best = 0;
		for (int i = 0; i < found; i++) {
			cudaMemsetAsync(tst, 0xff, ext, b->s);
			if (lt_run(b, p, &res[i].algo, alpha, A, B, beta, beta != 0.f ? C : tst, tst) != CUBLAS_STATUS_SUCCESS)
				continue;
			int diff = 0;
			if (i > 0) {
				cudaMemsetAsync(b->cmp, 0, sizeof(int), b->s);
				moe_launch(cmp_kernel, 264, 256, 0, b->s, (const uint32_t *)ref, (const uint32_t *)tst,
					   ext / 4, (const uint8_t *)ref + ext / 4 * 4,
					   (const uint8_t *)tst + ext / 4 * 4, ext % 4, b->cmp);
				if (cudaMemcpyAsync(&diff, b->cmp, sizeof(int), cudaMemcpyDeviceToHost, b->s) != cudaSuccess ||
				    cudaStreamSynchronize(b->s) != cudaSuccess)
					goto out;
				if (diff)
					continue;
				p->n_same++;
			}
			float t = lt_time(b, p, &res[i].algo, alpha, A, B, beta, beta != 0.f ? C : tst, tst, e0, e1);
			if (t < 0)
				goto out;
			if (i == 0)
				p->ms_first = best = t;
			else if (t < best) {
				best = t;
				p->algo = res[i].algo;
				p->chosen = i;
			}
		}
		p->ms_best = best;
	}
out:
	cudaGetLastError(); /* a failed scratch allocation is not an error of the step */
	if (e0)
		cudaEventDestroy(e0);
	if (e1)
		cudaEventDestroy(e1);
	cudaFree(ref);
	if (own)
		cudaFree(tst);
}

/* A new plan for shape k: the operation, its layouts and the heuristic's
 * candidates (at most 8, within the workspace; split K only with fp32
 * partial sums, not in a bf16 output), the first one chosen.  false when
 * cuBLASLt has no algorithm for it (nothing left to destroy). */
static bool lt_plan_make(struct moe_cuda_blas *b, const struct lt_key *k, struct lt_plan *p)
{
	*p = {};
	p->k = *k;
	/* column-major C^T (N x M) = op(B)^T op(A)^T, as cublasGemmEx is called */
	cublasOperation_t opa = k->tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = k->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
	uint32_t fp32_red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
	int32_t bc = k->batch;
	int64_t sa = k->sB, sb = k->sA, sc = k->sC;
	cublasLtMatmulPreference_t pref = NULL;
	int found = 0;
	bool bad = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F) ||
		   cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa) ||
		   cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb) ||
		   cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, k->tb ? k->K : k->N, k->tb ? k->N : k->K, k->ldb) ||
		   cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, k->ta ? k->M : k->K, k->ta ? k->K : k->M, k->lda) ||
		   cublasLtMatrixLayoutCreate(&p->c, k->c_f32 ? CUDA_R_32F : CUDA_R_16BF, k->N, k->M, k->ldc);
	if (!bad && k->batch > 1)
		bad = cublasLtMatrixLayoutSetAttribute(p->a, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc) ||
		      cublasLtMatrixLayoutSetAttribute(p->b, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc) ||
		      cublasLtMatrixLayoutSetAttribute(p->c, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc) ||
		      cublasLtMatrixLayoutSetAttribute(p->a, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sa, sizeof sa) ||
		      cublasLtMatrixLayoutSetAttribute(p->b, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sb, sizeof sb) ||
		      cublasLtMatrixLayoutSetAttribute(p->c, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &sc, sizeof sc);
	if (!bad)
		bad = cublasLtMatmulPreferenceCreate(&pref) ||
		      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &b->ws_size,
							   sizeof b->ws_size) ||
		      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &fp32_red,
							   sizeof fp32_red) ||
		      cublasLtMatmulAlgoGetHeuristic(b->lt, p->op, p->a, p->b, p->c, p->c, pref, 8, p->cand, &found) ||
		      !found;
	if (pref)
		cublasLtMatmulPreferenceDestroy(pref);
	if (bad) {
		lt_plan_destroy(p);
		return false;
	}
	p->n_algos = found;
	p->n_same = 1;
	p->algo = p->cand[0].algo;
	return true;
}

/* The plan of a shape: made at its first call with the heuristic's first
 * candidate, tuned at its second (a shape seen once, as in evaluation's
 * last short batch, costs no tuning); when the table is full the plan
 * called least often makes room.  NULL with *rc = 0 when cuBLASLt has no
 * algorithm (the caller falls back on cuBLAS). */
static struct lt_plan *lt_plan_get(struct moe_cuda_blas *b, const struct lt_key *k, float alpha, const bf16_t *A,
				   const bf16_t *B, float beta, const void *C, int *rc, struct moe_error *err)
{
	*rc = 0;
	for (int i = 0; i < b->n_plans; i++) {
		struct lt_plan *p = &b->plans[i];
		if (!memcmp(&p->k, k, sizeof *k)) {
			if (++p->calls == 2 && b->tune == 1 && !p->tuned)
				lt_tune(b, p, alpha, A, B, beta, C);
			return p;
		}
	}
	if (!b->lt && (*rc = CUBLAS_OK(cublasLtCreate(&b->lt), err)) != 0)
		return NULL;
	struct lt_plan p;
	if (!lt_plan_make(b, k, &p))
		return NULL;
	p.calls = 1;
	if (b->n_plans < LT_PLANS) {
		b->plans[b->n_plans] = p;
		return &b->plans[b->n_plans++];
	}
	int v = 0;
	for (int i = 1; i < LT_PLANS; i++)
		if (b->plans[i].calls < b->plans[v].calls)
			v = i;
	lt_plan_destroy(&b->plans[v]);
	b->plans[v] = p;
	return &b->plans[v];
}

extern "C" int moe_cuda_gemm(struct moe_cuda_blas *b, int ta, int tb, int M, int N, int K, const bf16_t *A,
			     int lda, const bf16_t *B, int ldb, void *C, int ldc, int c_f32, float alpha,
			     float beta, struct moe_error *err)
{
	return moe_cuda_gemm_batched(b, ta, tb, M, N, K, A, lda, 0, B, ldb, 0, C, ldc, 0, c_f32, alpha, beta, 1, err);
}

extern "C" int moe_cuda_gemm_batched(struct moe_cuda_blas *b, int ta, int tb, int M, int N, int K,
				     const bf16_t *A, int lda, long long sA, const bf16_t *B, int ldb, long long sB,
				     void *C, int ldc, long long sC, int c_f32, float alpha, float beta, int batch,
				     struct moe_error *err)
{
	if (M <= 0 || N <= 0 || batch <= 0)
		return 0;
	if (K <= 0) {
		if (beta != 0.f)
			return 0;
		return moe_error_set(err, MOE_EINVAL, "gemm: K = 0 with beta = 0");
	}
	if (b->tune) {
		struct lt_key k = {ta, tb, M, N, K, lda, ldb, ldc, c_f32, 0, batch, beta != 0.f,
				   batch > 1 ? sA : 0, batch > 1 ? sB : 0, batch > 1 ? sC : 0};
		int rc;
		struct lt_plan *p = lt_plan_get(b, &k, alpha, A, B, beta, C, &rc, err);
		if (rc)
			return rc;
		if (p)
			return CUBLAS_OK(lt_run(b, p, &p->algo, alpha, A, B, beta, C, C), err);
	}
	if (batch == 1)
		return CUBLAS_OK(cublasGemmEx(b->h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N,
					      M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C,
					      c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F,
					      CUBLAS_GEMM_DEFAULT),
				 err);
	return CUBLAS_OK(cublasGemmStridedBatchedEx(b->h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
						    N, M, K, &alpha, B, CUDA_R_16BF, ldb, sB, A, CUDA_R_16BF, lda,
						    sA, &beta, C, c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, sC, batch,
						    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
			 err);
}

extern "C" int moe_cuda_gemm_res(struct moe_cuda_blas *b, int M, int N, int K, const bf16_t *A, int lda,
				 const bf16_t *B, int ldb, const bf16_t *R, bf16_t *D, int ldc,
				 struct moe_error *err)
{
	if (M <= 0 || N <= 0)
		return 0;
	if (K <= 0)
		return moe_error_set(err, MOE_EINVAL, "gemm_res: K = 0");
	struct lt_key k = {0, 1, M, N, K, lda, ldb, ldc, 0, 1, 1, 1, 0, 0, 0};
	int rc;
	struct lt_plan *p = lt_plan_get(b, &k, 1.f, A, B, 1.f, R, &rc, err);
	if (rc)
		return rc;
	if (!p)
		return moe_error_set(err, MOE_EUNSUPPORTED, "gemm_res: no cuBLASLt algorithm for %d x %d x %d", M, N, K);
	return CUBLAS_OK(lt_run(b, p, &p->algo, 1.f, A, B, 1.f, R, D), err);
}

extern "C" void moe_cuda_gemm_report(struct moe_cuda_blas *b, FILE *f)
{
	fprintf(f, "# cuBLASLt plans (MOE_CUDA_GEMM_TUNE=%d; tuning scratch at most %.1f MiB): M N K ta tb batch f32 "
		   "beta res: calls, candidates, with the first's bits, kept, first ms, kept ms\n",
		b->tune, b->tune_bytes / 1048576.0);
	for (int i = 0; i < b->n_plans; i++) {
		const struct lt_plan *p = &b->plans[i];
		const struct lt_key *k = &p->k;
		fprintf(f, "gemm %6d %6d %6d  %d %d %d %d %d %d: %ld  %d %d %d  %.4f %.4f\n", k->M, k->N, k->K, k->ta,
			k->tb, k->batch, k->c_f32, k->beta_nz, k->res, p->calls, p->n_algos, p->n_same, p->chosen,
			p->ms_first, p->ms_best);
	}
}

extern "C" int moe_cuda_gemm_survey(struct moe_cuda_blas *b, int ta, int tb, int M, int N, int K, const bf16_t *A,
				    int lda, const bf16_t *B, int ldb, void *C, int ldc, int c_f32, float beta,
				    float *ms_first, float *ms_best, int *n_algos, struct moe_error *err)
{
	struct lt_key k = {ta, tb, M, N, K, lda, ldb, ldc, c_f32, 0, 1, beta != 0.f, 0, 0, 0};
	struct lt_plan p;
	cudaEvent_t e0, e1;
	*ms_first = *ms_best = -1.f;
	*n_algos = 0;
	if (!b->lt && CUBLAS_OK(cublasLtCreate(&b->lt), err))
		return err ? err->code : MOE_EIO;
	if (!lt_plan_make(b, &k, &p))
		return moe_error_set(err, MOE_EUNSUPPORTED, "gemm: no cuBLASLt algorithm for %d x %d x %d", M, N, K);
	if (CUDA_OK(cudaEventCreate(&e0), err) || CUDA_OK(cudaEventCreate(&e1), err)) {
		lt_plan_destroy(&p);
		return err ? err->code : MOE_EIO;
	}
	*n_algos = p.n_algos;
	for (int i = 0; i < p.n_algos; i++) {
		lt_run(b, &p, &p.cand[i].algo, 1.f, A, B, beta, C, C); /* warm-up */
		float t = lt_time(b, &p, &p.cand[i].algo, 1.f, A, B, beta, C, C, e0, e1);
		if (i == 0)
			*ms_first = t;
		if (t >= 0 && (*ms_best < 0 || t < *ms_best))
			*ms_best = t;
	}
	cudaEventDestroy(e0);
	cudaEventDestroy(e1);
	lt_plan_destroy(&p);
	return 0;
}

extern "C" int moe_cuda_gemm_timed(struct moe_cuda_blas *b)
{
	int n = 0;
	for (int i = 0; i < b->n_plans; i++)
		n += b->plans[i].ms_first > 0;
	return n;
}

extern "C" void moe_cuda_gemm_set_tune(struct moe_cuda_blas *b, int mode) { b->tune = mode; }

extern "C" size_t moe_cuda_gemm_tune_bytes(struct moe_cuda_blas *b) { return b->tune_bytes; }

extern "C" cublasHandle_t moe_cuda_blas_handle(struct moe_cuda_blas *b) { return b->h; }
