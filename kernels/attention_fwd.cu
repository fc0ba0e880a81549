/* Causal flash attention, forward: one block per (64 queries, b, h), four
 * warps of 16 queries; online softmax in fp32; no T x T matrix exists.
 * Writes out (bf16) and the natural-log log-sum-exp of each query's scaled
 * scores (B, H, T) for the backward pass. */
#include "attention_common.cuh"
#include "kernels.h"

template <int DH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk,
		     int ldv, int ldo, int T, int H, float scale_log2)
{
	constexpr int LD = DH + ATT_PAD;
	constexpr int OLD = DH + 4;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Qs = (bf16 *)smem, *Ks = Qs + ATT_BR * LD, *Vs = Ks + ATT_BR * LD;
	float *Sf = (float *)(Vs + ATT_BR * LD);        /* (warps, 16, SLD) */
	float *Of = Sf + ATT_WARPS * 16 * ATT_SLD;      /* (warps, 16, OLD) */
	bf16 *Pb = (bf16 *)(Of + ATT_WARPS * 16 * OLD); /* (warps, 16, PLD) */
	int qt = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32;
	int q0 = qt * ATT_BR;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	float *S = Sf + w * 16 * ATT_SLD, *O = Of + w * 16 * OLD;
	bf16 *P = Pb + w * 16 * ATT_PLD;
	att_load_tile<DH>(Qs, qb, ldq, q0, T);
	int r = lane / 2, half = lane % 2;
	int qi = q0 + w * 16 + r;
	float m = -INFINITY, l = 0.f;
	float acc[DH / 2];
#pragma unroll
	for (int i = 0; i < DH / 2; i++)
		acc[i] = 0.f;
	int ntiles = qt + 1;
	for (int j = 0; j < ntiles; j++) {
		int k0 = j * ATT_BR;
		__syncthreads();
		att_load_tile<DH>(Ks, kb, ldk, k0, T);
		att_load_tile<DH>(Vs, vb, ldv, k0, T);
		__syncthreads();
		att_mm_abt<DH>(S, Qs + w * 16 * LD, Ks);
		__syncwarp();
		float s[32];
		float mx = -INFINITY;
#pragma unroll
		for (int c = 0; c < 32; c++) {
			int kj = k0 + half * 32 + c;
			float x = S[r * ATT_SLD + half * 32 + c] * scale_log2;
			s[c] = (kj <= qi && kj < T) ? x : -INFINITY;
			mx = fmaxf(mx, s[c]);
		}
		mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
		float mn = fmaxf(m, mx);
		float alpha = exp2f(m - mn);
		float rs = 0.f;
#pragma unroll
		for (int c = 0; c < 32; c++) {
			float p = exp2f(s[c] - mn);
			rs += p;
			P[r * ATT_PLD + half * 32 + c] = f2bf(p);
		}
		rs += __shfl_xor_sync(0xffffffffu, rs, 1);
		l = l * alpha + rs;
		m = mn;
		__syncwarp();
		/* O_tmp (16, DH) = P (16, 64) @ V (64, DH) */
#pragma unroll
		for (int nf = 0; nf < DH / 16; nf++) {
			att_fc cf;
			wmma::fill_fragment(cf, 0.f);
#pragma unroll
			for (int kk = 0; kk < ATT_BR / 16; kk++) {
				att_fa a;
				att_fb_row bfr;
				wmma::load_matrix_sync(a, P + kk * 16, ATT_PLD);
				wmma::load_matrix_sync(bfr, Vs + kk * 16 * LD + nf * 16, LD);
				wmma::mma_sync(cf, a, bfr, cf);
			}
			wmma::store_matrix_sync(O + nf * 16, cf, OLD, wmma::mem_row_major);
		}
		__syncwarp();
#pragma unroll
		for (int i = 0; i < DH / 2; i++)
			acc[i] = acc[i] * alpha + O[r * OLD + half * (DH / 2) + i];
	}
	if (qi < T) {
		float inv = 1.f / l;
		bf16 *ob = out + ((size_t)b * T + qi) * ldo + h * DH + half * (DH / 2);
#pragma unroll
		for (int i = 0; i < DH / 2; i += 2)
			*(__nv_bfloat162 *)(ob + i) = __floats2bfloat162_rn(acc[i] * inv, acc[i + 1] * inv);
		if (half == 0)
			lse[(size_t)bh * T + qi] = (m + log2f(l)) * 0.69314718055994531f;
	}
}

template <int DH>
static int launch_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq,
		      int ldk, int ldv, int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	constexpr int LD = DH + ATT_PAD;
	size_t smem = 3 * ATT_BR * LD * sizeof(bf16) + ATT_WARPS * 16 * ATT_SLD * sizeof(float) +
		      ATT_WARPS * 16 * (DH + 4) * sizeof(float) + ATT_WARPS * 16 * ATT_PLD * sizeof(bf16);
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_fwd_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
			  err)) != 0)
		return rc;
	dim3 grid(moe_cdiv(T, ATT_BR), B * H);
	float scale_log2 = 1.4426950408889634f / sqrtf((float)DH);
	attention_fwd_kernel<DH><<<grid, ATT_WARPS * 32, smem, s>>>(out, lse, q, k, v, ldq, ldk, ldv, ldo, T,
								   H, scale_log2);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_attention_fwd(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k,
				      const bf16_t *v, int ldq, int ldk, int ldv, int ldo, int B, int T,
				      int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	if (B <= 0 || T <= 0)
		return 0;
	if (ldq % 8 || ldk % 8 || ldv % 8 || ldo % 2)
		return moe_error_set(err, MOE_EUNSUPPORTED, "attention: row strides must be multiples of 8");
	bf16 *o = (bf16 *)out;
	const bf16 *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v;
	switch (Dh) {
	case 16: return launch_fwd<16>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 32: return launch_fwd<32>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 64: return launch_fwd<64>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 96: return launch_fwd<96>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 128: return launch_fwd<128>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	default:
		return moe_error_set(err, MOE_EUNSUPPORTED, "attention: head size %d not built (16, 32, 64, 96, 128)", Dh);
	}
}
