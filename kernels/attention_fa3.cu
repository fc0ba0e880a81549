/* The causal flash-attention backward on Hopper, warp-specialised
 * ('fa3'): the deterministic two-kernel computation of attention_wgmma.cu
 * (dK/dV per 128 keys over the query tiles at or after the diagonal, dQ per
 * 128 queries over the key tiles up to it, 7 products a tile, every output
 * element summed by one thread in a fixed order: bit reproducible), with
 * FlashAttention-3's block structure instead of block-wide barriers:
 *
 *   warpgroup 0, the producer (its registers given up by setmaxnreg): one
 *     warp loads the block's own 128 rows (K, V or Q, dO) and then streams
 *     the other operand's 64-row tiles (Q, dO or K, V) with the bulk tensor
 *     copy engine (TMA, 4-D maps (Dh, H, T, B), 128-byte swizzle, rows past
 *     T and columns past Dh zero-filled) into a ring of NS stages, each
 *     completing on its own mbarrier; for dK/dV blocks it also stages the
 *     tile's lse (times log2 e) and delta;
 *   warpgroups 1 and 2, the consumers (64 of the block's rows each): wait
 *     for a stage, run the tile's products exactly as attention_wgmma.cu's
 *     awg_dkdv / awg_dq do, and hand the stage back through a second
 *     mbarrier (one arrival a warp).  No barrier ties the two consumer
 *     warpgroups together, so one's elementwise work runs beside the
 *     other's tensor-core products, and the loads run NS - 1 tiles ahead.
 *
 * The grid is wgeg's (blocks of dK/dV and dQ interleaved, longest first, in
 * groups of 8 heads).  Results are bit-identical to wge's / wgeg's (the
 * same products in the same order on the same fragments).  Built for sm_90a
 * only; moe_att_bwd_fa3() returns 1 where it cannot run (no wgmma, no
 * tensor-map entry point in the driver, unaligned pointers).  The forward
 * with the same structure (variant 'fa3' of attention_fwd.cu,
 * moe_att_fwd_fa3()) is at the end of the file. */
#include <limits.h>

#include "attention_fa3.cuh"
#include "attention_wgmma.cuh"
#include "kernels.h"

#define AF_THREADS 384 /* producer warpgroup + two consumer warpgroups */
#define AF_G 8         /* heads a group of the grid */

/* The heads a group of the grid: the value of the environment variable
 * env (MOE_CUDA_FA3_G: the forward, MOE_CUDA_FA3F_G: fa3f; 1 to 4096, for
 * measurements), read once into *seen, else dflt. */
static int af_group(const char *env, int *seen, int dflt)
{
	if (*seen < 0) {
		const char *e = getenv(env);
		int v = e ? atoi(e) : 0;
		*seen = v >= 1 && v <= 4096 ? v : 0;
	}
	return *seen ? *seen : dflt;
}
static int af_fwd_g = -1, afu_g = -1; /* af_group's MOE_CUDA_FA3_G, MOE_CUDA_FA3F_G */

struct af_args {
	bf16 *dq, *dk, *dv;       /* (B, T, H, Dh), strides ldq, ldk, ldv */
	const float *lse, *delta; /* (B, H, T) */
	int ldq, ldk, ldv, T, H, BH, NY;
	float scale;
};

/* shared memory: the block's own rows (two tensors of 128 rows), NS stages
 * of two streamed 64-row tiles, NS x (lse, delta) of 64 each; every tile
 * 1024-byte aligned for the swizzle */
template <int DH> struct af_cfg {
	static constexpr int NS = 4;                           /* stages of the ring */
	static constexpr int TB = 64 * 128 * ((DH + 63) / 64); /* one 64-row tile */
	static constexpr int WB = 2 * TB;                      /* the block's 128 rows */
	static constexpr int STAGE = 2 * TB;
	static constexpr int LOFF = 2 * WB + NS * STAGE;
	static constexpr size_t SMEM = 1024 + (size_t)LOFF + NS * 128 * sizeof(float);
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* dK, dV of keys [kt * 128, +128): consumer warpgroup cw (keys 64 cw..),
 * tile r of the block's stream is query tile i0 + r in stage r % NS */
template <int DH>
static __device__ __forceinline__ void af_dkdv(const struct af_args &A, int kt, int bh, uint32_t base,
					       const float *Lsm, uint32_t full, uint32_t empty, uint32_t ownb)
{
	constexpr int TB = af_cfg<DH>::TB, WB = af_cfg<DH>::WB, NS = af_cfg<DH>::NS, KR = 128;
	const float scale = A.scale;
	const int T = A.T, H = A.H, b = bh / H, h = bh % H;
	/* the warpgroup index broadcast from lane 0, here and in every consumer
	 * below: the compiler then knows it is the same across the warp and keeps
	 * the stage addresses and wgmma descriptors in uniform registers, as in
	 * grouped_tma.cu (session 25, one H200: fa3f 6% fewer instructions and
	 * 0-3% faster, the forwards 2-7% and fa3's backward 6-9%) */
	const int tid = threadIdx.x - 128, wg = __shfl_sync(0xffffffffu, tid / 128, 0), w = (tid % 128) / 32,
		  lane = tid % 32, g = lane / 4, t4 = lane % 4;
	const int k0 = kt * KR, wk0 = k0 + 64 * wg, nq = (T + 63) / 64, i0 = k0 / 64;
	const uint32_t sk = base, sv = base + WB, sst = base + 2 * WB;
	float dK[DH / 2], dV[DH / 2]; /* register 4d + e: key kr + 8 (e / 2), column 8d + 2 t4 + e % 2 */
#pragma unroll
	for (int x = 0; x < DH / 2; x++)
		dK[x] = dV[x] = 0.f;
	const int kr = wk0 + 16 * w + g;
	const float sl2 = scale * LOG2E;
	const bool active = wk0 < T;
	wg_bar_wait(ownb, 0);
	for (int i = i0; i < nq; i++) {
		const int r = i - i0, st = r % NS, q0 = i * 64;
		wg_bar_wait(full + 16 * st, (r / NS) & 1);
		if (active && q0 + 63 >= wk0) { /* warpgroup-uniform */
			const uint32_t qs = sst + st * 2 * TB, ds = qs + TB;
			const float *L = Lsm + st * 128, *DL = L + 64;
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
		__syncwarp();
		if (lane == 0)
			wg_arrive(empty + 16 * st); /* this warp is done with the stage */
	}
	awg_store_dkdv<DH>(A.dk, A.dv, A.ldk, A.ldv, dK, dV, b, h, T, kr, t4);
}

/* dQ of queries [qt * 128, +128): consumer warpgroup cw (queries 64 cw..),
 * tile j of the block's stream is key tile j in stage j % NS */
template <int DH>
static __device__ __forceinline__ void af_dq(const struct af_args &A, int qt, int bh, uint32_t base, uint32_t full,
					     uint32_t empty, uint32_t ownb)
{
	constexpr int TB = af_cfg<DH>::TB, WB = af_cfg<DH>::WB, NS = af_cfg<DH>::NS, QR = 128;
	constexpr bool QREG = DH <= 96; /* at 128 the fragments would spill */
	const float scale = A.scale;
	const int T = A.T, H = A.H, b = bh / H, h = bh % H;
	const int tid = threadIdx.x - 128, wg = __shfl_sync(0xffffffffu, tid / 128, 0), w = (tid % 128) / 32,
		  lane = tid % 32, g = lane / 4, t4 = lane % 4;
	const int q0 = qt * QR, wq0 = q0 + 64 * wg, rq = wq0 + 16 * w + g; /* rows rq, rq + 8 */
	const uint32_t sq = base, sd = base + WB, sst = base + 2 * WB;
	float L[2], dl[2];
	awg_rows_lse_delta(L, dl, A.lse, A.delta, bh, T, rq);
	const float sl2 = scale * LOG2E;
	float dQ[DH / 2]; /* register 4d + e is query rq + 8 (e / 2), column 8d + 2 t4 + e % 2 */
#pragma unroll
	for (int x = 0; x < DH / 2; x++)
		dQ[x] = 0.f;
	unsigned qa[QREG ? DH / 16 : 1][4], da[QREG ? DH / 16 : 1][4]; /* the warp's Q, dO rows */
	const int ntiles = (min(q0 + QR, T) - 1) / 64 + 1;
	const bool active = wq0 < T;
	wg_bar_wait(ownb, 0);
	if (QREG) {
#pragma unroll
		for (int kk = 0; kk < DH / 16; kk++) {
			awg_frag_a<QR>(qa[kk], sq, 64 * wg + 16 * w, kk);
			awg_frag_a<QR>(da[kk], sd, 64 * wg + 16 * w, kk);
		}
	}
	for (int j = 0; j < ntiles; j++) {
		const int st = j % NS, k0 = j * 64;
		wg_bar_wait(full + 16 * st, (j / NS) & 1);
		if (active && k0 <= wq0 + 63) { /* warpgroup-uniform */
			const uint32_t kst = sst + st * 2 * TB, vst = kst + TB;
			awg_dq_tile<DH, QR, QREG>(dQ, qa, da, sq, sd, kst, vst, wg, L, dl, k0, wq0, rq, T, t4, sl2, scale);
		}
		__syncwarp();
		if (lane == 0)
			wg_arrive(empty + 16 * st);
	}
	awg_store_dq<DH>(A.dq, A.ldq, dQ, b, h, T, rq, t4);
}
#endif

/* 1-D grid of B*H heads x NY (= 2 x blocks of 128 rows) in groups of AF_G
 * heads (awg_group): even y the dK/dV of key block y / 2 (the longest
 * first), odd y the dQ of query block NY / 2 - 1 - y / 2 (ditto).  Maps
 * (Dh, H, T, B) of q, k, v, dO. */
template <int DH>
__global__ void __launch_bounds__(AF_THREADS, 1)
	attention_bwd_fa3_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
				 const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tdo,
				 const struct af_args A)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int TB = af_cfg<DH>::TB, WB = af_cfg<DH>::WB, LOFF = af_cfg<DH>::LOFF, NS = af_cfg<DH>::NS;
	extern __shared__ unsigned char af_smem[];
	__shared__ __align__(8) uint64_t bars[2 * NS + 1]; /* full[s] at 2s, empty[s] at 2s + 1, own last */
	const uint32_t s0 = wg_smem_u32(af_smem), base = (s0 + 1023) & ~1023u;
	float *Lsm = (float *)(af_smem + (base - s0) + LOFF); /* (NS, lse | delta, 64) */
	const uint32_t full = wg_smem_u32(&bars[0]), empty = full + 8, ownb = wg_smem_u32(&bars[2 * NS]);
	const int tid = threadIdx.x, T = A.T;
	int bh, y;
	awg_group(blockIdx.x, A.BH, A.NY, AF_G, bh, y);
	const bool kv = y % 2 == 0;
	const int blk = kv ? y / 2 : A.NY / 2 - 1 - y / 2, nt = (T + 63) / 64;
	/* the streamed tiles: query tiles 2 blk .. nt - 1, or key tiles 0 .. */
	const int first = kv ? 2 * blk : 0, ntile = kv ? nt - first : (min(128 * blk + 128, T) - 1) / 64 + 1;
	if (tid == 0) {
		for (int s = 0; s < NS; s++) {
			wg_bar_init(full + 16 * s, 32); /* the producer warp's lanes, and the bytes */
			wg_bar_init(empty + 16 * s, 8); /* one arrival a consumer warp */
		}
		wg_bar_init(ownb, 1);
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();
	if (tid < 128) { /* producer */
		/* the consumers' 2 x 128 x (240 - 168) registers come from the
		 * CTA's pool, which only the producer's 128 x (168 - 24) fill:
		 * setmaxnreg.inc would wait for good with less given up here */
		asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
		if (tid >= 32)
			return;
		const int lane = tid, H = A.H, b = bh / H, h = bh % H;
		const CUtensorMap *o0 = kv ? &tk : &tq, *o1 = kv ? &tv : &tdo; /* own rows */
		const CUtensorMap *m0 = kv ? &tq : &tk, *m1 = kv ? &tdo : &tv; /* streamed */
		if (lane == 0) {
			wg_arrive_tx(ownb, 2 * WB);
			af_load<DH, 2, 2>(base, o0, h, 128 * blk, b, 0, ownb);
			af_load<DH, 2, 2>(base + WB, o1, h, 128 * blk, b, 0, ownb);
		}
		const float *lb = A.lse + (size_t)bh * T, *deb = A.delta + (size_t)bh * T;
		for (int r = 0; r < ntile; r++) {
			const int st = r % NS, t0 = 64 * (first + r);
			const uint32_t f = full + 16 * st;
			if (r >= NS) /* the consumers are done with the stage's last round */
				wg_bar_wait(empty + 16 * st, ((r / NS) - 1) & 1);
			if (kv) {
				float *L = Lsm + st * 128;
#pragma unroll
				for (int x = 0; x < 2; x++) {
					int c = lane + 32 * x, t = t0 + c;
					L[c] = t < T ? lb[t] * LOG2E : INFINITY;
					L[64 + c] = t < T ? deb[t] : 0.f;
				}
			}
			if (lane == 0) {
				wg_arrive_tx(f, 2 * TB);
				const uint32_t d = base + 2 * WB + st * 2 * TB;
				af_load<DH, 1, 1>(d, m0, h, t0, b, 0, f);
				af_load<DH, 1, 1>(d + TB, m1, h, t0, b, 0, f);
			} else {
				wg_arrive(f);
			}
		}
		return;
	}
	asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
	if (kv)
		af_dkdv<DH>(A, blk, bh, base, Lsm, full, empty, ownb);
	else
		af_dq<DH>(A, blk, bh, base, full, empty, ownb);
#endif
}

template <int DH>
static int af_launch(const CUtensorMap *m, const struct af_args &A, cudaStream_t s, struct moe_error *err)
{
	constexpr size_t SMEM = af_cfg<DH>::SMEM;
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_bwd_fa3_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)SMEM),
			  err)) != 0)
		return rc;
	moe_launch(attention_bwd_fa3_kernel<DH>, A.BH * A.NY, AF_THREADS, SMEM, s, m[0], m[1], m[2], m[3], A);
	return CUDA_LAUNCHED(err);
}

int moe_att_bwd_fa3(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
		    const float *lse, const float *delta, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
		    int Dh, cudaStream_t s, struct moe_error *err)
{
	if ((Dh != 64 && Dh != 96 && Dh != 128) || !moe_cuda_grouped_wgmma_supported() || !wg_tmap_encoder() ||
	    ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)dout) % 16)
		return 1;
	CUtensorMap m[4];
	if (!af_map(&m[0], q, ldq, B, T, H, Dh) || !af_map(&m[1], k, ldk, B, T, H, Dh) ||
	    !af_map(&m[2], v, ldv, B, T, H, Dh) || !af_map(&m[3], dout, ldo, B, T, H, Dh))
		return 1;
	struct af_args A = {dq, dk, dv, lse, delta, ldq, ldk, ldv, T, H, B * H, 2 * (int)moe_cdiv(T, 128),
			    1.f / sqrtf((float)Dh)};
	switch (Dh) {
	case 64: return af_launch<64>(m, A, s, err);
	case 96: return af_launch<96>(m, A, s, err);
	default: return af_launch<128>(m, A, s, err);
	}
}

/* The forward ('fa3' and 'fa3k128' of attention_fwd.cu), warp-specialised
 * the same way: blocks of 128 queries, every head's longest first, the grid
 * in groups of 8 heads as the backward's;
 *
 *   warpgroup 0, the producer (setmaxnreg 24): one thread loads the block's
 *     128 Q rows (one mbarrier), then streams the K and V tiles of BN rows
 *     (64 in 4 stages, or 128 in 3) up to the block's diagonal, both in one
 *     stage completing on one mbarrier;
 *   warpgroups 1 and 2, the consumers (setmaxnreg 240, 64 queries each):
 *     for key tile j, S_j = Q K_j^T is issued, then O += P_{j-1} V_{j-1}
 *     behind it; the online softmax of S_j (exp2 by ex2.approx.ftz, the
 *     running max in log2 units, row sums kept per thread and summed over
 *     the quad once at the end) runs while the tensor cores do P V, then O
 *     is rescaled and stage j - 1 handed back (one arrival a warp).  Key
 *     tiles past a warpgroup's diagonal are not computed, but every
 *     consumer warp still waits for and hands back every stage the block
 *     streams, in order, so each phase of an empty barrier counts the
 *     arrivals of one round only.
 *
 * lse is the natural log of each query's sum, as attention_fwd.cu's other
 * kernels write it. */
template <int DH, int BN, int NS> struct aff_cfg {
	static_assert(NS >= 2, "the consumers hand a stage back only after waiting for the next");
	static_assert(BN == 64 || BN == 128, "key tiles of 64 or 128 rows");
	static constexpr int CB = (DH + 63) / 64;   /* column blocks of 64 */
	static constexpr int TB = BN * 128 * CB;    /* one K or V tile */
	static constexpr int QB = 128 * 128 * CB;   /* the block's 128 Q rows */
	static constexpr size_t SMEM = 1024 + (size_t)QB + (size_t)NS * 2 * TB;
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* queries [q0 + 64 cw, +64) of head bh: tile j of the stream (keys BN j
 * ..) in stage j % NS, K then V */
template <int DH, int BN, int NS>
static __device__ __forceinline__ void aff_consume(bf16 *out, float *lse, int ldo, int T, int H, float sl2, int bh,
						   int q0, int ntile, uint32_t base, uint32_t full, uint32_t empty,
						   uint32_t qbar)
{
	constexpr int TB = aff_cfg<DH, BN, NS>::TB, QB = aff_cfg<DH, BN, NS>::QB;
	const int tid = threadIdx.x - 128, cw = __shfl_sync(0xffffffffu, tid / 128, 0), w = (tid % 128) / 32,
		  lane = tid % 32, g = lane / 4, t4 = lane % 4;
	const int wq0 = q0 + 64 * cw, rq = wq0 + 16 * w + g; /* rows rq, rq + 8 */
	const uint32_t sq = base, sst = base + QB;
	/* the key tiles this warpgroup computes: 0 .. its diagonal tile */
	const int nmine = wq0 < T ? min(ntile, wq0 / BN + 1) : 0;
	float o[DH / 2]; /* register 4d + e: row rq + 8 (e / 2), column 8d + 2 t4 + e % 2 */
#pragma unroll
	for (int x = 0; x < DH / 2; x++)
		o[x] = 0.f;
	/* m: the running max of the scaled scores (log2 units); l: this
	 * thread's part of the row sums (its 16 of every 64 keys) */
	float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
	if (nmine > 0) { /* warpgroup-uniform */
		unsigned pa[BN / 16][4]; /* P_{j-1} (bf16) as A fragments */
		float s[BN / 2], alpha[2];
		wg_bar_wait(qbar, 0);
		wg_bar_wait(full, 0);
		aff_s<DH, BN>(s, sq, sst, cw);
		wg_wait<0>();
		wg_fence_regs<BN / 2>(s);
		aff_softmax(s, m, l, alpha, 0, rq, BN > wq0 || BN > T, T, sl2);
		awg_pack(pa, s);
		for (int j = 1; j < nmine; j++) {
			const int st = j % NS, sp = (j - 1) % NS, k0 = BN * j;
			wg_bar_wait(full + 16 * st, (j / NS) & 1);
			aff_s<DH, BN>(s, sq, sst + st * 2 * TB, cw);
			aff_pv<DH, BN>(o, pa, sst + sp * 2 * TB + TB); /* O += P_{j-1} V_{j-1} */
			wg_wait<1>(); /* S_j done, P V may still run */
			wg_fence_regs<BN / 2>(s);
			aff_softmax(s, m, l, alpha, k0, rq, k0 + BN > wq0 || k0 + BN > T, T, sl2);
			wg_wait<0>();
			wg_fence_regs<DH / 2>(o);
			aff_fence_frags(pa); /* read by P V until here */
			__syncwarp();
			if (lane == 0)
				wg_arrive(empty + 16 * sp); /* K_{j-1}, V_{j-1} no longer read */
			/* P_j's fragments only now: defined while P V ran, ptxas
			 * serialized the products (C7513) */
			awg_pack(pa, s);
#pragma unroll
			for (int x = 0; x < DH / 2; x++)
				o[x] *= alpha[(x & 3) / 2];
			/* here, not between the next tile's S and P V products */
			wg_fence_regs<DH / 2>(o);
			aff_fence_frags(pa);
		}
		const int sp = (nmine - 1) % NS;
		aff_pv<DH, BN>(o, pa, sst + sp * 2 * TB + TB);
		wg_wait<0>();
		wg_fence_regs<DH / 2>(o);
		__syncwarp();
		if (lane == 0)
			wg_arrive(empty + 16 * sp);
	}
	/* the tiles past this warpgroup's diagonal (or all, past T): waited
	 * for before being handed back, so that no arrival can count towards
	 * an earlier round */
	for (int j = nmine; j < ntile; j++) {
		const int st = j % NS;
		wg_bar_wait(full + 16 * st, (j / NS) & 1);
		__syncwarp();
		if (lane == 0)
			wg_arrive(empty + 16 * st);
	}
	if (nmine == 0)
		return;
	const int b = bh / H, h = bh % H;
#pragma unroll
	for (int r = 0; r < 2; r++) {
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
		l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
	}
	awg_fwd_store<DH>(out, lse, o, l, m, ldo, T, b, h, bh, rq, t4);
}
#endif

/* 1-D grid of BH heads x NY query blocks of 128 in groups of G heads
 * (awg_group), every group's last blocks first; maps (Dh, H, T, B) of q, k,
 * v */
template <int DH, int BN, int NS>
__global__ void __launch_bounds__(AF_THREADS, 1)
	attention_fwd_fa3_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
				 const __grid_constant__ CUtensorMap tv, bf16 *out, float *lse, int ldo, int T, int H,
				 int BH, int NY, int G, float sl2)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int TB = aff_cfg<DH, BN, NS>::TB, QB = aff_cfg<DH, BN, NS>::QB;
	extern __shared__ unsigned char af_smem[];
	__shared__ __align__(8) uint64_t bars[2 * NS + 1]; /* full[s] at 2s, empty[s] at 2s + 1, Q last */
	const uint32_t base = (wg_smem_u32(af_smem) + 1023) & ~1023u;
	const uint32_t full = wg_smem_u32(&bars[0]), empty = full + 8, qbar = wg_smem_u32(&bars[2 * NS]);
	const int tid = threadIdx.x;
	int bh, y;
	awg_group(blockIdx.x, BH, NY, G, bh, y);
	const int q0 = 128 * (NY - 1 - y);
	const int ntile = (min(q0 + 128, T) - 1) / BN + 1; /* key tiles 0 .. the block's diagonal */
	if (tid == 0) {
		for (int s = 0; s < NS; s++) {
			wg_bar_init(full + 16 * s, 1);  /* the producer's arrival, and the bytes */
			wg_bar_init(empty + 16 * s, 8); /* one arrival a consumer warp */
		}
		wg_bar_init(qbar, 1);
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();
	if (tid < 128) { /* producer */
		/* as in the backward: the consumers' 2 x 128 x (240 - 168)
		 * registers are exactly the producer's 128 x (168 - 24) */
		asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
		if (tid != 0)
			return;
		const int b = bh / H, h = bh % H;
		wg_arrive_tx(qbar, QB);
		af_load<DH, 2, 2>(base, &tq, h, q0, b, 0, qbar);
		for (int r = 0; r < ntile; r++) {
			const int st = r % NS;
			const uint32_t f = full + 16 * st, d = base + QB + st * 2 * TB;
			if (r >= NS) /* every consumer warp is done with the stage's last round */
				wg_bar_wait(empty + 16 * st, ((r / NS) - 1) & 1);
			wg_arrive_tx(f, 2 * TB);
			af_load<DH, BN / 64, BN / 64>(d, &tk, h, BN * r, b, 0, f);
			af_load<DH, BN / 64, BN / 64>(d + TB, &tv, h, BN * r, b, 0, f);
		}
		return;
	}
	asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
	aff_consume<DH, BN, NS>(out, lse, ldo, T, H, sl2, bh, q0, ntile, base, full, empty, qbar);
#endif
}

template <int DH, int BN, int NS>
static int aff_launch(const CUtensorMap *m, bf16 *out, float *lse, int ldo, int B, int T, int H, int G, cudaStream_t s,
		      struct moe_error *err)
{
	constexpr size_t SMEM = aff_cfg<DH, BN, NS>::SMEM;
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_fwd_fa3_kernel<DH, BN, NS>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)SMEM),
			  err)) != 0)
		return rc;
	const int NY = (int)moe_cdiv(T, 128);
	moe_launch(attention_fwd_fa3_kernel<DH, BN, NS>, B * H * NY, AF_THREADS, SMEM, s, m[0], m[1], m[2], out, lse,
		   ldo, T, H, B * H, NY, G, LOG2E / sqrtf((float)DH));
	return CUDA_LAUNCHED(err);
}

int moe_att_fwd_fa3(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk, int ldv,
		    int ldo, int B, int T, int H, int Dh, int bn, cudaStream_t s, struct moe_error *err)
{
	if ((Dh != 64 && Dh != 96 && Dh != 128) || !moe_cuda_grouped_wgmma_supported() || !wg_tmap_encoder() ||
	    ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 || (size_t)B * H * moe_cdiv(T, 128) > INT_MAX)
		return 1;
	/* the blocks of AF_G heads together, so that the K/V rows they all
	 * stream are read from L2 (one block an SM: ungrouped, the running
	 * blocks are of ~132 heads, 100 MB of K/V at seed-base) */
	const int G = af_group("MOE_CUDA_FA3_G", &af_fwd_g, AF_G);
	CUtensorMap m[3];
	if (!af_map(&m[0], q, ldq, B, T, H, Dh) || !af_map(&m[1], k, ldk, B, T, H, Dh) ||
	    !af_map(&m[2], v, ldv, B, T, H, Dh))
		return 1;
	/* 64-row key tiles in 4 stages; 128-row ones in 3 (225 KB at Dh 96 and
	 * 128): a stage is handed back one tile after its S, so 2 would leave
	 * the next tile's load no time */
#define AFFL(DHV)                                                                      \
	(bn == 128 ? aff_launch<DHV, 128, 3>(m, out, lse, ldo, B, T, H, G, s, err)     \
		   : aff_launch<DHV, 64, 4>(m, out, lse, ldo, B, T, H, G, s, err))
	switch (Dh) {
	case 64: return AFFL(64);
	case 96: return AFFL(96);
	default: return AFFL(128);
	}
#undef AFFL
}

/* The one-kernel backward ('fa3f' of attention_bwd.cu, the default at Dh 96
 * and 128 since session 10; RESULTS-attention.md), in the structure of the
 * two-kernel one above: one block of 384 threads per 128 keys (key block n
 * of head bh), streaming the 64-row query tiles i = 2n .. (Q, dO, lse,
 * delta) through the TMA ring:
 *
 *   warp 0, the producer: the block's K and V rows (one mbarrier), then the
 *     query tiles' Q and dO by the tensor copy engine, lse and delta by its
 *     lanes, into NS stages;
 *   warp 1, the dQ writer: adds each tile's fp32 dQ contribution (staged in
 *     shared memory by the consumers, NQB buffers) to dqacc, the fp32 dQ of
 *     (head, query tile), with one bulk copy (cp.reduce.async.bulk .add.f32,
 *     or a plain bulk store for the tile's first contribution);
 *   warpgroups 1 and 2, the consumers (64 keys each): S^T = K Q^T,
 *     dP^T = V dO^T, dV += P^T dO, dK += dS^T Q exactly as af_dkdv (so dK
 *     and dV are bit-identical to fa3's), dS^T stored to shared memory
 *     (two buffers, each with an mbarrier of the 256 consumer threads'
 *     stores), and, one tile behind (session 9: no barrier of both
 *     warpgroups in a round), the previous tile's dQ contribution dS K
 *     (64 queries x the warpgroup's 64 columns over the block's 128 keys;
 *     at Dh 96 warpgroup 1's columns 96-127 are zeros and not stored):
 *     5 products a tile pair instead of the two kernels' 7.
 *
 * Determinism: the contributions of key blocks n = i/2, ..., 1, 0 to query
 * tile i are added in that order: the first stores, each later one waits
 * until the tile's counter (zeroed by the delta kernel) shows the i/2 - n
 * before it, adds, waits for the add to complete and counts itself.  So
 * every element of dqacc is summed in a fixed order: bit reproducible.  Forward progress: the grid (groups of A.G heads,
 * each group's highest key blocks first) orders every block a block waits for
 * before it, and a block's place in that order is its ticket (awg_ticket,
 * session 10), not blockIdx: a waited-for block took its ticket earlier, so
 * it is resident or finished whatever order the hardware dispatches blocks
 * in (before session 10 this assumed launch-order dispatch, as
 * FlashAttention-3's deterministic mode does), and it never waits on a
 * later block, so no cycle.  In the steady state block n reaches tile i two
 * tiles after block n + 1 (it starts two tiles earlier in the stream), so
 * the writer does not wait; the consumers wait only when both dQ buffers
 * are still queued.
 *
 * dq (bf16, the caller's row stride) is written from dqacc by a small
 * kernel after, or left to the caller as fp32 tiles (keep).  Dh 96 and 128
 * (the dQ product splits 128 columns between the two warpgroups). */
template <int DH> struct afu_cfg {
	static_assert(DH == 96 || DH == 128, "fa3f: Dh 96 or 128");
	static constexpr int NS = 2;             /* stages of the ring */
	static constexpr int NQB = 2;            /* dQ buffers */
	static constexpr int TB = 64 * 128 * 2;  /* one 64-row tile, two column blocks */
	static constexpr int WB = 2 * TB;        /* the block's 128 K (or V) rows */
	static constexpr int STAGE = 2 * TB;     /* Q, dO */
	static constexpr int DSB = 128 * 128;    /* dS^T: 128 keys x 64 queries, bf16 */
	static constexpr int QTB = 64 * DH * 4;  /* one fp32 dQ tile (64 x DH, rows of DH) */
	static constexpr int DSOFF = 2 * WB + NS * STAGE;
	static constexpr int QOFF = DSOFF + 2 * DSB;
	static constexpr int LOFF = QOFF + NQB * QTB;
	static constexpr size_t SMEM = 1024 + (size_t)LOFF + NS * 128 * sizeof(float);
	static_assert(SMEM <= 232448, "fa3f: shared memory");
};

struct afu_args {
	bf16 *dq, *dk, *dv;       /* (B, T, H, Dh), strides ldq, ldk, ldv */
	float *dqacc;             /* (BH, nq, 64, Dh) fp32, columns swizzled by row */
	int *cnt;                 /* (BH, nq), zero: contributions added so far */
	const float *lse, *delta; /* (B, H, T) */
	int ldq, ldk, ldv, T, H, BH, NK, nq;
	float scale;
	int G; /* heads a group of the grid (awg_group) */
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* d (64 x 64) = A B (+ d): A and B both MN-major in shared memory */
static __device__ __forceinline__ void afu_tt_n64(float *d, uint64_t da, uint64_t db, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
		     "{" WG_S32 "}, %32, %33, p, 1, 1, 1, 1;\n}\n"
		     : WG_D32
		     : "l"(da), "l"(db), "r"(acc));
}

/* the consumers' dK, dV of keys [128 n, +128) and the tiles' dQ parts */
template <int DH>
static __device__ __forceinline__ void afu_consume(const struct afu_args &A, int n, int bh, uint32_t base,
						   const float *Lsm, float *dqs, uint32_t full, uint32_t empty,
						   uint32_t ownb, uint32_t dqf, uint32_t dqe, uint32_t dsr)
{
	using C = afu_cfg<DH>;
	constexpr int TB = C::TB, WB = C::WB, NS = C::NS, NQB = C::NQB, KR = 128;
	const float scale = A.scale;
	const int T = A.T, H = A.H, b = bh / H, h = bh % H;
	const int tid = threadIdx.x - 128, wg = __shfl_sync(0xffffffffu, tid / 128, 0), w = (tid % 128) / 32,
		  lane = tid % 32, g = lane / 4, t4 = lane % 4;
	const int k0 = n * KR, wk0 = k0 + 64 * wg, nq = A.nq, i0 = 2 * n;
	const uint32_t sk = base, sv = base + WB, sst = base + 2 * WB, sds0 = base + C::DSOFF;
	float dK[DH / 2], dV[DH / 2]; /* register 4d + e: key kr + 8 (e / 2), column 8d + 2 t4 + e % 2 */
#pragma unroll
	for (int x = 0; x < DH / 2; x++)
		dK[x] = dV[x] = 0.f;
	const int kr = wk0 + 16 * w + g;
	const float sl2 = scale * LOG2E;
	/* tile rr's dQ contribution (64 queries x columns 64 wg .., register
	 * 4d + e query 16 w + g + 8 (e / 2), column 64 wg + 8d + 2 t4 + e % 2)
	 * into its dQ buffer for the writer.  The tile's row rr keeps column
	 * c at c ^ 8 (rr & 3) (inside its 32-column group; the rows of a
	 * thread, 16 w + g and + 8, both have rr & 3 = g & 3): rows are DH =
	 * 96 or 128 floats, a multiple of the 32 banks, so unswizzled the 8
	 * rows of a warp's float2 stores fell on the same 8 banks; now every
	 * store is 2 wavefronts.  dqacc holds the tiles in this layout (bulk
	 * copies), the conversion kernel puts the columns back. */
	auto stage = [&](int rr, const float *dq) {
		const int qb = rr % NQB, sw = g & 3;
		float *o = dqs + qb * (64 * DH) + (16 * w + g) * DH + 64 * wg + 2 * t4;
		if (rr >= NQB) /* the writer is done with the buffer's last round */
			wg_bar_wait(dqe + 16 * qb, ((rr / NQB) - 1) & 1);
#pragma unroll
		for (int d = 0; d < 8; d++) {
			if (64 * wg + 8 * d >= DH)
				break;
			*(float2 *)(o + 8 * (d ^ sw)) = make_float2(dq[4 * d], dq[4 * d + 1]);
			*(float2 *)(o + 8 * DH + 8 * (d ^ sw)) = make_float2(dq[4 * d + 2], dq[4 * d + 3]);
		}
		wg_fence_proxy(); /* for the writer's bulk copy */
		wg_arrive(dqf + 16 * qb);
	};
	/* dQ of tile rr (64 queries x columns 64 wg ..) = dS K over the
	 * block's 128 keys: both warpgroups' dS^T rows in buffer rr & 1 */
	auto dq_product = [&](float *dq, int rr) {
		const uint32_t sds = sds0 + (rr & 1) * C::DSB;
#pragma unroll
		for (int ks = 0; ks < KR / 16; ks++)
			afu_tt_n64(dq, wg_desc(sds + ks * 2048, KR * 128, 1024),
				   wg_desc(sk + wg * (KR * 128) + ks * 2048, KR * 128, 1024), ks > 0);
	};
	wg_bar_wait(ownb, 0);
	/* Software-pipelined by one tile: round r computes tile r's S^T,
	 * dP^T, dV and dS^T, then (once both warpgroups' dS^T of tile r - 1
	 * are in place: dsr[(r - 1) & 1]) stores tile r's dS^T into buffer
	 * r & 1, issues dK += dS^T Q and tile r - 1's dQ product, and stages
	 * tile r - 1's dQ; tile r's arrival on dsr[r & 1] comes after its
	 * stores and after this warpgroup's reads of buffer (r - 1) & 1, so a
	 * buffer is rewritten only when both warpgroups are done with it.  No
	 * barrier of both warpgroups in the round: one's elementwise work runs
	 * beside the other's products, as in fa3. */
	for (int i = i0; i < nq; i++) {
		const int r = i - i0, st = r % NS, q0 = i * 64;
		const uint32_t sds = sds0 + (r & 1) * C::DSB;
		wg_bar_wait(full + 16 * st, (r / NS) & 1);
		const uint32_t qs = sst + st * 2 * TB, ds = qs + TB;
		unsigned sa[4][4]; /* dS^T as A fragments (16 queries each) */
		if (q0 + 63 >= wk0) { /* warpgroup-uniform: not wholly above the diagonal */
			const float *L = Lsm + st * 128, *DL = L + 64;
			float sT[32], dpT[32];
			awg_st_dpt<DH, KR>(sT, dpT, sk, sv, qs, ds, wg);
			awg_pt_dv_dst<DH>(sT, dpT, dV, L, DL, ds, q0, wk0, kr, T, t4, sl2, scale);
			awg_pack(sa, dpT);
		} else { /* every key after every query of the tile: dS^T = 0 */
#pragma unroll
			for (int ks = 0; ks < 4; ks++)
#pragma unroll
				for (int x = 0; x < 4; x++)
					sa[ks][x] = 0u;
		}
		if (r > 0) /* both warpgroups' dS^T of tile r - 1 in place, and done with buffer r & 1 */
			wg_bar_wait(dsr + 8 * ((r - 1) & 1), ((r - 1) >> 1) & 1);
		awg_st_dst(sa, sds, wg, w, g, t4);
		wg_fence_proxy(); /* this thread's dS^T for the tensor cores */
		float dq[32];
		wg_fence();
		awg_dk_add<DH>(dK, sa, qs); /* dK += dS^T Q (zero products above the diagonal) */
		dq_product(dq, r - 1); /* r = 0: buffer 1 before any dS^T, not staged */
		wg_commit();
		wg_wait<0>();
		wg_fence_regs<32>(dq);
		wg_fence_regs<DH / 2>(dV);
		wg_fence_regs<DH / 2>(dK);
		__syncwarp();
		if (lane == 0)
			wg_arrive(empty + 16 * st); /* Q, dO of the stage no longer read */
		wg_arrive(dsr + 8 * (r & 1));
		if (r > 0)
			stage(r - 1, dq);
	}
	{ /* the last tile's dQ */
		const int r = nq - i0;
		float dq[32];
		wg_bar_wait(dsr + 8 * ((r - 1) & 1), ((r - 1) >> 1) & 1);
		wg_fence();
		dq_product(dq, r - 1);
		wg_commit();
		wg_wait<0>();
		wg_fence_regs<32>(dq);
		stage(r - 1, dq);
	}
	awg_store_dkdv<DH>(A.dk, A.dv, A.ldk, A.ldv, dK, dV, b, h, T, kr, t4);
}
#endif

/* 1-D grid of BH heads x NK key blocks of 128 in groups of A.G heads
 * (awg_group), each group's highest key blocks first; maps (Dh, H, T, B)
 * of q, k, v, dO */
template <int DH>
__global__ void __launch_bounds__(AF_THREADS, 1)
	attention_bwd_fa3f_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
				  const __grid_constant__ CUtensorMap tv, const __grid_constant__ CUtensorMap tdo,
				  const struct afu_args A)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	using C = afu_cfg<DH>;
	constexpr int TB = C::TB, WB = C::WB, NS = C::NS, NQB = C::NQB;
	extern __shared__ unsigned char af_smem[];
	/* full[s] at 2s, empty[s] at 2s + 1, own, then dq full[b], dq empty[b] */
	__shared__ __align__(8) uint64_t bars[2 * NS + 1 + 2 * NQB + 2];
	const uint32_t s0 = wg_smem_u32(af_smem), base = (s0 + 1023) & ~1023u;
	unsigned char *gb = af_smem + (base - s0);
	float *Lsm = (float *)(gb + C::LOFF); /* (NS, lse | delta, 64) */
	const uint32_t full = wg_smem_u32(&bars[0]), empty = full + 8, ownb = wg_smem_u32(&bars[2 * NS]);
	const uint32_t dqf = wg_smem_u32(&bars[2 * NS + 1]), dqe = dqf + 8;
	const uint32_t dsr = wg_smem_u32(&bars[2 * NS + 1 + 2 * NQB]); /* dS^T buffer b's stores: at + 8 b */
	const int tid = threadIdx.x, T = A.T, nq = A.nq;
	int bh, y;
	awg_group(awg_ticket(A.cnt, A.BH, A.nq), A.BH, A.NK, A.G, bh, y);
	const int n = A.NK - 1 - y, first = 2 * n, ntile = nq - first;
	if (tid == 0) {
		for (int s = 0; s < NS; s++) {
			wg_bar_init(full + 16 * s, 32); /* the producer warp's lanes, and the bytes */
			wg_bar_init(empty + 16 * s, 8); /* one arrival a consumer warp */
		}
		wg_bar_init(ownb, 1);
		for (int q = 0; q < NQB; q++) {
			wg_bar_init(dqf + 16 * q, 256); /* every consumer thread */
			wg_bar_init(dqe + 16 * q, 1);   /* the writer */
		}
		wg_bar_init(dsr, 256); /* every consumer thread, for each dS^T buffer */
		wg_bar_init(dsr + 8, 256);
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();
	if (tid < 128) {
		/* as fa3's: the consumers' 2 x 128 x (240 - 168) registers are
		 * exactly the producer warpgroup's 128 x (168 - 24) */
		asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
		const int H = A.H, b = bh / H, h = bh % H;
		if (tid < 32) { /* producer */
			const int lane = tid;
			if (lane == 0) {
				wg_arrive_tx(ownb, 2 * WB);
				af_load<DH, 2, 2>(base, &tk, h, 128 * n, b, 0, ownb);
				af_load<DH, 2, 2>(base + WB, &tv, h, 128 * n, b, 0, ownb);
			}
			const float *lb = A.lse + (size_t)bh * T, *deb = A.delta + (size_t)bh * T;
			for (int r = 0; r < ntile; r++) {
				const int st = r % NS, t0 = 64 * (first + r);
				const uint32_t f = full + 16 * st;
				if (r >= NS) /* the consumers are done with the stage's last round */
					wg_bar_wait(empty + 16 * st, ((r / NS) - 1) & 1);
				if (lane == 0) { /* the copies first, then lse and delta */
					asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(f),
						     "r"(2 * TB)
						     : "memory");
					const uint32_t d = base + 2 * WB + st * 2 * TB;
					af_load<DH, 1, 1>(d, &tq, h, t0, b, 0, f);
					af_load<DH, 1, 1>(d + TB, &tdo, h, t0, b, 0, f);
				}
				float *L = Lsm + st * 128;
#pragma unroll
				for (int x = 0; x < 2; x++) {
					int c = lane + 32 * x, t = t0 + c;
					L[c] = t < T ? lb[t] * LOG2E : INFINITY;
					L[64 + c] = t < T ? deb[t] : 0.f;
				}
				wg_arrive(f);
			}
		} else if (tid == 32) { /* the dQ writer */
			for (int r = 0; r < ntile; r++) {
				const int i = first + r, qb = r % NQB;
				float *gd = A.dqacc + ((size_t)bh * nq + i) * (64 * DH);
				int *cnt = A.cnt + (size_t)bh * nq + i;
				const uint32_t src = base + C::QOFF + qb * C::QTB;
				wg_bar_wait(dqf + 16 * qb, (r / NQB) & 1);
				if (i / 2 == n) {
					asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(gd),
						     "r"(src), "n"(C::QTB)
						     : "memory");
				} else {
					int c;
					do
						asm volatile("ld.acquire.gpu.global.b32 %0, [%1];\n" : "=r"(c) : "l"(cnt) : "memory");
					while (c < i / 2 - n);
					asm volatile("fence.proxy.async.global;\n" ::: "memory");
					asm volatile("cp.reduce.async.bulk.global.shared::cta.bulk_group.add.f32 [%0], [%1], "
						     "%2;\n" ::"l"(gd),
						     "r"(src), "n"(C::QTB)
						     : "memory");
				}
				asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
				asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
				wg_arrive(dqe + 16 * qb);
				if (n > 0) { /* n = 0 is the last: nobody waits for it */
					asm volatile("fence.proxy.async.global;\n" ::: "memory");
					asm volatile("red.release.gpu.global.add.s32 [%0], 1;\n" ::"l"(cnt) : "memory");
				}
			}
		}
		return;
	}
	asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
	afu_consume<DH>(A, n, bh, base, Lsm, (float *)(gb + C::QOFF), full, empty, ownb, dqf, dqe, dsr);
#endif
}

/* dq (bf16, row stride ldq) from dqacc (BH, nq, 64, DH; columns swizzled
 * by row, afu_consume); one thread a float4 */
template <int DH>
__global__ void attention_fa3f_dq_kernel(bf16 *dq, const float *acc, int ldq, int T, int H, int nq, size_t n4)
{
	MOE_PDL_ENTRY();
	size_t x = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (x >= n4)
		return;
	size_t e = 4 * x, tile = e / (64 * DH);
	/* the stored position's column: c ^ 8 (row & 3) (afu_consume), four
	 * stored floats four adjacent columns */
	int rem = (int)(e % (64 * DH)), row = rem / DH, col = (rem % DH) ^ (8 * (row & 3));
	int bh = (int)(tile / nq), t = (int)(tile % nq) * 64 + row;
	if (t >= T)
		return;
	float4 v = __ldcs((const float4 *)acc + x);
	int b = bh / H, h = bh % H;
	__nv_bfloat162 *o = (__nv_bfloat162 *)(dq + ((size_t)b * T + t) * ldq + h * DH + col);
	o[0] = __floats2bfloat162_rn(v.x, v.y);
	o[1] = __floats2bfloat162_rn(v.z, v.w);
}

template <int DH>
static int afu_launch(const CUtensorMap *m, const struct afu_args &A, bf16 *dq, int ldq, bool keep, cudaStream_t s,
		      struct moe_error *err)
{
	constexpr size_t SMEM = afu_cfg<DH>::SMEM;
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_bwd_fa3f_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)SMEM),
			  err)) != 0)
		return rc;
	moe_launch(attention_bwd_fa3f_kernel<DH>, A.BH * A.NK, AF_THREADS, SMEM, s, m[0], m[1], m[2], m[3], A);
	if ((rc = CUDA_LAUNCHED(err)) != 0 || keep)
		return rc;
	const size_t n4 = (size_t)A.BH * A.nq * 64 * DH / 4;
	moe_launch(attention_fa3f_dq_kernel<DH>, moe_cdiv(n4, 256), 256, 0, s, dq, A.dqacc, ldq, A.T, A.H, A.nq, n4);
	return CUDA_LAUNCHED(err);
}

int moe_att_bwd_fa3f(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
		     const float *lse, const float *delta, float *dqacc, int *cnt, bool keep, int ldq, int ldk, int ldv,
		     int ldo, int B, int T, int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	if ((Dh != 96 && Dh != 128) || !moe_cuda_grouped_wgmma_supported() || !wg_tmap_encoder() ||
	    ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v | (uintptr_t)dout | (uintptr_t)dqacc) % 16 ||
	    (size_t)B * H * moe_cdiv(T, 128) > INT_MAX)
		return 1;
	CUtensorMap m[4];
	if (!af_map(&m[0], q, ldq, B, T, H, Dh) || !af_map(&m[1], k, ldk, B, T, H, Dh) ||
	    !af_map(&m[2], v, ldv, B, T, H, Dh) || !af_map(&m[3], dout, ldo, B, T, H, Dh))
		return 1;
	struct afu_args A = {dq,  dk,  dv,  dqacc, cnt, lse, delta, ldq, ldk, ldv, T, H, B * H, (int)moe_cdiv(T, 128),
			     (int)moe_cdiv(T, 64), 1.f / sqrtf((float)Dh), 0};
	/* from 32 key blocks of 128 up (T > 3968) groups of about 64 blocks (2 heads
	 * at T 4096), else 8 heads: on an H100 (session 10, call 61) groups of
	 * 2 took 3.550 ms against 8's 3.665 / 3.668 at the olmoe-like shape
	 * (B 8, T 4096, H 16, Dh 128), 4 3.609, 16 4.575 (the grid's last,
	 * longest blocks likely end the kernel with multiprocessors idle); at
	 * olmoe-1b-7b's own (B 3) on an H200 the two were equal, kernel and
	 * step (call 62); at seed-base (T 2048) groups of 1 to 16 all took
	 * 0.844-0.857 ms, 32 0.951, 128 1.201 */
	A.G = af_group("MOE_CUDA_FA3F_G", &afu_g, A.NK >= 32 ? (A.NK >= 64 ? 1 : 64 / A.NK) : AF_G);
	return Dh == 96 ? afu_launch<96>(m, A, dq, ldq, keep, s, err) : afu_launch<128>(m, A, dq, ldq, keep, s, err);
}
