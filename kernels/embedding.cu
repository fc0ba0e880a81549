/* Token embedding: forward row gather (bf16), backward scatter-add into the
 * fp32 gradient (atomics: rows of repeated tokens meet), or, bit-reproducible,
 * through a stable sort of the tokens by id. */
#include <string.h>

#include <cub/device/device_radix_sort.cuh>

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

/* The deterministic backward: keys (ids) and values (positions) sorted by
 * a stable radix sort, so each id's positions come in increasing order. */
__global__ void iota_kernel(int32_t *v, int N)
{
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i < N)
		v[i] = i;
}

/* bf16 bits to fp32 (exact), on either side */
static __host__ __device__ inline float emb_bf2f(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

#define EMB_CC 8 /* columns a lane sums at once: 32 EMB_CC a pass over the run */

/* One lane's share of one id's run (sorted slots [i, end), rows pos[j] of
 * dout): columns lane + 32 u of each pass of 32 EMB_CC, every column summed
 * over the run's rows in slot (token) order in fp32, then added to dst.
 * The lane keeps EMB_CC loads of a row in flight; each column's order of
 * additions is that of moe_embedding_bwd. */
static __host__ __device__ inline void emb_run_lane(float *dst, const uint16_t *dout, const int32_t *pos, int i,
						    int end, int D, int lane)
{
	for (int c0 = 0; c0 < D; c0 += 32 * EMB_CC) {
		float a[EMB_CC];
#pragma unroll
		for (int u = 0; u < EMB_CC; u++)
			a[u] = 0.f;
		for (int j = i; j < end; j++) {
			const uint16_t *row = dout + (size_t)pos[j] * D;
#pragma unroll
			for (int u = 0; u < EMB_CC; u++) {
				int c = c0 + 32 * u + lane;
				if (c < D)
					a[u] += emb_bf2f(row[c]);
			}
		}
#pragma unroll
		for (int u = 0; u < EMB_CC; u++) {
			int c = c0 + 32 * u + lane;
			if (c < D)
				dst[c] += a[u];
		}
	}
}

/* the end of the run that starts at sorted slot i, or -1 when i does not
 * start one (or is the pad id's) */
static __host__ __device__ inline int emb_run_end(const int32_t *key, int i, int N, int pad_id)
{
	int id = key[i];
	if (id == pad_id || (i > 0 && key[i - 1] == id))
		return -1;
	int end = i + 1;
	while (end < N && key[end] == id)
		end++;
	return end;
}

/* One warp per sorted slot that starts an id's run: that id's rows added
 * by that warp alone (no atomics). */
__global__ void embedding_bwd_runs_kernel(float *dwte, const uint16_t *dout, const int32_t *key, const int32_t *pos,
					  int N, int D, int pad_id)
{
	int i = (int)(((size_t)blockIdx.x * blockDim.x + threadIdx.x) / 32), lane = threadIdx.x % 32;
	if (i >= N)
		return;
	int end = emb_run_end(key, i, N, pad_id);
	if (end > 0)
		emb_run_lane(dwte + (size_t)key[i] * D, dout, pos, i, end, D, lane);
}

/* The same runs on the host, every warp and lane in turn (tests). */
extern "C" void moe_cuda_embedding_bwd_runs_host(float *dwte, const bf16_t *dout, const int32_t *key,
						 const int32_t *pos, int N, int D, int pad_id)
{
	for (int i = 0; i < N; i++) {
		int end = emb_run_end(key, i, N, pad_id);
		for (int lane = 0; end > 0 && lane < 32; lane++)
			emb_run_lane(dwte + (size_t)key[i] * D, dout, pos, i, end, D, lane);
	}
}

static size_t emb_sort_bytes(int N)
{
	size_t b = 0;
	cub::DeviceRadixSort::SortPairs((void *)NULL, b, (const int32_t *)NULL, (int32_t *)NULL,
					(const int32_t *)NULL, (int32_t *)NULL, N, 0, 24);
	return b;
}

extern "C" size_t moe_cuda_embedding_bwd_det_scratch(int N)
{
	size_t n = N > 0 ? (size_t)N : 1;
	return 3 * n * sizeof(int32_t) + 256 + emb_sort_bytes((int)n);
}

extern "C" int moe_cuda_embedding_bwd_det(float *dwte, const bf16_t *dout, const int32_t *ids, int N, int D,
					  int pad_id, void *scratch, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	int32_t *iota = (int32_t *)scratch, *key = iota + N, *pos = key + N;
	void *tmp = (void *)(((uintptr_t)(pos + N) + 255) & ~(uintptr_t)255);
	size_t tb = emb_sort_bytes(N);
	iota_kernel<<<moe_cdiv(N, 256), 256, 0, s>>>(iota, N);
	int rc;
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	if ((rc = CUDA_OK(cub::DeviceRadixSort::SortPairs(tmp, tb, ids, key, iota, pos, N, 0, 24, s), err)) != 0)
		return rc;
	embedding_bwd_runs_kernel<<<moe_cdiv((size_t)N * 32, 256), 256, 0, s>>>(dwte, dout, key, pos, N, D, pad_id);
	return CUDA_LAUNCHED(err);
}
