/* Dropless grouping of (token, slot) pairs by expert, all on the device:
 * per-expert counts, offsets (exclusive prefix sum), a stable permutation
 * (perm[j] = flat slot n*K+k, increasing within each expert), its inverse,
 * Three launches, no host synchronisation. */
#include "cuda_common.h"
#include "kernels.h"

#define CHUNK 256

__global__ void group_count_kernel(int32_t *blk_counts, const int32_t *idx, int S, int E)
{
	extern __shared__ int32_t h[];
	for (int e = threadIdx.x; e < E; e += blockDim.x)
		h[e] = 0;
	__syncthreads();
	int slot = blockIdx.x * CHUNK + threadIdx.x;
	if (slot < S)
		atomicAdd(h + idx[slot], 1);
	__syncthreads();
	for (int e = threadIdx.x; e < E; e += blockDim.x)
		blk_counts[(size_t)blockIdx.x * E + e] = h[e];
}

/* One block; thread e owns expert e (E <= 1024). */
__global__ void group_scan_kernel(int32_t *blk_counts, int32_t *counts, int32_t *offsets, int nchunks,
				  int E)
{
	__shared__ int32_t sc[1024];
	int e = threadIdx.x;
	int run = 0;
	if (e < E)
		for (int c = 0; c < nchunks; c++) {
			int v = blk_counts[(size_t)c * E + e];
			blk_counts[(size_t)c * E + e] = run;
			run += v;
		}
	sc[e] = e < E ? run : 0;
	__syncthreads();
	if (e == 0) {
		int a = 0;
		for (int i = 0; i < E; i++) {
			int ca = sc[i];
			sc[i] = a;
			a += ca;
		}
		offsets[E] = a;
	}
	__syncthreads();
	if (e < E) {
		counts[e] = run;
		offsets[e] = sc[e];
		for (int c = 0; c < nchunks; c++)
			blk_counts[(size_t)c * E + e] += sc[e];
	}
}

__global__ void group_scatter_kernel(int32_t *perm, int32_t *inv, const int32_t *blk_base,
				     const int32_t *idx, int S, int E)
{
	extern __shared__ int32_t wc[]; /* (CHUNK/32, E) */
	int lane = threadIdx.x % 32, w = threadIdx.x / 32;
	for (int i = threadIdx.x; i < (CHUNK / 32) * E; i += blockDim.x)
		wc[i] = 0;
	__syncthreads();
	int slot = blockIdx.x * CHUNK + threadIdx.x;
	int e = slot < S ? idx[slot] : -1;
	unsigned peers = __match_any_sync(0xffffffffu, e);
	int rank = __popc(peers & ((1u << lane) - 1));
	if (e >= 0 && rank == 0)
		wc[w * E + e] = __popc(peers);
	__syncthreads();
	if (e < 0)
		return;
	int base = blk_base[(size_t)blockIdx.x * E + e];
	for (int k = 0; k < w; k++)
		base += wc[k * E + e];
	int pos = base + rank;
	perm[pos] = slot;
	inv[slot] = pos;
}

extern "C" size_t moe_cuda_route_group_scratch(int N, int K, int E)
{
	return (size_t)moe_cdiv((size_t)N * K, CHUNK) * E * sizeof(int32_t);
}

__global__ void inverse_kernel(int32_t *inv, const int32_t *perm, int NK)
{
	int j = blockIdx.x * blockDim.x + threadIdx.x;
	if (j < NK)
		inv[perm[j]] = j;
}

extern "C" int moe_cuda_route_inverse(int32_t *inv, const int32_t *perm, int NK, cudaStream_t s,
				      struct moe_error *err)
{
	if (NK <= 0)
		return 0;
	inverse_kernel<<<moe_cdiv(NK, 256), 256, 0, s>>>(inv, perm, NK);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_route_group(int32_t *counts, int32_t *offsets, int32_t *perm, int32_t *inv,
				    void *scratch_v, const int32_t *topk_idx, int N, int K, int E,
				    cudaStream_t s, struct moe_error *err)
{
	int32_t *scratch = (int32_t *)scratch_v;
	if (E > 1024)
		return moe_error_set(err, MOE_EUNSUPPORTED, "route_group: %d experts (max 1024)", E);
	int S = N * K;
	unsigned nch = moe_cdiv((size_t)S, CHUNK);
	int rc;
	if (S > 0) {
		group_count_kernel<<<nch, CHUNK, E * sizeof(int32_t), s>>>(scratch, topk_idx, S, E);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
	}
	group_scan_kernel<<<1, 1024, 0, s>>>(scratch, counts, offsets, (int)nch, E);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	if (S > 0) {
		group_scatter_kernel<<<nch, CHUNK, (CHUNK / 32) * E * sizeof(int32_t), s>>>(
			perm, inv, scratch, topk_idx, S, E);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
	}
	return 0;
}
