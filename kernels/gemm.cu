/* Dense GEMMs through cuBLAS: bf16 operands on tensor cores, fp32
 * accumulation, bf16 or fp32 output (fp32 with beta = 1 accumulates weight
 * gradients in fp32).  Row-major wrapper over column-major cuBLAS:
 * C = op(A) op(B) is computed as C^T = op(B)^T op(A)^T. */
#include <stdlib.h>

#include "cuda_common.h"
#include "kernels.h"

struct moe_cuda_blas {
	cublasHandle_t h;
	void *ws;
	size_t ws_size;
};

extern "C" struct moe_cuda_blas *moe_cuda_blas_new(cudaStream_t s, struct moe_error *err)
{
	struct moe_cuda_blas *b = (struct moe_cuda_blas *)calloc(1, sizeof(*b));
	if (!b) {
		moe_error_set(err, MOE_ENOMEM, "cuBLAS handle: out of memory");
		return NULL;
	}
	b->ws_size = 64u << 20;
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

extern "C" cublasHandle_t moe_cuda_blas_handle(struct moe_cuda_blas *b) { return b->h; }
