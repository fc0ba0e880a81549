/* Dense GEMMs through cuBLAS: bf16 operands on tensor cores, fp32
 * accumulation, bf16 or fp32 output (fp32 with beta = 1 accumulates weight
 * gradients in fp32).  Row-major wrapper over column-major cuBLAS:
 * C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T. */
#include <cublasLt.h>
#include <stdlib.h>

#include "cuda_common.h"
#include "kernels.h"

/* A cuBLASLt plan of one residual GEMM shape (moe_cuda_gemm_res) */
struct lt_plan {
	int M, N, K, lda, ldb, ldc;
	cublasLtMatmulDesc_t op;
	cublasLtMatrixLayout_t a, b, c;
	cublasLtMatmulAlgo_t algo;
};
#define LT_PLANS 16

struct moe_cuda_blas {
	cublasHandle_t h;
	void *ws;
	size_t ws_size;
	cudaStream_t s;
	cublasLtHandle_t lt;
	struct lt_plan plans[LT_PLANS];
	int n_plans;
};

extern "C" struct moe_cuda_blas *moe_cuda_blas_new(cudaStream_t s, struct moe_error *err)
{
	struct moe_cuda_blas *b = (struct moe_cuda_blas *)calloc(1, sizeof(*b));
	if (!b) {
		moe_error_set(err, MOE_ENOMEM, "cuBLAS handle: out of memory");
		return NULL;
	}
	b->ws_size = 64u << 20;
	b->s = s;
	if (CUBLAS_OK(cublasCreate(&b->h), err)) {
		free(b);
		return NULL;
	}
	if (CUDA_OK(cudaMalloc(&b->ws, b->ws_size), err) || CUBLAS_OK(cublasSetStream(b->h, s), err) ||
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
	for (int i = 0; i < b->n_plans; i++) {
		struct lt_plan *p = &b->plans[i];
		cublasLtMatrixLayoutDestroy(p->a);
		cublasLtMatrixLayoutDestroy(p->b);
		cublasLtMatrixLayoutDestroy(p->c);
		cublasLtMatmulDescDestroy(p->op);
	}
	if (b->lt)
		cublasLtDestroy(b->lt);
	cudaFree(b->ws);
	free(b);
}

extern "C" int moe_cuda_gemm(struct moe_cuda_blas *b, int ta, int tb, int M, int N, int K, const bf16_t *A,
			     int lda, const bf16_t *B, int ldb, void *C, int ldc, int c_f32, float alpha,
			     float beta, struct moe_error *err)
{
	if (M <= 0 || N <= 0)
		return 0;
	if (K <= 0) {
		if (beta != 0.f)
			return 0;
		return moe_error_set(err, MOE_EINVAL, "gemm: K = 0 with beta = 0");
	}
	return CUBLAS_OK(cublasGemmEx(b->h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N,
				      M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C,
				      c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, CUBLAS_COMPUTE_32F,
				      CUBLAS_GEMM_DEFAULT),
			 err);
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
	return CUBLAS_OK(cublasGemmStridedBatchedEx(b->h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
						    N, M, K, &alpha, B, CUDA_R_16BF, ldb, sB, A, CUDA_R_16BF, lda,
						    sA, &beta, C, c_f32 ? CUDA_R_32F : CUDA_R_16BF, ldc, sC, batch,
						    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
			 err);
}

/* The plan of a residual GEMM shape: the operation (transposes as
 * moe_cuda_gemm's row-major mapping with tb: C^T = B A^T in column-major
 * terms), the three layouts, and cuBLASLt's first heuristic choice for
 * them within the workspace; made once per shape. */
static int lt_plan_get(struct moe_cuda_blas *b, int M, int N, int K, int lda, int ldb, int ldc,
		       struct lt_plan **out, struct moe_error *err)
{
	for (int i = 0; i < b->n_plans; i++) {
		struct lt_plan *p = &b->plans[i];
		if (p->M == M && p->N == N && p->K == K && p->lda == lda && p->ldb == ldb && p->ldc == ldc) {
			*out = p;
			return 0;
		}
	}
	if (b->n_plans == LT_PLANS)
		return moe_error_set(err, MOE_EUNSUPPORTED, "gemm_res: more than %d shapes", LT_PLANS);
	if (!b->lt && CUBLAS_OK(cublasLtCreate(&b->lt), err))
		return MOE_EIO;
	struct lt_plan p = {};
	p.M = M, p.N = N, p.K = K, p.lda = lda, p.ldb = ldb, p.ldc = ldc;
	cublasOperation_t ta = CUBLAS_OP_T, tn = CUBLAS_OP_N;
	/* split-K only with fp32 partial sums (not in the bf16 output) */
	uint32_t fp32_red = CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
	cublasLtMatmulPreference_t pref = NULL;
	cublasLtMatmulHeuristicResult_t res = {};
	int found = 0;
	if (CUBLAS_OK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), err) ||
	    CUBLAS_OK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), err) ||
	    CUBLAS_OK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tn, sizeof tn), err) ||
	    CUBLAS_OK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_16BF, K, N, ldb), err) ||
	    CUBLAS_OK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_16BF, K, M, lda), err) ||
	    CUBLAS_OK(cublasLtMatrixLayoutCreate(&p.c, CUDA_R_16BF, N, M, ldc), err) ||
	    CUBLAS_OK(cublasLtMatmulPreferenceCreate(&pref), err) ||
	    CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
							   &b->ws_size, sizeof b->ws_size), err) ||
	    CUBLAS_OK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &fp32_red,
							   sizeof fp32_red), err) ||
	    CUBLAS_OK(cublasLtMatmulAlgoGetHeuristic(b->lt, p.op, p.a, p.b, p.c, p.c, pref, 1, &res, &found),
		      err) ||
	    (!found && moe_error_set(err, MOE_EUNSUPPORTED, "gemm_res: no cuBLASLt algorithm for %d x %d x %d",
				     M, N, K))) {
		if (pref)
			cublasLtMatmulPreferenceDestroy(pref);
		cublasLtMatrixLayoutDestroy(p.a);
		cublasLtMatrixLayoutDestroy(p.b);
		cublasLtMatrixLayoutDestroy(p.c);
		if (p.op)
			cublasLtMatmulDescDestroy(p.op);
		return err && err->code ? err->code : MOE_EIO;
	}
	cublasLtMatmulPreferenceDestroy(pref);
	p.algo = res.algo;
	b->plans[b->n_plans] = p;
	*out = &b->plans[b->n_plans++];
	return 0;
}

extern "C" int moe_cuda_gemm_res(struct moe_cuda_blas *b, int M, int N, int K, const bf16_t *A, int lda,
				 const bf16_t *B, int ldb, const bf16_t *R, bf16_t *D, int ldc,
				 struct moe_error *err)
{
	if (M <= 0 || N <= 0)
		return 0;
	if (K <= 0)
		return moe_error_set(err, MOE_EINVAL, "gemm_res: K = 0");
	struct lt_plan *p;
	int rc = lt_plan_get(b, M, N, K, lda, ldb, ldc, &p, err);
	if (rc)
		return rc;
	float one = 1.f;
	return CUBLAS_OK(cublasLtMatmul(b->lt, p->op, &one, B, p->a, A, p->b, &one, R, p->c, D, p->c, &p->algo,
					b->ws, b->ws_size, b->s),
			 err);
}

extern "C" cublasHandle_t moe_cuda_blas_handle(struct moe_cuda_blas *b) { return b->h; }
