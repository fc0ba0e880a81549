/* Causal flash attention on Hopper's warpgroup MMA (wgmma, sm_90a), the
 * "wg" variants of attention_fwd.cu and attention_bwd.cu (same arguments and
 * results).  Forward: blocks of 128 queries, two warpgroups of 64, grid
 * (B*H, query tiles); per key tile of 64, S = Q K^T is one
 * wgmma chain with both operands in shared memory (K-major), the online
 * softmax runs on its accumulators as in the mma.sync kernels (each warp's
 * 16 rows in the mma.sync accumulator layout), and O += P V is a wgmma chain
 * with P from registers (the mma.sync A-fragment layout) and V in shared
 * memory read transposed (MN-major).  Q, K and V tiles are stored in the
 * 128-byte-swizzled layout of grouped_wgmma.cu: rows of 64 elements (128
 * bytes), one such column block after another (head sizes above 64 use two,
 * the second half-filled at 96), so that K and V tiles are the same bytes
 * read through different descriptors.  K/V are double buffered by cp.async.
 * The backward (below) has the same pieces.  Built for sm_90a only;
 * moe_att_fwd_wgmma() and moe_att_bwd_wgmma() say when the device cannot
 * run them. */
#include "attention_wgmma.cuh"
#include "kernels.h"

template <int DH> struct awg_cfg {
	static constexpr int CB = (DH + 63) / 64;                 /* column blocks */
	static constexpr int QBYTES = AWG_BQ * 128 * CB, KBYTES = AWG_BK * 128 * CB;
	static constexpr size_t SMEM = (size_t)QBYTES + 4 * KBYTES + 1024; /* Q, 2 x (K, V), alignment slack */
};

/* OB ('wg1'): one barrier a key tile, the next tile loaded after it (into
 * the stage every warp has finished with), as in the backward */
template <int DH, bool OB>
__global__ void __launch_bounds__(AWG_THREADS, 2)
attention_fwd_wgmma_kernel(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk,
			   int ldv, int ldo, int T, int H, float scale_log2)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int QBYTES = awg_cfg<DH>::QBYTES, KBYTES = awg_cfg<DH>::KBYTES;
	extern __shared__ unsigned char awg_smem[];
	const uint32_t sq = ((uint32_t)__cvta_generic_to_shared(awg_smem) + 1023) & ~1023u;
	const uint32_t sk = sq + QBYTES, sv = sk + 2 * KBYTES; /* K, V: 2 stages each */
	int qt = gridDim.y - 1 - blockIdx.y, bh = blockIdx.x, b = bh / H, h = bh % H;
	int tid = threadIdx.x, wg = tid / 128, w = (tid % 128) / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
	int q0 = qt * AWG_BQ, wq0 = q0 + 64 * wg, rq = wq0 + 16 * w + g; /* rows rq, rq + 8 */
	const bf16 *qb = q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = v + (size_t)b * T * ldv + h * DH;
	awg_load<DH, AWG_BQ>(sq, qb, ldq, q0, T);
	awg_load<DH, AWG_BK>(sk, kb, ldk, 0, T);
	awg_load<DH, AWG_BK>(sv, vb, ldv, 0, T);
	att_commit();
	float o[DH / 2]; /* the warpgroup's 64 x DH output: register 4d + e is row rq + 8 (e / 2), column 8d + 2 t4 + e % 2 */
#pragma unroll
	for (int i = 0; i < DH / 2; i++)
		o[i] = 0.f;
	float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
	int ntiles = (min(q0 + AWG_BQ, T) - 1) / AWG_BK + 1;
	bool active = wq0 < T;
	for (int j = 0; j < ntiles; j++) {
		int st = j & 1, k0 = j * AWG_BK;
		if (OB) {
			att_wait<0>();
			wg_fence_proxy();
			__syncthreads(); /* tile j in place, every warp done with tile j - 1 */
			if (j + 1 < ntiles) {
				awg_load<DH, AWG_BK>(sk + (st ^ 1) * KBYTES, kb, ldk, k0 + AWG_BK, T);
				awg_load<DH, AWG_BK>(sv + (st ^ 1) * KBYTES, vb, ldv, k0 + AWG_BK, T);
				att_commit();
			}
		} else {
			if (j + 1 < ntiles) {
				awg_load<DH, AWG_BK>(sk + (st ^ 1) * KBYTES, kb, ldk, k0 + AWG_BK, T);
				awg_load<DH, AWG_BK>(sv + (st ^ 1) * KBYTES, vb, ldv, k0 + AWG_BK, T);
			}
			att_commit();
			att_wait<1>();
			wg_fence_proxy();
			__syncthreads();
		}
		if (active && k0 <= wq0 + 63) { /* warpgroup-uniform */
			const uint32_t kst = sk + st * KBYTES, vst = sv + st * KBYTES;
			float s[32]; /* S (64 x 64): register 4jj + e is row rq + 8 (e / 2), key k0 + 8jj + 2 t4 + e % 2 */
			wg_fence();
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++) {
				uint64_t da = wg_desc(sq + (kk >> 2) * (AWG_BQ * 128) + wg * 64 * 128 + (kk & 3) * 32, 16, 1024);
				uint64_t db = wg_desc(kst + (kk >> 2) * (AWG_BK * 128) + (kk & 3) * 32, 16, 1024);
				att_wg_ss_n64(s, da, db, kk > 0);
			}
			wg_commit();
			wg_wait<0>();
			wg_fence_regs<32>(s);
			float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
			for (int i = 0; i < 32; i++)
				s[i] *= scale_log2;
			if (k0 + AWG_BK > wq0 || k0 + AWG_BK > T)
				awg_mask_qk(s, k0, rq, T, t4, -INFINITY);
#pragma unroll
			for (int i = 0; i < 32; i++)
				mx[(i & 3) / 2] = fmaxf(mx[(i & 3) / 2], s[i]);
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
			for (int i = 0; i < 32; i++) {
				float p = exp2f(s[i] - m[(i & 3) / 2]);
				s[i] = p;
				rs[(i & 3) / 2] += p;
			}
#pragma unroll
			for (int r = 0; r < 2; r++) {
				rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
				rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
				l[r] = l[r] * alpha[r] + rs[r];
			}
#pragma unroll
			for (int i = 0; i < DH / 2; i++)
				o[i] *= alpha[(i & 3) / 2];
			unsigned a[4][4];
			awg_pack(a, s);
			wg_fence();
#pragma unroll
			for (int ks = 0; ks < 4; ks++)
				awg_pv<DH>(o, a[ks], wg_desc(vst + ks * 16 * 128, AWG_BK * 128, 1024));
			wg_commit();
			wg_wait<0>();
			wg_fence_regs<DH / 2>(o);
		}
		if (!OB)
			__syncthreads(); /* the stage is refilled next iteration */
	}
	awg_fwd_store<DH>(out, lse, o, l, m, ldo, T, b, h, bh, rq, t4);
#endif
}

template <int DH, bool OB>
static int awg_launch(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk,
		      int ldv, int ldo, int B, int T, int H, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_fwd_wgmma_kernel<DH, OB>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)awg_cfg<DH>::SMEM),
			  err)) != 0)
		return rc;
	dim3 grid(B * H, moe_cdiv(T, AWG_BQ)); /* every head's longest (last) query tile first */
	moe_launch(attention_fwd_wgmma_kernel<DH, OB>, grid, AWG_THREADS, awg_cfg<DH>::SMEM, s, out, lse, q, k, v, ldq,
		   ldk, ldv, ldo, T, H, LOG2E / sqrtf((float)DH));
	return CUDA_LAUNCHED(err);
}

/* The backward on wgmma: v1's two deterministic kernels (attention_bwd.cu)
 * with warpgroup MMAs, in one launch.  A block of two warpgroups owns 128
 * rows (64 each) and streams 64-row tiles of the other operand:
 *   dK, dV: per 128 keys, over the query tiles at or after the diagonal:
 *           S^T = K Q^T and dP^T = V dO^T (shared-memory operands,
 *           K-major); P^T, dS^T in registers (lse, delta staged in shared
 *           memory); dV += P^T dO and dK += dS^T Q (A from registers, B =
 *           the dO and Q tiles read transposed, MN-major).
 *   dQ:     per 128 queries, over the key tiles up to the diagonal: S = Q K^T,
 *           dP = dO V^T (up to Dh 96 with the warp's Q and dO fragments in
 *           registers, at 128 both operands from shared memory: registers),
 *           dS in registers, dQ += dS K (K read transposed): the forward's
 *           structure.
 * P is exp2 by ex2.approx.ftz (awg_ex2).  Every output element is summed
 * by one thread in a fixed order: bit reproducible.  The grid (B*H, 2 x
 * tiles) interleaves the two kinds of blocks so that the longest tiles of
 * both, of every head, come first; 'wgeg' (the default at Dh 96) orders
 * the same blocks in groups of 8 heads (awg_group): 4% faster at Dh 96,
 * not at 128.  One barrier a streamed tile: the next
 * tile is loaded after it, into the stage every warp has finished with
 * (two barriers, loads before the first, were 7% slower).  Tried and
 * slower or no faster (RESULTS-attention.md): waiting for a tile's dK/dV or
 * dQ products only after issuing the next tile's, through 3 stages; the
 * dK/dV blocks' K rows in registers; dS^T from the bf16 P^T. */
#define AWGB_NWG 2 /* warpgroups (of 64 rows) a block */

struct awgb_args {
	bf16 *dq, *dk, *dv;           /* (B, T, H, Dh), strides of q, k, v */
	const bf16 *q, *k, *v, *dout; /* (B, T, H, Dh) */
	const float *lse, *delta;     /* (B, H, T) */
	int ldq, ldk, ldv, ldo, T, H;
	float scale;
};

template <int DH> struct awgb_cfg {
	static constexpr int TB = 64 * 128 * ((DH + 63) / 64); /* one 64-row tile */
	static constexpr int WB = AWGB_NWG * TB;               /* the block's own rows */
	/* 2 x own rows (K, V or Q, dO), 2 stages x 2 streamed tiles, lse and
	 * delta (2 stages x 64 each), alignment slack */
	static constexpr size_t SMEM = 2 * (size_t)WB + 4 * (size_t)TB + 4 * 64 * sizeof(float) + 1024;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* dK, dV of keys [kt * 128, +128) of head bh */
template <int DH>
static __device__ __forceinline__ void awg_dkdv(const struct awgb_args &A, int kt, int bh)
{
	constexpr int TB = awgb_cfg<DH>::TB, WB = awgb_cfg<DH>::WB, KR = 64 * AWGB_NWG, NT = 128 * AWGB_NWG;
	bf16 *dk = A.dk, *dv = A.dv;
	const float scale = A.scale;
	const int ldq = A.ldq, ldk = A.ldk, ldv = A.ldv, ldo = A.ldo, T = A.T, H = A.H;
	extern __shared__ unsigned char awg_smem[];
	const uint32_t s0 = (uint32_t)__cvta_generic_to_shared(awg_smem), base = (s0 + 1023) & ~1023u;
	const uint32_t sk = base, sv = sk + WB, sq = sv + WB, sd = sq + 2 * TB; /* Q, dO: 2 stages */
	float *Ls = (float *)(awg_smem + (base - s0) + 2 * WB + 4 * TB), *Dl = Ls + 128; /* (2, 64) each */
	int b = bh / H, h = bh % H;
	int tid = threadIdx.x, wg = tid / 128, w = (tid % 128) / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
	int k0 = kt * KR, wk0 = k0 + 64 * wg, nq = (T + 63) / 64, i0 = k0 / 64;
	const bf16 *qb = A.q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = A.k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = A.v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = A.dout + (size_t)b * T * ldo + h * DH;
	const float *lb = A.lse + (size_t)bh * T, *deb = A.delta + (size_t)bh * T;
	/* lse (times log2 e) and delta of query tile i into stage st */
	auto stage_ld = [&](int i, int st) {
		if (tid < 64) {
			int t = i * 64 + tid;
			Ls[st * 64 + tid] = t < T ? lb[t] * LOG2E : INFINITY;
			Dl[st * 64 + tid] = t < T ? deb[t] : 0.f;
		}
	};
	awg_load<DH, KR, NT>(sk, kb, ldk, k0, T);
	awg_load<DH, KR, NT>(sv, vb, ldv, k0, T);
	awg_load<DH, 64, NT>(sq, qb, ldq, k0, T);
	awg_load<DH, 64, NT>(sd, db, ldo, k0, T);
	att_commit();
	stage_ld(i0, 0);
	/* dK, dV (the warpgroup's 64 keys x DH): register 4d + e is key
	 * kr + 8 (e / 2), column 8d + 2 t4 + e % 2 */
	float dK[DH / 2], dV[DH / 2];
#pragma unroll
	for (int x = 0; x < DH / 2; x++)
		dK[x] = dV[x] = 0.f;
	const int kr = wk0 + 16 * w + g;
	const float sl2 = scale * LOG2E;
	const bool active = wk0 < T;
	for (int i = i0; i < nq; i++) {
		int st = (i - i0) & 1, q0 = i * 64;
		att_wait<0>();
		wg_fence_proxy();
		__syncthreads(); /* tile i in place, every warp done with tile i - 1 */
		if (i + 1 < nq) {
			stage_ld(i + 1, st ^ 1);
			awg_load<DH, 64, NT>(sq + (st ^ 1) * TB, qb, ldq, q0 + 64, T);
			awg_load<DH, 64, NT>(sd + (st ^ 1) * TB, db, ldo, q0 + 64, T);
			att_commit();
		}
		if (active && q0 + 63 >= wk0) { /* warpgroup-uniform */
			const uint32_t qs = sq + st * TB, ds = sd + st * TB;
			const float *L = Ls + st * 64, *DL = Dl + st * 64;
			/* S^T, dP^T (64 keys x 64 queries): register 4jj + e is key
			 * kr + 8 (e / 2), query q0 + 8jj + 2 t4 + e % 2 */
			float sT[32], dpT[32];
			awg_st_dpt<DH, KR>(sT, dpT, sk, sv, qs, ds, wg);
			awg_pt_dv_dst<DH>(sT, dpT, dV, L, DL, ds, q0, wk0, kr, T, t4, sl2, scale);
			unsigned sa[4][4]; /* dS^T as A fragments (16 queries each) */
			awg_pack(sa, dpT);
			wg_fence();
			awg_dk_add<DH>(dK, sa, qs); /* dK += dS^T Q */
			wg_commit();
			wg_wait<0>();
			wg_fence_regs<DH / 2>(dV);
			wg_fence_regs<DH / 2>(dK);
		}
	}
	awg_store_dkdv<DH>(dk, dv, ldk, ldv, dK, dV, b, h, T, kr, t4);
}

/* dQ of queries [qt * 128, +128) of head bh */
template <int DH>
static __device__ __forceinline__ void awg_dq(const struct awgb_args &A, int qt, int bh)
{
	constexpr int TB = awgb_cfg<DH>::TB, WB = awgb_cfg<DH>::WB, QR = 64 * AWGB_NWG, NT = 128 * AWGB_NWG;
	constexpr bool QREG = DH <= 96; /* at 128 the fragments would spill */
	const float scale = A.scale;
	const int ldq = A.ldq, ldk = A.ldk, ldv = A.ldv, ldo = A.ldo, T = A.T, H = A.H;
	extern __shared__ unsigned char awg_smem[];
	const uint32_t base = ((uint32_t)__cvta_generic_to_shared(awg_smem) + 1023) & ~1023u;
	const uint32_t sq = base, sd = sq + WB, sk = sd + WB, sv = sk + 2 * TB; /* K, V: 2 stages */
	int b = bh / H, h = bh % H;
	int tid = threadIdx.x, wg = tid / 128, w = (tid % 128) / 32, lane = tid % 32, g = lane / 4, t4 = lane % 4;
	int q0 = qt * QR, wq0 = q0 + 64 * wg, rq = wq0 + 16 * w + g; /* rows rq, rq + 8 */
	const bf16 *qb = A.q + (size_t)b * T * ldq + h * DH;
	const bf16 *kb = A.k + (size_t)b * T * ldk + h * DH;
	const bf16 *vb = A.v + (size_t)b * T * ldv + h * DH;
	const bf16 *db = A.dout + (size_t)b * T * ldo + h * DH;
	awg_load<DH, QR, NT>(sq, qb, ldq, q0, T);
	awg_load<DH, QR, NT>(sd, db, ldo, q0, T);
	awg_load<DH, 64, NT>(sk, kb, ldk, 0, T);
	awg_load<DH, 64, NT>(sv, vb, ldv, 0, T);
	att_commit();
	float L[2], dl[2];
	awg_rows_lse_delta(L, dl, A.lse, A.delta, bh, T, rq);
	const float sl2 = scale * LOG2E;
	float dQ[DH / 2]; /* register 4d + e is query rq + 8 (e / 2), column 8d + 2 t4 + e % 2 */
#pragma unroll
	for (int x = 0; x < DH / 2; x++)
		dQ[x] = 0.f;
	unsigned qa[QREG ? DH / 16 : 1][4], da[QREG ? DH / 16 : 1][4]; /* the warp's Q, dO rows */
	int ntiles = (min(q0 + QR, T) - 1) / 64 + 1;
	const bool active = wq0 < T;
	for (int j = 0; j < ntiles; j++) {
		int st = j & 1, k0 = j * 64;
		att_wait<0>();
		wg_fence_proxy();
		__syncthreads(); /* tile j in place, every warp done with tile j - 1 */
		if (j + 1 < ntiles) {
			awg_load<DH, 64, NT>(sk + (st ^ 1) * TB, kb, ldk, k0 + 64, T);
			awg_load<DH, 64, NT>(sv + (st ^ 1) * TB, vb, ldv, k0 + 64, T);
			att_commit();
		}
		if (QREG && j == 0) {
#pragma unroll
			for (int kk = 0; kk < DH / 16; kk++) {
				awg_frag_a<QR>(qa[kk], sq, 64 * wg + 16 * w, kk);
				awg_frag_a<QR>(da[kk], sd, 64 * wg + 16 * w, kk);
			}
		}
		if (active && k0 <= wq0 + 63) { /* warpgroup-uniform */
			const uint32_t kst = sk + st * TB, vst = sv + st * TB;
			awg_dq_tile<DH, QR, QREG>(dQ, qa, da, sq, sd, kst, vst, wg, L, dl, k0, wq0, rq, T, t4, sl2, scale);
		}
	}
	awg_store_dq<DH>(A.dq, ldq, dQ, b, h, T, rq, t4);
}
#endif

/* Grid (B*H, 2 x tiles of 128): even y the dK/dV of key tile y / 2 (the
 * longest first), odd y the dQ of query tile tiles - 1 - y / 2 (ditto). */
template <int DH, int G>
__global__ void __launch_bounds__(128 * AWGB_NWG, 1) attention_bwd_wgmma_kernel(struct awgb_args A, int BH, int NY)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	int y = blockIdx.y, bh = blockIdx.x;
	if (G) /* 'wgeg': 1-D grid in groups of G heads (awg_group) */
		awg_group(blockIdx.x, BH, NY, G, bh, y);
	if (y % 2 == 0)
		awg_dkdv<DH>(A, y / 2, bh);
	else
		awg_dq<DH>(A, NY / 2 - 1 - y / 2, bh);
#endif
}

template <int DH, int G>
static int awgb_launch(const struct awgb_args &A, int B, cudaStream_t s, struct moe_error *err)
{
	constexpr size_t SMEM = awgb_cfg<DH>::SMEM;
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_bwd_wgmma_kernel<DH, G>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)SMEM),
			  err)) != 0)
		return rc;
	int ny = 2 * moe_cdiv(A.T, 64 * AWGB_NWG);
	dim3 grid = G ? dim3(B * A.H * ny) : dim3(B * A.H, ny);
	moe_launch(attention_bwd_wgmma_kernel<DH, G>, grid, 128 * AWGB_NWG, SMEM, s, A, B * A.H, ny);
	return CUDA_LAUNCHED(err);
}

static bool awg_device_ok(void)
{
	static int ok = -1;
	if (ok < 0)
		ok = moe_cuda_grouped_wgmma_supported();
	return ok != 0;
}

int moe_att_bwd_wgmma(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
		      const float *lse, const float *delta, int grouped, int ldq, int ldk, int ldv, int ldo, int B, int T,
		      int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	if (!awg_device_ok())
		return 1;
	struct awgb_args A = {dq, dk, dv, q, k, v, dout, lse, delta, ldq, ldk, ldv, ldo, T, H, 1.f / sqrtf((float)Dh)};
	switch (Dh) {
	case 64: return grouped ? awgb_launch<64, 8>(A, B, s, err) : awgb_launch<64, 0>(A, B, s, err);
	case 96: return grouped ? awgb_launch<96, 8>(A, B, s, err) : awgb_launch<96, 0>(A, B, s, err);
	case 128: return grouped ? awgb_launch<128, 8>(A, B, s, err) : awgb_launch<128, 0>(A, B, s, err);
	default: return 1;
	}
}

int moe_att_fwd_wgmma(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk, int ldv,
		      int ldo, int B, int T, int H, int Dh, int ob, cudaStream_t s, struct moe_error *err)
{
	if (!awg_device_ok())
		return 1;
#define AWGL(DHV)                                                                                          \
	(ob ? awg_launch<DHV, true>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err)                \
	    : awg_launch<DHV, false>(out, lse, q, k, v, ldq, ldk, ldv, ldo, B, T, H, s, err))
	switch (Dh) {
	case 64: return AWGL(64);
	case 96: return AWGL(96);
	case 128: return AWGL(128);
	default: return 1;
	}
#undef AWGL
}
