/* Router: softmax over all E experts in fp32 from bf16 logits, top-K of
 * logits + selection bias (ties: lower id), chosen experts listed by
 * probability descending, gate weights renormalised when norm_topk; its
 * backward; the z-loss; the aux-loss statistics and gradient.
 *
 * The kernels (session 6): G lanes of a warp per token (G a power of two,
 * at least E/8 and K), each lane holding 8 consecutive experts of the row,
 * loaded and stored 16 bytes at a time when E % 8 == 0, so that a group
 * reads and writes whole contiguous rows; the reductions over the row are
 * log2(G) shuffles.  The statistics and the z-loss sum are one launch each:
 * every block writes its partial sums, and the last block to finish (a
 * ticket counter that it resets) adds the partials in a fixed order, so the
 * results are bit-reproducible.  The ticket counters are per kernel and per
 * device: these launches must not run on two streams at once.
 * MOE_CUDA_ROUTE=legacy (or moe_cuda_route_legacy(1)) selects the previous
 * kernels (one warp per token, E <= 32 * RJ; statistics in three launches)
 * for comparisons. */
#include "cuda_common.h"
#include "kernels.h"

#define RJ 8

int moe_route_legacy_on = 0;

extern "C" void moe_cuda_route_legacy(int on) { moe_route_legacy_on = on; }
extern "C" int moe_cuda_route_legacy_on(void) { return moe_route_legacy_on; }

static int route_env_read = moe_route_legacy_on = env_is("MOE_CUDA_ROUTE", "legacy");

__global__ void router_fwd_kernel(int32_t *topk_idx, float *topk_w, float *probs, const bf16 *logits,
				  const float *bias, int N, int E, int K, int norm)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	const bf16 *lr = logits + (size_t)n * E;
	float l[RJ], key[RJ];
	float mx = -INFINITY;
#pragma unroll
	for (int j = 0; j < RJ; j++) {
		int e = lane + 32 * j;
		l[j] = e < E ? bf2f(lr[e]) : -INFINITY;
		key[j] = e < E ? l[j] + (bias ? bias[e] : 0.f) : -INFINITY;
		mx = fmaxf(mx, l[j]);
	}
	mx = warp_max(mx);
	float sum = 0.f;
#pragma unroll
	for (int j = 0; j < RJ; j++) {
		l[j] = (lane + 32 * j < E) ? __expf(l[j] - mx) : 0.f;
		sum += l[j];
	}
	sum = warp_sum(sum);
	float inv = 1.f / sum;
	float *pr = probs + (size_t)n * E;
#pragma unroll
	for (int j = 0; j < RJ; j++) {
		l[j] *= inv;
		if (lane + 32 * j < E)
			pr[lane + 32 * j] = l[j];
	}
	float wsum = 0.f, myw = 0.f;
	int myidx = 0;
	for (int k = 0; k < K; k++) {
		float bk = -INFINITY, bp = 0.f;
		int be = 0x7fffffff;
#pragma unroll
		for (int j = 0; j < RJ; j++) {
			int e = lane + 32 * j;
			if (e < E && (key[j] > bk || (key[j] == bk && e < be))) {
				bk = key[j];
				be = e;
				bp = l[j];
			}
		}
		for (int o = 16; o > 0; o >>= 1) {
			float ok = __shfl_xor_sync(0xffffffffu, bk, o);
			int oe = __shfl_xor_sync(0xffffffffu, be, o);
			float op = __shfl_xor_sync(0xffffffffu, bp, o);
			if (ok > bk || (ok == bk && oe < be)) {
				bk = ok;
				be = oe;
				bp = op;
			}
		}
#pragma unroll
		for (int j = 0; j < RJ; j++)
			if (lane + 32 * j == be)
				key[j] = -INFINITY;
		wsum += bp;
		if (lane == k) {
			myw = bp;
			myidx = be;
		}
	}
	/* order the chosen by probability descending, ties to the lower id */
	int rank = 0;
	for (int k = 0; k < K; k++) {
		float wk = __shfl_sync(0xffffffffu, myw, k);
		int ik = __shfl_sync(0xffffffffu, myidx, k);
		if (lane < K && k != lane && (wk > myw || (wk == myw && ik < myidx)))
			rank++;
	}
	if (lane < K) {
		topk_idx[(size_t)n * K + rank] = myidx;
		topk_w[(size_t)n * K + rank] = norm ? myw / wsum : myw;
	}
}

__global__ void router_bwd_kernel(bf16 *dlogits, const float *dtopk_w, const float *dprobs,
				  const float *probs, const int32_t *topk_idx, const float *topk_w, int N,
				  int E, int K, int norm)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	const float *pr = probs + (size_t)n * E;
	float p[RJ], dp[RJ];
#pragma unroll
	for (int j = 0; j < RJ; j++) {
		int e = lane + 32 * j;
		p[j] = e < E ? pr[e] : 0.f;
		dp[j] = (e < E && dprobs) ? dprobs[(size_t)n * E + e] : 0.f;
	}
	if (dtopk_w) {
		float dw = 0.f, w = 0.f;
		int sel = -1;
		if (lane < K) {
			sel = topk_idx[(size_t)n * K + lane];
			dw = dtopk_w[(size_t)n * K + lane];
			w = topk_w[(size_t)n * K + lane];
		}
		float gsel = dw;
		if (norm) {
			/* w_k = p_k / S: dp_k += (dw_k - sum_j dw_j w_j) / S */
			float dot = warp_sum(dw * w);
			float S = 0.f;
			for (int k = 0; k < K; k++) {
				int e = __shfl_sync(0xffffffffu, sel, k);
				float v = 0.f;
#pragma unroll
				for (int j = 0; j < RJ; j++)
					if (lane + 32 * j == e)
						v = p[j];
				S += warp_sum(v);
			}
			gsel = (dw - dot) / S;
		}
		for (int k = 0; k < K; k++) {
			int e = __shfl_sync(0xffffffffu, sel, k);
			float g = __shfl_sync(0xffffffffu, gsel, k);
#pragma unroll
			for (int j = 0; j < RJ; j++)
				if (lane + 32 * j == e)
					dp[j] += g;
		}
	}
	float s = 0.f;
#pragma unroll
	for (int j = 0; j < RJ; j++)
		s += p[j] * dp[j];
	s = warp_sum(s);
#pragma unroll
	for (int j = 0; j < RJ; j++) {
		int e = lane + 32 * j;
		if (e < E)
			dlogits[(size_t)n * E + e] = f2bf(p[j] * (dp[j] - s));
	}
}

__global__ void zloss_kernel(bf16 *dlogits, float *rowz, const bf16 *logits, int N, int E, float scale)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	const bf16 *z = logits + (size_t)n * E;
	float mx = -INFINITY;
	for (int e = lane; e < E; e += 32)
		mx = fmaxf(mx, bf2f(z[e]));
	mx = warp_max(mx);
	float sum = 0.f;
	for (int e = lane; e < E; e += 32)
		sum += __expf(bf2f(z[e]) - mx);
	sum = warp_sum(sum);
	float lse = mx + logf(sum);
	if (lane == 0)
		rowz[n] = lse * lse;
	if (!dlogits)
		return;
	float c = 2.f * lse / N * scale;
	for (int e = lane; e < E; e += 32) {
		bf16 *d = dlogits + (size_t)n * E + e;
		*d = f2bf(bf2f(*d) + c * __expf(bf2f(z[e]) - lse));
	}
}

/* cnt[e] += (row, slot) pairs of valid rows routed to e (integer atomics:
 * exact); one shared histogram per block. */
__global__ void route_count_kernel(int32_t *cnt, const int32_t *topk_idx, const int32_t *ids, int pad_id,
				   int N, int E, int K)
{
	MOE_PDL_ENTRY();
	extern __shared__ int32_t sc[];
	for (int e = threadIdx.x; e < E; e += blockDim.x)
		sc[e] = 0;
	__syncthreads();
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i < (size_t)N * K && !(ids && ids[i / K] == pad_id))
		atomicAdd(sc + topk_idx[i], 1);
	__syncthreads();
	for (int e = threadIdx.x; e < E; e += blockDim.x)
		if (sc[e])
			atomicAdd(cnt + e, sc[e]);
}

/* psum: per (column, row block) partial sums in double, then a fixed-order
 * reduction; blocks of 256 rows. */
__global__ void psum_partial_kernel(double *part, const float *probs, const int32_t *ids, int pad_id, int N,
				    int E)
{
	MOE_PDL_ENTRY();
	int e = blockIdx.y * blockDim.x + threadIdx.x;
	if (e >= E)
		return;
	int n0 = blockIdx.x * 256, n1 = min(N, n0 + 256);
	double a = 0;
	for (int n = n0; n < n1; n++)
		if (!ids || ids[n] != pad_id)
			a += probs[(size_t)n * E + e];
	part[(size_t)blockIdx.x * E + e] = a;
}

__global__ void psum_finish_kernel(float *psum, const double *part, int nb, int E)
{
	MOE_PDL_ENTRY();
	int e = blockIdx.x * blockDim.x + threadIdx.x;
	if (e >= E)
		return;
	double a = 0;
	for (int b = 0; b < nb; b++)
		a += part[(size_t)b * E + e];
	psum[e] = (float)a;
}

struct g_vec {
	float g[256];
};

__global__ void aux_dprobs_kernel(float *dprobs, g_vec g, const int32_t *ids, int pad_id, int N, int E)
{
	MOE_PDL_ENTRY();
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)N * E)
		return;
	size_t n = i / E;
	dprobs[i] = (ids && ids[n] == pad_id) ? 0.f : g.g[i % E];
}

/* ---- the session-6 kernels --------------------------------------------- */

#define RT 256 /* threads a block */

/* Reductions over the G lanes of a group (xor butterflies: every lane ends
 * with the same bits). */
template <int G> static __device__ __forceinline__ float grp_max(float v)
{
#pragma unroll
	for (int o = G / 2; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

template <int G> static __device__ __forceinline__ float grp_sum(float v)
{
#pragma unroll
	for (int o = G / 2; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* Eight experts e0 .. e0+7 of a bf16 row, -inf past E; 16 bytes at once
 * when vec (E % 8 == 0, aligned rows). */
static __device__ __forceinline__ void ld_row8(float *l, const bf16 *row, int e0, int E, int vec)
{
	if (vec && e0 + 8 <= E) {
		ld8(l, row + e0);
	} else {
#pragma unroll
		for (int j = 0; j < 8; j++)
			l[j] = e0 + j < E ? bf2f(row[e0 + j]) : -INFINITY;
	}
}

static __device__ __forceinline__ void ld_f8(float *v, const float *row, int e0, int E, int vec)
{
	if (vec && e0 + 8 <= E) {
		float4 a = *(const float4 *)(row + e0), b = *(const float4 *)(row + e0 + 4);
		v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
	} else {
#pragma unroll
		for (int j = 0; j < 8; j++)
			v[j] = e0 + j < E ? row[e0 + j] : 0.f;
	}
}

/* The last block of a grid to arrive (after each block's partials are
 * written and fenced): true in all its threads; it resets the ticket. */
static __device__ __forceinline__ bool last_block(unsigned *ticket)
{
	__shared__ bool last;
	__threadfence();
	__syncthreads();
	if (threadIdx.x == 0) {
		last = atomicAdd(ticket, 1u) == gridDim.x - 1;
		if (last)
			atomicExch(ticket, 0u);
	}
	__syncthreads();
	return last;
}

__device__ unsigned zloss_ticket, stats_ticket, rz_ticket;

/* a fixed-order sum of a double over the block (RT threads); thread 0 has it */
static __device__ __forceinline__ double block_sum_d(double v)
{
	__shared__ double ws[RT / 32];
#pragma unroll
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	if ((threadIdx.x & 31) == 0)
		ws[threadIdx.x >> 5] = v;
	__syncthreads();
	double a = 0.0;
	if (threadIdx.x == 0)
		for (int w = 0; w < RT / 32; w++)
			a += ws[w];
	__syncthreads();
	return a;
}

/* A grid's sum of v (one value a block): the block's sum (block_sum_d) to
 * part[blockIdx.x]; the last block to arrive adds them in block order and
 * stores acc[0] = the sum, acc[1] = N (fixed order: bit-reproducible). */
static __device__ void grid_sum_store(double v, double *part, unsigned *ticket, double *acc, int N)
{
	double bs = block_sum_d(v);
	if (threadIdx.x == 0)
		part[blockIdx.x] = bs;
	if (!last_block(ticket))
		return;
	double a = 0.0;
	for (unsigned b = threadIdx.x; b < gridDim.x; b += RT)
		a += __ldcg(part + b);
	a = block_sum_d(a);
	if (threadIdx.x == 0) {
		acc[0] = a;
		acc[1] = (double)N;
	}
}

template <int G>
__global__ void __launch_bounds__(RT) router_fwd_g_kernel(int32_t *topk_idx, float *topk_w, float *probs,
							const bf16 *logits, int ldl, const float *bias, int N,
							int E, int K, int norm, int vec, double *zpart,
							double *zacc)
{
	MOE_PDL_ENTRY();
	int n = (int)(((size_t)blockIdx.x * RT + threadIdx.x) / G), q = threadIdx.x % G, e0 = q * 8;
	bool act = n < N;
	if (!act) /* keep every lane for the shuffles */
		n = N - 1;
	float l[8], key[8];
	ld_row8(l, logits + (size_t)n * ldl, e0, E, vec);
	float mx = -INFINITY;
#pragma unroll
	for (int j = 0; j < 8; j++) {
		int e = e0 + j;
		key[j] = e < E ? l[j] + (bias ? __ldg(bias + e) : 0.f) : -INFINITY;
		mx = fmaxf(mx, l[j]);
	}
	mx = grp_max<G>(mx);
	float sum = 0.f;
#pragma unroll
	for (int j = 0; j < 8; j++) {
		l[j] = e0 + j < E ? expf(l[j] - mx) : 0.f;
		sum += l[j];
	}
	sum = grp_sum<G>(sum);
	if (zpart) { /* the z-loss's sum of lse^2, as zloss_g_kernel's with part */
		float lse = mx + logf(sum);
		grid_sum_store(act && q == 0 ? (double)lse * lse : 0.0, zpart, &rz_ticket, zacc, N);
	}
#pragma unroll
	for (int j = 0; j < 8; j++)
		l[j] = l[j] / sum;
	if (act) {
		float *pr = probs + (size_t)n * E;
		if (vec && e0 + 8 <= E) {
			*(float4 *)(pr + e0) = make_float4(l[0], l[1], l[2], l[3]);
			*(float4 *)(pr + e0 + 4) = make_float4(l[4], l[5], l[6], l[7]);
		} else {
#pragma unroll
			for (int j = 0; j < 8; j++)
				if (e0 + j < E)
					pr[e0 + j] = l[j];
		}
	}
	/* top K of the keys, one per round: each lane's best untaken, then the
	 * group's (ties: lower id); lane k of the group keeps round k's */
	unsigned taken = 0;
	float wsum = 0.f, myw = 0.f;
	int myidx = 0;
	for (int k = 0; k < K; k++) {
		float bk = -INFINITY, bp = 0.f;
		int be = 0x7fffffff;
#pragma unroll
		for (int j = 0; j < 8; j++) {
			int e = e0 + j;
			if (e < E && !((taken >> j) & 1u) && (key[j] > bk || (key[j] == bk && e < be))) {
				bk = key[j];
				be = e;
				bp = l[j];
			}
		}
#pragma unroll
		for (int o = G / 2; o > 0; o >>= 1) {
			float ok = __shfl_xor_sync(0xffffffffu, bk, o);
			int oe = __shfl_xor_sync(0xffffffffu, be, o);
			float op = __shfl_xor_sync(0xffffffffu, bp, o);
			if (ok > bk || (ok == bk && oe < be)) {
				bk = ok;
				be = oe;
				bp = op;
			}
		}
		unsigned jt = (unsigned)(be - e0);
		if (jt < 8u)
			taken |= 1u << jt;
		wsum += bp;
		if (q == k) {
			myw = bp;
			myidx = be;
		}
	}
	/* list by probability descending, ties to the lower id */
	int rank = 0;
	for (int k = 0; k < K; k++) {
		float wk = __shfl_sync(0xffffffffu, myw, k, G);
		int ik = __shfl_sync(0xffffffffu, myidx, k, G);
		if (k != q && (wk > myw || (wk == myw && ik < myidx)))
			rank++;
	}
	if (act && q < K) {
		topk_idx[(size_t)n * K + rank] = myidx;
		topk_w[(size_t)n * K + rank] = norm ? myw / wsum : myw;
	}
}

template <int G>
__global__ void __launch_bounds__(RT) router_bwd_g_kernel(bf16 *dlogits, int ldd, const float *dtopk_w,
							const float *dprobs, const float *probs,
							const int32_t *topk_idx, const float *topk_w, int N,
							int E, int K, int norm, int vec)
{
	MOE_PDL_ENTRY();
	int n = (int)(((size_t)blockIdx.x * RT + threadIdx.x) / G), q = threadIdx.x % G, e0 = q * 8;
	bool act = n < N;
	if (!act)
		n = N - 1;
	const float *pr = probs + (size_t)n * E;
	float p[8], dp[8];
	ld_f8(p, pr, e0, E, vec);
	if (dprobs) {
		ld_f8(dp, dprobs + (size_t)n * E, e0, E, vec);
	} else {
#pragma unroll
		for (int j = 0; j < 8; j++)
			dp[j] = 0.f;
	}
	if (dtopk_w) {
		const int32_t *ix = topk_idx + (size_t)n * K;
		const float *dw = dtopk_w + (size_t)n * K, *w = topk_w + (size_t)n * K;
		/* as the CPU reference, in the order of k: w_k = p_k / S, so
		 * dp_k += (dw_k - sum_j dw_j w_j) / S */
		float S = 0.f, c = 0.f;
		if (norm)
			for (int k = 0; k < K; k++) {
				S += __ldg(pr + ix[k]);
				c += dw[k] * w[k];
			}
		for (int k = 0; k < K; k++) {
			int j0 = ix[k] - e0;
			float g = norm ? (dw[k] - c) / S : dw[k];
#pragma unroll
			for (int j = 0; j < 8; j++)
				if (j == j0)
					dp[j] += g;
		}
	}
	float s = 0.f;
#pragma unroll
	for (int j = 0; j < 8; j++)
		s += p[j] * dp[j];
	s = grp_sum<G>(s);
	if (!act)
		return;
	float d[8];
#pragma unroll
	for (int j = 0; j < 8; j++)
		d[j] = p[j] * (dp[j] - s);
	bf16 *dl = dlogits + (size_t)n * ldd;
	if (vec && e0 + 8 <= E) {
		st8(dl + e0, d);
	} else {
#pragma unroll
		for (int j = 0; j < 8; j++)
			if (e0 + j < E)
				dl[e0 + j] = f2bf(d[j]);
	}
}

/* z-loss with G lanes a row (any E: rows wider than 8 G in several passes),
 * ZT rows a group (a block's rows interleaved over its groups, all their
 * first loads issued together); rowz (may be NULL) gets lse^2; dlogits (may
 * be NULL) += c softmax; with part, the block's sum of lse^2 (double, fixed
 * order: a group's rows in order, then a warp's groups in a fixed tree, then
 * the warps in order) goes to part and the last block stores acc[0] = the
 * sum over all rows, acc[1] = N. */
#define ZT 4

/* blocks of zloss_g_kernel: a group handles ZT rows */
static unsigned zloss_blocks(int N, int G)
{
	return (unsigned)moe_cdiv(moe_cdiv((size_t)(N > 0 ? N : 1), ZT) * G, RT);
}

template <int G>
__global__ void __launch_bounds__(RT) zloss_g_kernel(bf16 *dlogits, float *rowz, double *part, double *acc,
						   const bf16 *logits, int ld, int N, int E, float scale, int vec)
{
	MOE_PDL_ENTRY();
	int q = threadIdx.x % G, gi = threadIdx.x / G;
	int base = blockIdx.x * (RT / G) * ZT + gi;
	float l[ZT][8], t[8];
#pragma unroll
	for (int i = 0; i < ZT; i++) {
		int n = min(base + i * (RT / G), N - 1);
		ld_row8(l[i], logits + (size_t)n * ld, q * 8, E, vec);
	}
	double zacc = 0.0;
#pragma unroll
	for (int i = 0; i < ZT; i++) {
		int n = base + i * (RT / G);
		bool act = n < N;
		if (!act) /* keep every lane for the shuffles */
			n = N - 1;
		const bf16 *z = logits + (size_t)n * ld;
		float mx = -INFINITY;
#pragma unroll
		for (int j = 0; j < 8; j++)
			mx = fmaxf(mx, l[i][j]);
		for (int e0 = (q + G) * 8; e0 < E; e0 += 8 * G) {
			ld_row8(t, z, e0, E, vec);
#pragma unroll
			for (int j = 0; j < 8; j++)
				mx = fmaxf(mx, t[j]);
		}
		mx = grp_max<G>(mx);
		float sum = 0.f;
#pragma unroll
		for (int j = 0; j < 8; j++)
			sum += q * 8 + j < E ? expf(l[i][j] - mx) : 0.f;
		for (int e0 = (q + G) * 8; e0 < E; e0 += 8 * G) {
			ld_row8(t, z, e0, E, vec);
#pragma unroll
			for (int j = 0; j < 8; j++)
				sum += e0 + j < E ? expf(t[j] - mx) : 0.f;
		}
		sum = grp_sum<G>(sum);
		float lse = mx + logf(sum);
		if (act && q == 0) {
			if (rowz)
				rowz[n] = lse * lse;
			zacc += (double)lse * lse;
		}
		if (act && dlogits) {
			float c = 2.f * lse / N * scale;
			bf16 *dr = dlogits + (size_t)n * ld;
			for (int e0 = q * 8; e0 < E; e0 += 8 * G) {
				ld_row8(t, z, e0, E, vec);
				float d[8];
				ld_row8(d, dr, e0, E, vec);
#pragma unroll
				for (int j = 0; j < 8; j++)
					d[j] = d[j] + c * expf(t[j] - lse);
				if (vec && e0 + 8 <= E) {
					st8(dr + e0, d);
				} else {
#pragma unroll
					for (int j = 0; j < 8; j++)
						if (e0 + j < E)
							dr[e0 + j] = f2bf(d[j]);
				}
			}
		}
	}
	if (part)
		grid_sum_store(zacc, part, &zloss_ticket, acc, N);
}

/* Statistics of a block of rows: counts of the valid rows' slots per
 * expert (shared-memory histogram, exact) and the sums of their
 * probabilities (double; (column, row group) threads, the groups added in
 * order); the last block adds the blocks' partials in block order.  The
 * float4 kernel (E % 4 == 0, aligned) takes ST4_ROWS rows a block, 16 bytes
 * a load; the other ST_ROWS, a float a load. */
#define ST_ROWS 256
#define ST4_ROWS 128

/* the block's valid-row flags and slot histogram (hist: E ints, val: rows) */
static __device__ __forceinline__ void stats_hist(int32_t *hist, unsigned char *val, const int32_t *topk_idx,
						  const int32_t *ids, int pad_id, int n0, int rows, int nrows,
						  int E, int K)
{
	int t = threadIdx.x;
	for (int e = t; e < E; e += RT)
		hist[e] = 0;
	for (int r = t; r < nrows; r += RT)
		val[r] = r < rows && !(ids && ids[n0 + r] == pad_id);
	__syncthreads();
	for (int i = t; i < rows * K; i += RT)
		if (val[i / K])
			atomicAdd(hist + topk_idx[(size_t)n0 * K + i], 1);
}

/* the last block: psum, cnt from the nb blocks' partials, in block order */
static __device__ void stats_final(float *psum, int32_t *cnt, const double *part_p, const int32_t *part_c, int nb,
				   int E, double *sd, int32_t *si)
{
	int t = threadIdx.x, cols = min(E, RT), P = RT / cols, el = t % cols, p = t / cols;
	for (int c0 = 0; c0 < E; c0 += cols) {
		int e = c0 + el;
		double a = 0.0;
		int ci = 0;
		if (p < P && e < E) {
#pragma unroll 8
			for (int b = (int)((long)nb * p / P), b1 = (int)((long)nb * (p + 1) / P); b < b1; b++) {
				a += __ldcg(part_p + (size_t)b * E + e);
				ci += __ldcg(part_c + (size_t)b * E + e);
			}
		}
		sd[t] = a;
		si[t] = ci;
		__syncthreads();
		if (p == 0 && e < E) {
			for (int pp = 1; pp < P; pp++) {
				a += sd[pp * cols + el];
				ci += si[pp * cols + el];
			}
			psum[e] = (float)a;
			cnt[e] = ci;
		}
		__syncthreads();
	}
}

__global__ void __launch_bounds__(RT) router_stats_kernel(float *psum, int32_t *cnt, double *part_p,
							  int32_t *part_c, const float *probs,
							  const int32_t *topk_idx, const int32_t *ids, int pad_id,
							  int N, int E, int K)
{
	MOE_PDL_ENTRY();
	__shared__ double sd[RT];
	__shared__ int32_t si[RT];
	__shared__ unsigned char val[ST_ROWS];
	extern __shared__ int32_t hist[]; /* (E) */
	int t = threadIdx.x, n0 = blockIdx.x * ST_ROWS, rows = min(N - n0, ST_ROWS);
	stats_hist(hist, val, topk_idx, ids, pad_id, n0, rows, ST_ROWS, E, K);
	int cols = min(E, RT), P = RT / cols, el = t % cols, p = t / cols;
	for (int c0 = 0; c0 < E; c0 += cols) {
		int e = c0 + el;
		double a = 0.0;
		if (p < P && e < E) {
			const float *pc = probs + (size_t)n0 * E + e;
#pragma unroll 8
			for (int r = p; r < rows; r += P) {
				float v = pc[(size_t)r * E];
				a += val[r] ? (double)v : 0.0;
			}
		}
		sd[t] = a;
		__syncthreads();
		if (p == 0 && e < E) {
			for (int pp = 1; pp < P; pp++)
				a += sd[pp * cols + el];
			part_p[(size_t)blockIdx.x * E + e] = a;
		}
		__syncthreads();
	}
	for (int e = t; e < E; e += RT)
		part_c[(size_t)blockIdx.x * E + e] = hist[e];
	if (!last_block(&stats_ticket))
		return;
	stats_final(psum, cnt, part_p, part_c, gridDim.x, E, sd, si);
}

/* E % 4 == 0, E <= 4 RT: thread (c, p) sums columns 4c .. 4c+3 over rows p,
 * p + P, ... (P = RT / (E/4) row groups) */
__global__ void __launch_bounds__(RT) router_stats4_kernel(float *psum, int32_t *cnt, double *part_p,
							   int32_t *part_c, const float4 *probs,
							   const int32_t *topk_idx, const int32_t *ids, int pad_id,
							   int N, int E, int K)
{
	MOE_PDL_ENTRY();
	__shared__ double sd[RT];
	__shared__ double s4[RT][4];
	__shared__ int32_t si[RT];
	__shared__ unsigned char val[ST4_ROWS];
	extern __shared__ int32_t hist[]; /* (E) */
	int t = threadIdx.x, n0 = blockIdx.x * ST4_ROWS, rows = min(N - n0, ST4_ROWS);
	stats_hist(hist, val, topk_idx, ids, pad_id, n0, rows, ST4_ROWS, E, K);
	int E4 = E / 4, P = RT / E4, c = t % E4, p = t / E4;
	double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0;
	if (p < P) {
		const float4 *pc = probs + (size_t)n0 * E4 + c;
#pragma unroll 8
		for (int r = p; r < rows; r += P) {
			float4 v = pc[(size_t)r * E4];
			if (val[r]) {
				a0 += v.x;
				a1 += v.y;
				a2 += v.z;
				a3 += v.w;
			}
		}
	}
	s4[t][0] = a0, s4[t][1] = a1, s4[t][2] = a2, s4[t][3] = a3;
	__syncthreads();
	if (p == 0) {
		for (int pp = 1; pp < P; pp++) {
			a0 += s4[pp * E4 + c][0];
			a1 += s4[pp * E4 + c][1];
			a2 += s4[pp * E4 + c][2];
			a3 += s4[pp * E4 + c][3];
		}
		double *o = part_p + (size_t)blockIdx.x * E + 4 * c;
		o[0] = a0, o[1] = a1, o[2] = a2, o[3] = a3;
	}
	for (int e = t; e < E; e += RT)
		part_c[(size_t)blockIdx.x * E + e] = hist[e];
	if (!last_block(&stats_ticket))
		return;
	stats_final(psum, cnt, part_p, part_c, gridDim.x, E, sd, si);
}

/* dprobs = g (valid rows) or 0, 16 bytes a thread (E % 4 == 0). */
__global__ void aux_dprobs4_kernel(float4 *dprobs, g_vec g, const int32_t *ids, int pad_id, int N, int E4)
{
	MOE_PDL_ENTRY();
	__shared__ float sg[256];
	for (int e = threadIdx.x; e < 4 * E4; e += blockDim.x)
		sg[e] = g.g[e];
	__syncthreads();
	int i = blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= N * E4)
		return;
	int n = i / E4, c = (i - n * E4) * 4;
	bool pad = ids && ids[n] == pad_id;
	dprobs[i] = pad ? make_float4(0.f, 0.f, 0.f, 0.f) : make_float4(sg[c], sg[c + 1], sg[c + 2], sg[c + 3]);
}

/* lanes a row: a power of two >= E / 8 and >= K, at most 32 */
static int route_lanes(int E, int K)
{
	int need = (E + 7) / 8 > K ? (E + 7) / 8 : K, g = 1;
	while (g < need && g < 32)
		g <<= 1;
	return g;
}

#define G_LAUNCH(G, KER, N, ...)                                                          \
	do {                                                                              \
		unsigned nb_ = (unsigned)moe_cdiv((size_t)(N) * (G), RT);                 \
		switch (G) {                                                              \
		case 1: moe_launch(KER<1>, nb_, RT, 0, s, __VA_ARGS__); break;            \
		case 2: moe_launch(KER<2>, nb_, RT, 0, s, __VA_ARGS__); break;            \
		case 4: moe_launch(KER<4>, nb_, RT, 0, s, __VA_ARGS__); break;            \
		case 8: moe_launch(KER<8>, nb_, RT, 0, s, __VA_ARGS__); break;            \
		case 16: moe_launch(KER<16>, nb_, RT, 0, s, __VA_ARGS__); break;          \
		default: moe_launch(KER<32>, nb_, RT, 0, s, __VA_ARGS__); break;          \
		}                                                                         \
	} while (0)

static bool al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

static int check_router(int E, int K, struct moe_error *err)
{
	if (E > 32 * RJ || K > 32 || K > E || K < 1)
		return moe_error_set(err, MOE_EUNSUPPORTED, "router: E=%d K=%d not supported (E <= %d, K <= 32)",
				     E, K, 32 * RJ);
	return 0;
}

static int need_rows(int ld, int E, struct moe_error *err)
{
	if (ld != E && moe_route_legacy_on)
		return moe_error_set(err, MOE_EUNSUPPORTED, "router: the legacy kernels (MOE_CUDA_ROUTE=legacy) "
				     "read rows of E logits only, not %d apart", ld);
	if (ld < E)
		return moe_error_set(err, MOE_EINVAL, "router: logits %d apart, fewer than E = %d", ld, E);
	return 0;
}

/* blocks of router_fwd_g_kernel (one group of route_lanes(E, K) lanes a row) */
static unsigned router_blocks(int N, int E, int K)
{
	return (unsigned)moe_cdiv((size_t)(N > 0 ? N : 1) * route_lanes(E, K), RT);
}

extern "C" size_t moe_cuda_router_z_scratch(int N, int E, int K)
{
	return (size_t)router_blocks(N, E, K) * sizeof(double);
}

extern "C" int moe_cuda_router_fwd_ld(int32_t *topk_idx, float *topk_w, float *probs, const bf16_t *logits, int ld,
				      const float *bias, int N, int E, int K, int norm_topk, double *zacc,
				      void *zscratch, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_router(E, K, err)) != 0 || (rc = need_rows(ld, E, err)) != 0)
		return rc;
	if (N <= 0) {
		if (zacc) {
			static const double z[2] = {0.0, 0.0};
			return CUDA_OK(cudaMemcpyAsync(zacc, z, sizeof(z), cudaMemcpyHostToDevice, s), err);
		}
		return 0;
	}
	if (moe_route_legacy_on) {
		if (zacc)
			return moe_error_set(err, MOE_EUNSUPPORTED, "router: the legacy kernels sum no z-loss");
		moe_launch(router_fwd_kernel, moe_cdiv(N, 8), 256, 0, s, topk_idx, topk_w, probs, (const bf16 *)logits,
			   bias, N, E, K, norm_topk);
		return CUDA_LAUNCHED(err);
	}
	int vec = E % 8 == 0 && ld % 8 == 0 && al16(logits) && al16(probs);
	G_LAUNCH(route_lanes(E, K), router_fwd_g_kernel, N, topk_idx, topk_w, probs, (const bf16 *)logits, ld, bias,
		 N, E, K, norm_topk, vec, zacc ? (double *)zscratch : (double *)NULL, zacc);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_router_fwd(int32_t *topk_idx, float *topk_w, float *probs, const bf16_t *logits,
				   const float *bias, int N, int E, int K, int norm_topk, cudaStream_t s,
				   struct moe_error *err)
{
	return moe_cuda_router_fwd_ld(topk_idx, topk_w, probs, logits, E, bias, N, E, K, norm_topk, NULL, NULL, s,
				      err);
}

extern "C" int moe_cuda_router_bwd_ld(bf16_t *dlogits, int ld, const float *dtopk_w, const float *dprobs,
				      const float *probs, const int32_t *topk_idx, const float *topk_w, int N,
				      int E, int K, int norm_topk, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_router(E, K, err)) != 0 || (rc = need_rows(ld, E, err)) != 0 || N <= 0)
		return rc;
	if (moe_route_legacy_on) {
		moe_launch(router_bwd_kernel, moe_cdiv(N, 8), 256, 0, s, (bf16 *)dlogits, dtopk_w, dprobs, probs,
			   topk_idx, topk_w, N, E, K, norm_topk);
		return CUDA_LAUNCHED(err);
	}
	int vec = E % 8 == 0 && ld % 8 == 0 && al16(dlogits) && al16(probs) && (!dprobs || al16(dprobs));
	G_LAUNCH(route_lanes(E, K), router_bwd_g_kernel, N, (bf16 *)dlogits, ld, dtopk_w, dprobs, probs, topk_idx,
		 topk_w, N, E, K, norm_topk, vec);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_router_bwd(bf16_t *dlogits, const float *dtopk_w, const float *dprobs,
				   const float *probs, const int32_t *topk_idx, const float *topk_w, int N,
				   int E, int K, int norm_topk, cudaStream_t s, struct moe_error *err)
{
	return moe_cuda_router_bwd_ld(dlogits, E, dtopk_w, dprobs, probs, topk_idx, topk_w, N, E, K, norm_topk, s,
				      err);
}

extern "C" int moe_cuda_zloss_ld(bf16_t *dlogits, float *rowz, const bf16_t *logits, int ld, int N, int E,
				 float scale, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = need_rows(ld, E, err)) != 0 || N <= 0)
		return rc;
	if (moe_route_legacy_on) {
		moe_launch(zloss_kernel, moe_cdiv(N, 8), 256, 0, s, (bf16 *)dlogits, rowz, (const bf16 *)logits, N, E,
			   scale);
		return CUDA_LAUNCHED(err);
	}
	int vec = E % 8 == 0 && ld % 8 == 0 && al16(logits) && (!dlogits || al16(dlogits));
	G_LAUNCH(route_lanes(E < 256 ? E : 256, 1), zloss_g_kernel, moe_cdiv(N, ZT), (bf16 *)dlogits, rowz,
		 (double *)NULL, (double *)NULL, (const bf16 *)logits, ld, N, E, scale, vec);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_zloss(bf16_t *dlogits, float *rowz, const bf16_t *logits, int N, int E,
			      float scale, cudaStream_t s, struct moe_error *err)
{
	return moe_cuda_zloss_ld(dlogits, rowz, logits, E, N, E, scale, s, err);
}

extern "C" size_t moe_cuda_zloss_scratch(int N, int E)
{
	return (size_t)zloss_blocks(N, route_lanes(E < 256 ? E : 256, 1)) * sizeof(double);
}

extern "C" int moe_cuda_zloss_sum(double *acc, bf16_t *dlogits, const bf16_t *logits, int N, int E, float scale,
				  void *scratch, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0) {
		double z[2] = {0.0, 0.0};
		return CUDA_OK(cudaMemcpyAsync(acc, z, sizeof(z), cudaMemcpyHostToDevice, s), err);
	}
	int vec = E % 8 == 0 && al16(logits) && (!dlogits || al16(dlogits));
	G_LAUNCH(route_lanes(E < 256 ? E : 256, 1), zloss_g_kernel, moe_cdiv(N, ZT), (bf16 *)dlogits,
		 (float *)NULL, (double *)scratch, acc, (const bf16 *)logits, E, N, E, scale, vec);
	return CUDA_LAUNCHED(err);
}

extern "C" size_t moe_cuda_router_stats_scratch(int N, int E)
{
	/* the legacy kernels use the doubles only */
	return (size_t)moe_cdiv(N > 0 ? N : 1, ST4_ROWS) * E * (sizeof(double) + sizeof(int32_t));
}

extern "C" int moe_cuda_router_stats(float *psum, int32_t *cnt, const float *probs, const int32_t *topk_idx,
				     const int32_t *ids, int pad_id, int N, int E, int K, void *scratch,
				     cudaStream_t s, struct moe_error *err)
{
	int rc;
	if (!moe_route_legacy_on && N > 0) {
		bool v4 = E % 4 == 0 && E <= 4 * RT && ((uintptr_t)probs & 15) == 0;
		unsigned nb = moe_cdiv(N, v4 ? ST4_ROWS : ST_ROWS);
		double *pp = (double *)scratch;
		int32_t *pc = (int32_t *)(pp + (size_t)nb * E);
		if (v4)
			moe_launch(router_stats4_kernel, nb, RT, E * sizeof(int32_t), s, psum, cnt, pp, pc,
				   (const float4 *)probs, topk_idx, ids, pad_id, N, E, K);
		else
			moe_launch(router_stats_kernel, nb, RT, E * sizeof(int32_t), s, psum, cnt, pp, pc, probs,
				   topk_idx, ids, pad_id, N, E, K);
		return CUDA_LAUNCHED(err);
	}
	if ((rc = CUDA_OK(cudaMemsetAsync(cnt, 0, sizeof(int32_t) * E, s), err)) != 0)
		return rc;
	if (N <= 0)
		return CUDA_OK(cudaMemsetAsync(psum, 0, sizeof(float) * E, s), err);
	moe_launch(route_count_kernel, moe_cdiv((size_t)N * K, 256), 256, E * sizeof(int32_t), s, cnt, topk_idx, ids,
		   pad_id, N, E, K);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	unsigned nb = moe_cdiv(N, 256);
	dim3 grid(nb, moe_cdiv(E, 64));
	moe_launch(psum_partial_kernel, grid, 64, 0, s, (double *)scratch, probs, ids, pad_id, N, E);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	moe_launch(psum_finish_kernel, moe_cdiv(E, 64), 64, 0, s, psum, (const double *)scratch, (int)nb, E);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_aux_dprobs(float *dprobs, const float *g_host, const int32_t *ids, int pad_id,
				   int N, int E, cudaStream_t s, struct moe_error *err)
{
	g_vec g;
	if (E > 256)
		return moe_error_set(err, MOE_EUNSUPPORTED, "aux_dprobs: %d experts (max 256)", E);
	for (int e = 0; e < E; e++)
		g.g[e] = g_host[e];
	if (N <= 0)
		return 0;
	if (!moe_route_legacy_on && E % 4 == 0 && al16(dprobs) && (size_t)N * E < (1u << 30)) {
		moe_launch(aux_dprobs4_kernel, moe_cdiv((size_t)N * E / 4, 256), 256, 0, s, (float4 *)dprobs, g, ids,
			   pad_id, N, E / 4);
		return CUDA_LAUNCHED(err);
	}
	moe_launch(aux_dprobs_kernel, moe_cdiv((size_t)N * E, 256), 256, 0, s, dprobs, g, ids, pad_id, N, E);
	return CUDA_LAUNCHED(err);
}
