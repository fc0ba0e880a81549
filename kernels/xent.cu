/* Cross-entropy over the vocabulary for a chunk of rows: per-row loss and
 * dlogits = scale * (softmax - onehot) in bf16 for the head's backward GEMMs.
 * Logits are bf16 (the LM head's GEMM output); statistics are fp32.
 * One block per row; rows whose target is ignore_id get loss 0 and zero
 * gradient. */
#include "cuda_common.h"
#include "kernels.h"

#define XT 512

static __device__ float block_reduce(float v, float *sh, bool is_max)
{
	int lane = threadIdx.x % 32, w = threadIdx.x / 32;
	v = is_max ? warp_max(v) : warp_sum(v);
	__syncthreads();
	if (lane == 0)
		sh[w] = v;
	__syncthreads();
	float r = is_max ? -INFINITY : 0.f;
	for (int i = 0; i < XT / 32; i++)
		r = is_max ? fmaxf(r, sh[i]) : r + sh[i];
	return r;
}

__global__ void xent_kernel(bf16 *dlogits, float *loss, const bf16 *logits, const int32_t *targets,
			    int V, int ignore_id, float scale)
{
	__shared__ float sh[XT / 32];
	int n = blockIdx.x;
	const bf16 *l = logits + (size_t)n * V;
	int tgt = targets[n];
	float mx = -INFINITY;
	for (int i = threadIdx.x; i < V; i += XT)
		mx = fmaxf(mx, bf2f(l[i]));
	mx = block_reduce(mx, sh, true);
	float s = 0.f;
	for (int i = threadIdx.x; i < V; i += XT)
		s += __expf(bf2f(l[i]) - mx);
	s = block_reduce(s, sh, false);
	bool valid = tgt != ignore_id;
	if (threadIdx.x == 0)
		loss[n] = valid ? (mx + logf(s)) - bf2f(l[tgt]) : 0.f;
	if (!dlogits)
		return;
	/* in place is safe: each element is read and then written by one thread,
	 * after the reductions (whose barriers order all earlier reads) */
	__syncthreads();
	bf16 *d = dlogits + (size_t)n * V;
	float inv = 1.f / s;
	for (int i = threadIdx.x; i < V; i += XT) {
		float g = valid ? scale * (__expf(bf2f(l[i]) - mx) * inv - (i == tgt ? 1.f : 0.f)) : 0.f;
		d[i] = f2bf(g);
	}
}

/* acc[0] += sum of loss[0..n), acc[1] += number of rows with a valid target
 * (all rows when targets is NULL); doubles, one block, fixed order. */
__global__ void sum_rows_kernel(double *acc, const float *loss, const int32_t *targets, int n,
				int ignore_id)
{
	__shared__ double sh[256], shc[256];
	double a = 0, c = 0;
	for (int i = threadIdx.x; i < n; i += 256) {
		a += loss[i];
		c += targets ? targets[i] != ignore_id : 1;
	}
	sh[threadIdx.x] = a;
	shc[threadIdx.x] = c;
	__syncthreads();
	for (int o = 128; o > 0; o >>= 1) {
		if (threadIdx.x < o) {
			sh[threadIdx.x] += sh[threadIdx.x + o];
			shc[threadIdx.x] += shc[threadIdx.x + o];
		}
		__syncthreads();
	}
	if (threadIdx.x == 0) {
		acc[0] += sh[0];
		acc[1] += shc[0];
	}
}

extern "C" int moe_cuda_xent(bf16_t *dlogits, float *loss, const bf16_t *logits, const int32_t *targets,
			     int N, int V, int ignore_id, float scale, cudaStream_t s,
			     struct moe_error *err)
{
	if (N <= 0)
		return 0;
	xent_kernel<<<N, XT, 0, s>>>((bf16 *)dlogits, loss, (const bf16 *)logits, targets, V, ignore_id, scale);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_sum_loss(double *acc, const float *loss, const int32_t *targets, int N,
				 int ignore_id, cudaStream_t s, struct moe_error *err)
{
	if (N <= 0)
		return 0;
	sum_rows_kernel<<<1, 256, 0, s>>>(acc, loss, targets, N, ignore_id);
	return CUDA_LAUNCHED(err);
}
