/* Token embedding: forward row gather (bf16), backward scatter-add into the
 * fp32 gradient (atomics: rows of repeated tokens meet), or, bit-reproducible,
 * through a stable sort of the tokens by id and fixed chunks of the sorted
 * rows. */
#include <string.h>

#include <cub/device/device_radix_sort.cuh>

#include "cuda_common.h"
#include "kernels.h"

__global__ void embedding_fwd_kernel(bf16 *out, const int32_t *ids, const bf16 *wte, int N, int D)
{
	MOE_PDL_ENTRY();
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
	MOE_PDL_ENTRY();
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
	moe_launch(embedding_fwd_kernel, N, 128, 0, s, (bf16 *)out, ids, (const bf16 *)wte, N, D);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_embedding_bwd(float *dwte, const bf16_t *dout, const int32_t *ids, int N, int D,
				      int pad_id, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	moe_launch(embedding_bwd_kernel, N, 256, 0, s, dwte, (const bf16 *)dout, ids, N, D, pad_id);
	return CUDA_LAUNCHED(err);
}

/* The deterministic backward: keys (ids) and values (positions) sorted by
 * a stable radix sort, so each id's positions come in increasing order. */
__global__ void iota_kernel(int32_t *v, int N)
{
	MOE_PDL_ENTRY();
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

/* The sorted slots are cut into chunks of EMB_CHUNK; a chunk's rows are
 * added in slot (token) order, one fp32 sum a column for each piece of a
 * run of one id inside the chunk.  A run wholly inside one chunk goes
 * straight to its gradient row (no other chunk touches that id); a run that
 * crosses a chunk boundary leaves its pieces in two slots a chunk (head: the
 * run came from the chunk before; tail: it goes on into the next), and the
 * chunk where it starts adds them in chunk order.  The chunking is fixed,
 * so the order of every addition is too: bit-reproducible, and a frequent
 * token (text: one id can be several percent of a batch) costs a chunk's
 * worth of serial work, not its whole run. */
#define EMB_CHUNK 32
#define EMB_COLS 4   /* columns a thread carries: c0 + u stride, u < EMB_COLS */
#define EMB_THREADS 256

static __host__ __device__ inline bool emb_continues(const int32_t *key, int a, int b, int N)
{
	/* slots a and b (b = a + 1) hold the same id */
	return a >= 0 && b < N && key[a] == key[b];
}

/* Phase 1 for chunk ch, columns c0 + u stride. */
static __host__ __device__ inline void emb_chunk_cols(float *dwte, float *piece, const uint16_t *dout,
						      const int32_t *key, const int32_t *pos, int N, int D,
						      int pad_id, int ch, int c0, int stride)
{
	int s0 = ch * EMB_CHUNK, s1 = s0 + EMB_CHUNK < N ? s0 + EMB_CHUNK : N, rs = s0;
	float a[EMB_COLS];
	for (int u = 0; u < EMB_COLS; u++)
		a[u] = 0.f;
	for (int j = s0; j < s1; j++) {
		const uint16_t *row = dout + (size_t)pos[j] * D;
#pragma unroll
		for (int u = 0; u < EMB_COLS; u++) {
			int c = c0 + u * stride;
			if (c < D)
				a[u] += emb_bf2f(row[c]);
		}
		if (j + 1 < s1 && key[j + 1] == key[j])
			continue;
		int id = key[j];
		if (id != pad_id) {
			bool head = rs == s0 && emb_continues(key, s0 - 1, s0, N);
			bool tail = j + 1 == s1 && emb_continues(key, j, j + 1, N);
			float *dst = head   ? piece + (size_t)ch * 2 * D
				     : tail ? piece + ((size_t)ch * 2 + 1) * D
					    : dwte + (size_t)id * D;
#pragma unroll
			for (int u = 0; u < EMB_COLS; u++) {
				int c = c0 + u * stride;
				if (c < D) {
					if (head || tail)
						dst[c] = a[u];
					else
						dst[c] += a[u];
				}
			}
		}
#pragma unroll
		for (int u = 0; u < EMB_COLS; u++)
			a[u] = 0.f;
		rs = j + 1;
	}
}

/* Phase 2 for chunk ch: when a run starts in ch and crosses its end, its
 * pieces (ch's tail, then the heads of the chunks after) summed in chunk
 * order and added to the id's row. */
static __host__ __device__ inline void emb_join_cols(float *dwte, const float *piece, const int32_t *key, int N,
						     int D, int pad_id, int ch, int c0, int stride)
{
	int s0 = ch * EMB_CHUNK, s1 = s0 + EMB_CHUNK;
	if (s1 >= N || key[s1] != key[s1 - 1] || key[s1] == pad_id)
		return; /* no run crosses the end of ch */
	int id = key[s1];
	if (key[s0] == id && emb_continues(key, s0 - 1, s0, N))
		return; /* that run started before ch: its own chunk joins it */
	float a[EMB_COLS];
#pragma unroll
	for (int u = 0; u < EMB_COLS; u++) {
		int c = c0 + u * stride;
		a[u] = c < D ? piece[((size_t)ch * 2 + 1) * D + c] : 0.f;
	}
	for (int k = ch + 1;; k++) {
#pragma unroll
		for (int u = 0; u < EMB_COLS; u++) {
			int c = c0 + u * stride;
			if (c < D)
				a[u] += piece[(size_t)k * 2 * D + c];
		}
		int e = (k + 1) * EMB_CHUNK;
		if (e >= N || key[e] != id)
			break;
	}
#pragma unroll
	for (int u = 0; u < EMB_COLS; u++) {
		int c = c0 + u * stride;
		if (c < D)
			dwte[(size_t)id * D + c] += a[u];
	}
}

__global__ void embedding_bwd_chunks_kernel(float *dwte, float *piece, const uint16_t *dout, const int32_t *key,
					    const int32_t *pos, int N, int D, int pad_id)
{
	MOE_PDL_ENTRY();
	for (int c0 = threadIdx.x; c0 < D; c0 += EMB_THREADS * EMB_COLS)
		emb_chunk_cols(dwte, piece, dout, key, pos, N, D, pad_id, blockIdx.x, c0, EMB_THREADS);
}

__global__ void embedding_bwd_join_kernel(float *dwte, const float *piece, const int32_t *key, int N, int D,
					  int pad_id)
{
	MOE_PDL_ENTRY();
	for (int c0 = threadIdx.x; c0 < D; c0 += EMB_THREADS * EMB_COLS)
		emb_join_cols(dwte, piece, key, N, D, pad_id, blockIdx.x, c0, EMB_THREADS);
}

/* Both phases on the host, as the kernels' threads run them (tests). */
extern "C" void moe_cuda_embedding_bwd_chunks_host(float *dwte, const bf16_t *dout, const int32_t *key,
						   const int32_t *pos, int N, int D, int pad_id)
{
	int nch = (N + EMB_CHUNK - 1) / EMB_CHUNK;
	float *piece = (float *)malloc((size_t)nch * 2 * D * sizeof(float) + 1);
	for (int ch = 0; ch < nch; ch++)
		for (int t = 0; t < EMB_THREADS; t++)
			for (int c0 = t; c0 < D; c0 += EMB_THREADS * EMB_COLS)
				emb_chunk_cols(dwte, piece, dout, key, pos, N, D, pad_id, ch, c0, EMB_THREADS);
	for (int ch = 0; ch < nch; ch++)
		for (int t = 0; t < EMB_THREADS; t++)
			for (int c0 = t; c0 < D; c0 += EMB_THREADS * EMB_COLS)
				emb_join_cols(dwte, piece, key, N, D, pad_id, ch, c0, EMB_THREADS);
	free(piece);
}

static size_t emb_sort_bytes(int N)
{
	size_t b = 0;
	cub::DeviceRadixSort::SortPairs((void *)NULL, b, (const int32_t *)NULL, (int32_t *)NULL,
					(const int32_t *)NULL, (int32_t *)NULL, N, 0, 24);
	return b;
}

extern "C" size_t moe_cuda_embedding_bwd_det_scratch(int N, int D)
{
	size_t n = N > 0 ? (size_t)N : 1, nch = (n + EMB_CHUNK - 1) / EMB_CHUNK;
	return 3 * n * sizeof(int32_t) + 256 + emb_sort_bytes((int)n) + 256 +
	       nch * 2 * (size_t)(D > 0 ? D : 1) * sizeof(float);
}

extern "C" int moe_cuda_embedding_bwd_det(float *dwte, const bf16_t *dout, const int32_t *ids, int N, int D,
					  int pad_id, void *scratch, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	int32_t *iota = (int32_t *)scratch, *key = iota + N, *pos = key + N;
	void *tmp = (void *)(((uintptr_t)(pos + N) + 255) & ~(uintptr_t)255);
	size_t tb = emb_sort_bytes(N);
	float *piece = (float *)(((uintptr_t)tmp + tb + 255) & ~(uintptr_t)255);
	int nch = moe_cdiv(N, EMB_CHUNK);
	moe_launch(iota_kernel, moe_cdiv(N, 256), 256, 0, s, iota, N);
	int rc;
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	if ((rc = CUDA_OK(cub::DeviceRadixSort::SortPairs(tmp, tb, ids, key, iota, pos, N, 0, 24, s), err)) != 0)
		return rc;
	moe_launch(embedding_bwd_chunks_kernel, nch, EMB_THREADS, 0, s, dwte, piece, (const uint16_t *)dout, key, pos,
		   N, D, pad_id);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	moe_launch(embedding_bwd_join_kernel, nch, EMB_THREADS, 0, s, dwte, piece, key, N, D, pad_id);
	return CUDA_LAUNCHED(err);
}
