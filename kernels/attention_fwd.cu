/* Causal flash attention, forward (FlashAttention-2 style): scores,
 * probabilities and the output accumulator stay in registers, K/V tiles are
 * double buffered through cp.async; online softmax in fp32; no T x T matrix
 * exists.  Writes out (bf16) and the natural-log log-sum-exp of each query's
 * scaled scores (B, H, T) for the backward pass.  Several kernels, chosen by
 * att_fwd_variant() (list below; MOE_CUDA_ATTENTION_FWD): v1, one block per
 * (64 queries, b, h), four warps of 16 queries on mma.sync; fwd2, its
 * generalisation to wider blocks and two row blocks per warp; and, the
 * default on sm_90, the wgmma kernel of attention_wgmma.cu.  Timings:
 * tests/bench/RESULTS-attention.md. */
#include "attention_common.cuh"
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

template <int DH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_fwd_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk, int ldv,
		     int ldo, int T, int H, float scale_log2)
{
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

/* The same computation with wider blocks: NW warps of MI x 16 queries each
 * (BQ = 16 * MI * NW queries per block) over key tiles of BK keys, so that
 * every K/V tile in shared memory serves more queries, and with MI = 2 every
 * K/V fragment read from shared memory feeds two MMAs.  With MI > 1 the Q
 * fragments are read from shared memory per tile instead of living in
 * registers.  Grid (query tiles, B*H) as in v1: the blocks running at once
 * share a few heads' K/V in L2, the longest (last) query tiles of each head
 * first; a warp whose queries all precede a key tile skips it. */
template <int DH, int MI, int NW, int BK>
__global__ void __launch_bounds__(NW * 32)
attention_fwd2_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk, int ldv,
		      int ldo, int T, int H, float scale_log2)
{
	constexpr int LD = DH + ATT_PAD, BQ = 16 * MI * NW, NT = NW * 32, NJ = BK / 8;
	constexpr bool QREG = MI == 1;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Qs = (bf16 *)smem, *Ks = Qs + BQ * LD, *Vs = Ks + 2 * BK * LD; /* K, V: 2 stages */
	int qt = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
	int q0 = qt * BQ, wq0 = q0 + w * 16 * MI, wlast = wq0 + 16 * MI - 1;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	att_load_tile<DH, BQ, NT>(Qs, qb, ldq, q0, T);
	att_load_tile<DH, BK, NT>(Ks, kb, ldk, 0, T);
	att_load_tile<DH, BK, NT>(Vs, vb, ldv, 0, T);
	att_commit();
	unsigned qa[QREG ? DH / 16 : 1][4];
	float acc[MI][DH / 8][4];
	float m[MI][2], l[MI][2];
#pragma unroll
	for (int i = 0; i < MI; i++) {
#pragma unroll
		for (int d = 0; d < DH / 8; d++)
			acc[i][d][0] = acc[i][d][1] = acc[i][d][2] = acc[i][d][3] = 0.f;
		m[i][0] = m[i][1] = -INFINITY;
		l[i][0] = l[i][1] = 0.f;
	}
	int ntiles = (min(q0 + BQ, T) - 1) / BK + 1;
	bool active = wq0 < T;
	for (int j = 0; j < ntiles; j++) {
		int st = j & 1, k0 = j * BK;
		if (j + 1 < ntiles) {
			att_load_tile<DH, BK, NT>(Ks + (st ^ 1) * BK * LD, kb, ldk, k0 + BK, T);
			att_load_tile<DH, BK, NT>(Vs + (st ^ 1) * BK * LD, vb, ldv, k0 + BK, T);
		}
		att_commit();
		att_wait<1>();
		__syncthreads();
		if (QREG && j == 0) {
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++)
				att_frag_a<LD>(qa[kk], Qs, w * 16, kk * 16);
		}
		if (active && k0 <= wlast) {
			const bf16 *K = Ks + st * BK * LD, *V = Vs + st * BK * LD;
			float s[MI][NJ][4];
			if (QREG) {
				att_mm_abt<DH, NJ>(s[0], qa, K);
			} else {
#pragma unroll
				for (int i = 0; i < MI; i++)
#pragma unroll
					for (int jj = 0; jj < NJ; jj++)
						s[i][jj][0] = s[i][jj][1] = s[i][jj][2] = s[i][jj][3] = 0.f;
#pragma unroll
				for (int kk = 0; kk < DH / 16; kk++) {
					unsigned a[MI][4];
#pragma unroll
					for (int i = 0; i < MI; i++)
						att_frag_a<LD>(a[i], Qs, w * 16 * MI + 16 * i, kk * 16);
#pragma unroll
					for (int jj = 0; jj < NJ; jj += 2) {
						unsigned b0, b1, b2, b3;
						const bf16 *p = K + (8 * jj + (lane % 8) + (lane / 16) * 8) * LD + kk * 16 +
								((lane / 8) % 2) * 8;
						ldsm_x4(b0, b1, b2, b3, p);
#pragma unroll
						for (int i = 0; i < MI; i++) {
							mma16816(s[i][jj], a[i], b0, b1);
							mma16816(s[i][jj + 1], a[i], b2, b3);
						}
					}
				}
			}
			bool edge = k0 + BK > wq0 || k0 + BK > T;
#pragma unroll
			for (int i = 0; i < MI; i++) {
				int qi0 = wq0 + 16 * i + g;
				float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
				for (int jj = 0; jj < NJ; jj++)
#pragma unroll
					for (int e = 0; e < 4; e++) {
						int r = e / 2, kj = k0 + 8 * jj + 2 * t4 + (e & 1);
						float x = s[i][jj][e] * scale_log2;
						if (edge && (kj > qi0 + 8 * r || kj >= T))
							x = -INFINITY;
						s[i][jj][e] = x;
						mx[r] = fmaxf(mx[r], x);
					}
				float alpha[2];
#pragma unroll
				for (int r = 0; r < 2; r++) {
					mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
					mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
					float mn = fmaxf(m[i][r], mx[r]);
					alpha[r] = exp2f(m[i][r] - mn);
					m[i][r] = mn;
				}
				float rs[2] = {0.f, 0.f};
#pragma unroll
				for (int jj = 0; jj < NJ; jj++)
#pragma unroll
					for (int e = 0; e < 4; e++) {
						float p = exp2f(s[i][jj][e] - m[i][e / 2]);
						s[i][jj][e] = p;
						rs[e / 2] += p;
					}
#pragma unroll
				for (int r = 0; r < 2; r++) {
					rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
					rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
					l[i][r] = l[i][r] * alpha[r] + rs[r];
				}
#pragma unroll
				for (int d = 0; d < DH / 8; d++) {
					acc[i][d][0] *= alpha[0];
					acc[i][d][1] *= alpha[0];
					acc[i][d][2] *= alpha[1];
					acc[i][d][3] *= alpha[1];
				}
			}
			/* acc += P V, each V fragment used by all MI row blocks */
#pragma unroll
			for (int ks = 0; ks < BK / 16; ks++) {
				unsigned a[MI][4];
#pragma unroll
				for (int i = 0; i < MI; i++) {
					a[i][0] = pack_bf16(s[i][2 * ks][0], s[i][2 * ks][1]);
					a[i][1] = pack_bf16(s[i][2 * ks][2], s[i][2 * ks][3]);
					a[i][2] = pack_bf16(s[i][2 * ks + 1][0], s[i][2 * ks + 1][1]);
					a[i][3] = pack_bf16(s[i][2 * ks + 1][2], s[i][2 * ks + 1][3]);
				}
#pragma unroll
				for (int d = 0; d < DH / 8; d += 2) {
					unsigned b0, b1, b2, b3;
					const bf16 *p = V + (ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + d * 8 +
							(lane / 16) * 8;
					ldsm_x4_t(b0, b1, b2, b3, p);
#pragma unroll
					for (int i = 0; i < MI; i++) {
						mma16816(acc[i][d], a[i], b0, b1);
						mma16816(acc[i][d + 1], a[i], b2, b3);
					}
				}
			}
		}
		__syncthreads(); /* the stage is refilled next iteration */
	}
#pragma unroll
	for (int i = 0; i < MI; i++)
#pragma unroll
		for (int r = 0; r < 2; r++) {
			int qi = wq0 + 16 * i + g + 8 * r;
			if (qi >= T)
				continue;
			float inv = 1.f / l[i][r];
			bf16 *ob = out + ((size_t)b * T + qi) * ldo + h * DH + 2 * t4;
#pragma unroll
			for (int d = 0; d < DH / 8; d++)
				*(__nv_bfloat162 *)(ob + 8 * d) =
					__floats2bfloat162_rn(acc[i][d][2 * r] * inv, acc[i][d][2 * r + 1] * inv);
			if (t4 == 0)
				lse[(size_t)bh * T + qi] = (m[i][r] + log2f(l[i][r])) * 0.69314718055994531f;
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
	attention_fwd_kernel<DH><<<grid, ATT_WARPS * 32, smem, s>>>(out, lse, q, k, v, ldq, ldk, ldv, ldo, T, H,
								   scale_log2);
	return CUDA_LAUNCHED(err);
}

template <int DH, int MI, int NW, int BK>
static int launch_fwd2(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk,
		       int ldv, int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	constexpr int BQ = 16 * MI * NW;
	size_t smem = (size_t)(BQ + 4 * BK) * (DH + ATT_PAD) * sizeof(bf16);
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_fwd2_kernel<DH, MI, NW, BK>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
			  err)) != 0)
		return rc;
	dim3 grid(moe_cdiv(T, BQ), B * H);
	float scale_log2 = LOG2E / sqrtf((float)DH);
	attention_fwd2_kernel<DH, MI, NW, BK><<<grid, NW * 32, smem, s>>>(out, lse, q, k, v, ldq, ldk, ldv, ldo, T,
									 H, scale_log2);
	return CUDA_LAUNCHED(err);
}

/* Forward variants, by number (1-based) and MOE_CUDA_ATTENTION_FWD name:
 *   1 v1     64 queries per block, 4 warps x 16 (the session-2 kernel)
 *   2 m2     128 queries, 4 warps x 32 (two row blocks share each fragment)
 *   3 w8     128 queries, 8 warps x 16
 *   4 m2k32  128 queries, 4 warps x 32, 32-key tiles
 *   5 m2w2   64 queries, 2 warps x 32
 *   6 wg     128 queries, two warpgroups of 64 on wgmma (sm_90a,
 *            attention_wgmma.cu; m2 on other devices)
 * All give the same results up to fp32 summation order (each is
 * deterministic); head sizes below 64 always run v1. */
static const char *const att_fwd_names[] = {"v1", "m2", "w8", "m2k32", "m2w2", "wg"};
#define ATT_FWD_N ((int)(sizeof(att_fwd_names) / sizeof(att_fwd_names[0])))
#define ATT_FWD_DEFAULT 6 /* wg: fastest at Dh 96 and 128 (RESULTS-attention.md) */
static int att_fwd_forced, att_fwd_env = -1;

static int att_fwd_variant(void)
{
	if (att_fwd_forced)
		return att_fwd_forced;
	if (att_fwd_env < 0) {
		const char *e = getenv("MOE_CUDA_ATTENTION_FWD");
		int v = ATT_FWD_DEFAULT;
		for (int i = 0; e && i < ATT_FWD_N; i++)
			if (strcmp(e, att_fwd_names[i]) == 0)
				v = i + 1;
		att_fwd_env = v;
	}
	return att_fwd_env;
}

extern "C" const char *moe_cuda_attention_fwd_config(int v)
{
	if (v < 0 || v > ATT_FWD_N)
		return NULL;
	att_fwd_forced = v;
	return att_fwd_names[att_fwd_variant() - 1];
}

template <int DH>
static int launch_fwd_any(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk,
			  int ldv, int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	switch (DH >= 64 ? att_fwd_variant() : 1) {
	case 2: return launch_fwd2<DH, 2, 4, 64>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 3: return launch_fwd2<DH, 1, 8, 64>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 4: return launch_fwd2<DH, 2, 4, 32>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 5: return launch_fwd2<DH, 2, 2, 64>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 6: {
		int rc = moe_att_fwd_wgmma(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, DH, s, err);
		if (rc != 1)
			return rc;
		return launch_fwd2<DH, 2, 4, 64>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err);
	}
	default: return launch_fwd<DH>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err);
	}
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
