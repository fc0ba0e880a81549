/* Causal flash attention, backward (two kernels, no atomics, deterministic):
 *   dK, dV: one block per (64 keys, b, h), looping over the query tiles at or
 *           after the diagonal; P and dP are recomputed from q, k, v, lse;
 *   dQ:     one block per (64 queries, b, h), looping over key tiles.
 * delta = rowsum(dO * O) is computed first.  dq, dk, dv are bf16; dq, dk and
 * dv share the row strides of q, k and v. */
#include "attention_common.cuh"
#include "kernels.h"

/* delta[b, h, t] = sum_d dout * out; one warp per (token, head). */
__global__ void att_delta_kernel(float *delta, const bf16 *dout, const bf16 *out, int ldo, int B, int T,
				 int H, int Dh)
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
		      const float *lse, const float *delta, int ldq, int ldk, int ldv, int ldo, int lddk,
		      int lddv, int T, int H, float scale)
{
	constexpr int LD = DH + ATT_PAD;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Ks = (bf16 *)smem, *Vs = Ks + ATT_BR * LD, *Qs = Vs + ATT_BR * LD, *Ds = Qs + ATT_BR * LD;
	float *Sf = (float *)(Ds + ATT_BR * LD);      /* (warps, 16, SLD): S^T */
	float *Df = Sf + ATT_WARPS * 16 * ATT_SLD;    /* (warps, 16, SLD): dP^T */
	float *Ls = Df + ATT_WARPS * 16 * ATT_SLD;    /* (64) lse * log2e */
	float *Dl = Ls + ATT_BR;                      /* (64) delta */
	bf16 *Pb = (bf16 *)(Dl + ATT_BR);             /* (warps, 16, PLD): P^T */
	bf16 *Gb = Pb + ATT_WARPS * 16 * ATT_PLD;     /* (warps, 16, PLD): dS^T */
	int kt = blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32;
	int k0 = kt * ATT_BR;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = dout + (size_t)b * T * ldo + h * DH;
	const float *lb = lse + (size_t)bh * T, *deb = delta + (size_t)bh * T;
	float *S = Sf + w * 16 * ATT_SLD, *Dp = Df + w * 16 * ATT_SLD;
	bf16 *P = Pb + w * 16 * ATT_PLD, *G = Gb + w * 16 * ATT_PLD;
	att_load_tile<DH>(Ks, kb, ldk, k0, T);
	att_load_tile<DH>(Vs, vb, ldv, k0, T);
	att_fc dK[DH / 16], dV[DH / 16];
#pragma unroll
	for (int i = 0; i < DH / 16; i++) {
		wmma::fill_fragment(dK[i], 0.f);
		wmma::fill_fragment(dV[i], 0.f);
	}
	int r = lane / 2, half = lane % 2;
	int kj = k0 + w * 16 + r;
	int nq = (T + ATT_BR - 1) / ATT_BR;
	for (int i = kt; i < nq; i++) {
		int q0 = i * ATT_BR;
		__syncthreads();
		att_load_tile<DH>(Qs, qb, ldq, q0, T);
		att_load_tile<DH>(Ds, db, ldo, q0, T);
		for (int t = threadIdx.x; t < ATT_BR; t += ATT_WARPS * 32) {
			bool ok = q0 + t < T;
			Ls[t] = ok ? lb[q0 + t] * 1.4426950408889634f : INFINITY;
			Dl[t] = ok ? deb[q0 + t] : 0.f;
		}
		__syncthreads();
		att_mm_abt<DH>(S, Ks + w * 16 * LD, Qs);  /* S^T = K Q^T */
		att_mm_abt<DH>(Dp, Vs + w * 16 * LD, Ds); /* dP^T = V dO^T */
		__syncwarp();
#pragma unroll 8
		for (int c = 0; c < 32; c++) {
			int col = half * 32 + c, qi = q0 + col;
			float p = 0.f;
			if (qi >= kj && qi < T)
				p = exp2f(S[r * ATT_SLD + col] * scale * 1.4426950408889634f - Ls[col]);
			float ds = p * (Dp[r * ATT_SLD + col] - Dl[col]) * scale;
			P[r * ATT_PLD + col] = f2bf(p);
			G[r * ATT_PLD + col] = f2bf(ds);
		}
		__syncwarp();
		/* dV += P^T dO, dK += dS^T Q  (16 x 64) @ (64 x DH) */
#pragma unroll
		for (int kk = 0; kk < ATT_BR / 16; kk++) {
			att_fa ap, ag;
			wmma::load_matrix_sync(ap, P + kk * 16, ATT_PLD);
			wmma::load_matrix_sync(ag, G + kk * 16, ATT_PLD);
#pragma unroll
			for (int nf = 0; nf < DH / 16; nf++) {
				att_fb_row bd, bq;
				wmma::load_matrix_sync(bd, Ds + kk * 16 * LD + nf * 16, LD);
				wmma::mma_sync(dV[nf], ap, bd, dV[nf]);
				wmma::load_matrix_sync(bq, Qs + kk * 16 * LD + nf * 16, LD);
				wmma::mma_sync(dK[nf], ag, bq, dK[nf]);
			}
		}
	}
	/* write out through the (now free) score buffers, 64 columns at a time */
	for (int c0 = 0; c0 < DH; c0 += ATT_BR) {
		__syncwarp();
#pragma unroll
		for (int nf = 0; nf < DH / 16; nf++)
			if (nf * 16 >= c0 && nf * 16 < c0 + ATT_BR) {
				wmma::store_matrix_sync(S + nf * 16 - c0, dK[nf], ATT_SLD, wmma::mem_row_major);
				wmma::store_matrix_sync(Dp + nf * 16 - c0, dV[nf], ATT_SLD, wmma::mem_row_major);
			}
		__syncwarp();
		if (kj < T) {
			bf16 *ok = dk + ((size_t)b * T + kj) * lddk + h * DH;
			bf16 *ov = dv + ((size_t)b * T + kj) * lddv + h * DH;
			for (int c = c0 + half; c < DH && c < c0 + ATT_BR; c += 2) {
				ok[c] = f2bf(S[r * ATT_SLD + c - c0]);
				ov[c] = f2bf(Dp[r * ATT_SLD + c - c0]);
			}
		}
	}
}

template <int DH>
__global__ void __launch_bounds__(ATT_WARPS * 32)
attention_dq_kernel(bf16 *dq, const bf16 *q, const bf16 *k, const bf16 *v, const bf16 *dout,
		    const float *lse, const float *delta, int ldq, int ldk, int ldv, int ldo, int lddq, int T,
		    int H, float scale)
{
	constexpr int LD = DH + ATT_PAD;
	extern __shared__ __align__(16) unsigned char smem[];
	bf16 *Qs = (bf16 *)smem, *Ds = Qs + ATT_BR * LD, *Ks = Ds + ATT_BR * LD, *Vs = Ks + ATT_BR * LD;
	float *Sf = (float *)(Vs + ATT_BR * LD);
	float *Df = Sf + ATT_WARPS * 16 * ATT_SLD;
	bf16 *Gb = (bf16 *)(Df + ATT_WARPS * 16 * ATT_SLD);
	int qt = gridDim.x - 1 - blockIdx.x, bh = blockIdx.y, b = bh / H, h = bh % H;
	int w = threadIdx.x / 32, lane = threadIdx.x % 32;
	int q0 = qt * ATT_BR;
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = dout + (size_t)b * T * ldo + h * DH;
	float *S = Sf + w * 16 * ATT_SLD, *Dp = Df + w * 16 * ATT_SLD;
	bf16 *G = Gb + w * 16 * ATT_PLD;
	att_load_tile<DH>(Qs, qb, ldq, q0, T);
	att_load_tile<DH>(Ds, db, ldo, q0, T);
	int r = lane / 2, half = lane % 2;
	int qi = q0 + w * 16 + r;
	float L = qi < T ? lse[(size_t)bh * T + qi] * 1.4426950408889634f : INFINITY;
	float dl = qi < T ? delta[(size_t)bh * T + qi] : 0.f;
	att_fc dQ[DH / 16];
#pragma unroll
	for (int i = 0; i < DH / 16; i++)
		wmma::fill_fragment(dQ[i], 0.f);
	for (int j = 0; j <= qt; j++) {
		int k0 = j * ATT_BR;
		__syncthreads();
		att_load_tile<DH>(Ks, kb, ldk, k0, T);
		att_load_tile<DH>(Vs, vb, ldv, k0, T);
		__syncthreads();
		att_mm_abt<DH>(S, Qs + w * 16 * LD, Ks);
		att_mm_abt<DH>(Dp, Ds + w * 16 * LD, Vs);
		__syncwarp();
#pragma unroll 8
		for (int c = 0; c < 32; c++) {
			int col = half * 32 + c, kj = k0 + col;
			float p = 0.f;
			if (kj <= qi && kj < T)
				p = exp2f(S[r * ATT_SLD + col] * scale * 1.4426950408889634f - L);
			G[r * ATT_PLD + col] = f2bf(p * (Dp[r * ATT_SLD + col] - dl) * scale);
		}
		__syncwarp();
#pragma unroll
		for (int kk = 0; kk < ATT_BR / 16; kk++) {
			att_fa ag;
			wmma::load_matrix_sync(ag, G + kk * 16, ATT_PLD);
#pragma unroll
			for (int nf = 0; nf < DH / 16; nf++) {
				att_fb_row bk;
				wmma::load_matrix_sync(bk, Ks + kk * 16 * LD + nf * 16, LD);
				wmma::mma_sync(dQ[nf], ag, bk, dQ[nf]);
			}
		}
	}
	/* dQ (16, DH) through the score buffers, 64 columns at a time */
	for (int c0 = 0; c0 < DH; c0 += ATT_BR) {
		__syncwarp();
#pragma unroll
		for (int nf = 0; nf < DH / 16; nf++)
			if (nf * 16 >= c0 && nf * 16 < c0 + ATT_BR)
				wmma::store_matrix_sync(S + nf * 16 - c0, dQ[nf], ATT_SLD, wmma::mem_row_major);
		__syncwarp();
		if (qi < T) {
			bf16 *o = dq + ((size_t)b * T + qi) * lddq + h * DH;
			for (int c = c0 + half; c < DH && c < c0 + ATT_BR; c += 2)
				o[c] = f2bf(S[r * ATT_SLD + c - c0]);
		}
	}
}

template <int DH>
static int launch_bwd(bf16 *dq, bf16 *dk, bf16 *dv, float *delta, const bf16 *dout, const bf16 *q,
		      const bf16 *k, const bf16 *v, const bf16 *out, const float *lse, int ldq, int ldk,
		      int ldv, int ldo, int lddq, int lddk, int lddv, int B, int T, int H, cudaStream_t s,
		      struct moe_error *err)
{
	constexpr int LD = DH + ATT_PAD;
	int rc;
	float scale = 1.f / sqrtf((float)DH);
	size_t nj = (size_t)B * T * H;
	att_delta_kernel<<<moe_cdiv(nj, 8), 256, 0, s>>>(delta, dout, out, ldo, B, T, H, DH);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	size_t sm1 = 4 * ATT_BR * LD * sizeof(bf16) + 2 * ATT_WARPS * 16 * ATT_SLD * sizeof(float) +
		     2 * ATT_BR * sizeof(float) + 2 * ATT_WARPS * 16 * ATT_PLD * sizeof(bf16);
	size_t sm2 = 4 * ATT_BR * LD * sizeof(bf16) + 2 * ATT_WARPS * 16 * ATT_SLD * sizeof(float) +
		     ATT_WARPS * 16 * ATT_PLD * sizeof(bf16);
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_dkdv_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm1),
			  err)) != 0 ||
	    (rc = CUDA_OK(cudaFuncSetAttribute(attention_dq_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm2),
			  err)) != 0)
		return rc;
	dim3 grid(moe_cdiv(T, ATT_BR), B * H);
	attention_dkdv_kernel<DH><<<grid, ATT_WARPS * 32, sm1, s>>>(dk, dv, q, k, v, dout, lse, delta, ldq, ldk,
								   ldv, ldo, lddk, lddv, T, H, scale);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	attention_dq_kernel<DH><<<grid, ATT_WARPS * 32, sm2, s>>>(dq, q, k, v, dout, lse, delta, ldq, ldk, ldv,
								 ldo, lddq, T, H, scale);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_attention_bwd(bf16_t *dq, bf16_t *dk, bf16_t *dv, float *delta,
				      const bf16_t *dout, const bf16_t *q, const bf16_t *k, const bf16_t *v,
				      const bf16_t *out, const float *lse, int ldq, int ldk, int ldv, int ldo,
				      int B, int T, int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	if (B <= 0 || T <= 0)
		return 0;
	int lddq = ldq, lddk = ldk, lddv = ldv;
	if (ldq % 8 || ldk % 8 || ldv % 8 || ldo % 8)
		return moe_error_set(err, MOE_EUNSUPPORTED, "attention: row strides must be multiples of 8");
	bf16 *dqq = (bf16 *)dq, *dkk = (bf16 *)dk, *dvv = (bf16 *)dv;
	const bf16 *d = (const bf16 *)dout, *qq = (const bf16 *)q, *kk = (const bf16 *)k,
		   *vv = (const bf16 *)v, *o = (const bf16 *)out;
#define ATT_BWD(DHV) launch_bwd<DHV>(dqq, dkk, dvv, delta, d, qq, kk, vv, o, lse, ldq, ldk, ldv, ldo, lddq, \
				     lddk, lddv, B, T, H, s, err)
	switch (Dh) {
	case 16: return ATT_BWD(16);
	case 32: return ATT_BWD(32);
	case 64: return ATT_BWD(64);
	case 96: return ATT_BWD(96);
	case 128: return ATT_BWD(128);
	default:
		return moe_error_set(err, MOE_EUNSUPPORTED, "attention: head size %d not built (16, 32, 64, 96, 128)", Dh);
	}
#undef ATT_BWD
}
