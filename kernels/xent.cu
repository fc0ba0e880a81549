/* Cross-entropy over the vocabulary for a chunk of rows: per-row loss and
 * dlogits = scale * (softmax - onehot) in bf16 for the head's backward GEMMs.
 * Logits are bf16 (the LM head's GEMM output); statistics are fp32.
 * One block per row; rows whose target is ignore_id get loss 0 and zero
 * gradient. */
#include "cuda_common.h"
#include "kernels.h"

#define XT 512

extern int moe_memk_legacy_on; /* rmsnorm.cu: moe_cuda_memk_legacy() */

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

/* One row's loss and (dlogits != NULL) gradient from its nv 16-byte
 * vectors at row (global or shared memory): a running max and sum of
 * exponentials (rescaled when the max grows) in one pass, dlogits in a
 * second (at dlogits + off; the loss at loss[n]).  The target's logit: zt,
 * read by the caller before anything could overwrite it, or (zrow not
 * NULL) zrow[tgt]. */
static __device__ __forceinline__ void xent_row16(bf16 *dlogits, size_t off, float *loss, int n, const uint4 *row,
						  int nv, int tgt, bool valid, float zt, const bf16 *zrow,
						  float scale, float *sh)
{
	float mx = -INFINITY, s = 0.f;
	for (int i = threadIdx.x; i < nv; i += XT) {
		uint4 u = row[i];
		const bf16 *h = (const bf16 *)&u;
		float f[8], m2 = mx;
#pragma unroll
		for (int j = 0; j < 8; j++) {
			f[j] = bf2f(h[j]);
			m2 = fmaxf(m2, f[j]);
		}
		if (m2 > mx) {
			s *= __expf(mx - m2); /* 0 while mx is -inf */
			mx = m2;
		}
#pragma unroll
		for (int j = 0; j < 8; j++)
			s += __expf(f[j] - mx);
	}
	float M = block_reduce(mx, sh, true);
	float S = block_reduce(mx == -INFINITY ? 0.f : s * __expf(mx - M), sh, false);
	if (threadIdx.x == 0)
		loss[n] = valid ? (M + logf(S)) - (zrow ? bf2f(zrow[tgt]) : zt) : 0.f;
	if (!dlogits)
		return;
	uint4 *d = (uint4 *)(dlogits + off);
	float inv = 1.f / S;
	for (int i = threadIdx.x; i < nv; i += XT) {
		uint4 u = row[i], o;
		const bf16 *h = (const bf16 *)&u;
		bf16 *oh = (bf16 *)&o;
#pragma unroll
		for (int j = 0; j < 8; j++) {
			float g = scale * (__expf(bf2f(h[j]) - M) * inv - (i * 8 + j == tgt ? 1.f : 0.f));
			oh[j] = f2bf(valid ? g : 0.f);
		}
		d[i] = o;
	}
}

__global__ void xent_kernel(bf16 *dlogits, float *loss, const bf16 *logits, const int32_t *targets,
			    int V, int ignore_id, float scale)
{
	MOE_PDL_ENTRY();
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

/* The same for V % 8 == 0 (16-byte rows): one pass of 16-byte loads keeps
 * a running max and sum of exponentials (rescaled when the max grows),
 * then one pass writes dlogits; the row's second read mostly hits L2. */
__global__ void xent_vec_kernel(bf16 *dlogits, float *loss, const bf16 *logits, const int32_t *targets,
				int V, int ignore_id, float scale)
{
	MOE_PDL_ENTRY();
	__shared__ float sh[XT / 32];
	int n = blockIdx.x, nv = V / 8;
	const uint4 *l = (const uint4 *)(logits + (size_t)n * V);
	int tgt = targets[n];
	bool valid = tgt != ignore_id;
	/* read before the barriers below, so before any in-place write */
	float zt = threadIdx.x == 0 && valid ? bf2f(logits[(size_t)n * V + tgt]) : 0.f;
	xent_row16(dlogits, (size_t)n * V, loss, n, l, nv, tgt, valid, zt, NULL, scale, sh);
}

/* The default for V % 8 == 0 on sm_90 when a row fits in shared memory
 * (V <= ~113k): one thread brings the whole row in by bulk copies (TMA)
 * completing on an mbarrier, so the row is read from memory once and all of
 * it is in flight at once; the max and the sum of exponentials come from
 * one pass over shared memory, dlogits from a second.  Two rows of the
 * seed-base vocabulary (2 x 98 KiB) fit an SM. */
#define XB_CHUNK 16384

__global__ void __launch_bounds__(XT)
xent_smem_kernel(bf16 *dlogits, float *loss, const bf16 *logits, const int32_t *targets, int V, int ignore_id,
		 float scale)
{
	MOE_PDL_ENTRY();
	extern __shared__ __align__(128) uint4 srow[]; /* (V / 8) */
	__shared__ __align__(8) uint64_t bar;
	__shared__ float sh[XT / 32];
	int n = blockIdx.x, nv = V / 8;
	uint32_t b = (uint32_t)__cvta_generic_to_shared(&bar);
	if (threadIdx.x == 0) {
		uint32_t bytes = (uint32_t)V * 2, dst = (uint32_t)__cvta_generic_to_shared(srow);
		const char *src = (const char *)(logits + (size_t)n * V);
		asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(b) : "memory");
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
		asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(b), "r"(bytes) : "memory");
		for (uint32_t o = 0; o < bytes; o += XB_CHUNK) {
			uint32_t len = bytes - o < XB_CHUNK ? bytes - o : XB_CHUNK;
			asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst + o),
				     "l"(src + o), "r"(len), "r"(b)
				     : "memory");
		}
	}
	int tgt = targets[n];
	bool valid = tgt != ignore_id;
	__syncthreads(); /* the barrier is initialised */
	uint32_t ok;
	do {
		asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], 0;\n"
			     "selp.u32 %0, 1, 0, p;\n}\n"
			     : "=r"(ok)
			     : "r"(b)
			     : "memory");
	} while (!ok);
	xent_row16(dlogits, (size_t)n * V, loss, n, srow, nv, tgt, valid, 0.f, (const bf16 *)srow, scale, sh);
}

/* the largest dynamic shared memory a block may have on this device (0
 * before sm_90), asked once (one device per process) */
static int xent_smem_limit(void)
{
	static int lim = -1;
	if (lim >= 0)
		return lim;
	int dev = 0, major = 0, optin = 0;
	cudaGetDevice(&dev);
	cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
	cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
	return lim = major >= 9 ? optin - 1024 : 0;
}

/* acc[0] = sum of loss[0..n), acc[1] = number of rows with a valid target
 * (all rows when targets is NULL); doubles, one block, fixed order.  The
 * kernel stores both, so the slot needs no clearing before (a memset in
 * the stream costs a launch gap on each side). */
__global__ void sum_rows_kernel(double *acc, const float *loss, const int32_t *targets, int n,
				int ignore_id)
{
	MOE_PDL_ENTRY();
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
		acc[0] = sh[0];
		acc[1] = shc[0];
	}
}

extern "C" int moe_cuda_xent(bf16_t *dlogits, float *loss, const bf16_t *logits, const int32_t *targets,
			     int N, int V, int ignore_id, float scale, cudaStream_t s,
			     struct moe_error *err)
{
	if (N <= 0)
		return 0;
	bool vec = V % 8 == 0 && (uintptr_t)logits % 16 == 0 && (uintptr_t)dlogits % 16 == 0;
	size_t sm = (size_t)V * 2;
	if (vec && !moe_memk_legacy_on && sm <= (size_t)xent_smem_limit()) {
		static int sm_set; /* the kernel's shared-memory limit, raised once per size */
		int rc;
		if ((int)sm > sm_set) {
			if ((rc = CUDA_OK(cudaFuncSetAttribute(xent_smem_kernel,
							       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm),
					  err)) != 0)
				return rc;
			sm_set = (int)sm;
		}
		moe_launch(xent_smem_kernel, N, XT, sm, s, (bf16 *)dlogits, loss, (const bf16 *)logits, targets, V,
			   ignore_id, scale);
	} else if (vec)
		moe_launch(xent_vec_kernel, N, XT, 0, s, (bf16 *)dlogits, loss, (const bf16 *)logits, targets, V,
			   ignore_id, scale);
	else
		moe_launch(xent_kernel, N, XT, 0, s, (bf16 *)dlogits, loss, (const bf16 *)logits, targets, V, ignore_id,
			   scale);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_sum_loss(double *acc, const float *loss, const int32_t *targets, int N,
				 int ignore_id, cudaStream_t s, struct moe_error *err)
{
	if (N < 0)
		N = 0; /* still stores the zero sums */
	moe_launch(sum_rows_kernel, 1, 256, 0, s, acc, loss, targets, N, ignore_id);
	return CUDA_LAUNCHED(err);
}
