/* The causal flash-attention forward on Hopper, persistent and ping-pong
 * ('fa3pk128' of attention_fwd.cu): attention_fa3.cu's warp-specialised
 * forward with 128-row key tiles ('fa3k128': a TMA producer thread, two
 * consumer warpgroups of 64 queries over blocks of 128 queries, K/V tiles
 * in an mbarrier ring of 3 stages, each tile's softmax beside the previous
 * tile's P V) with what FlashAttention-3 adds beyond it:
 *
 *   persistent grid: one block an SM (at most one a work item) loops over
 *     work items (head, 128-query block) in the order of fa3's grid (groups
 *     of 8 heads, every group's longest blocks first, so that the running
 *     blocks share the K/V of a few heads in L2).  Block i starts with item
 *     i; the producer thread then claims the next one with one atomicInc
 *     on a device counter (greedy, as the hardware hands out fa3's blocks)
 *     and passes it to the consumers in shared memory through the Q
 *     buffer's mbarrier.  The producer loads the next item's first two K/V
 *     tiles before its Q (which must wait until both warpgroups are done
 *     with this item's), and no block start, barrier set-up or register
 *     re-split is paid per item.  The counter needs no reset: atomicInc
 *     wraps at total - 1, and a launch makes exactly `total` claims (one
 *     after each item a block runs, the last failing), so every launch
 *     leaves it at 0.  Hence one launch at a time a device: a launch on
 *     another stream than the device's last one waits for the device first
 *     (afp_one_at_a_time; the backend runs the forward on one stream, so it
 *     never waits);
 *   ping-pong: the two consumer warpgroups take turns at the tensor cores,
 *     with named barriers 1 and 2: in each turn a warpgroup issues S_j = Q
 *     K_j^T and O += P_{j-1} V_{j-1}, then lets the other issue its pair,
 *     so one warpgroup's softmax runs while the other's products do.  Both
 *     warpgroups take one turn for every key tile the block streams (a
 *     turn without products where a tile is past a warpgroup's diagonal),
 *     so their turns pair up item after item; warpgroup 1 goes first, and
 *     takes the last arrival of warpgroup 2 at its exit.
 *
 * Shared memory 225 KB at Dh 96 and 128.  The products, the softmax and the
 * order of every fp32 operation are fa3k128's, so the results should be
 * bit-identical to those (the tests report it); deterministic either way:
 * which block runs an item changes nothing in it.  The variants with 64-row
 * tiles, two Q buffers or no ping-pong (fa3p, fa3pn) were removed in
 * session 19 (git history, RESULTS-attention.md).
 *
 * The forward's product and softmax helpers (aff_s, aff_pv, aff_softmax,
 * aff_fence_frags) and the 4-D tensor map and its tile loads (af_map,
 * af_load) are attention_fa3.cu's, from attention_fa3.cuh; the packing of
 * P (awg_pack) is attention_wgmma.cuh's. */
#include <limits.h>

#include "attention_fa3.cuh"
#include "attention_wgmma.cuh"
#include "kernels.h"

#define AFP_THREADS 384 /* producer warpgroup + two consumer warpgroups */
#define AFP_G 8         /* heads a group of the work order */

/* shared memory: the block's 128 Q rows, NS stages of a K and a V tile of
 * BN rows; every tile 1024-byte aligned for the swizzle */
template <int DH> struct afp_cfg {
	static constexpr int BN = 128;            /* key tile rows */
	static constexpr int NS = 3;              /* stages of the ring */
	static_assert(NS >= 2, "a stage is handed back only after the next tile's S");
	static constexpr int CB = (DH + 63) / 64; /* column blocks of 64 */
	static constexpr int TB = BN * 128 * CB;  /* one K or V tile */
	static constexpr int QB = 128 * 128 * CB; /* the block's 128 Q rows */
	static constexpr size_t SMEM = 1024 + (size_t)QB + (size_t)NS * 2 * TB;
};

/* the claim counter (see the top) */
__device__ unsigned afp_claims;

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* named barriers 1 and 2 of the consumers' turns (256 threads: one
 * warpgroup waits, the other arrives) */
template <int ID> static __device__ __forceinline__ void afp_bar_sync()
{
	asm volatile("bar.sync %0, 256;\n" ::"n"(ID) : "memory");
}
template <int ID> static __device__ __forceinline__ void afp_bar_arrive()
{
	asm volatile("bar.arrive %0, 256;\n" ::"n"(ID) : "memory");
}

/* The start of a consumer warpgroup's turn at the tensor cores (gt: the
 * block's turn number, one a streamed key tile): warpgroup 1 (cw 0) waits
 * for warpgroup 2's previous turn (none before its first), warpgroup 2 for
 * warpgroup 1's turn gt; and its end, the other's go. */
static __device__ __forceinline__ void afp_turn_begin(int cw, unsigned gt)
{
	__syncwarp();
	if (cw == 0) {
		if (gt > 0)
			afp_bar_sync<1>();
	} else {
		afp_bar_sync<2>();
	}
}
static __device__ __forceinline__ void afp_turn_end(int cw)
{
	__syncwarp();
	if (cw == 0)
		afp_bar_arrive<2>();
	else
		afp_bar_arrive<1>();
}

/* One work item, queries [q0 + 64 cw, +64) of head bh, for consumer
 * warpgroup cw: the block's key tiles 0 .. ntile - 1 are its stream tiles
 * r0 .., tile r in stage r % NS (K, then V, at sst), parity (r / NS) & 1;
 * Q at sq.  Every consumer warp waits for every tile and hands it back
 * (one arrival a warp on empty), in order within a stage, so that each
 * phase of an empty barrier counts one round's arrivals only; and hands
 * the Q buffer back (qe) once its last product is done. */
template <int DH>
static __device__ __forceinline__ void afp_item(bf16 *out, float *lse, int ldo, int T, int H, float sl2, int bh,
						int q0, int ntile, unsigned r0, uint32_t sq, uint32_t sst,
						uint32_t full, uint32_t empty, uint32_t qe)
{
	constexpr int TB = afp_cfg<DH>::TB, BN = afp_cfg<DH>::BN, NS = afp_cfg<DH>::NS;
	/* cw broadcast from lane 0: warp-uniform to the compiler (attention_fa3.cu's af_dkdv) */
	const int tid = threadIdx.x - 128, cw = __shfl_sync(0xffffffffu, tid / 128, 0), w = (tid % 128) / 32,
		  lane = tid % 32, g = lane / 4, t4 = lane % 4;
	const int wq0 = q0 + 64 * cw, rq = wq0 + 16 * w + g; /* rows rq, rq + 8 */
	/* the key tiles this warpgroup computes: 0 .. its diagonal tile */
	const int nmine = wq0 < T ? min(ntile, wq0 / BN + 1) : 0;
	float o[DH / 2]; /* register 4d + e: row rq + 8 (e / 2), column 8d + 2 t4 + e % 2 */
#pragma unroll
	for (int x = 0; x < DH / 2; x++)
		o[x] = 0.f;
	/* m: the running max of the scaled scores (log2 units); l: this
	 * thread's part of the row sums (its 16 of every 64 keys) */
	float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
	int j = 0;
	if (nmine > 0) { /* warpgroup-uniform */
		unsigned pa[BN / 16][4]; /* P_{j-1} (bf16) as A fragments */
		float s[BN / 2], alpha[2];
		{
			const unsigned gt = r0;
			wg_bar_wait(full + 8 * (gt % NS), (gt / NS) & 1);
			afp_turn_begin(cw, gt);
			aff_s<DH, BN>(s, sq, sst + (gt % NS) * 2 * TB, cw);
			afp_turn_end(cw);
			wg_wait<0>();
			wg_fence_regs<BN / 2>(s);
			aff_softmax(s, m, l, alpha, 0, rq, BN > wq0 || BN > T, T, sl2);
			awg_pack(pa, s);
		}
		for (j = 1; j < nmine; j++) {
			const unsigned gt = r0 + j;
			const int st = gt % NS, sp = (gt - 1) % NS, k0 = BN * j;
			wg_bar_wait(full + 8 * st, (gt / NS) & 1);
			afp_turn_begin(cw, gt);
			aff_s<DH, BN>(s, sq, sst + st * 2 * TB, cw);
			aff_pv<DH, BN>(o, pa, sst + sp * 2 * TB + TB); /* O += P_{j-1} V_{j-1} */
			afp_turn_end(cw);
			wg_wait<1>(); /* S_j done, P V may still run */
			wg_fence_regs<BN / 2>(s);
			aff_softmax(s, m, l, alpha, k0, rq, k0 + BN > wq0 || k0 + BN > T, T, sl2);
			wg_wait<0>();
			wg_fence_regs<DH / 2>(o);
			aff_fence_frags(pa); /* read by P V until here */
			__syncwarp();
			if (lane == 0)
				wg_arrive(empty + 8 * sp); /* K_{j-1}, V_{j-1} no longer read */
			/* P_j's fragments only now (as fa3: defined while P V
			 * ran, ptxas serialized the products, C7513) */
			awg_pack(pa, s);
#pragma unroll
			for (int x = 0; x < DH / 2; x++)
				o[x] *= alpha[(x & 3) / 2];
			wg_fence_regs<DH / 2>(o);
			aff_fence_frags(pa);
		}
		/* the last P V, outside the turns */
		const int sp = (r0 + nmine - 1) % NS;
		aff_pv<DH, BN>(o, pa, sst + sp * 2 * TB + TB);
		wg_wait<0>();
		wg_fence_regs<DH / 2>(o);
		__syncwarp();
		if (lane == 0)
			wg_arrive(empty + 8 * sp);
	}
	/* no product of this warpgroup reads Q any more */
	__syncwarp();
	if (lane == 0)
		wg_arrive(qe);
	/* the tiles past this warpgroup's diagonal (or all, past T): a turn
	 * without products each; waited for before being handed back, so that
	 * no arrival can count towards an earlier round */
	for (; j < ntile; j++) {
		const unsigned gt = r0 + j;
		const int st = gt % NS;
		wg_bar_wait(full + 8 * st, (gt / NS) & 1);
		afp_turn_begin(cw, gt);
		afp_turn_end(cw);
		__syncwarp();
		if (lane == 0)
			wg_arrive(empty + 8 * st);
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

/* Persistent grid of at most one block an SM over the total = BH x NY work
 * items (head, query block of 128), item l being awg_group(l, ..., G)'s
 * (head bh, y), queries from 128 (NY - 1 - y); maps (Dh, H, T, B) of q, k,
 * v.  Ring bookkeeping: the producer and every consumer count the key
 * tiles the block has streamed (r: stage r % NS, phase parity (r / NS) &
 * 1) and the items (n: the Q buffer's parity n & 1), all from 0 at the
 * start, so the parities carry over from one item to the next. */
template <int DH>
__global__ void __launch_bounds__(AFP_THREADS, 1)
	attention_fwd_fa3p_kernel(const __grid_constant__ CUtensorMap tq, const __grid_constant__ CUtensorMap tk,
				  const __grid_constant__ CUtensorMap tv, bf16 *out, float *lse, int ldo, int T, int H,
				  int BH, int NY, int G, float sl2)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int TB = afp_cfg<DH>::TB, QB = afp_cfg<DH>::QB, BN = afp_cfg<DH>::BN, NS = afp_cfg<DH>::NS;
	extern __shared__ unsigned char afp_smem[];
	/* full[s] at s, empty[s] at NS + s, qfull at 2 NS, qempty at 2 NS + 1 */
	__shared__ __align__(8) uint64_t bars[2 * NS + 2];
	__shared__ int item; /* the item in the Q buffer, -1: no more */
	const uint32_t base = (wg_smem_u32(afp_smem) + 1023) & ~1023u, sst = base + QB;
	const uint32_t full = wg_smem_u32(&bars[0]), empty = full + 8 * NS, qfull = full + 16 * NS,
		       qempty = qfull + 8;
	const int tid = threadIdx.x, total = BH * NY;
	if (tid == 0) {
		for (int s = 0; s < NS; s++) {
			wg_bar_init(full + 8 * s, 1);  /* the producer's arrival, and the bytes */
			wg_bar_init(empty + 8 * s, 8); /* one arrival a consumer warp */
		}
		wg_bar_init(qfull, 1);  /* the producer's, and Q's bytes */
		wg_bar_init(qempty, 8); /* one a consumer warp */
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();
	if (tid < 128) { /* producer */
		/* the consumers' 2 x 128 x (240 - 168) registers are exactly the
		 * producer's 128 x (168 - 24): setmaxnreg.inc waits for good
		 * with less given up (attention_fa3.cu) */
		asm volatile("setmaxnreg.dec.sync.aligned.u32 24;\n" ::: "memory");
		if (tid != 0)
			return;
		unsigned r = 0; /* key tiles streamed */
		int it = blockIdx.x;
		for (int n = 0;; n++) {
			if (it >= total) {
				/* the last item read by every consumer warp before
				 * the sentinel overwrites it */
				if (n >= 1)
					wg_bar_wait(qempty, (n - 1) & 1);
				item = -1;
				wg_arrive(qfull);
				return;
			}
			int bh, y;
			awg_group(it, BH, NY, G, bh, y);
			const int b = bh / H, h = bh % H, q0 = 128 * (NY - 1 - y);
			const int ntile = (min(q0 + 128, T) - 1) / BN + 1; /* key tiles 0 .. the diagonal */
			/* the first K/V tiles before Q, which waits for the
			 * consumers to finish the previous item */
			const int pre = min(NS - 1, ntile);
			auto load_q = [&]() {
				if (n >= 1) /* every consumer warp done with the last item's Q */
					wg_bar_wait(qempty, (n - 1) & 1);
				item = it;
				wg_arrive_tx(qfull, QB);
				af_load<DH, 2, 2>(base, &tq, h, q0, b, 0, qfull);
			};
			for (int x = 0; x < ntile; x++, r++) {
				if (x == pre)
					load_q();
				const int st = r % NS;
				const uint32_t f = full + 8 * st, d = sst + st * 2 * TB;
				if (r >= NS) /* every consumer warp done with the stage's last round */
					wg_bar_wait(empty + 8 * st, ((r / NS) - 1) & 1);
				wg_arrive_tx(f, 2 * TB);
				af_load<DH, BN / 64, BN / 64>(d, &tk, h, BN * x, b, 0, f);
				af_load<DH, BN / 64, BN / 64>(d + TB, &tv, h, BN * x, b, 0, f);
			}
			if (pre == ntile) /* not issued in the loop (ntile < NS) */
				load_q();
			/* the next item: values 0 .. total - 1 in claim order;
			 * the last gridDim.x of them are past the items */
			it = (int)gridDim.x + (int)atomicInc(&afp_claims, (unsigned)total - 1);
		}
	}
	asm volatile("setmaxnreg.inc.sync.aligned.u32 240;\n" ::: "memory");
	const int cw = __shfl_sync(0xffffffffu, (tid - 128) / 128, 0);
	unsigned r = 0; /* key tiles streamed (turns taken) */
	for (int n = 0;; n++) {
		wg_bar_wait(qfull, n & 1);
		const int it = *(volatile int *)&item;
		if (it < 0)
			break;
		int bh, y;
		awg_group(it, BH, NY, G, bh, y);
		const int q0 = 128 * (NY - 1 - y), ntile = (min(q0 + 128, T) - 1) / BN + 1;
		afp_item<DH>(out, lse, ldo, T, H, sl2, bh, q0, ntile, r, base, sst, full, empty, qempty);
		r += ntile;
	}
	/* warpgroup 2's arrival after its last turn */
	if (cw == 0 && r > 0) {
		__syncwarp();
		afp_bar_sync<1>();
	}
#endif
}

static int afp_grid_cap; /* moe_cuda_attention_fa3p_grid() */

/* The claim counter serves one launch at a time a device: where a launch
 * comes on another stream than the device's previous one, the device is
 * synchronised first (the previous launch may still run; its stream may be
 * gone, so not that stream).  One stream, as the backend's, never waits. */
#define AFP_MAXDEV 64
static cudaStream_t afp_last[AFP_MAXDEV];
static bool afp_seen[AFP_MAXDEV];

static int afp_one_at_a_time(cudaStream_t s, struct moe_error *err)
{
	int dev = 0, rc;
	if ((rc = CUDA_OK(cudaGetDevice(&dev), err)) != 0)
		return rc;
	if (dev < 0 || dev >= AFP_MAXDEV)
		return CUDA_OK(cudaDeviceSynchronize(), err);
	if (afp_seen[dev] && afp_last[dev] != s && (rc = CUDA_OK(cudaDeviceSynchronize(), err)) != 0)
		return rc;
	afp_seen[dev] = true;
	afp_last[dev] = s;
	return 0;
}

extern "C" void moe_cuda_attention_fa3p_grid(int n)
{
	afp_grid_cap = n > 0 ? n : 0;
}

template <int DH>
static int afp_launch(const CUtensorMap *m, bf16 *out, float *lse, int ldo, int B, int T, int H, cudaStream_t s,
		      struct moe_error *err)
{
	constexpr size_t SMEM = afp_cfg<DH>::SMEM;
	int rc;
	if ((rc = CUDA_OK(cudaFuncSetAttribute(attention_fwd_fa3p_kernel<DH>,
					       cudaFuncAttributeMaxDynamicSharedMemorySize, (int)SMEM),
			  err)) != 0 ||
	    (rc = afp_one_at_a_time(s, err)) != 0)
		return rc;
	const int NY = (int)moe_cdiv(T, 128), total = B * H * NY;
	int grid = total < moe_cuda_sms() ? total : moe_cuda_sms();
	if (afp_grid_cap > 0 && afp_grid_cap < grid)
		grid = afp_grid_cap;
	moe_launch(attention_fwd_fa3p_kernel<DH>, grid, AFP_THREADS, SMEM, s, m[0], m[1], m[2], out, lse, ldo, T, H,
		   B * H, NY, AFP_G, LOG2E / sqrtf((float)DH));
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_attention_fwd_fa3p(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v,
					   int ldq, int ldk, int ldv, int ldo, int B, int T, int H, int Dh, cudaStream_t s,
					   struct moe_error *err)
{
	if ((Dh != 64 && Dh != 96 && Dh != 128) || !moe_cuda_grouped_wgmma_supported() || !wg_tmap_encoder() ||
	    ((uintptr_t)q | (uintptr_t)k | (uintptr_t)v) % 16 || (size_t)B * H * moe_cdiv(T, 128) + 1024 > INT_MAX)
		return 1;
	CUtensorMap m[3];
	if (!af_map(&m[0], (const bf16 *)q, ldq, B, T, H, Dh) || !af_map(&m[1], (const bf16 *)k, ldk, B, T, H, Dh) ||
	    !af_map(&m[2], (const bf16 *)v, ldv, B, T, H, Dh))
		return 1;
	bf16 *o = (bf16 *)out;
	switch (Dh) {
	case 64: return afp_launch<64>(m, o, lse, ldo, B, T, H, s, err);
	case 96: return afp_launch<96>(m, o, lse, ldo, B, T, H, s, err);
	default: return afp_launch<128>(m, o, lse, ldo, B, T, H, s, err);
	}
}
