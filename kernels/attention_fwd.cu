/* Causal flash attention, forward (FlashAttention-2 style): scores,
 * probabilities and the output accumulator stay in registers, K/V tiles are
 * double buffered through cp.async; online softmax in fp32; no T x T matrix
 * exists.  Writes out (bf16) and the natural-log log-sum-exp of each query's
 * scaled scores (B, H, T) for the backward pass.  Several kernels, chosen by
 * att_fwd_variant() (list below; MOE_CUDA_ATTENTION_FWD): v1, one block per
 * (64 queries, b, h), four warps of 16 queries on mma.sync, the wgmma
 * kernels of attention_wgmma.cu, the warp-specialised kernels of
 * attention_fa3.cu and, the default on sm_90 at head sizes 96 and 128, their
 * persistent ping-pong form in attention_fa3p.cu.  Timings:
 * tests/bench/RESULTS-attention.md. */
#include "attention_common.cuh"
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

/* attention_fa3.cu: the forward warp-specialised (variants fa3, fa3k128),
 * Dh 64, 96, 128, key tiles of bn (64 or 128) rows, the grid grouped by 8
 * heads; returns 1 (nothing launched) where it cannot run (no wgmma, no
 * tensor-map entry point in the driver, q, k or v not 16-byte aligned),
 * else 0 or a negative MOE_E* code. */
int moe_att_fwd_fa3(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk, int ldv,
		    int ldo, int B, int T, int H, int Dh, int bn, cudaStream_t s, struct moe_error *err);

template <int DH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk, int ldv,
		     int ldo, int T, int H, float scale_log2)
{
	MOE_PDL_ENTRY();
	constexpr int LD = DH + ATT_PAD;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Qs = (bf16 *)smem, *Ks = Qs + ATT_BR * LD, *Vs = Ks + 2 * ATT_BR * LD; /* K, V: 2 stages */
	int qt = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
	int q0 = qt * ATT_BR;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	att_load_tile<DH>(Qs, qb, ldq, q0, T);
	att_load_tile<DH>(Ks, kb, ldk, 0, T);
	att_load_tile<DH>(Vs, vb, ldv, 0, T);
	att_commit();
	unsigned qa[DH / 16][4];
	float acc[DH / 8][4];
#pragma unroll
	for (int d = 0; d < DH / 8; d++)
		acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.f;
	float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
	int qi[2] = {q0 + w * 16 + g, q0 + w * 16 + g + 8};
	int ntiles = qt + 1;
	for (int j = 0; j < ntiles; j++) {
		int st = j & 1;
		if (j + 1 < ntiles) {
			att_load_tile<DH>(Ks + (st ^ 1) * ATT_BR * LD, kb, ldk, (j + 1) * ATT_BR, T);
			att_load_tile<DH>(Vs + (st ^ 1) * ATT_BR * LD, vb, ldv, (j + 1) * ATT_BR, T);
		}
		att_commit();
		att_wait<1>();
		__syncthreads();
		if (j == 0) {
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++)
				att_frag_a<LD>(qa[kk], Qs, w * 16, kk * 16);
		}
		const bf16 *K = Ks + st * ATT_BR * LD, *V = Vs + st * ATT_BR * LD;
		float s[8][4];
		att_mm_abt<DH>(s, qa, K);
		int k0 = j * ATT_BR;
		bool edge = k0 + ATT_BR > q0 || k0 + ATT_BR > T;
		float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
		for (int jj = 0; jj < 8; jj++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				int r = e / 2, kj = k0 + 8 * jj + 2 * t4 + (e & 1);
				float x = s[jj][e] * scale_log2;
				/* one condition an element, unlike the wgmma kernels'
				 * mask block (awg_mask_qk): that form ran 1-3% slower
				 * here (session 23) */
				if (edge && (kj > qi[r] || kj >= T))
					x = -INFINITY;
				s[jj][e] = x;
				mx[r] = fmaxf(mx[r], x);
			}
		float alpha[2];
#pragma unroll
		for (int r = 0; r < 2; r++) {
			mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
			mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
			float mn = fmaxf(m[r], mx[r]);
			alpha[r] = exp2f(m[r] - mn);
			m[r] = mn;
		}
		float rs[2] = {0.f, 0.f};
#pragma unroll
		for (int jj = 0; jj < 8; jj++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				float p = exp2f(s[jj][e] - m[e / 2]);
				s[jj][e] = p;
				rs[e / 2] += p;
			}
#pragma unroll
		for (int r = 0; r < 2; r++) {
			rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
			rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
			l[r] = l[r] * alpha[r] + rs[r];
		}
#pragma unroll
		for (int d = 0; d < DH / 8; d++) {
			acc[d][0] *= alpha[0];
			acc[d][1] *= alpha[0];
			acc[d][2] *= alpha[1];
			acc[d][3] *= alpha[1];
		}
		att_mm_pv<DH>(acc, s, V);
		__syncthreads(); /* the stage is refilled next iteration */
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		if (qi[r] >= T)
			continue;
		float inv = 1.f / l[r];
		bf16 *ob = out + ((size_t)b * T + qi[r]) * ldo + h * DH + 2 * t4;
#pragma unroll
		for (int d = 0; d < DH / 8; d++)
			*(__nv_bfloat162 *)(ob + 8 * d) =
				__floats2bfloat162_rn(acc[d][2 * r] * inv, acc[d][2 * r + 1] * inv);
		if (t4 == 0)
			lse[(size_t)bh * T + qi[r]] = (m[r] + log2f(l[r])) * 0.69314718055994531f;
	}
}

template <int DH>
static int launch_fwd(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk,
		      int ldv, int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	size_t smem = 5 * ATT_BR * (DH + ATT_PAD) * sizeof(bf16);
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_fwd_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
			  err)) != 0)
		return rc;
	dim3 grid(moe_cdiv(T, ATT_BR), B * H);
	float scale_log2 = LOG2E / sqrtf((float)DH);
	moe_launch(attention_fwd_kernel<DH>, grid, ATT_WARPS * 32, smem, s, out, lse, q, k, v, ldq, ldk, ldv, ldo, T, H,
		   scale_log2);
	return CUDA_LAUNCHED(err);
}

/* Forward variants, by number (1-based) and MOE_CUDA_ATTENTION_FWD name:
 *   1 v1    64 queries per block, 4 warps x 16 on mma.sync (the session-2
 *           kernel; the fallback on devices without wgmma)
 *   2 wg    128 queries, two warpgroups of 64 on wgmma (sm_90a,
 *           attention_wgmma.cu; v1 on other devices)
 *   3 wg1   wg with one barrier a key tile (the next tile loaded after it)
 *   4 fa3   warp-specialised (attention_fa3.cu): a TMA producer warp
 *           streaming 64-row K/V tiles into a 4-stage mbarrier ring, two
 *           consumer warpgroups of 64 queries, each tile's softmax beside
 *           the previous tile's P V, the grid in groups of 8 heads; the
 *           default at Dh 96 and 128 from session 5 (H100: 0.319 against
 *           wg1's 0.414 ms at seed-base, 1.353 against wg's 1.753-2.013 at
 *           olmoe) to session 13; wg1 where it cannot run; wg was the
 *           default at Dh 64, where fa3 was not timed, until session 22)
 *   5 fa3k128  fa3 with 128-row K/V tiles in 3 stages (S 64 x 128 a
 *           warpgroup, half as many tiles and waits)
 *   6 fa3pk128  fa3k128 persistent and ping-pong (attention_fa3p.cu): one
 *           block an SM looping over fa3's work items (claimed from a
 *           device counter), the two consumer warpgroups taking turns at
 *           the tensor cores (named barriers); fa3k128's arithmetic; the
 *           default at Dh 96 and 128 since session 14 (H100, call 96:
 *           0.290-0.297 ms a layer against fa3's 0.314-0.318 at seed-base,
 *           0.407-0.451 against 0.489-0.526 at olmoe's shape; in the step's
 *           trace 5.65-5.77 ms against 6.02-6.26 for the 19 layers);
 *           and at Dh 64 since session 22 (H200, call 166, B 16 T 2048
 *           H 12: 0.306-0.313 ms against wg's 0.440-0.450); fa3k128
 *           where it cannot run
 * All give the same results up to fp32 summation order (each is
 * deterministic); head sizes below 64 always run v1.  The variants that
 * lost (fa3h, fa3p, fa3pn) were removed in session 19; see git history and
 * tests/bench/RESULTS-attention.md. */
static const char *const att_fwd_names[] = {"v1", "wg", "wg1", "fa3", "fa3k128", "fa3pk128"};
#define ATT_FWD_N ((int)(sizeof(att_fwd_names) / sizeof(att_fwd_names[0])))
static struct att_choice att_fwd_ch = {"MOE_CUDA_ATTENTION_FWD", att_fwd_names, ATT_FWD_N, 0, -1};

static int att_fwd_variant(int Dh)
{
	return att_choose(&att_fwd_ch, Dh == 64 || Dh == 96 || Dh == 128 ? 6 : 2);
}

extern "C" int moe_cuda_attention_fwd_env_check(struct moe_error *err)
{
	return att_env_check(&att_fwd_ch, err);
}

extern "C" const char *moe_cuda_attention_fwd_name(int Dh)
{
	return att_fwd_names[att_fwd_variant(Dh) - 1];
}

static int att_fwd_fallbacks;

extern "C" int moe_cuda_attention_fwd_fallbacks(void)
{
	return att_fwd_fallbacks;
}

extern "C" const char *moe_cuda_attention_fwd_config(int v)
{
	if (v < 0 || v > ATT_FWD_N)
		return NULL;
	att_fwd_ch.forced = v;
	return att_fwd_names[att_fwd_variant(96) - 1];
}

template <int DH>
static int launch_fwd_any(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk,
			  int ldv, int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	int var = att_fwd_variant(DH), rc;
	if (var == 6) {
		if ((rc = moe_cuda_attention_fwd_fa3p((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k,
						      (const bf16_t *)v, ldq, ldk, ldv, ldo, B, T, H, DH, s, err)) != 1)
			return rc;
		att_fwd_fallbacks++;
		var = 5; /* the same arithmetic without persistence */
	}
	if (var >= 4) {
		if ((rc = moe_att_fwd_fa3(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, DH, var == 5 ? 128 : 64, s,
					  err)) != 1)
			return rc;
		att_fwd_fallbacks++;
		var = 3;
	}
	if (var >= 2) {
		if ((rc = moe_att_fwd_wgmma(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, DH, var == 3, s, err)) != 1)
			return rc;
		att_fwd_fallbacks++;
	}
	return launch_fwd<DH>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err);
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
	case 64: return launch_fwd_any<64>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 96: return launch_fwd_any<96>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 128: return launch_fwd_any<128>(o, lse, qq, kk, vv, ldq, ldk, ldv, ldo, B, T, H, s, err);
	default:
		return moe_cuda_attention_small_fwd(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, Dh, s, err);
	}
}
