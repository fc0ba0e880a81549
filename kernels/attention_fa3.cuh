/* Shared by the warp-specialised attention kernels of attention_fa3.cu
 * (fa3, fa3k128 forward; fa3, fa3f backward) and attention_fa3p.cu
 * (fa3pk128): the 4-D tensor map of q, k, v and its tile
 * loads, and the forward's per-tile helpers on Hopper warpgroup MMAs (the
 * score tile S = Q K^T, O += P V, the online softmax of a score tile;
 * sm_90a only). */
#ifndef MOE_ATTENTION_FA3_CUH
#define MOE_ATTENTION_FA3_CUH

#include "attention_wgmma.cuh"

/* The 4-D map (Dh, H, T, B) of a bf16 tensor with row stride ld: boxes of
 * 64 columns x 64 rows, 128-byte swizzle, zeros out of bounds. */
static bool af_map(CUtensorMap *m, const bf16 *p, int ld, int B, int T, int H, int Dh)
{
	const cuuint64_t dims[4] = {(cuuint64_t)Dh, (cuuint64_t)H, (cuuint64_t)T, (cuuint64_t)B};
	const cuuint64_t strides[3] = {(cuuint64_t)Dh * 2, (cuuint64_t)ld * 2, (cuuint64_t)T * ld * 2};
	const cuuint32_t box[4] = {64, 1, 64, 1}, es[4] = {1, 1, 1, 1};
	return wg_tmap_encoder()(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 4, (void *)p, dims, strides, box, es,
			    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
			    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* a box of 64 columns x 64 rows, (column d, head h, row t, batch b) first */
static __device__ __forceinline__ void af_tma4(uint32_t dst, const CUtensorMap *m, int d, int h, int t, int b,
					       uint32_t bar)
{
	asm volatile("cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
		     "%4, %5}], [%6];\n" ::"r"(dst),
		     "l"((uint64_t)m), "r"(d), "r"(h), "r"(t), "r"(b), "r"(bar)
		     : "memory");
}
/* rows [t0, t0 + 64 * NH) of one head into the swizzled layout of a
 * (64 * NR)-row tile at dst (rows from r0), every column block */
template <int DH, int NR, int NH>
static __device__ __forceinline__ void af_load(uint32_t dst, const CUtensorMap *m, int h, int t0, int b, int r0,
					       uint32_t bar)
{
#pragma unroll
	for (int cb = 0; cb < (DH + 63) / 64; cb++)
#pragma unroll
		for (int x = 0; x < NH; x++)
			af_tma4(dst + cb * (64 * NR * 128) + (r0 + 64 * x) * 128, m, 64 * cb, h, t0 + 64 * x, b, bar);
}

/* S_j = Q K_j^T (64 x BN): register 4jj + e is row rq + 8 (e / 2), key
 * k0 + 8jj + 2 t4 + e % 2; Q the warpgroup's rows of the block's tile */
template <int DH, int BN>
static __device__ __forceinline__ void aff_s(float *s, uint32_t sq, uint32_t kst, int cw)
{
	wg_fence();
#pragma unroll
	for (int kk = 0; kk < DH / 16; kk++) {
		uint64_t da = wg_desc(sq + (kk >> 2) * (128 * 128) + cw * 8192 + (kk & 3) * 32, 16, 1024);
		uint64_t db = wg_desc(kst + (kk >> 2) * (BN * 128) + (kk & 3) * 32, 16, 1024);
		if constexpr (BN == 64)
			att_wg_ss_n64(s, da, db, kk > 0);
		else
			wg_mma_n128<0, 0>(s, da, db, kk > 0);
	}
	wg_commit();
}

/* O += P V (V the tile at vst) */
template <int DH, int BN>
static __device__ __forceinline__ void aff_pv(float *o, unsigned (&pa)[BN / 16][4], uint32_t vst)
{
	wg_fence();
#pragma unroll
	for (int ks = 0; ks < BN / 16; ks++)
		awg_pv<DH>(o, pa[ks], wg_desc(vst + ks * 2048, BN * 128, 1024));
	wg_commit();
}

/* keeps the compiler from moving the definitions of P's fragments past
 * this point */
template <int NK>
static __device__ __forceinline__ void aff_fence_frags(unsigned (&p)[NK][4])
{
#pragma unroll
	for (int ks = 0; ks < NK; ks++)
#pragma unroll
		for (int x = 0; x < 4; x++)
			asm volatile("" : "+r"(p[ks][x])::"memory");
}

/* The online softmax of S (key tile k0, rows rq, rq + 8): the running max
 * m (log2 units) updated, alpha = 2^(old m - new m) (0 at the first tile),
 * l = l alpha + this thread's part of the row sums, P = 2^(S sl2 - m) in
 * S's registers.  The max is finite from the first tile on: key 0 is never
 * masked. */
template <int NR>
static __device__ __forceinline__ void aff_softmax(float (&s)[NR], float (&m)[2], float (&l)[2], float (&alpha)[2],
						   int k0, int rq, bool edge, int T, float sl2)
{
	const int t4 = threadIdx.x % 4;
	float mx[2] = {-INFINITY, -INFINITY};
	/* awg_mask_qk's mask (why it is a block of its own there), written
	 * out: through the helper ptxas schedules the opt-in fa3 forward at
	 * Dh 96 differently, which no card has checked */
	if (edge)
#pragma unroll
		for (int jj = 0; jj < NR / 4; jj++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				int r = e / 2, kj = k0 + 8 * jj + 2 * t4 + (e & 1);
				if (kj > rq + 8 * r || kj >= T)
					s[4 * jj + e] = -INFINITY;
			}
#pragma unroll
	for (int i = 0; i < NR; i++)
		mx[(i & 3) / 2] = fmaxf(mx[(i & 3) / 2], s[i]);
#pragma unroll
	for (int r = 0; r < 2; r++) {
		mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
		mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
		float nm = fmaxf(m[r], mx[r] * sl2);
		alpha[r] = awg_ex2(m[r] - nm);
		m[r] = nm;
	}
	float rs[2] = {0.f, 0.f};
#pragma unroll
	for (int i = 0; i < NR; i++) {
		float x = awg_ex2(fmaf(s[i], sl2, -m[(i & 3) / 2]));
		s[i] = x;
		rs[(i & 3) / 2] += x;
	}
#pragma unroll
	for (int r = 0; r < 2; r++)
		l[r] = l[r] * alpha[r] + rs[r];
}

#endif

#endif
