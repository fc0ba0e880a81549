/* Dropless grouping of (token, slot) pairs by expert, all on the device:
 * per-expert counts, offsets (exclusive prefix sum), a stable permutation
 * (perm[j] = flat slot n*K+k, increasing within each expert), its inverse.
 * Two launches, no host synchronisation: per-chunk histograms (at most
 * RG_MAXB chunks of whole 256-slot tiles), then each chunk's block adds up
 * the histograms of the chunks before it and of all chunks itself (a few KB
 * from L2, no single-block scan), scans the experts' totals, and places its
 * slots tile by tile in slot order.  moe_cuda_route_legacy(1): the previous
 * three launches (a 256-slot chunk each, a one-block serial scan). */
#include "cuda_common.h"
#include "kernels.h"

#define CHUNK 256
#define RG_T 256
#define RG_MAXB 128

extern int moe_route_legacy_on; /* router.cu: moe_cuda_route_legacy() */

/* chunks of tpc tiles of RG_T slots: nch <= RG_MAXB (1 when S == 0) */
static void rg_split(int S, int *chunk, int *nch)
{
	int tiles = S > 0 ? (int)moe_cdiv((size_t)S, RG_T) : 1;
	int tpc = (int)moe_cdiv((size_t)tiles, RG_MAXB);
	*chunk = tpc * RG_T;
	*nch = (int)moe_cdiv((size_t)tiles, tpc);
}

__global__ void __launch_bounds__(RG_T) rg_hist_kernel(int32_t *blk, const int32_t *idx, int S, int E, int chunk)
{
	MOE_PDL_ENTRY();
	extern __shared__ int32_t h[];
	for (int e = threadIdx.x; e < E; e += RG_T)
		h[e] = 0;
	__syncthreads();
	int a = blockIdx.x * chunk, b = min(S, a + chunk);
	for (int i = a + threadIdx.x; i < b; i += RG_T)
		atomicAdd(h + idx[i], 1);
	__syncthreads();
	for (int e = threadIdx.x; e < E; e += RG_T)
		blk[(size_t)blockIdx.x * E + e] = h[e];
}

__global__ void __launch_bounds__(RG_T) rg_scatter_kernel(int32_t *counts, int32_t *offsets, int32_t *perm,
							  int32_t *inv, const int32_t *blk, const int32_t *idx,
							  int S, int E, int chunk, int nch)
{
	MOE_PDL_ENTRY();
	extern __shared__ int32_t sm[]; /* base (E), tot (E), wc (RG_T / 32, E) */
	int32_t *base = sm, *tot = sm + E, *wc = sm + 2 * E;
	__shared__ int32_t rb[RG_T], rt[RG_T], ws[RG_T / 32];
	int t = threadIdx.x, c = blockIdx.x, lane = t & 31, w = t >> 5;
	/* base[e]: slots of e in the chunks before this one; tot[e]: in all */
	int cols = min(E, RG_T), P = RG_T / cols, el = t % cols, p = t / cols;
	for (int c0 = 0; c0 < E; c0 += cols) {
		int e = c0 + el, b = 0, a = 0;
		if (p < P && e < E)
			for (int cc = p; cc < nch; cc += P) {
				int v = blk[(size_t)cc * E + e];
				a += v;
				b += cc < c ? v : 0;
			}
		rb[t] = b;
		rt[t] = a;
		__syncthreads();
		if (p == 0 && e < E) {
			for (int pp = 1; pp < P; pp++) {
				b += rb[pp * cols + el];
				a += rt[pp * cols + el];
			}
			base[e] = b;
			tot[e] = a;
		}
		__syncthreads();
	}
	/* offsets: exclusive scan of tot, a contiguous run of experts a thread */
	int seg = (E + RG_T - 1) / RG_T, s0 = min(E, t * seg), s1 = min(E, s0 + seg), loc = 0;
	for (int e = s0; e < s1; e++)
		loc += tot[e];
	int inc = loc;
#pragma unroll
	for (int o = 1; o < 32; o <<= 1) {
		int y = __shfl_up_sync(0xffffffffu, inc, o);
		if (lane >= o)
			inc += y;
	}
	if (lane == 31)
		ws[w] = inc;
	__syncthreads();
	int run = inc - loc;
	for (int k = 0; k < w; k++)
		run += ws[k];
	for (int e = s0; e < s1; e++) {
		if (c == 0) {
			counts[e] = tot[e];
			offsets[e] = run;
		}
		base[e] += run;
		run += tot[e];
	}
	if (c == 0 && t == 0)
		offsets[E] = S;
	/* this chunk's slots, one tile of RG_T at a time, in slot order */
	int a0 = c * chunk, a1 = min(S, a0 + chunk);
	for (int t0 = a0; t0 < a1; t0 += RG_T) {
		for (int i = t; i < (RG_T / 32) * E; i += RG_T)
			wc[i] = 0;
		__syncthreads();
		int slot = t0 + t;
		int e = slot < a1 ? idx[slot] : -1;
		unsigned peers = __match_any_sync(0xffffffffu, e);
		int rank = __popc(peers & ((1u << lane) - 1));
		if (e >= 0 && rank == 0)
			wc[w * E + e] = __popc(peers);
		__syncthreads();
		if (e >= 0) {
			int pos = base[e] + rank;
			for (int k = 0; k < w; k++)
				pos += wc[k * E + e];
			perm[pos] = slot;
			inv[slot] = pos;
		}
		__syncthreads();
		for (int e2 = t; e2 < E; e2 += RG_T) {
			int a = 0;
#pragma unroll
			for (int k = 0; k < RG_T / 32; k++)
				a += wc[k * E + e2];
			base[e2] += a;
		}
		__syncthreads();
	}
}

__global__ void group_count_kernel(int32_t *blk_counts, const int32_t *idx, int S, int E)
{
	MOE_PDL_ENTRY();
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
	MOE_PDL_ENTRY();
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
	MOE_PDL_ENTRY();
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
	/* the legacy kernels' (the larger: a 256-slot chunk each) */
	return (size_t)moe_cdiv((size_t)(N > 0 ? N : 1) * K, CHUNK) * E * sizeof(int32_t);
}

__global__ void inverse_kernel(int32_t *inv, const int32_t *perm, int NK)
{
	MOE_PDL_ENTRY();
	int j = blockIdx.x * blockDim.x + threadIdx.x;
	if (j < NK)
		inv[perm[j]] = j;
}

extern "C" int moe_cuda_route_inverse(int32_t *inv, const int32_t *perm, int NK, cudaStream_t s,
				      struct moe_error *err)
{
	if (NK <= 0)
		return 0;
	moe_launch(inverse_kernel, moe_cdiv(NK, 256), 256, 0, s, inv, perm, NK);
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
	int rc;
	if (!moe_route_legacy_on) {
		int chunk, nb;
		rg_split(S, &chunk, &nb);
		moe_launch(rg_hist_kernel, nb, RG_T, E * sizeof(int32_t), s, scratch, topk_idx, S, E, chunk);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
		moe_launch(rg_scatter_kernel, nb, RG_T, (2 + RG_T / 32) * E * sizeof(int32_t), s, counts, offsets, perm,
			   inv, scratch, topk_idx, S, E, chunk, nb);
		return CUDA_LAUNCHED(err);
	}
	unsigned nch = moe_cdiv((size_t)S, CHUNK);
	if (S > 0) {
		moe_launch(group_count_kernel, nch, CHUNK, E * sizeof(int32_t), s, scratch, topk_idx, S, E);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
	}
	moe_launch(group_scan_kernel, 1, 1024, 0, s, scratch, counts, offsets, (int)nch, E);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	if (S > 0) {
		moe_launch(group_scatter_kernel, nch, CHUNK, (CHUNK / 32) * E * sizeof(int32_t), s, perm, inv, scratch,
			   topk_idx, S, E);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
	}
	return 0;
}
