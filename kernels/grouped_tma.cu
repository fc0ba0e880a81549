/* Grouped (per-expert) GEMMs on Hopper with the bulk tensor copy engine
 * (TMA) and warp specialisation, with the arguments and contracts of
 * grouped_wgmma.cu (device offsets, no host synchronisation, max_rows
 * bounding offsets[E], experts without rows):
 *
 *   fwd:   C (rows, Out) = X_e W_e^T        A = X   K-major,  B = W_e K-major
 *   dgrad: C (rows, In)  = dY_e W_e         A = dY  K-major,  B = W_e MN-major
 *   wgrad: C (Out, In) (+)= dY_e^T X_e      A = dY  MN-major, B = X   MN-major
 *
 * A persistent grid (one block of 384 threads per multiprocessor) walks the
 * output tiles, BM rows x BN columns: for fwd and dgrad numbered over the
 * experts on the device (each block builds the experts' row-tile prefix in
 * shared memory), row tiles outer so that blocks running together share the
 * A rows and one or two experts' W in L2; for wgrad (expert, W row tile,
 * column tile), each reducing over its expert's rows, the experts ordered
 * by their rows, largest first, and dealt to the blocks as a snake (0..G-1,
 * G-1..0, ...) so that the blocks' k-slices even out whatever the routing.
 * Warpgroup 0 is the
 * producer: one warp issues the TMA loads of each 64-deep k-slice (2D maps
 * over the (rows, K) activations, a 3D map over W (E, Out, In)) into a ring
 * of ST shared-memory stages in wgmma's 128-byte-swizzled layouts,
 * completing on one mbarrier per stage; the consumers give a stage back
 * through a second mbarrier once their MMAs have read it.  Two consumer
 * warpgroups issue wgmma only, with the registers the producer gave up
 * (setmaxnreg), both on each tile (cooperative), BM / 2 rows x BN each
 * (one or two 64-row MMAs).
 * Epilogue: 64-row blocks inside the expert go through shared memory in
 * 64 x 64 blocks (64 x 32 fp32 for wgrad; two buffers per warpgroup) and
 * TMA stores, which drain while the next tile's main loop runs; in the
 * forward and input gradient a warpgroup whose rows all lie inside the
 * expert keeps its last GT_HOLD (3) blocks as bf16 pairs in registers and
 * stores them one a k-slice of the next tile, after issuing its MMAs
 * (session 24: 0.3-3% of those kernels, bit-identical); the weight
 * gradient is stored, or added by the copy engine's reduction
 * (cp.reduce.async.bulk); the block an expert's rows end in stores
 * 16-byte chunks straight from the accumulators (after a quad transpose),
 * masked.
 * Rows past the expert's end are loaded (they belong to the next expert)
 * and masked, or for wgrad's last partial k-slice zeroed in the A tile
 * before the MMAs.  The forward's and input gradient's maps end at
 * max_rows, so where max_rows is offsets[E] (the backend's calls) the copy
 * engine zero-fills the rows of the last tile past it; where max_rows is
 * larger (the rows between may be unallocated), and for the weight
 * gradient (no bound at all), k-slices whose rows reach past offsets[E]
 * load with cp.async instead, zero-filled, by the producer warp's lanes:
 * 3-4 times a TMA tile's time, which as the walk's last tiles used to set
 * the kernel's end (session 23: 18% of the 640-column input gradient, 5%
 * of the forward, Nsight Compute's busiest SM against the mean).  K tails
 * and columns past Out / In are zero-filled by the copy engine, and the
 * stores clipped by it.
 * Results are bit-identical to grouped_wgmma.cu's (same k order).
 * Built for sm_90a only; the launchers fall back to grouped_wgmma.cu where
 * the tensor maps cannot be made (the driver entry point, unaligned
 * pointers) or the experts' tables do not fit in shared memory.
 * The weight gradient stored by overwrite can also sum the squares of what
 * each tile stores (the clip norm's, moe_cuda_grouped_tma_wgrad_ssq). */

#include "wgmma.cuh"
#include "kernels.h"

#define GT_BM 128
#define GT_BK 64
#define GT_THREADS 384
#define GT_SMEM_MAX (226 * 1024) /* dynamic, beside the static barriers */

enum { GT_FWD = 0, GT_DGRAD = 1, GT_WGRAD = 2 };

struct gt_args {
	const bf16 *a; /* X or dY (rows, K); wgrad: dY (rows, Out = K) */
	const bf16 *b; /* wgrad: X (rows, In = ncols) */
	void *c;       /* (rows, ncols) bf16; wgrad: (E, Out, In) fp32 */
	const int32_t *offsets; /* (E+1) */
	int E, K, ncols, nt;    /* nt: tiles along the output columns */
	int mt, store;          /* wgrad: tiles along Out; store (else add) */
	double *ssq;            /* wgrad, store: the stored values' sums of squares, two
				   slots a tile (gt_ssq_slots), or nullptr */
	int mrows;              /* fwd, dgrad: max_rows, the maps' row bound */
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

static __device__ __forceinline__ void gt_tma2(uint32_t dst, const CUtensorMap *m, int c0, int c1, uint32_t bar)
{
	asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
		     "[%4];\n" ::"r"(dst),
		     "l"((uint64_t)m), "r"(c0), "r"(c1), "r"(bar)
		     : "memory");
}
static __device__ __forceinline__ void gt_tma3(uint32_t dst, const CUtensorMap *m, int c0, int c1, int c2,
					       uint32_t bar)
{
	asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
		     "%4}], [%5];\n" ::"r"(dst),
		     "l"((uint64_t)m), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
		     : "memory");
}
/* C box {c0, c1} from shared memory src, one bulk group per call */
static __device__ __forceinline__ void gt_tma_store(const CUtensorMap *m, uint32_t src, int c0, int c1)
{
	asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n"
		     "cp.async.bulk.commit_group;\n" ::"l"((uint64_t)m),
		     "r"(c0), "r"(c1), "r"(src)
		     : "memory");
}
/* fp32 C box {c0, c1, c2}: stored, or added (the copy engine's reduction) */
static __device__ __forceinline__ void gt_tma_store3(const CUtensorMap *m, uint32_t src, int c0, int c1, int c2,
						     bool add)
{
	if (add)
		asm volatile("cp.reduce.async.bulk.tensor.3d.global.shared::cta.add.bulk_group [%0, {%1, %2, %3}], [%4];\n"
			     "cp.async.bulk.commit_group;\n" ::"l"((uint64_t)m),
			     "r"(c0), "r"(c1), "r"(c2), "r"(src)
			     : "memory");
	else
		asm volatile("cp.async.bulk.tensor.3d.global.shared::cta.bulk_group [%0, {%1, %2, %3}], [%4];\n"
			     "cp.async.bulk.commit_group;\n" ::"l"((uint64_t)m),
			     "r"(c0), "r"(c1), "r"(c2), "r"(src)
			     : "memory");
}
static __device__ __forceinline__ void gt_named_sync(int id)
{
	asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}
/* The next of warpgroup cw's two 8 KiB epilogue buffers (at se; n: blocks
 * it has stored so far), once the TMA store that last used it (two blocks
 * ago) has read it and all of the warpgroup is here. */
static __device__ __forceinline__ uint32_t gt_epi_buf(uint32_t se, int cw, int n, bool lead)
{
	const uint32_t buf = se + cw * 16384 + (n & 1) * 8192;
	if (lead)
		asm volatile("cp.async.bulk.wait_group.read 1;\n" ::: "memory");
	gt_named_sync(1 + cw);
	return buf;
}
/* A quad's 4 x 4 words transposed: lane q of the quad (q = lane % 4) holds
 * a[i] = word q of item i on entry and word i of item q on return.  Round
 * k (1, then 2) swaps, for each i with bit k clear, item i + k of the lane
 * with bit k of q clear and item i of its partner (q ^ k): one xor
 * shuffle a pair of items. */
static __device__ __forceinline__ void gt_quad_transpose(uint32_t (&a)[4], int q)
{
#pragma unroll
	for (int k = 1; k <= 2; k <<= 1)
#pragma unroll
		for (int i = 0; i < 4; i++) {
			if (i & k)
				continue;
			const bool hi = q & k;
			uint32_t got = __shfl_xor_sync(0xffffffffu, hi ? a[i] : a[i + k], k);
			if (hi)
				a[i] = got;
			else
				a[i + k] = got;
		}
}
/* The forward and input gradient keep the last GT_HOLD of a tile's
 * MW x BN / 64 full 64 x 64 blocks as bf16 pairs in registers and store
 * them one a k-slice while the next tile's MMAs run (session 24: the
 * epilogue, about 15% of the consumers' time in Nsight Compute's samples,
 * left the tensor cores idle).  Three since the warpgroup index is
 * uniform (two before: three spilled); all four spill 756 bytes. */
#ifndef GT_HOLD
#define GT_HOLD 3
#endif
/* the held blocks' tile: its first row, first column, the next held block
 * to store (NB: none left) */
struct gt_pend {
	int row0, n0, next;
};

/* A full 64 x 64 bf16 block (w[2 jj + h]: this thread's pair of row
 * lane / 4 + 8h of warp's 16, columns 8 jj + 2 (lane % 4)) through shared
 * memory (the 128-byte-swizzled layout of the output map, conflict-free
 * stores) and a TMA store at (col, row) that drains on its own. */
static __device__ __forceinline__ void gt_put_block(const uint32_t (&w)[16], const CUtensorMap *tc, int col, int row,
						    uint32_t se, int cw, int &nst, bool lead, int warp, int lane)
{
	const uint32_t buf = gt_epi_buf(se, cw, nst++, lead);
#pragma unroll
	for (int jj = 0; jj < 8; jj++)
#pragma unroll
		for (int h = 0; h < 2; h++) {
			const int rr = warp * 16 + lane / 4 + 8 * h;
			asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(buf + rr * 128 + ((jj ^ (rr & 7)) << 4) + (lane % 4) * 4),
				     "r"(w[2 * jj + h])
				     : "memory");
		}
	wg_fence_proxy();
	gt_named_sync(1 + cw);
	if (lead)
		gt_tma_store(tc, buf, col, row);
}

/* 64 x 64 block qq of an accumulator row block (BN / 2 registers: 4 jr +
 * 2h + b at row lane / 4 + 8h, column 8 jr + 2 (lane % 4) + b), rounded to
 * bf16 pairs as gt_put_block takes them */
template <int BN>
static __device__ __forceinline__ void gt_pack_block(uint32_t (&w)[16], const float (&acc)[BN / 2], int qq)
{
#pragma unroll
	for (int jj = 0; jj < 8; jj++)
#pragma unroll
		for (int h = 0; h < 2; h++) {
			const int jr = qq * 8 + jj;
			__nv_bfloat162 v = __floats2bfloat162_rn(acc[4 * jr + 2 * h], acc[4 * jr + 2 * h + 1]);
			w[2 * jj + h] = *(uint32_t *)&v;
		}
}

/* held block b (of the last GT_HOLD of NB; m = b / (BN / 64), qq = b % (BN /
 * 64)) of the tile at p, where its columns lie inside ncols */
template <int MW, int BN, int NB>
static __device__ __forceinline__ void gt_put_held(int b, const uint32_t (&hold)[GT_HOLD][16], const gt_pend &p,
						   int ncols, const CUtensorMap *tc, uint32_t se, int cw, int &nst,
						   bool lead, int warp, int lane)
{
#pragma unroll
	for (int x = 0; x < GT_HOLD; x++) {
		const int bb = NB - GT_HOLD + x, qq = bb % (BN / 64);
		if (bb == b && p.n0 + qq * 64 < ncols)
			gt_put_block(hold[x], tc, p.n0 + qq * 64, p.row0 + (cw * MW + bb / (BN / 64)) * 64, se, cw,
				     nst, lead, warp, lane);
	}
}

/* the held blocks not stored yet */
template <int MW, int BN, int NB>
static __device__ __forceinline__ void gt_flush(const uint32_t (&hold)[GT_HOLD][16], gt_pend &p, int ncols,
						const CUtensorMap *tc, uint32_t se, int cw, int &nst, bool lead, int warp,
						int lane)
{
	for (; p.next < NB; p.next++)
		gt_put_held<MW, BN, NB>(p.next, hold, p, ncols, tc, se, cw, nst, lead, warp, lane);
}

/* Output tile t of a block's walk: its expert, first row, the rows left in
 * the expert from there, first column, k-slices; the weight gradient: the
 * expert's first row and rows (its reduction), first row of W (m0). */
struct gt_tile {
	int e, row0, mi, n0, m0, kt;
};

/* The i-th tile of this block's walk: the grid strides over the tiles; the
 * weight gradient walks them as a snake (blocks 0..G-1, then G-1..0, ...)
 * over its tiles ordered by their expert's rows, largest first, so that
 * every block gets about the same number of k-slices. */
template <int MODE> static __device__ __forceinline__ int gt_walk(int i)
{
	const int G = gridDim.x, b = blockIdx.x;
	return MODE == GT_WGRAD && (i & 1) ? i * G + G - 1 - b : i * G + b;
}

/* s_ord: the weight gradient's experts, largest first */
template <int MODE, int BM, int BN>
static __device__ __forceinline__ gt_tile gt_decode(int t, const gt_args &g, const int *s_start, const int *s_off)
{
	gt_tile r;
	if (MODE == GT_WGRAD) {
		const int *s_ord = s_start; /* its tiles' space */
		int per = g.mt * g.nt, q = t % per;
		r.e = s_ord[t / per];
		r.m0 = q / g.nt * BM;
		r.n0 = q % g.nt * BN;
		r.row0 = s_off[r.e];
		r.mi = s_off[r.e + 1] - r.row0;
		r.kt = (max(r.mi, 0) + GT_BK - 1) / GT_BK;
		return r;
	}
	const int nt = g.nt, E = g.E;
	int tm = t / nt, lo = 0, hi = E - 1;
	while (lo < hi) { /* the last expert whose first row tile is <= tm (skips empty ones) */
		int mid = (lo + hi + 1) / 2;
		if (s_start[mid] <= tm)
			lo = mid;
		else
			hi = mid - 1;
	}
	r.e = lo;
	r.row0 = s_off[lo] + (tm - s_start[lo]) * BM;
	r.mi = s_off[lo + 1] - r.row0;
	r.n0 = (t % nt) * BN;
	r.m0 = 0;
	r.kt = (g.K + GT_BK - 1) / GT_BK;
	return r;
}

/* The weight gradient's tile fields, which come from shared memory (the
 * experts' order and offsets), broadcast from lane 0 so that the compiler
 * knows they are the same across the warp (session 25, one H200: 3-4%
 * fewer instructions, bit-identical, the same time alone: the weight
 * gradient is not bound by issue, and its stage addresses and descriptors
 * stay per thread; for every mode it cost the forward 0.8% more
 * instructions) */
static __device__ __forceinline__ void gt_tile_uniform(gt_tile &t)
{
	t.e = __shfl_sync(0xffffffffu, t.e, 0);
	t.row0 = __shfl_sync(0xffffffffu, t.row0, 0);
	t.mi = __shfl_sync(0xffffffffu, t.mi, 0);
	t.n0 = __shfl_sync(0xffffffffu, t.n0, 0);
	t.m0 = __shfl_sync(0xffffffffu, t.m0, 0);
	t.kt = __shfl_sync(0xffffffffu, t.kt, 0);
}

/* One stage through cp.async (the rows it reads reach past offsets[E],
 * where the allocation may end), zeros past the rows and columns: the
 * forward / input gradient's A tile (B comes through TMA), the weight
 * gradient's A (dY) and B (X) k-rows, rows past the expert's end too. */
template <int MODE, int BM, int BN>
static __device__ __noinline__ void gt_cp_stage(uint32_t dA, uint32_t dB, const gt_args &g, const gt_tile &tl,
						   int k0, int tot, int lane)
{
	if (MODE != GT_WGRAD) {
		const int nr = tot - tl.row0;
		for (int c = lane; c < BM * 8; c += 32) {
			int r = c >> 3, ch = c & 7;
			bool ok = r < nr && k0 + ch * 8 < g.K;
			wg_cp16(dA + r * 128 + ((ch ^ (r & 7)) << 4),
				ok ? g.a + (size_t)(tl.row0 + r) * g.K + k0 + ch * 8 : g.a, ok);
		}
	} else {
		const int nk = min(tl.mi - k0, GT_BK);
		const size_t r0 = (size_t)tl.row0 + k0;
		for (int c = lane; c < GT_BK * (BM / 8); c += 32) {
			int k = c / (BM / 8), cc = c % (BM / 8);
			bool ok = k < nk && tl.m0 + cc * 8 < g.K;
			wg_cp16(dA + (cc >> 3) * 8192 + k * 128 + (((cc & 7) ^ (k & 7)) << 4),
				ok ? g.a + (r0 + k) * g.K + tl.m0 + cc * 8 : g.a, ok);
		}
		for (int c = lane; c < GT_BK * (BN / 8); c += 32) {
			int k = c / (BN / 8), cc = c % (BN / 8);
			bool ok = k < nk && tl.n0 + cc * 8 < g.ncols;
			wg_cp16(dB + (cc >> 3) * 8192 + k * 128 + (((cc & 7) ^ (k & 7)) << 4),
				ok ? g.b + (r0 + k) * g.ncols + tl.n0 + cc * 8 : g.b, ok);
		}
	}
	asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
	wg_fence_proxy();
}
#endif

/* ST stages of A (BM x 64) and B (BN x 64) bf16, after slack to align them
 * to the swizzle's 1024-byte period; two 64 x 64 bf16 (64 x 32 fp32) output
 * buffers per consumer warpgroup; the experts' tables after them. */
template <int BM, int BN, int ST> struct gt_cfg {
	static constexpr int ABYTES = BM * GT_BK * 2, BBYTES = BN * GT_BK * 2, EBYTES = 4 * 8192;
	static constexpr size_t SMEM = 1024 + (size_t)ST * (ABYTES + BBYTES) + EBYTES;
};

template <int MODE, int BM, int BN, int ST>
__global__ void __launch_bounds__(GT_THREADS, 1)
	gt_kernel(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb,
		  const __grid_constant__ CUtensorMap tc, const gt_args g)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int TA = MODE == GT_WGRAD, TB = MODE != GT_FWD; /* MN-major */
	constexpr int ABYTES = gt_cfg<BM, BN, ST>::ABYTES, BBYTES = gt_cfg<BM, BN, ST>::BBYTES;
	constexpr int EBYTES = gt_cfg<BM, BN, ST>::EBYTES;
	/* 64-row MMAs per consumer warpgroup: BM / 2 rows each of the tile */
	constexpr int MW = BM / 128;
	static_assert(MW >= 1 && MW * BN <= 256, "tile shape");
	extern __shared__ unsigned char gt_smem[];
	__shared__ __align__(8) uint64_t full[ST], empty[ST];
	__shared__ double s_ss[2][2][4]; /* wgrad with ssq: [warpgroup][tile parity][warp] */
	const uint32_t base = (wg_smem_u32(gt_smem) + 1023) & ~1023u, sa = base, sb = base + ST * ABYTES;
	const uint32_t se = base + ST * (ABYTES + BBYTES); /* the output buffers */
	int *s_start = (int *)(gt_smem + (se + EBYTES - wg_smem_u32(gt_smem))); /* (E+1) row tiles */
	int *s_off = s_start + g.E + 1;                                                     /* (E+1) offsets */
	const int tid = threadIdx.x, E = g.E;

	if (tid == 0) {
		for (int s = 0; s < ST; s++) {
			wg_bar_init(wg_smem_u32(&full[s]), 1);
			wg_bar_init(wg_smem_u32(&empty[s]), 8); /* one arrival per consumer warp */
		}
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	if (tid < 32) {
		/* the experts' first row tiles: a prefix sum, 32 experts at a time */
		int lane = tid, acc = 0;
		for (int x0 = 0; x0 < E; x0 += 32) {
			int x = x0 + lane, o0 = 0, tiles = 0;
			if (x < E) {
				o0 = g.offsets[x];
				tiles = (max(g.offsets[x + 1] - o0, 0) + BM - 1) / BM;
			}
			int incl = warp_incl_scan(tiles, lane);
			if (x < E) {
				s_start[x] = acc + incl - tiles;
				s_off[x] = o0;
			}
			acc += __shfl_sync(0xffffffffu, incl, 31);
		}
		if (lane == 0) {
			s_start[E] = acc;
			s_off[E] = g.offsets[E];
		}
	}
	__syncthreads();
	if (MODE == GT_WGRAD) {
		/* the weight gradient needs no row tiles: their space takes the
		 * experts by rows, largest first (ties in order) */
		for (int x = tid; x < E; x += GT_THREADS) {
			const int cx = max(s_off[x + 1] - s_off[x], 0);
			int rk = 0;
			for (int y = 0; y < E; y++) {
				const int cy = max(s_off[y + 1] - s_off[y], 0);
				rk += cy > cx || (cy == cx && y < x);
			}
			s_start[rk] = x;
		}
		__syncthreads();
	}

	/* the warpgroup, broadcast from lane 0 so that the compiler knows it
	 * is the same in the warp: the stage addresses and wgmma descriptors
	 * derived from it live in uniform registers (session 24: the forward
	 * and input gradient 4-6% faster, 15% fewer instructions, 11 KiB less
	 * code, and room for a third held block) */
	const int total = MODE == GT_WGRAD ? E * g.mt * g.nt : s_start[E] * g.nt,
		  wg = __shfl_sync(0xffffffffu, tid / 128, 0);
	if (wg == 0) {
		/* producer */
		asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
		if (tid >= 32)
			return;
		const int lane = tid, tot = s_off[E];
		int pos = 0;
		for (int i = 0;; i++) {
			const int t = gt_walk<MODE>(i);
			if (t >= total)
				break;
			const gt_tile tl = gt_decode<MODE, BM, BN>(t, g, s_start, s_off);
			for (int kt = 0; kt < tl.kt; kt++, pos++) {
				const int s = pos % ST, k0 = kt * GT_BK;
				if (pos >= ST)
					wg_bar_wait(wg_smem_u32(&empty[s]), ((pos / ST) - 1) & 1);
				const uint32_t dA = sa + s * ABYTES, dB = sb + s * BBYTES, bar = wg_smem_u32(&full[s]);
				/* rows past offsets[E] that the map does not bound:
				 * cp.async */
				const bool cp = MODE == GT_WGRAD ? tl.row0 + k0 + GT_BK > tot
								 : tl.row0 + BM > tot && tot < g.mrows;
				if (cp) {
					gt_cp_stage<MODE, BM, BN>(dA, dB, g, tl, k0, tot, lane);
					__syncwarp();
				}
				if (lane == 0) {
					wg_arrive_tx(bar, cp ? (MODE == GT_WGRAD ? 0 : BBYTES) : ABYTES + BBYTES);
					if (MODE == GT_WGRAD) {
						if (!cp) {
#pragma unroll
							for (int q = 0; q < BM / 64; q++)
								gt_tma2(dA + q * 8192, &ta, tl.m0 + q * 64, tl.row0 + k0, bar);
#pragma unroll
							for (int q = 0; q < BN / 64; q++)
								gt_tma2(dB + q * 8192, &tb, tl.n0 + q * 64, tl.row0 + k0, bar);
						}
					} else {
						if (!cp)
							gt_tma2(dA, &ta, k0, tl.row0, bar);
						if (MODE == GT_FWD) {
							gt_tma3(dB, &tb, k0, tl.n0, tl.e, bar);
						} else {
#pragma unroll
							for (int q = 0; q < BN / 64; q++)
								gt_tma3(dB + q * 8192, &tb, tl.n0 + q * 64, k0, tl.e, bar);
						}
					}
				}
				__syncwarp();
			}
		}
		return;
	}

	/* consumers */
	asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
	const int cw = wg - 1, lane = tid % 32, warp = (tid % 128) / 32, wl = tid % 128;
	const bool lead = wl == 0;
	/* the forward and input gradient: the previous tile's held blocks */
	constexpr int NB = MW * (BN / 64);
	static_assert(GT_HOLD >= 1 && GT_HOLD <= NB, "GT_HOLD");
	uint32_t hold[GT_HOLD][16];
	gt_pend pend = {0, 0, NB};
	/* this warpgroup's TMA stores so far: the output buffer of the next
	 * is nst & 1 */
	int nst = 0;
	int pos0 = 0; /* the k-slice position of the block's tile j */
	int nss = 0;      /* wgrad with ssq: this warpgroup's tiles so far */
	double ssq = 0.0; /* wgrad with ssq: this thread's part of the tile's sum */
	for (int j = 0;; j++) {
		const int t = gt_walk<MODE>(j);
		if (t >= total)
			break;
		gt_tile tl = gt_decode<MODE, BM, BN>(t, g, s_start, s_off);
		if (MODE == GT_WGRAD)
			gt_tile_uniform(tl);
		float acc[MW][BN / 2];
		/* the forward and input gradient: a warpgroup none of whose rows
		 * lie inside the expert (the tile the expert ends in) issues no
		 * MMAs, it only passes each stage on once it has landed (the
		 * epilogue stores nothing of its rows).  The whole main loop is
		 * skipped, not the MMAs in it: wgmma under a branch is serialised
		 * by ptxas (C7520). */
		const bool live = MODE == GT_WGRAD || tl.mi > cw * MW * 64;
		const int nkt = live ? tl.kt : 0;
		if (!live)
			for (int kt = 0; kt < tl.kt; kt++) {
				const int pos = pos0 + kt, s = pos % ST;
				wg_bar_wait(wg_smem_u32(&full[s]), (pos / ST) & 1);
				__syncwarp();
				if (lane == 0)
					wg_arrive(wg_smem_u32(&empty[s]));
			}
		if (MODE == GT_WGRAD && tl.kt == 0) /* an expert without rows */
#pragma unroll
			for (int m = 0; m < MW; m++)
#pragma unroll
				for (int i = 0; i < BN / 2; i++)
					acc[m][i] = 0.f;
		for (int kt = 0; kt < nkt; kt++) {
			const int pos = pos0 + kt, s = pos % ST;
			wg_bar_wait(wg_smem_u32(&full[s]), (pos / ST) & 1);
			const uint32_t a0 = sa + s * ABYTES + cw * MW * 8192, b0 = sb + s * BBYTES;
			if (MODE == GT_WGRAD && tl.mi - kt * GT_BK < GT_BK) {
				/* the expert's last, partial k-slice: the k-rows past its
				 * end (the next expert's) zeroed in this warpgroup's A
				 * columns (B's there are finite data) */
				const int nk = tl.mi - kt * GT_BK, per = (GT_BK - nk) * 8;
				for (int c = wl; c < per * MW; c += 128)
					asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};\n" ::"r"(
							     a0 + (c / per) * 8192 + (nk + c % per / 8) * 128 + (c % 8) * 16),
						     "r"(0)
						     : "memory");
				wg_fence_proxy();
				gt_named_sync(1 + cw);
			}
			wg_fence();
#pragma unroll
			for (int kk = 0; kk < GT_BK / 16; kk++) {
				uint64_t db = wg_desc(b0 + (TB ? kk * 2048 : kk * 32), TB ? 8192 : 16, 1024);
#pragma unroll
				for (int m = 0; m < MW; m++)
					wg_mma<BN, TA, TB>(acc[m],
							   TA ? wg_desc(a0 + m * 8192 + kk * 2048, 8192, 1024)
							      : wg_desc(a0 + m * 8192 + kk * 32, 16, 1024),
							   db, kt > 0 || kk > 0);
			}
			wg_commit();
			if (MODE != GT_WGRAD && pend.next < NB) {
				/* a held block of the previous tile while these MMAs run */
				gt_put_held<MW, BN, NB>(pend.next, hold, pend, g.ncols, &tc, se, cw, nst, lead, warp,
							lane);
				pend.next++;
			}
			wg_wait<1>(); /* the previous k-slice's MMAs are done with their stage */
			if (kt > 0 && lane == 0)
				wg_arrive(wg_smem_u32(&empty[(pos - 1) % ST]));
		}
		wg_wait<0>();
		if (nkt > 0 && lane == 0)
			wg_arrive(wg_smem_u32(&empty[(pos0 + tl.kt - 1) % ST]));
		pos0 += tl.kt;
		if (MODE == GT_WGRAD) {
			/* 64 x 32 fp32 blocks through shared memory and the copy
			 * engine, stored or added; W's rows and columns past Out, In
			 * are clipped by the map */
			if (!g.store && tl.kt == 0)
				continue;
#pragma unroll
			for (int m = 0; m < MW; m++)
#pragma unroll
				for (int q = 0; q < BN / 32; q++) {
					const int mrow = tl.m0 + (cw * MW + m) * 64;
					if (tl.n0 + q * 32 >= g.ncols || mrow >= g.K)
						continue; /* the whole warpgroup */
					const uint32_t buf = gt_epi_buf(se, cw, nst++, lead);
#pragma unroll
					for (int jj = 0; jj < 4; jj++)
#pragma unroll
						for (int h = 0; h < 2; h++) {
							const int rr = warp * 16 + lane / 4 + 8 * h, jr = q * 4 + jj;
							const int ch = 2 * jj + (lane % 4) / 2;
							asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(
									     buf + rr * 128 + ((ch ^ (rr & 7)) << 4) + (lane % 2) * 8),
								     "f"(acc[m][4 * jr + 2 * h]), "f"(acc[m][4 * jr + 2 * h + 1])
								     : "memory");
						}
					wg_fence_proxy();
					gt_named_sync(1 + cw);
					if (lead)
						gt_tma_store3(&tc, buf, tl.n0 + q * 32, mrow, tl.e, !g.store);
					if (g.ssq) {
						/* the block's squares while the copy engine stores
						 * it: this thread's 16 in fp32 (one rounding a
						 * term: relative error <= 16 u), into double; zero
						 * past Out and In (the clipped part) */
						const bool inside = mrow + 64 <= g.K && tl.n0 + q * 32 + 32 <= g.ncols;
						float sq = 0.f;
#pragma unroll
						for (int jj = 0; jj < 4; jj++)
#pragma unroll
							for (int h = 0; h < 2; h++) {
								const int jr = q * 4 + jj;
								float v0 = acc[m][4 * jr + 2 * h], v1 = acc[m][4 * jr + 2 * h + 1];
								if (!inside &&
								    (mrow + warp * 16 + lane / 4 + 8 * h >= g.K ||
								     tl.n0 + q * 32 + jj * 8 + 2 * (lane % 4) >= g.ncols))
									v0 = v1 = 0.f;
								sq = fmaf(v0, v0, sq);
								sq = fmaf(v1, v1, sq);
							}
						ssq += (double)sq;
					}
				}
			if (g.ssq) {
				/* the warpgroup's sum in a fixed order (lanes by a
				 * butterfly, then warps 0..3) into the tile's slot, one
				 * per warpgroup.  s_ss alternates between two
				 * halves, so a warp's next write waits behind the lead's
				 * read (the barrier of the tile in between). */
#pragma unroll
				for (int o = 16; o > 0; o >>= 1)
					ssq += __shfl_xor_sync(0xffffffffu, ssq, o);
				if (lane == 0)
					s_ss[cw][nss & 1][warp] = ssq;
				gt_named_sync(1 + cw);
				if (lead) {
					const double tot = s_ss[cw][nss & 1][0] + s_ss[cw][nss & 1][1] +
							   s_ss[cw][nss & 1][2] + s_ss[cw][nss & 1][3];
					const int per = g.mt * g.nt;
					double *slot = g.ssq + 2 * ((size_t)tl.e * per + t % per);
					slot[cw] = tot;
				}
				nss++;
				ssq = 0.0;
			}
			continue;
		}

		/* what is left of the previous tile's held blocks (a main loop
		 * shorter than them, or none) */
		gt_flush<MW, BN, NB>(hold, pend, g.ncols, &tc, se, cw, nst, lead, warp, lane);
		/* accumulator fragment: warp w holds rows 16w..16w+15 of each 64,
		 * register 4j + 2h + b row lane/4 + 8h, column 8j + 2(lane%4) + b */
		const int ncl = g.ncols - tl.n0;
		if (live && tl.mi >= (cw + 1) * MW * 64) {
			/* all of this warpgroup's rows inside the expert: the first
			 * NB - GT_HOLD blocks now, the rest held */
#pragma unroll
			for (int b = 0; b < NB; b++) {
				const int m = b / (BN / 64), qq = b % (BN / 64);
				uint32_t w[16];
				gt_pack_block<BN>(w, acc[m], qq);
				if (b >= NB - GT_HOLD) {
#pragma unroll
					for (int i = 0; i < 16; i++)
						hold[b - (NB - GT_HOLD)][i] = w[i];
				} else if (qq * 64 < ncl) {
					gt_put_block(w, &tc, tl.n0 + qq * 64, tl.row0 + (cw * MW + m) * 64, se, cw, nst,
						     lead, warp, lane);
				}
			}
			pend = {tl.row0, tl.n0, NB - GT_HOLD};
			continue;
		}
		/* the tile the expert ends in: 64-row blocks inside the expert
		 * as above, the block it ends in 16-byte chunks from the
		 * registers */
#pragma unroll
		for (int m = 0; m < MW; m++) {
			const int rb = (cw * MW + m) * 64;
			if (tl.mi >= rb + 64) {
#pragma unroll
				for (int qq = 0; qq < BN / 64; qq++) {
					if (qq * 64 >= ncl)
						continue; /* the whole warpgroup */
					uint32_t w[16];
					gt_pack_block<BN>(w, acc[m], qq);
					gt_put_block(w, &tc, tl.n0 + qq * 64, tl.row0 + rb, se, cw, nst, lead, warp, lane);
				}
			} else if (tl.mi > rb) {
				/* 16 bytes a thread: each quad's 4 x 4 words (rows
				 * lane / 4 + 8h, 8-column chunks 4jg..4jg+3) transposed by
				 * two xor shuffles, so that lane q holds chunk 4jg + q
				 * whole (4-byte pairs before session 23, about 1% slower
				 * in the forward and input gradient).  ncols is a multiple
				 * of 8 (the output map's row pitch), so a chunk is all
				 * inside ncl or all past it. */
				bf16 *C = (bf16 *)g.c + (size_t)tl.row0 * g.ncols + tl.n0;
				const int r0 = rb + warp * 16 + lane / 4, q = lane % 4;
#pragma unroll
				for (int jg = 0; jg < BN / 32; jg++)
#pragma unroll
					for (int h = 0; h < 2; h++) {
						uint32_t a[4];
#pragma unroll
						for (int i = 0; i < 4; i++) {
							__nv_bfloat162 v = __floats2bfloat162_rn(
								acc[m][4 * (4 * jg + i) + 2 * h], acc[m][4 * (4 * jg + i) + 2 * h + 1]);
							a[i] = *(uint32_t *)&v;
						}
						gt_quad_transpose(a, q);
						const int i = r0 + 8 * h, col = (4 * jg + q) * 8;
						if (i < tl.mi && col < ncl)
							*(uint4 *)(C + (size_t)i * g.ncols + col) = make_uint4(a[0], a[1], a[2], a[3]);
					}
			}
		}
	}
	if (MODE != GT_WGRAD)
		gt_flush<MW, BN, NB>(hold, pend, g.ncols, &tc, se, cw, nst, lead, warp, lane);
	if (wl == 0) /* the output buffers stay until read */
		asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

/* Configuration and grid, process-wide (tests, benchmarks); launches that
 * took the wgmma kernels instead. */
static int gt_force_cfg, gt_force_grid, gt_fallbacks;

extern "C" int moe_cuda_grouped_tma_config(int cfg, int grid)
{
	gt_force_cfg = cfg == 1 || cfg == 3 ? cfg : 0;
	gt_force_grid = grid > 0 ? grid : 0;
	return gt_fallbacks;
}

extern "C" bool moe_cuda_grouped_tma_supported(void)
{
	return moe_cuda_grouped_wgmma_supported() && wg_tmap_encoder() != NULL;
}

/* A tensor map of rank 2 or 3, 128-byte swizzle, zeros out of bounds */
static bool gt_map(CUtensorMap *m, const void *p, CUtensorMapDataType dt, unsigned rank, const cuuint64_t *dims,
		   const cuuint64_t *strides, const cuuint32_t *box)
{
	const cuuint32_t es[3] = {1, 1, 1};
	return wg_tmap_encoder()(m, dt, rank, (void *)p, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE,
				 CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
				 CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* 0 launched (or failed: rc < 0), 1: not launchable here, take the
 * wgmma kernel.  fwd, dgrad: c (rows, ncols) = a (rows, K) by w (E, Out,
 * In); wgrad: c (E, Out, In) fp32 (+)= a^T (dY: rows, Out) b (X: rows, In)
 * over each expert's rows, max_rows unknown (0). */
template <int MODE, int BM, int BN, int ST>
static int gt_launch(void *c, const bf16 *a, const bf16 *w, const int32_t *offsets, int max_rows, int E, int In,
		     int Out, bool store, double *ssq, size_t *ssq_n, cudaStream_t s, struct moe_error *err)
{
	const int K = MODE == GT_FWD ? In : Out, ncols = MODE == GT_FWD ? Out : In;
	const size_t smem = gt_cfg<BM, BN, ST>::SMEM + (size_t)2 * (E + 1) * sizeof(int);
	if (smem > GT_SMEM_MAX || ((uintptr_t)a | (uintptr_t)w | (uintptr_t)c) % 16 || !wg_tmap_encoder())
		return 1;
	CUtensorMap ta, tb, tc;
	/* the weight gradient's row count is known on the device only: its
	 * maps reach 2^31 rows, the loads past offsets[E] go through cp.async */
	const cuuint64_t rows = MODE == GT_WGRAD ? 1ull << 31 : (cuuint64_t)max_rows;
	bool ok;
	if (MODE == GT_WGRAD) {
		const cuuint64_t adim[2] = {(cuuint64_t)Out, rows}, astr[1] = {(cuuint64_t)Out * 2};
		const cuuint64_t bdim[2] = {(cuuint64_t)In, rows}, bstr[1] = {(cuuint64_t)In * 2};
		const cuuint64_t cdim[3] = {(cuuint64_t)In, (cuuint64_t)Out, (cuuint64_t)E},
				 cstr[2] = {(cuuint64_t)In * 4, (cuuint64_t)In * Out * 4};
		const cuuint32_t box[2] = {64, 64}, cbox[3] = {32, 64, 1};
		ok = gt_map(&ta, a, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, adim, astr, box) &&
		     gt_map(&tb, w, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, bdim, bstr, box) &&
		     gt_map(&tc, c, CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 3, cdim, cstr, cbox);
	} else {
		const cuuint64_t adim[2] = {(cuuint64_t)K, rows}, astr[1] = {(cuuint64_t)K * 2};
		const cuuint32_t abox[2] = {GT_BK, BM};
		const cuuint64_t bdim[3] = {(cuuint64_t)In, (cuuint64_t)Out, (cuuint64_t)E},
				 bstr[2] = {(cuuint64_t)In * 2, (cuuint64_t)In * Out * 2};
		const cuuint32_t bbox[3] = {GT_BK, MODE == GT_FWD ? (cuuint32_t)BN : 64u, 1};
		const cuuint64_t cdim[2] = {(cuuint64_t)ncols, rows}, cstr[1] = {(cuuint64_t)ncols * 2};
		const cuuint32_t cbox[2] = {64, 64};
		ok = gt_map(&ta, a, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, adim, astr, abox) &&
		     gt_map(&tb, w, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, bdim, bstr, bbox) &&
		     gt_map(&tc, c, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, cdim, cstr, cbox);
	}
	if (!ok)
		return 1;
	gt_args g = {a, MODE == GT_WGRAD ? w : nullptr, c, offsets, E, K, ncols, (int)moe_cdiv(ncols, BN),
		     (int)moe_cdiv(Out, BM), store, MODE == GT_WGRAD && store ? ssq : nullptr,
		     MODE == GT_WGRAD ? 0 : max_rows};
	if (ssq_n) /* the slots the kernel writes: two a tile */
		*ssq_n = g.ssq ? (size_t)2 * E * g.mt * g.nt : 0;
	size_t tiles = MODE == GT_WGRAD ? (size_t)E * g.mt * g.nt : (size_t)(moe_cdiv(max_rows, BM) + E) * g.nt;
	unsigned grid = gt_force_grid ? gt_force_grid : moe_cuda_sms();
	if (grid > tiles)
		grid = (unsigned)tiles;
	static bool attr_set;
	int rc;
	if (!attr_set) {
		if ((rc = CUDA_OK(cudaFuncSetAttribute(gt_kernel<MODE, BM, BN, ST>,
						       cudaFuncAttributeMaxDynamicSharedMemorySize, GT_SMEM_MAX),
				  err)) != 0)
			return rc;
		attr_set = true;
	}
	moe_launch(gt_kernel<MODE, BM, BN, ST>, grid, GT_THREADS, smem, s, ta, tb, tc, g);
	return CUDA_LAUNCHED(err);
}

/* Configurations, both storing full 64-row blocks through shared memory
 * and TMA, 4 stages: 1 128 x 256, 3 256 x 128 (the weight gradient's rows
 * of W take the place of the rows: 256 rows of W by 128 columns).  The
 * default, 0: 1, or 3 where 256-wide column tiles would leave half of the
 * last one empty (640 columns); the weight gradient's tiles largest expert
 * first (tests/bench/RESULTS-tma.md). */
template <int MODE>
static int gt_run(void *c, const bf16 *a, const bf16 *w, const int32_t *offsets, int max_rows, int E, int In,
		  int Out, bool store, cudaStream_t s, struct moe_error *err, double *ssq = nullptr,
		  size_t *ssq_n = nullptr)
{
	const int rem = (MODE == GT_FWD ? Out : In) % 256;
	const int cfg = gt_force_cfg ? gt_force_cfg : rem > 0 && rem <= 128 ? 3 : 1;
	if (cfg == 3)
		return gt_launch<MODE, 256, 128, 4>(c, a, w, offsets, max_rows, E, In, Out, store, ssq, ssq_n, s, err);
	return gt_launch<MODE, 128, 256, 4>(c, a, w, offsets, max_rows, E, In, Out, store, ssq, ssq_n, s, err);
}

static bool gt_shape_ok(int E, int In, int Out)
{
	return E > 0 && In > 0 && Out > 0 && In % 8 == 0 && Out % 8 == 0;
}

extern "C" int moe_cuda_grouped_tma_fwd(bf16_t *out, const bf16_t *x, const bf16_t *w, const int32_t *offsets,
					int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err)
{
	if (max_rows > 0 && gt_shape_ok(E, In, Out) && moe_cuda_grouped_tma_supported()) {
		int rc = gt_run<GT_FWD>(out, (const bf16 *)x, (const bf16 *)w, offsets, max_rows, E, In, Out, false, s,
					err);
		if (rc <= 0)
			return rc;
		gt_fallbacks++;
	}
	return moe_cuda_grouped_wgmma_fwd(out, x, w, offsets, max_rows, E, In, Out, s, err);
}

extern "C" int moe_cuda_grouped_tma_dgrad(bf16_t *dx, const bf16_t *dout, const bf16_t *w, const int32_t *offsets,
					  int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err)
{
	if (max_rows > 0 && gt_shape_ok(E, In, Out) && moe_cuda_grouped_tma_supported()) {
		int rc = gt_run<GT_DGRAD>(dx, (const bf16 *)dout, (const bf16 *)w, offsets, max_rows, E, In, Out, false,
					  s, err);
		if (rc <= 0)
			return rc;
		gt_fallbacks++;
	}
	return moe_cuda_grouped_wgmma_dgrad(dx, dout, w, offsets, max_rows, E, In, Out, s, err);
}

extern "C" int moe_cuda_grouped_tma_wgrad_store(float *dw, const bf16_t *dout, const bf16_t *x,
						const int32_t *offsets, int E, int In, int Out, bool store,
						cudaStream_t s, struct moe_error *err)
{
	if (gt_shape_ok(E, In, Out) && moe_cuda_grouped_tma_supported()) {
		int rc = gt_run<GT_WGRAD>(dw, (const bf16 *)dout, (const bf16 *)x, offsets, 0, E, In, Out, store, s,
					  err);
		if (rc <= 0)
			return rc;
		gt_fallbacks++;
	}
	return moe_cuda_grouped_wgmma_wgrad_store(dw, dout, x, offsets, E, In, Out, store, s, err);
}

/* The weight gradient stored (gradients by overwrite) with its sums of
 * squares: each tile's epilogue sums the squares of the values it stores
 * (final: a tile reduces over all of its expert's rows, no split over
 * blocks) into its own slots of ssq, two a tile at 2 (e mt nt + tile),
 * written whatever the routing (zeros for experts without rows); *ssq_n:
 * the slots written (0 where the wgmma kernel stored dw instead).  ssq
 * holds moe_cuda_grouped_tma_ssq_cap() doubles (every configuration's
 * tiles are at least 128 x 128). */
extern "C" size_t moe_cuda_grouped_tma_ssq_cap(int E, int In, int Out)
{
	return E > 0 && In > 0 && Out > 0 ? (size_t)2 * E * moe_cdiv(Out, 128) * moe_cdiv(In, 128) : 0;
}

extern "C" int moe_cuda_grouped_tma_wgrad_ssq(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
					      int E, int In, int Out, double *ssq, size_t *ssq_n, cudaStream_t s,
					      struct moe_error *err)
{
	*ssq_n = 0;
	if (gt_shape_ok(E, In, Out) && moe_cuda_grouped_tma_supported()) {
		int rc = gt_run<GT_WGRAD>(dw, (const bf16 *)dout, (const bf16 *)x, offsets, 0, E, In, Out, true, s, err,
					  ssq, ssq_n);
		if (rc <= 0)
			return rc;
		*ssq_n = 0;
		gt_fallbacks++;
	}
	return moe_cuda_grouped_wgmma_wgrad_store(dw, dout, x, offsets, E, In, Out, true, s, err);
}
