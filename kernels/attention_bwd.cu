/* Causal flash attention, backward (FlashAttention-2 style), two kernels,
 * no atomics, deterministic:
 *   dK, dV: per (64 keys, b, h), looping over the query tiles at or after
 *           the diagonal; P^T and dP^T are recomputed in registers from q,
 *           k, v, dO and lse;
 *   dQ:     per (64 queries, b, h), looping over the key tiles up to it.
 * delta = rowsum(dO * O) is computed first.  dq, dk, dv are bf16 and share
 * the row strides of q, k and v.  v1 runs them on mma.sync, four warps of 16
 * rows; on sm_90 the default runs the same computation on warpgroup MMAs
 * (attention_wgmma.cu, attention_fa3.cu; MOE_CUDA_ATTENTION_BWD, list
 * below).  Other head sizes go to attention_small.cu. */
#include "attention_common.cuh"
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

/* delta[b, h, t] = sum_d dout * out; one warp per (token, head), with VEC
 * 16-byte loads (Dh % 8 == 0, 16-byte aligned rows).  Also zeroes fa3f's
 * ncnt counters (and its blocks' ticket). */
template <bool VEC>
__global__ void att_delta_kernel(float *delta, int *cnt, int ncnt, const bf16 *dout, const bf16 *out, int ldo, int B,
				 int T, int H, int Dh)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	size_t job = (size_t)blockIdx.x * warps + threadIdx.x / 32;
	if ((size_t)blockIdx.x * blockDim.x + threadIdx.x < (size_t)ncnt)
		cnt[blockIdx.x * blockDim.x + threadIdx.x] = 0;
	if (job >= (size_t)B * T * H)
		return;
	int h = job % H;
	size_t n = job / H;
	const bf16 *a = dout + n * ldo + h * Dh, *o = out + n * ldo + h * Dh;
	float s = 0.f;
	if (VEC) {
		for (int d = 8 * lane; d < Dh; d += 256) {
			uint4 x = *(const uint4 *)(a + d), y = *(const uint4 *)(o + d);
			const __nv_bfloat162 *xa = (const __nv_bfloat162 *)&x, *ya = (const __nv_bfloat162 *)&y;
#pragma unroll
			for (int e = 0; e < 4; e++) {
				float2 u = __bfloat1622float2(xa[e]), v = __bfloat1622float2(ya[e]);
				s += u.x * v.x + u.y * v.y;
			}
		}
	} else {
		for (int d = lane; d < Dh; d += 32)
			s += bf2f(a[d]) * bf2f(o[d]);
	}
	s = warp_sum(s);
	if (lane == 0) {
		int b = n / T, t = n % T;
		delta[((size_t)b * H + h) * T + t] = s;
	}
}

/* The same by rows: one warp per token, its lanes over the row's 16-byte
 * chunks (all heads: coalesced, several loads in flight a lane), each
 * chunk's dot product into shared memory, then lane h sums head h's
 * chunks in order.  att_delta_kernel gave one warp a (token, head), of
 * whose lanes Dh / 8 loaded 16 bytes: 77 us a layer at seed-base (H100,
 * session 10), against 33 us for its 100 MB at 3 TB/s.  R = H Dh / 8
 * chunks a row, at most ATT_DR_MAX; 8 warps a block, 32 R bytes of shared
 * memory; also zeroes the ncnt counters. */
#define ATT_DR_MAX 1024
__global__ void __launch_bounds__(256) att_delta_rows_kernel(float *delta, int *cnt, int ncnt, const bf16 *dout,
							      const bf16 *out, int ldo, int B, int T, int H, int Dh)
{
	MOE_PDL_ENTRY();
	extern __shared__ float att_part[]; /* (8 warps, R) */
	const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, C = Dh / 8, R = H * C;
	const size_t n = (size_t)blockIdx.x * 8 + warp;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)ncnt;
	     i += (size_t)gridDim.x * blockDim.x)
		cnt[i] = 0;
	if (n >= (size_t)B * T)
		return;
	const uint4 *a = (const uint4 *)(dout + n * ldo), *o = (const uint4 *)(out + n * ldo);
	float *pp = att_part + warp * R;
#pragma unroll 4
	for (int c = lane; c < R; c += 32) {
		uint4 x = a[c], y = o[c];
		const __nv_bfloat162 *xa = (const __nv_bfloat162 *)&x, *ya = (const __nv_bfloat162 *)&y;
		float sum = 0.f;
#pragma unroll
		for (int e = 0; e < 4; e++) {
			float2 u = __bfloat1622float2(xa[e]), v = __bfloat1622float2(ya[e]);
			sum += u.x * v.x + u.y * v.y;
		}
		pp[c] = sum;
	}
	__syncwarp();
	const int b = (int)(n / T), t = (int)(n % T);
	for (int h = lane; h < H; h += 32) {
		float sum = 0.f;
		for (int c = 0; c < C; c++)
			sum += pp[h * C + c];
		delta[((size_t)b * H + h) * T + t] = sum;
	}
}

static int att_delta(float *delta, int *cnt, int ncnt, const bf16 *dout, const bf16 *out, int ldo, int B, int T,
		     int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	size_t jobs = (size_t)B * T * H; /* 8 a block: 32 threads a job, so more threads than counters */
	const bool vec = Dh % 8 == 0 && ldo % 8 == 0 && ((uintptr_t)dout | (uintptr_t)out) % 16 == 0;
	static int heads = -1; /* MOE_CUDA_ATT_DELTA=heads: the previous kernel (comparisons) */
	if (heads < 0)
		heads = env_is("MOE_CUDA_ATT_DELTA", "heads");
	if (vec && (size_t)H * Dh / 8 <= ATT_DR_MAX && !heads) {
		const size_t rows = (size_t)B * T, smem = 8 * (H * Dh / 8) * sizeof(float);
		moe_launch(att_delta_rows_kernel, moe_cdiv(rows, 8), 256, smem, s, delta, cnt, ncnt, dout, out, ldo, B,
			   T, H, Dh);
		return CUDA_LAUNCHED(err);
	}
	if (vec)
		moe_launch(att_delta_kernel<true>, moe_cdiv(jobs, 8), 256, 0, s, delta, cnt, ncnt, dout, out, ldo, B, T,
			   H, Dh);
	else
		moe_launch(att_delta_kernel<false>, moe_cdiv(jobs, 8), 256, 0, s, delta, cnt, ncnt, dout, out, ldo, B,
			   T, H, Dh);
	return CUDA_LAUNCHED(err);
}

template <int DH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_dkdv_kernel(bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
		      const float *lse, const float *delta, int ldq, int ldk, int ldv, int ldo, int T, int H,
		      float scale)
{
	MOE_PDL_ENTRY();
	constexpr int LD = DH + ATT_PAD;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Ks = (bf16 *)smem, *Vs = Ks + ATT_BR * LD;
	bf16 *Qs = Vs + ATT_BR * LD, *Ds = Qs + 2 * ATT_BR * LD; /* Q, dO: 2 stages */
	float *Ls = (float *)(Ds + 2 * ATT_BR * LD);           /* (2, 64) lse * log2e */
	float *Dl = Ls + 2 * ATT_BR;                            /* (2, 64) delta */
	int kt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
	int k0 = kt * ATT_BR;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = dout + (size_t)b * T * ldo + h * DH;
	const float *lb = lse + (size_t)bh * T, *deb = delta + (size_t)bh * T;
	int nq = (T + ATT_BR - 1) / ATT_BR;
	att_load_tile<DH>(Ks, kb, ldk, k0, T);
	att_load_tile<DH>(Vs, vb, ldv, k0, T);
	att_load_tile<DH>(Qs, qb, ldq, kt * ATT_BR, T);
	att_load_tile<DH>(Ds, db, ldo, kt * ATT_BR, T);
	att_commit();
	float dK[DH / 8][4], dV[DH / 8][4];
#pragma unroll
	for (int d = 0; d < DH / 8; d++)
#pragma unroll
		for (int e = 0; e < 4; e++)
			dK[d][e] = dV[d][e] = 0.f;
	int kj[2] = {k0 + w * 16 + g, k0 + w * 16 + g + 8};
	const float sl2 = scale * LOG2E;
	for (int i = kt; i < nq; i++) {
		int st = (i - kt) & 1, q0 = i * ATT_BR;
		for (int x = threadIdx.x; x < ATT_BR; x += ATT_WARPS * 32) {
			bool ok = q0 + x < T;
			Ls[st * ATT_BR + x] = ok ? lb[q0 + x] * LOG2E : INFINITY;
			Dl[st * ATT_BR + x] = ok ? deb[q0 + x] : 0.f;
		}
		if (i + 1 < nq) {
			att_load_tile<DH>(Qs + (st ^ 1) * ATT_BR * LD, qb, ldq, q0 + ATT_BR, T);
			att_load_tile<DH>(Ds + (st ^ 1) * ATT_BR * LD, db, ldo, q0 + ATT_BR, T);
		}
		att_commit();
		att_wait<1>();
		__syncthreads();
		const bf16 *Q = Qs + st * ATT_BR * LD, *DO = Ds + st * ATT_BR * LD;
		const float *L = Ls + st * ATT_BR, *DL = Dl + st * ATT_BR;
		float sT[8][4], dpT[8][4];
		{
			unsigned a[DH / 16][4];
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++)
				att_frag_a<LD>(a[kk], Ks, w * 16, kk * 16);
			att_mm_abt<DH>(sT, a, Q); /* S^T = K Q^T */
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++)
				att_frag_a<LD>(a[kk], Vs, w * 16, kk * 16);
			att_mm_abt<DH>(dpT, a, DO); /* dP^T = V dO^T */
		}
		bool edge = i == kt || q0 + ATT_BR > T;
#pragma unroll
		for (int jj = 0; jj < 8; jj++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				int c = 8 * jj + 2 * t4 + (e & 1), qi = q0 + c;
				float p = exp2f(sT[jj][e] * sl2 - L[c]);
				if (edge && (qi < kj[e / 2] || qi >= T))
					p = 0.f;
				sT[jj][e] = p;
				dpT[jj][e] = p * (dpT[jj][e] - DL[c]) * scale;
			}
		att_mm_pv<DH>(dV, sT, DO); /* dV += P^T dO */
		att_mm_pv<DH>(dK, dpT, Q); /* dK += dS^T Q */
		__syncthreads();
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		if (kj[r] >= T)
			continue;
		bf16 *okp = dk + ((size_t)b * T + kj[r]) * ldk + h * DH + 2 * t4;
		bf16 *ovp = dv + ((size_t)b * T + kj[r]) * ldv + h * DH + 2 * t4;
#pragma unroll
		for (int d = 0; d < DH / 8; d++) {
			*(__nv_bfloat162 *)(okp + 8 * d) = __floats2bfloat162_rn(dK[d][2 * r], dK[d][2 * r + 1]);
			*(__nv_bfloat162 *)(ovp + 8 * d) = __floats2bfloat162_rn(dV[d][2 * r], dV[d][2 * r + 1]);
		}
	}
}

template <int DH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_dq_kernel(bf16 *dq, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
		    const float *delta, int ldq, int ldk, int ldv, int ldo, int T, int H, float scale)
{
	MOE_PDL_ENTRY();
	constexpr int LD = DH + ATT_PAD;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Qs = (bf16 *)smem, *Ds = Qs + ATT_BR * LD, *Ks = Ds + ATT_BR * LD, *Vs = Ks + 2 * ATT_BR * LD;
	int qt = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
	int q0 = qt * ATT_BR;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = dout + (size_t)b * T * ldo + h * DH;
	att_load_tile<DH>(Qs, qb, ldq, q0, T);
	att_load_tile<DH>(Ds, db, ldo, q0, T);
	att_load_tile<DH>(Ks, kb, ldk, 0, T);
	att_load_tile<DH>(Vs, vb, ldv, 0, T);
	att_commit();
	int qi[2] = {q0 + w * 16 + g, q0 + w * 16 + g + 8};
	float L[2], dl[2];
	for (int r = 0; r < 2; r++) {
		L[r] = qi[r] < T ? lse[(size_t)bh * T + qi[r]] * LOG2E : INFINITY;
		dl[r] = qi[r] < T ? delta[(size_t)bh * T + qi[r]] : 0.f;
	}
	const float sl2 = scale * LOG2E;
	unsigned qa[DH / 16][4], da[DH / 16][4];
	float dQ[DH / 8][4];
#pragma unroll
	for (int d = 0; d < DH / 8; d++)
		dQ[d][0] = dQ[d][1] = dQ[d][2] = dQ[d][3] = 0.f;
	for (int j = 0; j <= qt; j++) {
		int st = j & 1, k0 = j * ATT_BR;
		if (j + 1 <= qt) {
			att_load_tile<DH>(Ks + (st ^ 1) * ATT_BR * LD, kb, ldk, k0 + ATT_BR, T);
			att_load_tile<DH>(Vs + (st ^ 1) * ATT_BR * LD, vb, ldv, k0 + ATT_BR, T);
		}
		att_commit();
		att_wait<1>();
		__syncthreads();
		if (j == 0) {
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++) {
				att_frag_a<LD>(qa[kk], Qs, w * 16, kk * 16);
				att_frag_a<LD>(da[kk], Ds, w * 16, kk * 16);
			}
		}
		const bf16 *K = Ks + st * ATT_BR * LD, *V = Vs + st * ATT_BR * LD;
		float s[8][4], dp[8][4];
		att_mm_abt<DH>(s, qa, K);
		att_mm_abt<DH>(dp, da, V);
		bool edge = j == qt || k0 + ATT_BR > T;
#pragma unroll
		for (int jj = 0; jj < 8; jj++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				int r = e / 2, kj = k0 + 8 * jj + 2 * t4 + (e & 1);
				float p = exp2f(s[jj][e] * sl2 - L[r]);
				if (edge && (kj > qi[r] || kj >= T))
					p = 0.f;
				s[jj][e] = p * (dp[jj][e] - dl[r]) * scale;
			}
		att_mm_pv<DH>(dQ, s, K); /* dQ += dS K */
		__syncthreads();
	}
#pragma unroll
	for (int r = 0; r < 2; r++) {
		if (qi[r] >= T)
			continue;
		bf16 *o = dq + ((size_t)b * T + qi[r]) * ldq + h * DH + 2 * t4;
#pragma unroll
		for (int d = 0; d < DH / 8; d++)
			*(__nv_bfloat162 *)(o + 8 * d) = __floats2bfloat162_rn(dQ[d][2 * r], dQ[d][2 * r + 1]);
	}
}

/* Backward variants, by number (1-based) and MOE_CUDA_ATTENTION_BWD name:
 *   1 v1   dK/dV per 64 keys, dQ per 64 queries, 4 warps, mma.sync (session
 *          2; the fallback on devices without wgmma)
 *   2 wge  attention_wgmma.cu: the same two kernels on wgmma, two
 *          warpgroups of 64 rows a block, both in one launch, P by
 *          ex2.approx.ftz (sm_90a; v1 elsewhere)
 *   3 wgeg wge with the grid in groups of 8 heads (a head's blocks run at
 *          the same time: the tiles they stream stay in L2)
 *   4 fa3  attention_fa3.cu: wgeg's two kernels warp-specialised: a TMA
 *          producer warp, a ring of 4 stages on mbarriers, two consumer
 *          warpgroups that no block barrier ties together (Dh 64, 96, 128;
 *          bit-identical to wgeg; wgeg where it cannot run)
 *   5 fa3f attention_fa3.cu: one kernel in fa3's structure, dK/dV per 128
 *          keys and the tiles' dQ contributions (5 products a tile pair)
 *          added to an fp32 dQ in a fixed order by a writer warp with
 *          bulk reduce-adds, then converted to bf16 (Dh 96 and 128; fa3 at
 *          64); 2 stages, 2 dQ buffers
 * All are deterministic (run to run bit-identical).  Unless chosen: fa3f
 * at Dh 96 and 128 (session 10), fa3 at 64 (session 22; H200, call 166,
 * B 16 T 2048 H 12: 0.909-0.916 ms against wge's 1.486-1.497, the default
 * there before, when fa3 had not been timed at 64), wge at other head
 * sizes from 64; head sizes below 64 always run v1.  History: fa3 (session 5: 0.872 ms against
 * wgeg's 1.249 at seed-base, 3.964 against wge's 5.453 at the olmoe shape;
 * RESULTS-attention.md) was the default until session 9 made fa3f faster
 * (bank-conflict-free dQ staging, software-pipelined rounds: 0.85-0.88 ms
 * against fa3's 0.87-0.90 at seed-base, 3.45 against 4.07-4.23 at the
 * olmoe-like shape; a step 0.5-0.9 ms faster at seed-base on an H100,
 * 0.5-2 ms at olmoe-1b-7b on an H200).  It stayed opt-in then because its
 * blocks wait for blocks launched before them, and CUDA does not promise to
 * dispatch those first; since session 10 they take their place in that
 * order from a ticket (awg_ticket), so a waited-for block has started
 * whatever the dispatch order.  fa3f's fp32 dQ tiles (B H T Dh floats, 100
 * MB at olmoe-1b-7b micro-batch 3) are in the scratch.  The variants that
 * lost (fu4g, fa3s2, fa3f3, fa3fa, fa3fc, fa3fc3) were removed in session
 * 19; see git history and tests/bench/RESULTS-attention.md. */
static const char *const att_bwd_names[] = {"v1", "wge", "wgeg", "fa3", "fa3f"};
#define ATT_BWD_N ((int)(sizeof(att_bwd_names) / sizeof(att_bwd_names[0])))
static struct att_choice att_bwd_ch = {"MOE_CUDA_ATTENTION_BWD", att_bwd_names, ATT_BWD_N, 0, -1};

static int att_bwd_variant(int Dh)
{
	return Dh < 64 ? 1 : att_choose(&att_bwd_ch, Dh == 96 || Dh == 128 ? 5 : Dh == 64 ? 4 : 2);
}

extern "C" int moe_cuda_attention_bwd_env_check(struct moe_error *err)
{
	return att_env_check(&att_bwd_ch, err);
}

extern "C" const char *moe_cuda_attention_bwd_name(int Dh)
{
	return att_bwd_names[att_bwd_variant(Dh) - 1];
}

extern "C" const char *moe_cuda_attention_bwd_config(int v)
{
	if (v < 0 || v > ATT_BWD_N)
		return NULL;
	att_bwd_ch.forced = v;
	return att_bwd_names[att_bwd_variant(96) - 1];
}

/* fa3f's counters: one a (B, H, query tile of 64), then its blocks' ticket
 * (awg_ticket) */
static int att_ncnt(int B, int T, int H) { return B * H * moe_cdiv(T, 64) + 1; }
/* bytes of delta (B, H, T) rounded up to 16; of the counters rounded up to
 * 256 */
static size_t att_delta_bytes(int B, int T, int H) { return ((size_t)B * H * T * sizeof(float) + 15) & ~(size_t)15; }
static size_t att_cnt_bytes(int B, int T, int H) { return ((size_t)att_ncnt(B, T, H) * sizeof(int) + 255) & ~(size_t)255; }
/* the variant with an fp32 dQ and counters in the scratch (fa3f at Dh 96
 * and 128) */
static bool att_fused_var(int var, int Dh) { return var == 5 && (Dh == 96 || Dh == 128); }

/* delta, then, for variant 5 the one-kernel backward (attention_fa3.cu, Dh
 * 96 and 128), for 4-5 the warp-specialised two kernels, for 2-5 the wgmma
 * kernels (3-5 with wgeg's grid) where the device runs them, else v1's two
 * kernels; the scratch after delta: fa3f's counters and fp32 dQ tiles */
template <int DH>
static int launch_bwd(bf16 *dq, bf16 *dk, bf16 *dv, float *delta, const bf16 *dout, const bf16 *q, const bf16 *k,
		      const bf16 *v, const bf16 *out, const float *lse, int ldq, int ldk, int ldv, int ldo, int B,
		      int T, int H, int var, const float **kept, cudaStream_t s, struct moe_error *err)
{
	constexpr int LD = DH + ATT_PAD;
	int rc;
	float scale = 1.f / sqrtf((float)DH);
	bool fused = att_fused_var(var, DH);
	int *cnt = fused ? (int *)((char *)delta + att_delta_bytes(B, T, H)) : NULL;
	float *dqacc = fused ? (float *)((char *)cnt + att_cnt_bytes(B, T, H)) : NULL;
	if ((rc = att_delta(delta, cnt, fused ? att_ncnt(B, T, H) : 0, dout, out, ldo, B, T, H, DH, s, err)) != 0)
		return rc;
	/* kept: fa3f leaves dq's fp32 tiles to the caller */
	if (fused && (rc = moe_att_bwd_fa3f(dq, dk, dv, dout, q, k, v, lse, delta, dqacc, cnt, kept != NULL, ldq, ldk,
					    ldv, ldo, B, T, H, DH, s, err)) != 1) {
		if (kept && rc == 0)
			*kept = dqacc;
		return rc;
	}
	if (var >= 4 && (rc = moe_att_bwd_fa3(dq, dk, dv, dout, q, k, v, lse, delta, ldq, ldk, ldv, ldo, B, T, H, DH,
					      s, err)) != 1)
		return rc;
	if (var >= 2 && (rc = moe_att_bwd_wgmma(dq, dk, dv, dout, q, k, v, lse, delta, var >= 3, ldq, ldk, ldv, ldo, B,
						T, H, DH, s, err)) != 1)
		return rc;
	size_t sm1 = 6 * ATT_BR * LD * sizeof(bf16) + 4 * ATT_BR * sizeof(float);
	size_t sm2 = 6 * ATT_BR * LD * sizeof(bf16);
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_dkdv_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm1),
			  err)) != 0 ||
	    (rc = CUDA_OK(cudaFuncSetAttribute(attention_dq_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm2),
			  err)) != 0)
		return rc;
	dim3 grid(moe_cdiv(T, ATT_BR), B * H);
	moe_launch(attention_dkdv_kernel<DH>, grid, ATT_WARPS * 32, sm1, s, dk, dv, q, k, v, dout, lse, delta, ldq, ldk,
		   ldv, ldo, T, H, scale);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	moe_launch(attention_dq_kernel<DH>, grid, ATT_WARPS * 32, sm2, s, dq, q, k, v, dout, lse, delta, ldq, ldk, ldv,
		   ldo, T, H, scale);
	return CUDA_LAUNCHED(err);
}

static bool att_tc_dh(int Dh) { return Dh == 16 || Dh == 32 || Dh == 64 || Dh == 96 || Dh == 128; }

extern "C" size_t moe_cuda_attention_bwd_scratch(int B, int T, int H, int Dh)
{
	size_t delta = att_delta_bytes(B, T, H);
	if (att_fused_var(att_bwd_variant(Dh), Dh)) /* counters, fp32 dQ tiles */
		return delta + att_cnt_bytes(B, T, H) + (size_t)B * H * moe_cdiv(T, 64) * 64 * Dh * sizeof(float);
	if (att_tc_dh(Dh))
		return delta;
	return delta + 2 * (size_t)B * T * H * Dh * sizeof(float); /* dk32, dv32 */
}

static int attention_bwd(bf16_t *dq, bf16_t *dk, bf16_t *dv, void *scratch, const bf16_t *dout, const bf16_t *q,
			 const bf16_t *k, const bf16_t *v, const bf16_t *out, const float *lse, int ldq, int ldk,
			 int ldv, int ldo, int B, int T, int H, int Dh, const float **kept, cudaStream_t s,
			 struct moe_error *err)
{
	/* scratch: delta (B, H, T), then dk32, dv32 (B, T, H, Dh) for the scalar
	 * kernels of other head sizes */
	float *delta = (float *)scratch, *dk32 = (float *)((char *)scratch + att_delta_bytes(B, T, H));
	float *dv32 = dk32 + (size_t)B * T * H * Dh;
	if (B <= 0 || T <= 0)
		return 0;
	if (ldq % 8 || ldk % 8 || ldv % 8 || ldo % 8)
		return moe_error_set(err, MOE_EUNSUPPORTED, "attention: row strides must be multiples of 8");
	bf16 *dqq = (bf16 *)dq, *dkk = (bf16 *)dk, *dvv = (bf16 *)dv;
	const bf16 *d = (const bf16 *)dout, *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v,
		   *o = (const bf16 *)out;
#define ATT_BWD(DHV) launch_bwd<DHV>(dqq, dkk, dvv, delta, d, qq, kk, vv, o, lse, ldq, ldk, ldv, ldo, B, T, H, att_bwd_variant(DHV), kept, s, err)
	switch (Dh) {
	case 16: return ATT_BWD(16);
	case 32: return ATT_BWD(32);
	case 64: return ATT_BWD(64);
	case 96: return ATT_BWD(96);
	case 128: return ATT_BWD(128);
	default: {
		int rc;
		if ((rc = att_delta(delta, NULL, 0, d, o, ldo, B, T, H, Dh, s, err)) != 0)
			return rc;
		return moe_cuda_attention_small_bwd(dq, dk, dv, delta, dk32, dv32, dout, q, k, v, lse, ldq, ldk, ldv,
						    ldo, B, T, H, Dh, s, err);
	}
	}
#undef ATT_BWD
}

extern "C" int moe_cuda_attention_bwd(bf16_t *dq, bf16_t *dk, bf16_t *dv, void *scratch, const bf16_t *dout,
				      const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *out,
				      const float *lse, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
				      int Dh, cudaStream_t s, struct moe_error *err)
{
	return attention_bwd(dq, dk, dv, scratch, dout, q, k, v, out, lse, ldq, ldk, ldv, ldo, B, T, H, Dh, NULL, s,
			     err);
}

extern "C" int moe_cuda_attention_bwd_acc(bf16_t *dq, bf16_t *dk, bf16_t *dv, void *scratch, const bf16_t *dout,
					  const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *out,
					  const float *lse, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
					  int Dh, const float **dqacc, cudaStream_t s, struct moe_error *err)
{
	if (dqacc)
		*dqacc = NULL;
	return attention_bwd(dq, dk, dv, scratch, dout, q, k, v, out, lse, ldq, ldk, ldv, ldo, B, T, H, Dh, dqacc, s,
			     err);
}
