/* Router: softmax over all E experts in fp32 from bf16 logits, top-K of
 * logits + selection bias (ties: lower id), chosen experts listed by
 * probability descending, gate weights renormalised when norm_topk; its
 * backward; the z-loss; the aux-loss statistics and gradient.  One warp per
 * token; E <= 32 * RJ. */
#include "cuda_common.h"
#include "kernels.h"

#define RJ 8

__global__ void router_fwd_kernel(int32_t *topk_idx, float *topk_w, float *probs, const bf16 *logits,
				  const float *bias, int N, int E, int K, int norm)
{
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
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= (size_t)N * E)
		return;
	size_t n = i / E;
	dprobs[i] = (ids && ids[n] == pad_id) ? 0.f : g.g[i % E];
}

static int check_router(int E, int K, struct moe_error *err)
{
	if (E > 32 * RJ || K > 32 || K > E || K < 1)
		return moe_error_set(err, MOE_EUNSUPPORTED, "router: E=%d K=%d not supported (E <= %d, K <= 32)",
				     E, K, 32 * RJ);
	return 0;
}

extern "C" int moe_cuda_router_fwd(int32_t *topk_idx, float *topk_w, float *probs, const bf16_t *logits,
				   const float *bias, int N, int E, int K, int norm_topk, cudaStream_t s,
				   struct moe_error *err)
{
	int rc;
	if ((rc = check_router(E, K, err)) != 0 || N <= 0)
		return rc;
	router_fwd_kernel<<<moe_cdiv(N, 8), 256, 0, s>>>(topk_idx, topk_w, probs, (const bf16 *)logits, bias,
							N, E, K, norm_topk);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_router_bwd(bf16_t *dlogits, const float *dtopk_w, const float *dprobs,
				   const float *probs, const int32_t *topk_idx, const float *topk_w, int N,
				   int E, int K, int norm_topk, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_router(E, K, err)) != 0 || N <= 0)
		return rc;
	router_bwd_kernel<<<moe_cdiv(N, 8), 256, 0, s>>>((bf16 *)dlogits, dtopk_w, dprobs, probs, topk_idx,
							topk_w, N, E, K, norm_topk);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_zloss(bf16_t *dlogits, float *rowz, const bf16_t *logits, int N, int E,
			      float scale, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	zloss_kernel<<<moe_cdiv(N, 8), 256, 0, s>>>((bf16 *)dlogits, rowz, (const bf16 *)logits, N, E, scale);
	return CUDA_LAUNCHED(err);
}

extern "C" size_t moe_cuda_router_stats_scratch(int N, int E)
{
	return (size_t)moe_cdiv(N > 0 ? N : 1, 256) * E * sizeof(double);
}

extern "C" int moe_cuda_router_stats(float *psum, int32_t *cnt, const float *probs, const int32_t *topk_idx,
				     const int32_t *ids, int pad_id, int N, int E, int K, void *scratch,
				     cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = CUDA_OK(cudaMemsetAsync(cnt, 0, sizeof(int32_t) * E, s), err)) != 0)
		return rc;
	if (N <= 0)
		return CUDA_OK(cudaMemsetAsync(psum, 0, sizeof(float) * E, s), err);
	route_count_kernel<<<moe_cdiv((size_t)N * K, 256), 256, E * sizeof(int32_t), s>>>(cnt, topk_idx, ids,
										   pad_id, N, E, K);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	unsigned nb = moe_cdiv(N, 256);
	dim3 grid(nb, moe_cdiv(E, 64));
	psum_partial_kernel<<<grid, 64, 0, s>>>((double *)scratch, probs, ids, pad_id, N, E);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	psum_finish_kernel<<<moe_cdiv(E, 64), 64, 0, s>>>(psum, (const double *)scratch, (int)nb, E);
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
	aux_dprobs_kernel<<<moe_cdiv((size_t)N * E, 256), 256, 0, s>>>(dprobs, g, ids, pad_id, N, E);
	return CUDA_LAUNCHED(err);
}
