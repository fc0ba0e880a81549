/* Token embedding: forward row gather (bf16), backward scatter-add into the
 * fp32 gradient (atomics: rows of repeated tokens meet). */
#include "cuda_common.h"
#include "kernels.h"

__global__ void embedding_fwd_kernel(bf16 *out, const int32_t *ids, const bf16 *wte, int N, int D)
{
	int n = blockIdx.x;
	const bf16 *src = wte + (size_t)ids[n] * D;
	bf16 *dst = out + (size_t)n * D;
	if (D % 8 == 0) {
		for (int i = threadIdx.x * 8; i < D; i += blockDim.x * 8)
			*(uint4 *)(dst + i) = *(const uint4 *)(src + i);
	} else {
		for (int i = threadIdx.x; i < D; i += blockDim.x)
			dst[i] = src[i];
	}
}

__global__ void embedding_bwd_kernel(float *dwte, const bf16 *dout, const int32_t *ids, int N, int D,
				     int pad_id)
{
	int n = blockIdx.x;
	int id = ids[n];
	if (id == pad_id)
		return;
	const bf16 *src = dout + (size_t)n * D;
	float *dst = dwte + (size_t)id * D;
	for (int i = threadIdx.x; i < D; i += blockDim.x)
		atomicAdd(dst + i, bf2f(src[i]));
}

extern "C" int moe_cuda_embedding_fwd(bf16_t *out, const int32_t *ids, const bf16_t *wte, int N, int D,
				      cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	embedding_fwd_kernel<<<N, 128, 0, s>>>((bf16 *)out, ids, (const bf16 *)wte, N, D);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_embedding_bwd(float *dwte, const bf16_t *dout, const int32_t *ids, int N, int D,
				      int pad_id, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	embedding_bwd_kernel<<<N, 256, 0, s>>>(dwte, (const bf16 *)dout, ids, N, D, pad_id);
	return CUDA_LAUNCHED(err);
}
