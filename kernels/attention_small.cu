/* Causal attention for head sizes the tensor-core kernels do not cover
 * (Dh not in {16, 32, 64, 96, 128}, e.g. the micro test models): one warp
 * per query row, fp32 scalar arithmetic, online softmax; the backward
 * accumulates dK and dV with fp32 atomics into scratch and converts them to
 * bf16 at the end.  Meant for small models only (O(T^2 Dh) work per head
 * without tensor cores). */
#include "cuda_common.h"
#include "kernels.h"

#define SMALL_MAX_DH 256

__global__ void att_small_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq,
				     int ldk, int ldv, int ldo, int B, int T, int H, int Dh, float scale)
{
	MOE_PDL_ENTRY();
	extern __shared__ float sq[]; /* (warps, Dh) */
	int warps = blockDim.x / 32, wi = threadIdx.x / 32, lane = threadIdx.x % 32;
	size_t job = (size_t)blockIdx.x * warps + wi;
	if (job >= (size_t)B * H * T)
		return;
	int i = job % T, bh = job / T, b = bh / H, h = bh % H;
	float *qs = sq + wi * Dh;
	const bf16 *qr = q + ((size_t)b * T + i) * ldq + h * Dh;
	for (int d = lane; d < Dh; d += 32)
		qs[d] = bf2f(qr[d]);
	__syncwarp();
	float m = -INFINITY, l = 0.f, acc[SMALL_MAX_DH];
	for (int d = 0; d < Dh; d++)
		acc[d] = 0.f;
	for (int j = lane; j <= i; j += 32) {
		const bf16 *kr = k + ((size_t)b * T + j) * ldk + h * Dh, *vr = v + ((size_t)b * T + j) * ldv + h * Dh;
		float s = 0.f;
		for (int d = 0; d < Dh; d++)
			s += qs[d] * bf2f(kr[d]);
		s *= scale;
		float mn = fmaxf(m, s), corr = __expf(m - mn), p = __expf(s - mn);
		l = l * corr + p;
		for (int d = 0; d < Dh; d++)
			acc[d] = acc[d] * corr + p * bf2f(vr[d]);
		m = mn;
	}
	float M = warp_max(m);
	float f = m == -INFINITY ? 0.f : __expf(m - M);
	float L = warp_sum(l * f);
	bf16 *o = out + ((size_t)b * T + i) * ldo + h * Dh;
	for (int d = 0; d < Dh; d++) {
		float a = warp_sum(acc[d] * f);
		if (lane == 0)
			o[d] = f2bf(a / L);
	}
	if (lane == 0)
		lse[(size_t)bh * T + i] = M + logf(L);
}

__global__ void att_small_bwd_kernel(bf16 *dq, float *dk32, float *dv32, const bf16 *dout, const bf16 *q,
				     const bf16 *k, const bf16 *v, const float *lse, const float *delta, int ldq,
				     int ldk, int ldv, int ldo, int B, int T, int H, int Dh, float scale)
{
	MOE_PDL_ENTRY();
	extern __shared__ float sq[]; /* (warps, 2, Dh) */
	int warps = blockDim.x / 32, wi = threadIdx.x / 32, lane = threadIdx.x % 32;
	size_t job = (size_t)blockIdx.x * warps + wi;
	if (job >= (size_t)B * H * T)
		return;
	int i = job % T, bh = job / T, b = bh / H, h = bh % H;
	float *qs = sq + wi * 2 * Dh, *ds_ = qs + Dh;
	const bf16 *qr = q + ((size_t)b * T + i) * ldq + h * Dh, *dr = dout + ((size_t)b * T + i) * ldo + h * Dh;
	for (int d = lane; d < Dh; d += 32) {
		qs[d] = bf2f(qr[d]);
		ds_[d] = bf2f(dr[d]);
	}
	__syncwarp();
	float L = lse[(size_t)bh * T + i], dl = delta[(size_t)bh * T + i], acc[SMALL_MAX_DH];
	for (int d = 0; d < Dh; d++)
		acc[d] = 0.f;
	size_t hd = (size_t)H * Dh;
	for (int j = lane; j <= i; j += 32) {
		const bf16 *kr = k + ((size_t)b * T + j) * ldk + h * Dh, *vr = v + ((size_t)b * T + j) * ldv + h * Dh;
		float s = 0.f, dp = 0.f;
		for (int d = 0; d < Dh; d++) {
			s += qs[d] * bf2f(kr[d]);
			dp += ds_[d] * bf2f(vr[d]);
		}
		float p = __expf(s * scale - L);
		float g = p * (dp - dl) * scale;
		float *dkr = dk32 + ((size_t)b * T + j) * hd + h * Dh, *dvr = dv32 + ((size_t)b * T + j) * hd + h * Dh;
		for (int d = 0; d < Dh; d++) {
			acc[d] += g * bf2f(kr[d]);
			atomicAdd(dkr + d, g * qs[d]);
			atomicAdd(dvr + d, p * ds_[d]);
		}
	}
	bf16 *o = dq + ((size_t)b * T + i) * ldq + h * Dh;
	for (int d = 0; d < Dh; d++) {
		float a = warp_sum(acc[d]);
		if (lane == 0)
			o[d] = f2bf(a);
	}
}

/* dk, dv (strided bf16) from the packed fp32 accumulators (B*T, H*Dh). */
__global__ void att_small_convert_kernel(bf16 *dk, bf16 *dv, const float *dk32, const float *dv32, int ldk, int ldv,
					 size_t rows, int HD)
{
	MOE_PDL_ENTRY();
	size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (x >= rows * HD)
		return;
	size_t r = x / HD, c = x % HD;
	dk[r * ldk + c] = f2bf(dk32[x]);
	dv[r * ldv + c] = f2bf(dv32[x]);
}

static int check_small(int Dh, struct moe_error *err)
{
	if (Dh > SMALL_MAX_DH || Dh <= 0)
		return moe_error_set(err, MOE_EUNSUPPORTED, "attention: head size %d not supported (max %d)", Dh,
				     SMALL_MAX_DH);
	return 0;
}

extern "C" int moe_cuda_attention_small_fwd(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k,
					    const bf16_t *v, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
					    int Dh, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_small(Dh, err)) != 0)
		return rc;
	size_t jobs = (size_t)B * H * T;
	moe_launch(att_small_fwd_kernel, moe_cdiv(jobs, 4), 128, 4 * Dh * sizeof(float), s, (bf16 *)out, lse,
		   (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, ldq, ldk, ldv, ldo, B, T, H, Dh,
		   1.f / sqrtf((float)Dh));
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_attention_small_bwd(bf16_t *dq, bf16_t *dk, bf16_t *dv, const float *delta, float *dk32,
					    float *dv32, const bf16_t *dout, const bf16_t *q, const bf16_t *k,
					    const bf16_t *v, const float *lse, int ldq, int ldk, int ldv, int ldo, int B,
					    int T, int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_small(Dh, err)) != 0)
		return rc;
	size_t rows = (size_t)B * T, n = rows * H * Dh, jobs = (size_t)B * H * T;
	if ((rc = CUDA_OK(cudaMemsetAsync(dk32, 0, n * sizeof(float), s), err)) != 0 ||
	    (rc = CUDA_OK(cudaMemsetAsync(dv32, 0, n * sizeof(float), s), err)) != 0)
		return rc;
	moe_launch(att_small_bwd_kernel, moe_cdiv(jobs, 4), 128, 4 * 2 * Dh * sizeof(float), s, (bf16 *)dq, dk32, dv32,
		   (const bf16 *)dout, (const bf16 *)q, (const bf16 *)k, (const bf16 *)v, lse, delta, ldq, ldk, ldv,
		   ldo, B, T, H, Dh, 1.f / sqrtf((float)Dh));
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	moe_launch(att_small_convert_kernel, moe_cdiv(n, 256), 256, 0, s, (bf16 *)dk, (bf16 *)dv, dk32, dv32, ldk, ldv,
		   rows, H * Dh);
	return CUDA_LAUNCHED(err);
}
