/* Causal flash attention, backward (FlashAttention-2 style).  The default,
 * v1, is two kernels, no atomics, deterministic:
 *   dK, dV: one block per (64 keys, b, h), warps of 16 keys, looping over
 *           the query tiles at or after the diagonal; P^T and dP^T are
 *           recomputed in registers from q, k, v, dO and lse;
 *   dQ:     one block per (64 queries, b, h), looping over key tiles.
 * delta = rowsum(dO * O) is computed first.  dq, dk, dv are bf16 and share
 * the row strides of q, k and v.  The other variants (list below;
 * MOE_CUDA_ATTENTION_BWD) generalise the two kernels (wider blocks) or fuse
 * them into one (dQ summed with atomics, or in a fixed order); none beat v1
 * on an H100 (tests/bench/RESULTS-attention.md).  Other head sizes go to
 * attention_small.cu. */
#include "attention_common.cuh"
#include "kernels.h"

#include <stdlib.h>
#include <string.h>

/* delta[b, h, t] = sum_d dout * out; one warp per (token, head). */
__global__ void att_delta_kernel(float *delta, const bf16 *dout, const bf16 *out, int ldo, int B, int T, int H,
				 int Dh)
{
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	size_t job = (size_t)blockIdx.x * warps + threadIdx.x / 32;
	if (job >= (size_t)B * T * H)
		return;
	int h = job % H;
	size_t n = job / H;
	const bf16 *a = dout + n * ldo + h * Dh, *o = out + n * ldo + h * Dh;
	float s = 0.f;
	for (int d = lane; d < Dh; d += 32)
		s += bf2f(a[d]) * bf2f(o[d]);
	s = warp_sum(s);
	if (lane == 0) {
		int b = n / T, t = n % T;
		delta[((size_t)b * H + h) * T + t] = s;
	}
}

template <int DH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_dkdv_kernel(bf16 *dk, bf16 *dv, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
		      const float *lse, const float *delta, int ldq, int ldk, int ldv, int ldo, int T, int H,
		      float scale)
{
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

/* dK, dV with wider blocks: NW warps of 16 keys (BKN = 16 * NW keys per
 * block) over query tiles of BQT queries; with KREG the warp's K and V
 * fragments stay in registers instead of being re-read per query tile.
 * DQM != 0: the block also computes its share dS K of dQ (one kernel, 5
 * matmuls instead of 7; BQT must be 64: the warps split the 64 x DH product
 * by 16-row blocks and DH) and
 *   DQM 1 adds it into the fp32 dq32 (B, T, H, DH) with atomics (order, and
 *         so the rounding, varies from run to run);
 *   DQM 2 adds it in a fixed order (deterministic): the key blocks that
 *         touch query tile i take turns from the last (kmax, which stores)
 *         to block 0 (which writes the bf16 dq), through the per-(b, h, i)
 *         counters cnt (zeroed by the caller) with acquire/release; blocks
 *         are issued last key block first, so a block only ever waits for
 *         blocks issued before it (no deadlock) that started ahead of it.
 * Grid (key tiles, B*H) as in v1 (the blocks running at once share a few
 * heads' Q/dO in L2), the longest (first) key tiles of each head first
 * (DQM 2: last first); a warp whose keys all follow a query tile skips it. */
template <int DH, int NW, int BQT, bool KREG, int DQM>
__global__ void __launch_bounds__(NW * 32)
attention_dkdv2_kernel(bf16 *dk, bf16 *dv, bf16 *dq, float *dq32, int *cnt, const bf16 *q, const bf16 *k,
		       const bf16 *v, const bf16 *dout, const float *lse, const float *delta, int ldq, int ldk,
		       int ldv, int ldo, int T, int H, float scale)
{
	constexpr int LD = DH + ATT_PAD, BKN = 16 * NW, NT = NW * 32, NJ = BQT / 8, LDS = BQT + ATT_PAD;
	constexpr bool DQ = DQM != 0;
	static_assert(!DQ || (BQT == 64 && NW % 4 == 0), "the dQ split needs 64-query tiles, 4k warps");
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Ks = (bf16 *)smem, *Vs = Ks + BKN * LD;
	bf16 *Qs = Vs + BKN * LD, *Ds = Qs + 2 * BQT * LD; /* Q, dO: 2 stages */
	float *Ls = (float *)(Ds + 2 * BQT * LD);         /* (2, BQT) lse * log2e */
	float *Dl = Ls + 2 * BQT;                          /* (2, BQT) delta */
	bf16 *dSs = (bf16 *)(Dl + 2 * BQT);                /* (BKN, BQT) dS^T, DQ only */
	int kt = DQM == 2 ? gridDim.x - 1 - blockIdx.x : blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
	int k0 = kt * BKN, wk0 = k0 + 16 * w;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = dout + (size_t)b * T * ldo + h * DH;
	const float *lb = lse + (size_t)bh * T, *deb = delta + (size_t)bh * T;
	int nq = (T + BQT - 1) / BQT, i0 = k0 / BQT;
	att_load_tile<DH, BKN, NT>(Ks, kb, ldk, k0, T);
	att_load_tile<DH, BKN, NT>(Vs, vb, ldv, k0, T);
	att_load_tile<DH, BQT, NT>(Qs, qb, ldq, i0 * BQT, T);
	att_load_tile<DH, BQT, NT>(Ds, db, ldo, i0 * BQT, T);
	att_commit();
	float dK[DH / 8][4], dV[DH / 8][4];
#pragma unroll
	for (int d = 0; d < DH / 8; d++)
#pragma unroll
		for (int e = 0; e < 4; e++)
			dK[d][e] = dV[d][e] = 0.f;
	unsigned ka[KREG ? DH / 16 : 1][4], va[KREG ? DH / 16 : 1][4];
	int kj[2] = {wk0 + g, wk0 + g + 8};
	const float sl2 = scale * LOG2E;
	bool active = wk0 < T;
	for (int i = i0; i < nq; i++) {
		int st = (i - i0) & 1, q0 = i * BQT;
		for (int x = threadIdx.x; x < BQT; x += NT) {
			bool ok = q0 + x < T;
			Ls[st * BQT + x] = ok ? lb[q0 + x] * LOG2E : INFINITY;
			Dl[st * BQT + x] = ok ? deb[q0 + x] : 0.f;
		}
		if (i + 1 < nq) {
			att_load_tile<DH, BQT, NT>(Qs + (st ^ 1) * BQT * LD, qb, ldq, q0 + BQT, T);
			att_load_tile<DH, BQT, NT>(Ds + (st ^ 1) * BQT * LD, db, ldo, q0 + BQT, T);
		}
		att_commit();
		att_wait<1>();
		__syncthreads();
		if (KREG && i == i0) {
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++) {
				att_frag_a<LD>(ka[kk], Ks, w * 16, kk * 16);
				att_frag_a<LD>(va[kk], Vs, w * 16, kk * 16);
			}
		}
		const bf16 *Q = Qs + st * BQT * LD, *DO = Ds + st * BQT * LD;
		const float *L = Ls + st * BQT, *DL = Dl + st * BQT;
		bool work = active && q0 + BQT > wk0;
		if (work) {
			float sT[NJ][4], dpT[NJ][4];
			if (KREG) {
				att_mm_abt<DH, NJ>(sT, ka, Q);  /* S^T = K Q^T */
				att_mm_abt<DH, NJ>(dpT, va, DO); /* dP^T = V dO^T */
			} else {
				unsigned a[DH / 16][4];
#pragma unroll
				for (int kk = 0; kk < DH / 16; kk++)
					att_frag_a<LD>(a[kk], Ks, w * 16, kk * 16);
				att_mm_abt<DH, NJ>(sT, a, Q);
#pragma unroll
				for (int kk = 0; kk < DH / 16; kk++)
					att_frag_a<LD>(a[kk], Vs, w * 16, kk * 16);
				att_mm_abt<DH, NJ>(dpT, a, DO);
			}
			bool edge = q0 < wk0 + 16 || q0 + BQT > T;
#pragma unroll
			for (int jj = 0; jj < NJ; jj++)
#pragma unroll
				for (int e = 0; e < 4; e++) {
					int c = 8 * jj + 2 * t4 + (e & 1), qi = q0 + c;
					float p = exp2f(sT[jj][e] * sl2 - L[c]);
					if (edge && (qi < kj[e / 2] || qi >= T))
						p = 0.f;
					sT[jj][e] = p;
					dpT[jj][e] = p * (dpT[jj][e] - DL[c]) * scale;
				}
			if (DQ) {
#pragma unroll
				for (int jj = 0; jj < NJ; jj++)
#pragma unroll
					for (int r = 0; r < 2; r++)
						*(unsigned *)(dSs + (16 * w + g + 8 * r) * LDS + 8 * jj + 2 * t4) =
							pack_bf16(dpT[jj][2 * r], dpT[jj][2 * r + 1]);
			}
			att_mm_pv<DH, BQT / 16>(dV, sT, DO); /* dV += P^T dO */
			att_mm_pv<DH, BQT / 16>(dK, dpT, Q); /* dK += dS^T Q */
		} else if (DQ) {
#pragma unroll
			for (int jj = 0; jj < NJ; jj++)
#pragma unroll
				for (int r = 0; r < 2; r++)
					*(unsigned *)(dSs + (16 * w + g + 8 * r) * LDS + 8 * jj + 2 * t4) = 0u;
		}
		if (DQ) {
			/* dQ (64 x DH) += dS (64 x BKN) K (BKN x DH): warp w takes query
			 * rows 16 (w % 4).. and DW columns of DH */
			constexpr int DW = DH / (NW / 4);
			int rb = 16 * (w % 4), dc = DW * (w / 4), qrow = q0 + rb + g;
			__syncthreads();
			bool mine = q0 + rb < T && (DQM == 2 || q0 + rb + 15 >= k0);
			float acc[DW / 8][4];
#pragma unroll
			for (int d = 0; d < DW / 8; d++)
				acc[d][0] = acc[d][1] = acc[d][2] = acc[d][3] = 0.f;
			if (mine) {
#pragma unroll
				for (int ks = 0; ks < BKN / 16; ks++) {
					unsigned a[4];
					ldsm_x4_t(a[0], a[1], a[2], a[3],
						  dSs + (ks * 16 + (lane / 16) * 8 + lane % 8) * LDS + rb + ((lane / 8) % 2) * 8);
#pragma unroll
					for (int d = 0; d < DW / 8; d += 2) {
						unsigned b0, b1, b2, b3;
						const bf16 *p = Ks + (ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + dc +
								d * 8 + (lane / 16) * 8;
						ldsm_x4_t(b0, b1, b2, b3, p);
						mma16816(acc[d], a, b0, b1);
						mma16816(acc[d + 1], a, b2, b3);
					}
				}
			}
			if (DQM == 1 && mine) {
#pragma unroll
				for (int r = 0; r < 2; r++) {
					int t = qrow + 8 * r;
					if (t >= T)
						continue;
					float *o = dq32 + (((size_t)b * T + t) * H + h) * DH + dc + 2 * t4;
#pragma unroll
					for (int d = 0; d < DW / 8; d++)
						atomicAdd((float2 *)(o + 8 * d), make_float2(acc[d][2 * r], acc[d][2 * r + 1]));
				}
			}
			if (DQM == 2) {
				int rank = (q0 + BQT - 1) / BKN - kt; /* 0: the first of this tile's blocks */
				int *c = cnt + (size_t)bh * nq + i;
				if (rank > 0) {
					if (threadIdx.x == 0)
						att_wait_turn(c, rank);
					__syncthreads();
				}
				if (mine) {
#pragma unroll
					for (int r = 0; r < 2; r++) {
						int t = qrow + 8 * r;
						if (t >= T)
							continue;
						float *o = dq32 + (((size_t)b * T + t) * H + h) * DH + dc + 2 * t4;
						bf16 *ob = dq + ((size_t)b * T + t) * ldq + h * DH + dc + 2 * t4;
#pragma unroll
						for (int d = 0; d < DW / 8; d++) {
							float2 x = make_float2(acc[d][2 * r], acc[d][2 * r + 1]);
							if (rank > 0) {
								float2 y = __ldcg((const float2 *)(o + 8 * d));
								x.x = y.x + x.x;
								x.y = y.y + x.y;
							}
							if (kt == 0)
								*(__nv_bfloat162 *)(ob + 8 * d) = __floats2bfloat162_rn(x.x, x.y);
							else
								__stcg((float2 *)(o + 8 * d), x);
						}
					}
				}
				if (kt > 0) {
					__syncthreads();
					if (threadIdx.x == 0) {
						__threadfence();
						att_st_release(c, rank + 1);
					}
				}
			}
		}
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

/* dQ with wider blocks: NW warps of 16 queries over key tiles of BKT keys;
 * grid (query tiles, B*H), the longest (last) query tiles of a head first. */
template <int DH, int NW, int BKT>
__global__ void __launch_bounds__(NW * 32)
attention_dq2_kernel(bf16 *dq, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout, const float *lse,
		     const float *delta, int ldq, int ldk, int ldv, int ldo, int T, int H, float scale)
{
	constexpr int LD = DH + ATT_PAD, BQ = 16 * NW, NT = NW * 32, NJ = BKT / 8;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Qs = (bf16 *)smem, *Ds = Qs + BQ * LD, *Ks = Ds + BQ * LD, *Vs = Ks + 2 * BKT * LD;
	int qt = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
	int q0 = qt * BQ, wq0 = q0 + 16 * w;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = dout + (size_t)b * T * ldo + h * DH;
	att_load_tile<DH, BQ, NT>(Qs, qb, ldq, q0, T);
	att_load_tile<DH, BQ, NT>(Ds, db, ldo, q0, T);
	att_load_tile<DH, BKT, NT>(Ks, kb, ldk, 0, T);
	att_load_tile<DH, BKT, NT>(Vs, vb, ldv, 0, T);
	att_commit();
	int qi[2] = {wq0 + g, wq0 + g + 8};
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
	int ntiles = (min(q0 + BQ, T) - 1) / BKT + 1;
	bool active = wq0 < T;
	for (int j = 0; j < ntiles; j++) {
		int st = j & 1, k0 = j * BKT;
		if (j + 1 < ntiles) {
			att_load_tile<DH, BKT, NT>(Ks + (st ^ 1) * BKT * LD, kb, ldk, k0 + BKT, T);
			att_load_tile<DH, BKT, NT>(Vs + (st ^ 1) * BKT * LD, vb, ldv, k0 + BKT, T);
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
		if (active && k0 <= wq0 + 15) {
			const bf16 *K = Ks + st * BKT * LD, *V = Vs + st * BKT * LD;
			float s[NJ][4], dp[NJ][4];
			att_mm_abt<DH, NJ>(s, qa, K);
			att_mm_abt<DH, NJ>(dp, da, V);
			bool edge = k0 + BKT > wq0 || k0 + BKT > T;
#pragma unroll
			for (int jj = 0; jj < NJ; jj++)
#pragma unroll
				for (int e = 0; e < 4; e++) {
					int r = e / 2, kj = k0 + 8 * jj + 2 * t4 + (e & 1);
					float p = exp2f(s[jj][e] * sl2 - L[r]);
					if (edge && (kj > qi[r] || kj >= T))
						p = 0.f;
					s[jj][e] = p * (dp[jj][e] - dl[r]) * scale;
				}
			att_mm_pv<DH, BKT / 16>(dQ, s, K); /* dQ += dS K */
		}
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

/* dq (strided bf16) = dq32 (B*T, H*DH) */
__global__ void att_dq_convert_kernel(bf16 *dq, const float *dq32, int ldq, size_t N, int HD)
{
	size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
	if (i >= N * HD)
		return;
	size_t n = i / HD;
	int c = (int)(i % HD);
	float4 f = *(const float4 *)(dq32 + i);
	__nv_bfloat162 *o = (__nv_bfloat162 *)(dq + n * ldq + c);
	o[0] = __floats2bfloat162_rn(f.x, f.y);
	o[1] = __floats2bfloat162_rn(f.z, f.w);
}

template <int DH>
static int launch_bwd(bf16 *dq, bf16 *dk, bf16 *dv, float *delta, const bf16 *dout, const bf16 *q, const bf16 *k,
		      const bf16 *v, const bf16 *out, const float *lse, int ldq, int ldk, int ldv, int ldo, int B,
		      int T, int H, cudaStream_t s, struct moe_error *err)
{
	constexpr int LD = DH + ATT_PAD;
	int rc;
	float scale = 1.f / sqrtf((float)DH);
	size_t nj = (size_t)B * T * H;
	att_delta_kernel<<<moe_cdiv(nj, 8), 256, 0, s>>>(delta, dout, out, ldo, B, T, H, DH);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
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
	attention_dkdv_kernel<DH><<<grid, ATT_WARPS * 32, sm1, s>>>(dk, dv, q, k, v, dout, lse, delta, ldq, ldk, ldv,
								   ldo, T, H, scale);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	attention_dq_kernel<DH><<<grid, ATT_WARPS * 32, sm2, s>>>(dq, q, k, v, dout, lse, delta, ldq, ldk, ldv, ldo,
								 T, H, scale);
	return CUDA_LAUNCHED(err);
}

template <int DH, int NW, int BQT, bool KREG, int DQM>
static int launch_dkdv2(bf16 *dk, bf16 *dv, bf16 *dq, float *dq32, int *cnt, const bf16 *dout, const bf16 *q,
			const bf16 *k, const bf16 *v, const float *lse, const float *delta, int ldq, int ldk, int ldv,
			int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	constexpr int LD = DH + ATT_PAD, BKN = 16 * NW;
	size_t smem = (size_t)(2 * BKN + 4 * BQT) * LD * sizeof(bf16) + 4 * BQT * sizeof(float) +
		      (DQM ? (size_t)BKN * (BQT + ATT_PAD) * sizeof(bf16) : 0);
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_dkdv2_kernel<DH, NW, BQT, KREG, DQM>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
			  err)) != 0)
		return rc;
	dim3 grid(moe_cdiv(T, BKN), B * H);
	attention_dkdv2_kernel<DH, NW, BQT, KREG, DQM><<<grid, NW * 32, smem, s>>>(
		dk, dv, dq, dq32, cnt, q, k, v, dout, lse, delta, ldq, ldk, ldv, ldo, T, H, 1.f / sqrtf((float)DH));
	return CUDA_LAUNCHED(err);
}

template <int DH, int NW, int BKT>
static int launch_dq2(bf16 *dq, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v, const float *lse,
		      const float *delta, int ldq, int ldk, int ldv, int ldo, int B, int T, int H, cudaStream_t s,
		      struct moe_error *err)
{
	constexpr int LD = DH + ATT_PAD, BQ = 16 * NW;
	size_t smem = (size_t)(2 * BQ + 4 * BKT) * LD * sizeof(bf16);
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_dq2_kernel<DH, NW, BKT>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem),
			  err)) != 0)
		return rc;
	dim3 grid(moe_cdiv(T, BQ), B * H);
	attention_dq2_kernel<DH, NW, BKT><<<grid, NW * 32, smem, s>>>(dq, q, k, v, dout, lse, delta, ldq, ldk, ldv,
								     ldo, T, H, 1.f / sqrtf((float)DH));
	return CUDA_LAUNCHED(err);
}

/* Backward variants, by number (1-based) and MOE_CUDA_ATTENTION_BWD name:
 *   1 v1       dK/dV per 64 keys, dQ per 64 queries, 4 warps (session 2)
 *   2 k128     dK/dV per 128 keys (8 warps), dQ per 128 queries (8 warps)
 *   3 v2       v1's tiles through the newer kernels (warps skip masked tiles)
 *   4 k128d64  dK/dV per 128 keys (8 warps), dQ per 64 queries (4 warps)
 *   5 kreg     dK/dV per 64 keys with 32-query tiles and (Dh <= 96) the K, V
 *              fragments in registers; dQ as v2
 *   6 atomic   one kernel: dK/dV per 64 keys and dQ added in fp32 with
 *              atomics (5 matmuls instead of 7; NOT bit-reproducible)
 *   7 atomic8  atomic with 128 keys (8 warps) per block
 *   8 ordered  atomic's single kernel, dQ added in a fixed order (blocks
 *              take turns per query tile; fp32 partial sums in scratch)
 *   9 ordered8 ordered with 128 keys (8 warps) per block
 *  10 wg       ordered's single kernel on wgmma (sm_90a, attention_wgmma.cu;
 *              ordered on other devices)
 * All but atomic/atomic8 are deterministic (run to run bit-identical).
 * Head sizes below 64 always run v1. */
static const char *const att_bwd_names[] = {"v1",     "k128",    "v2",      "k128d64",  "kreg",
					    "atomic", "atomic8", "ordered", "ordered8", "wg"};
#define ATT_BWD_N ((int)(sizeof(att_bwd_names) / sizeof(att_bwd_names[0])))
#define ATT_BWD_DEFAULT 1 /* v1: fastest measured (RESULTS-attention.md) */
static int att_bwd_forced, att_bwd_env = -1;

static int att_bwd_variant(int Dh)
{
	if (Dh < 64)
		return 1;
	if (att_bwd_forced)
		return att_bwd_forced;
	if (att_bwd_env < 0) {
		const char *e = getenv("MOE_CUDA_ATTENTION_BWD");
		int v = ATT_BWD_DEFAULT;
		for (int i = 0; e && i < ATT_BWD_N; i++)
			if (strcmp(e, att_bwd_names[i]) == 0)
				v = i + 1;
		att_bwd_env = v;
	}
	return att_bwd_env;
}

/* variants with the fp32 dq32 (B, T, H, Dh) in scratch (and counters) */
static bool att_bwd_dq32(int v) { return v >= 6; }

extern "C" const char *moe_cuda_attention_bwd_config(int v)
{
	if (v < 0 || v > ATT_BWD_N)
		return NULL;
	att_bwd_forced = v;
	return att_bwd_names[att_bwd_variant(64) - 1];
}

template <int DH>
static int launch_bwd_any(bf16 *dq, bf16 *dk, bf16 *dv, float *delta, float *dq32, int *cnt, const bf16 *dout,
			  const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *out, const float *lse, int ldq,
			  int ldk, int ldv, int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	int var = att_bwd_variant(DH), rc;
	if (var == 1)
		return launch_bwd<DH>(dq, dk, dv, delta, dout, q, k, v, out, lse, ldq, ldk, ldv, ldo, B, T, H, s, err);
	size_t nj = (size_t)B * T * H;
	att_delta_kernel<<<moe_cdiv(nj, 8), 256, 0, s>>>(delta, dout, out, ldo, B, T, H, DH);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
#define DKDV(NW, BQT, KREG, DQM)                                                                              \
	launch_dkdv2<DH, NW, BQT, KREG, DQM>(dk, dv, dq, dq32, cnt, dout, q, k, v, lse, delta, ldq, ldk, ldv, ldo, B, \
					     T, H, s, err)
#define DQK(NW, BKT) launch_dq2<DH, NW, BKT>(dq, dout, q, k, v, lse, delta, ldq, ldk, ldv, ldo, B, T, H, s, err)
	switch (var) {
	case 2: return (rc = DKDV(8, 64, false, 0)) != 0 ? rc : DQK(8, 64);
	case 3: return (rc = DKDV(4, 64, false, 0)) != 0 ? rc : DQK(4, 64);
	case 4: return (rc = DKDV(8, 64, false, 0)) != 0 ? rc : DQK(4, 64);
	case 5: return (rc = DKDV(4, 32, DH <= 96, 0)) != 0 ? rc : DQK(4, 64);
	case 8:
	case 9:
	case 10:
		/* ordered: the counters start at 0; block 0 of each head writes dq */
		if ((rc = CUDA_OK(cudaMemsetAsync(cnt, 0, (size_t)B * H * moe_cdiv(T, 64) * sizeof(int), s), err)) != 0)
			return rc;
		if (var == 10 && (rc = moe_att_bwd_wgmma(dq, dk, dv, dq32, cnt, dout, q, k, v, lse, delta, ldq, ldk, ldv,
							 ldo, B, T, H, DH, s, err)) != 1)
			return rc;
		return var == 9 ? DKDV(8, 64, false, 2) : DKDV(4, 64, false, 2);
	default: break;
	}
	/* atomic: dq32 = 0, dK/dV kernel adds dQ, convert */
	if ((rc = CUDA_OK(cudaMemsetAsync(dq32, 0, nj * DH * sizeof(float), s), err)) != 0)
		return rc;
	if ((rc = var == 7 ? DKDV(8, 64, false, 1) : DKDV(4, 64, false, 1)) != 0)
		return rc;
#undef DKDV
#undef DQK
	att_dq_convert_kernel<<<moe_cdiv(nj * DH / 4, 256), 256, 0, s>>>(dq, dq32, ldq, (size_t)B * T, H * DH);
	return CUDA_LAUNCHED(err);
}

static bool att_tc_dh(int Dh) { return Dh == 16 || Dh == 32 || Dh == 64 || Dh == 96 || Dh == 128; }

/* bytes of delta (B, H, T) rounded up to 16 */
static size_t att_delta_bytes(int B, int T, int H) { return ((size_t)B * H * T * sizeof(float) + 15) & ~(size_t)15; }

extern "C" size_t moe_cuda_attention_bwd_scratch(int B, int T, int H, int Dh)
{
	size_t delta = att_delta_bytes(B, T, H), x32 = (size_t)B * T * H * Dh * sizeof(float);
	if (!att_tc_dh(Dh))
		return delta + 2 * x32;
	if (!att_bwd_dq32(att_bwd_variant(Dh)))
		return delta;
	return delta + x32 + (size_t)B * H * moe_cdiv(T, 64) * sizeof(int);
}

extern "C" int moe_cuda_attention_bwd(bf16_t *dq, bf16_t *dk, bf16_t *dv, void *scratch, const bf16_t *dout,
				      const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *out,
				      const float *lse, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
				      int Dh, cudaStream_t s, struct moe_error *err)
{
	/* scratch: delta (B, H, T), then dq32 (B, T, H, Dh) and cnt (B, H, T/64)
	 * for the variants that use them */
	float *delta = (float *)scratch, *dq32 = (float *)((char *)scratch + att_delta_bytes(B, T, H));
	int *cnt = (int *)(dq32 + (size_t)B * T * H * Dh);
	if (B <= 0 || T <= 0)
		return 0;
	if (ldq % 8 || ldk % 8 || ldv % 8 || ldo % 8)
		return moe_error_set(err, MOE_EUNSUPPORTED, "attention: row strides must be multiples of 8");
	bf16 *dqq = (bf16 *)dq, *dkk = (bf16 *)dk, *dvv = (bf16 *)dv;
	const bf16 *d = (const bf16 *)dout, *qq = (const bf16 *)q, *kk = (const bf16 *)k, *vv = (const bf16 *)v,
		   *o = (const bf16 *)out;
#define ATT_BWD(DHV) launch_bwd_any<DHV>(dqq, dkk, dvv, delta, dq32, cnt, d, qq, kk, vv, o, lse, ldq, ldk, ldv, ldo, B, T, H, s, err)
	switch (Dh) {
	case 16: return launch_bwd<16>(dqq, dkk, dvv, delta, d, qq, kk, vv, o, lse, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 32: return launch_bwd<32>(dqq, dkk, dvv, delta, d, qq, kk, vv, o, lse, ldq, ldk, ldv, ldo, B, T, H, s, err);
	case 64: return ATT_BWD(64);
	case 96: return ATT_BWD(96);
	case 128: return ATT_BWD(128);
	default: {
		int rc;
		float *dk32 = dq32, *dv32 = dk32 + (size_t)B * T * H * Dh;
		att_delta_kernel<<<moe_cdiv((size_t)B * T * H, 8), 256, 0, s>>>(delta, d, o, ldo, B, T, H, Dh);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
		return moe_cuda_attention_small_bwd(dq, dk, dv, delta, dk32, dv32, dout, q, k, v, lse, ldq, ldk, ldv,
						    ldo, B, T, H, Dh, s, err);
	}
	}
#undef ATT_BWD
}
