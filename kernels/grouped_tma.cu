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
 * (setmaxnreg):
 *   cooperative (PP 0): both on each tile, BM / 2 rows x BN each (one or
 *                       two 64-row MMAs);
 *   ping-pong (PP 1):   alternate tiles, 128 rows x BN each, so that one's
 *                       epilogue overlaps the other's MMAs; an mbarrier
 *                       orders their main loops (tile j's waits start after
 *                       tile j - 1's have passed), which keeps every waiter
 *                       within one phase of the stage barriers.
 * Epilogue: 64-row blocks inside the expert go through shared memory in
 * 64 x 64 blocks (64 x 32 fp32 for wgrad; two buffers per warpgroup) and
 * TMA stores, which drain while the next tile's main loop runs; the weight
 * gradient is stored, or added by the copy engine's reduction
 * (cp.reduce.async.bulk); the block an expert's rows end in stores bf16
 * pairs straight from the accumulators, masked.
 * Rows past the expert's end are loaded (they belong to the next expert)
 * and masked, or for wgrad's last partial k-slice zeroed in the A tile
 * before the MMAs; k-slices whose rows reach past offsets[E] (possibly
 * unallocated: max_rows may be larger, and wgrad has no bound at all) load
 * with cp.async instead, zero-filled.  K tails and columns past Out / In
 * are zero-filled by the copy engine, and the stores clipped by it.
 * Results are bit-identical to grouped_wgmma.cu's (same k order).
 * SwiGLU variants (SW; the routed experts, MOE_CUDA_TMA_FUSE in
 * backend_cuda.cu): the forward loads its B tile as two boxes, gate rows
 * n0.. and up rows I + n0.., so that gate and up column j land in the same
 * thread's fragment, and stores gu and h = silu(g) u; the input gradient
 * turns dh (never stored) into dgu and the recomputed h, with g, u loaded
 * in its epilogue or by the producer into ring stages behind the tile's
 * operands (SW 2) (MOE_CUDA_TMA_FUSE_DG, GT_DG_*).  Both write through the
 * same 64 x 64 blocks and TMA stores, gu / dgu through a map of their gate
 * and up planes; their values are bit-identical to the unfused GEMM and
 * swiglu.cu's kernels.
 * Built for sm_90a only; the launchers fall back to grouped_wgmma.cu where
 * the tensor maps cannot be made (the driver entry point, unaligned
 * pointers) or the experts' tables do not fit in shared memory.
 * The weight gradient stored by overwrite can also sum the squares of what
 * each tile stores (the clip norm's, moe_cuda_grouped_tma_wgrad_ssq). */

#include <stdlib.h>

#include "wgmma.cuh"
#include "kernels.h"

#define GT_BM 128
#define GT_BK 64
#define GT_THREADS 384
#define GT_NCFG 4
#define GT_SMEM_MAX (226 * 1024) /* dynamic, beside the static barriers */

enum { GT_FWD = 0, GT_DGRAD = 1, GT_WGRAD = 2 };

struct gt_args {
	const bf16 *a; /* X or dY (rows, K); wgrad: dY (rows, Out = K) */
	const bf16 *b; /* wgrad: X (rows, In = ncols) */
	void *c;       /* (rows, ncols) bf16; wgrad: (E, Out, In) fp32;
			  SwiGLU (SW): gu or dgu (rows, 2 ncols) */
	const int32_t *offsets; /* (E+1) */
	int E, K, ncols, nt;    /* nt: tiles along the output columns (SW: ncols = I) */
	int mt, store;          /* wgrad: tiles along Out; store (else add) */
	int sched;              /* wgrad: tiles largest expert first (gt_walk) */
	bf16 *h;                /* SW: (rows, I) silu(g) u */
	const bf16 *gu;         /* SW input gradient: (rows, 2I) the forward's [g | u] */
	int dgl;                /* SW input gradient: GT_DG_* */
	double *ssq;            /* wgrad, store: the stored values' sums of squares, two
				   slots a tile (gt_ssq_slots), or nullptr */
	int all_mma;            /* MOE_CUDA_TMA_TAILSKIP=0: the MMAs of rows past the
				   expert's end issued too (comparisons) */
};

/* How the SwiGLU input gradient's epilogue gets g, u (MOE_CUDA_TMA_FUSE_DG,
 * bits): GT_DG_NOPF no prefetch into L2 at the tile's start; GT_DG_TMA the
 * 64 x 64 gate and up blocks through TMA loads into the epilogue buffers
 * (dg, du computed in place; te is then their load map, its prefetch one
 * box per block), else each thread's pairs from global memory.  At
 * seed-base on an H100 (session 5) the fused input gradient took 2.0 ms a
 * layer with 0, 1.26 with 2 (the default), against 0.26 + 0.34 for the
 * GEMM and swiglu.cu's backward apart: either way the epilogue's loads
 * queue behind the producer's next stages and stall both warpgroups.
 * GT_DG_STAGE (session 6): the producer loads the tile's g, u blocks into
 * the ring itself, as MW * NB extra stages right after the tile's last
 * k-slice (each 32 KiB: the gate and up blocks of one 64 x 64 block of
 * both warpgroups, in A's place), so that they arrive in order behind the
 * operands; each consumer warp reads its pairs into registers and gives
 * the stage back before computing.  Cooperative 256 x 128 only (A's 32 KiB
 * hold the four blocks); elsewhere it means GT_DG_TMA.  Slower (session 6,
 * H100, same call: a seed-base step with the fused input gradient 188.67 /
 * 188.98 ms with 6 against 177.57 with 2, the fused op 1.98 ms a layer):
 * its four stages hold the whole ring until the epilogue has read them, so
 * the next tile's operands cannot load during the epilogue. */
enum { GT_DG_NOPF = 1, GT_DG_TMA = 2, GT_DG_STAGE = 4, GT_DG_DEFAULT = GT_DG_TMA };

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
/* the box at {c0, c1, c2} of map m into L2, nothing in shared memory */
static __device__ __forceinline__ void gt_prefetch3(const CUtensorMap *m, int c0, int c1, int c2)
{
	asm volatile("cp.async.bulk.prefetch.tensor.3d.L2.global.tile [%0, {%1, %2, %3}];\n" ::"l"((uint64_t)m), "r"(c0),
		     "r"(c1), "r"(c2)
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
/* Both of warpgroup cw's buffers (the first the next, n & 1), once every
 * TMA store has read them and all of the warpgroup is here. */
static __device__ __forceinline__ uint32_t gt_epi_buf2(uint32_t se, int cw, int n, bool lead)
{
	if (lead)
		asm volatile("cp.async.bulk.wait_group.read 0;\n" ::: "memory");
	gt_named_sync(1 + cw);
	return se + cw * 16384 + (n & 1) * 8192;
}
static __device__ __forceinline__ void gt_sts(uint32_t a, uint32_t v)
{
	asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a), "r"(v) : "memory");
}
/* Output tile t of a block's walk: its expert, first row, the rows left in
 * the expert from there, first column, k-slices; the weight gradient: the
 * expert's first row and rows (its reduction), first row of W (m0). */
struct gt_tile {
	int e, row0, mi, n0, m0, kt;
};

/* The i-th tile of this block's walk: the grid strides over the tiles; the
 * weight gradient with sched walks them as a snake (blocks 0..G-1, then
 * G-1..0, ...) over its tiles ordered by their expert's rows, largest
 * first, so that every block gets about the same number of k-slices. */
template <int MODE> static __device__ __forceinline__ int gt_walk(int i, const gt_args &g)
{
	const int G = gridDim.x, b = blockIdx.x;
	return MODE == GT_WGRAD && g.sched && (i & 1) ? i * G + G - 1 - b : i * G + b;
}

/* s_ord: the weight gradient's experts, largest first (sched) or in order */
template <int MODE, int BM, int BN, int SW = 0>
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
	r.n0 = (t % nt) * (SW && MODE == GT_FWD ? BN / 2 : BN); /* SW forward: gate columns */
	r.m0 = 0;
	r.kt = (g.K + GT_BK - 1) / GT_BK;
	return r;
}

/* The SwiGLU input gradient's epilogue on the 64 x 64 block qq of one
 * 64-row accumulator fragment a (rows rb.. of the tile, this thread's r0,
 * r0 + 8): per half (row r0, then r0 + 8) its g, u pairs read (one round
 * trip), dg and du written into both of the warpgroup's buffers, h kept;
 * then h through the first buffer again.  In the block the expert ends in
 * (not full), masked stores from the registers instead.  GT_DG_STAGE (gus:
 * this warpgroup's gate block in a ring stage, its up block 8 KiB on; rel
 * that stage's release barrier): the pairs from there into registers, the
 * stage given back (one arrival per warp), then as with global loads. */
template <int NA, bool STAGE = false>
static __device__ __forceinline__ void gt_dgrad_swiglu(const float (&a)[NA], int qq, const gt_args &g,
							const gt_tile &tl, int rb, int r0, int ncl, bool full, uint32_t se,
							int cw, int &nst, bool lead, const CUtensorMap &tc,
							const CUtensorMap &td, const CUtensorMap &te, uint32_t ebar, int &ne,
							uint32_t gus = 0, uint32_t rel = 0, int tot = 0)
{
	/* STAGE: the producer loaded this block unless its rows reach past
	 * offsets[E] (tot), where the allocation may end: then global loads */
	const bool inst = STAGE && tl.row0 + rb + 64 <= tot;
	const int I = g.ncols, lane = threadIdx.x % 32, warp = (threadIdx.x % 128) / 32, cq = 2 * (lane % 4);
	uint32_t ba = 0, bb = 0, hv[8][2];
	if (full) {
		ba = gt_epi_buf2(se, cw, nst, lead);
		bb = se + cw * 16384 + ((nst + 1) & 1) * 8192;
		nst += 2;
	}
	if (!STAGE && full && (g.dgl & GT_DG_TMA)) {
		/* g and u blocks into the two buffers; dg, du over them */
		if (lead) {
			wg_arrive_tx(ebar, 16384);
			gt_tma3(ba, &te, tl.n0 + qq * 64, 0, tl.row0 + rb, ebar);
			gt_tma3(bb, &te, tl.n0 + qq * 64, 1, tl.row0 + rb, ebar);
		}
		wg_bar_wait(ebar, ne & 1);
		ne++;
#pragma unroll
		for (int hh = 0; hh < 2; hh++)
#pragma unroll
			for (int jj = 0; jj < 8; jj++) {
				const int jr = qq * 8 + jj, rr = warp * 16 + lane / 4 + 8 * hh;
				const uint32_t o = rr * 128 + ((jj ^ (rr & 7)) << 4) + (lane % 4) * 4;
				uint32_t gw, uw;
				asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(gw) : "r"(ba + o) : "memory");
				asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(uw) : "r"(bb + o) : "memory");
				__nv_bfloat162 db = __floats2bfloat162_rn(a[4 * jr + 2 * hh], a[4 * jr + 2 * hh + 1]);
				__nv_bfloat162 gb = *(__nv_bfloat162 *)&gw, ub = *(__nv_bfloat162 *)&uw;
				float dg0, du0, h0, dg1, du1, h1;
				moe_swiglu_grads(__low2float(gb), __low2float(ub), __low2float(db), &dg0, &du0, &h0);
				moe_swiglu_grads(__high2float(gb), __high2float(ub), __high2float(db), &dg1, &du1, &h1);
				__nv_bfloat162 o0 = __floats2bfloat162_rn(dg0, dg1), o1 = __floats2bfloat162_rn(du0, du1),
					       o2 = __floats2bfloat162_rn(h0, h1);
				gt_sts(ba + o, *(uint32_t *)&o0);
				gt_sts(bb + o, *(uint32_t *)&o1);
				hv[jj][hh] = *(uint32_t *)&o2;
			}
	} else
#pragma unroll
	for (int hh = 0; hh < 2; hh++) {
		const int i = r0 + 8 * hh;
		uint32_t gv[8], uv[8];
#pragma unroll
		for (int jj = 0; jj < 8; jj++) {
			const int col = qq * 64 + jj * 8 + cq;
			gv[jj] = uv[jj] = 0;
			if (inst) { /* the pairs of row r0 + 8 hh from the stage */
				const int rr = warp * 16 + lane / 4 + 8 * hh;
				const uint32_t o = rr * 128 + ((jj ^ (rr & 7)) << 4) + (lane % 4) * 4;
				asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(gv[jj]) : "r"(gus + o) : "memory");
				asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(uv[jj]) : "r"(gus + 8192 + o) : "memory");
			} else if (i < tl.mi && col < ncl) {
				const unsigned int *p =
					(const unsigned int *)(g.gu + (size_t)(tl.row0 + i) * 2 * I + tl.n0 + col);
				gv[jj] = __ldg(p);
				uv[jj] = __ldg(p + I / 2);
			}
		}
		if (STAGE && hh == 1) { /* all of the warp's pairs read: the stage goes back */
			__syncwarp();
			if (lane == 0)
				wg_arrive(rel);
		}
#pragma unroll
		for (int jj = 0; jj < 8; jj++) {
			const int jr = qq * 8 + jj, col = qq * 64 + jj * 8 + cq;
			__nv_bfloat162 db = __floats2bfloat162_rn(a[4 * jr + 2 * hh], a[4 * jr + 2 * hh + 1]);
			__nv_bfloat162 gb = *(__nv_bfloat162 *)&gv[jj], ub = *(__nv_bfloat162 *)&uv[jj];
			float dg0, du0, h0, dg1, du1, h1;
			moe_swiglu_grads(__low2float(gb), __low2float(ub), __low2float(db), &dg0, &du0, &h0);
			moe_swiglu_grads(__high2float(gb), __high2float(ub), __high2float(db), &dg1, &du1, &h1);
			__nv_bfloat162 o0 = __floats2bfloat162_rn(dg0, dg1), o1 = __floats2bfloat162_rn(du0, du1),
				       o2 = __floats2bfloat162_rn(h0, h1);
			if (full) {
				const int rr = warp * 16 + lane / 4 + 8 * hh;
				const uint32_t o = rr * 128 + ((jj ^ (rr & 7)) << 4) + (lane % 4) * 4;
				gt_sts(ba + o, *(uint32_t *)&o0);
				gt_sts(bb + o, *(uint32_t *)&o1);
				hv[jj][hh] = *(uint32_t *)&o2;
			} else if (i < tl.mi && col < ncl) {
				const size_t row = (size_t)tl.row0 + i;
				bf16 *C = (bf16 *)g.c + row * 2 * I + tl.n0 + col;
				*(__nv_bfloat162 *)C = o0;
				*(__nv_bfloat162 *)(C + I) = o1;
				*(__nv_bfloat162 *)(g.h + row * I + tl.n0 + col) = o2;
			}
		}
	}
	if (!full)
		return;
	wg_fence_proxy();
	gt_named_sync(1 + cw);
	if (lead) {
		gt_tma_store3(&tc, ba, tl.n0 + qq * 64, 0, tl.row0 + rb, false);
		gt_tma_store3(&tc, bb, tl.n0 + qq * 64, 1, tl.row0 + rb, false);
	}
	const uint32_t buf = gt_epi_buf(se, cw, nst++, lead);
#pragma unroll
	for (int jj = 0; jj < 8; jj++)
#pragma unroll
		for (int hh = 0; hh < 2; hh++) {
			const int rr = warp * 16 + lane / 4 + 8 * hh;
			gt_sts(buf + rr * 128 + ((jj ^ (rr & 7)) << 4) + (lane % 4) * 4, hv[jj][hh]);
		}
	wg_fence_proxy();
	gt_named_sync(1 + cw);
	if (lead)
		gt_tma_store(&td, buf, tl.n0 + qq * 64, tl.row0 + rb);
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

/* SW (forward and input gradient): SwiGLU in the epilogue, td the map of
 * h, tc of gu / dgu as (I, 2, rows) (gate, up planes), te (input gradient)
 * of gu to prefetch into L2; unused otherwise. */
template <int MODE, int BM, int BN, int ST, int PP, int SW>
__global__ void __launch_bounds__(GT_THREADS, 1)
	gt_kernel(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb,
		  const __grid_constant__ CUtensorMap tc, const __grid_constant__ CUtensorMap td,
		  const __grid_constant__ CUtensorMap te, const gt_args g)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int TA = MODE == GT_WGRAD, TB = MODE != GT_FWD; /* MN-major */
	constexpr int ABYTES = gt_cfg<BM, BN, ST>::ABYTES, BBYTES = gt_cfg<BM, BN, ST>::BBYTES;
	constexpr int EBYTES = gt_cfg<BM, BN, ST>::EBYTES;
	/* 64-row MMAs per consumer warpgroup: ping-pong, each its own tile of
	 * BM rows; cooperative, BM / 2 rows each of the same tile */
	constexpr int MW = PP ? BM / 64 : BM / 128;
	static_assert(MW >= 1 && MW * BN <= 256, "tile shape");
	/* SW 2: the SwiGLU input gradient with GT_DG_STAGE (cooperative 256 x
	 * 128 only; its own kernel: with both ways in one the consumers spill);
	 * NGU: its g, u stages a tile */
	constexpr bool STG = MODE == GT_DGRAD && SW == 2 && BM == 256 && BN == 128 && !PP;
	static_assert(SW != 2 || STG, "GT_DG_STAGE: the cooperative 256 x 128 input gradient only");
	constexpr int NGU = MW * (BN / 64);
	constexpr bool stg = STG;
	static_assert(!SW || MODE != GT_WGRAD, "SwiGLU: forward and input gradient only");
	extern __shared__ unsigned char gt_smem[];
	__shared__ __align__(8) uint64_t full[ST], empty[ST], order, ebar[2];
	__shared__ double s_ss[2][2][4]; /* wgrad with ssq: [warpgroup][tile parity][warp] */
	const uint32_t base = (wg_smem_u32(gt_smem) + 1023) & ~1023u, sa = base, sb = base + ST * ABYTES;
	const uint32_t se = base + ST * (ABYTES + BBYTES); /* the output buffers */
	int *s_start = (int *)(gt_smem + (se + EBYTES - wg_smem_u32(gt_smem))); /* (E+1) row tiles */
	int *s_off = s_start + g.E + 1;                                                     /* (E+1) offsets */
	const int tid = threadIdx.x, E = g.E;

	if (tid == 0) {
		for (int s = 0; s < ST; s++) {
			wg_bar_init(wg_smem_u32(&full[s]), 1);
			wg_bar_init(wg_smem_u32(&empty[s]), PP ? 4 : 8); /* one arrival per consumer warp */
		}
		wg_bar_init(wg_smem_u32(&order), 1);
		wg_bar_init(wg_smem_u32(&ebar[0]), 1); /* SW input gradient, GT_DG_TMA */
		wg_bar_init(wg_smem_u32(&ebar[1]), 1);
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
		 * experts by rows, largest first (ties in order), or in order */
		for (int x = tid; x < E; x += GT_THREADS) {
			int rk = x;
			if (g.sched) {
				const int cx = max(s_off[x + 1] - s_off[x], 0);
				rk = 0;
				for (int y = 0; y < E; y++) {
					const int cy = max(s_off[y + 1] - s_off[y], 0);
					rk += cy > cx || (cy == cx && y < x);
				}
			}
			s_start[rk] = x;
		}
		__syncthreads();
	}

	const int total = MODE == GT_WGRAD ? E * g.mt * g.nt : s_start[E] * g.nt, wg = tid / 128;
	if (wg == 0) {
		/* producer */
		asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
		if (tid >= 32)
			return;
		const int lane = tid, tot = s_off[E];
		int pos = 0;
		for (int i = 0;; i++) {
			const int t = gt_walk<MODE>(i, g);
			if (t >= total)
				break;
			const gt_tile tl = gt_decode<MODE, BM, BN, SW>(t, g, s_start, s_off);
			/* the tile's g, u for its epilogue, into L2 (not the last
			 * tile, whose rows may reach past the allocation) */
			if (MODE == GT_DGRAD && SW && lane == 0 && tl.row0 + BM <= tot && !(g.dgl & GT_DG_NOPF) && !stg) {
				if (g.dgl & GT_DG_TMA)
					for (int q = 0; q < BM / 64 * (BN / 64) * 2; q++)
						gt_prefetch3(&te, tl.n0 + q % (BN / 64) * 64, q / (BN / 64) % 2,
							     tl.row0 + q / (BN / 32) * 64);
				else
					gt_prefetch3(&te, tl.n0, 0, tl.row0);
			}
			for (int kt = 0; kt < tl.kt; kt++, pos++) {
				const int s = pos % ST, k0 = kt * GT_BK;
				if (pos >= ST)
					wg_bar_wait(wg_smem_u32(&empty[s]), ((pos / ST) - 1) & 1);
				const uint32_t dA = sa + s * ABYTES, dB = sb + s * BBYTES, bar = wg_smem_u32(&full[s]);
				/* rows past offsets[E]: cp.async */
				const bool cp = MODE == GT_WGRAD ? tl.row0 + k0 + GT_BK > tot : tl.row0 + BM > tot;
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
						if (MODE == GT_FWD && SW) { /* gate rows n0.., up rows I + n0.. */
							gt_tma3(dB, &tb, k0, tl.n0, tl.e, bar);
							gt_tma3(dB + BN / 2 * 128, &tb, k0, g.ncols + tl.n0, tl.e, bar);
						} else if (MODE == GT_FWD) {
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
			/* GT_DG_STAGE: the tile's g, u right behind its operands, stage j
			 * = m NB + qq: the gate and up 64 x 64 blocks of rows
			 * (cw MW + m) 64.. and columns qq 64.. of both warpgroups cw */
			if (STG && stg)
				for (int j = 0; j < NGU; j++, pos++) {
					const int s = pos % ST, m = j / (BN / 64), qq = j % (BN / 64);
					if (pos >= ST)
						wg_bar_wait(wg_smem_u32(&empty[s]), ((pos / ST) - 1) & 1);
					const uint32_t bar = wg_smem_u32(&full[s]);
					/* not the blocks whose rows reach past offsets[E] (the
					 * allocation may end there): the consumers load those */
					const int r0 = tl.row0 + m * 64, r1 = tl.row0 + (MW + m) * 64;
					if (lane == 0) {
						wg_arrive_tx(bar, ((r0 + 64 <= tot) + (r1 + 64 <= tot)) * 16384);
#pragma unroll
						for (int q = 0; q < 4; q++)
							if ((q >> 1 ? r1 : r0) + 64 <= tot)
								gt_tma3(sa + s * ABYTES + q * 8192, &te, tl.n0 + qq * 64, q & 1,
									q >> 1 ? r1 : r0, bar);
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
	/* this warpgroup's TMA stores so far: the output buffer of the next
	 * is nst & 1 */
	int nst = 0;
	int ne = 0; /* SW input gradient, GT_DG_TMA: this warpgroup's g, u loads so far */
	int pos0 = 0; /* the k-slice position of the block's tile j */
	int nss = 0;      /* wgrad with ssq: this warpgroup's tiles so far */
	double ssq = 0.0; /* wgrad with ssq: this thread's part of the tile's sum */
	for (int j = 0;; j++) {
		const int t = gt_walk<MODE>(j, g);
		if (t >= total)
			break;
		const gt_tile tl = gt_decode<MODE, BM, BN, SW>(t, g, s_start, s_off);
		if (PP && (j & 1) != cw) {
			pos0 += tl.kt;
			continue;
		}
		if (PP && j > 0) /* tile j - 1's main loop has passed its waits */
			wg_bar_wait(wg_smem_u32(&order), (j - 1) & 1);
		float acc[MW][BN / 2];
		/* cooperative forward and input gradient: a warpgroup none of
		 * whose rows lie inside the expert (the tile the expert ends in)
		 * issues no MMAs, it only passes each stage on once it has landed
		 * (the epilogue stores nothing of its rows).  The whole main loop
		 * is skipped, not the MMAs in it: wgmma under a branch is
		 * serialised by ptxas (C7520). */
		const bool live = MODE == GT_WGRAD || PP || g.all_mma || tl.mi > cw * MW * 64;
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
			const uint32_t a0 = sa + s * ABYTES + (PP ? 0 : cw * MW * 8192), b0 = sb + s * BBYTES;
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
			wg_wait<1>(); /* the previous k-slice's MMAs are done with their stage */
			if (kt > 0 && lane == 0)
				wg_arrive(wg_smem_u32(&empty[(pos - 1) % ST]));
		}
		if (PP && wl == 0)
			wg_arrive(wg_smem_u32(&order));
		wg_wait<0>();
		if (nkt > 0 && lane == 0)
			wg_arrive(wg_smem_u32(&empty[(pos0 + tl.kt - 1) % ST]));
		pos0 += tl.kt;
		if (STG && stg) {
			/* GT_DG_STAGE: every g, u stage of the tile waited for and given
			 * back by each consumer warp, its blocks or not */
			const int ncl = g.ncols - tl.n0;
#pragma unroll
			for (int m = 0; m < MW; m++)
#pragma unroll
				for (int qq = 0; qq < BN / 64; qq++) {
					const int gp = pos0 + m * (BN / 64) + qq, s = gp % ST, rb = (cw * MW + m) * 64;
					const uint32_t rel = wg_smem_u32(&empty[s]);
					wg_bar_wait(wg_smem_u32(&full[s]), (gp / ST) & 1);
					if (tl.mi > rb && qq * 64 < ncl) {
						gt_dgrad_swiglu<BN / 2, true>(acc[m], qq, g, tl, rb, rb + warp * 16 + lane / 4, ncl, tl.mi >= rb + 64,
								se, cw, nst, lead, tc, td, te, wg_smem_u32(&ebar[cw]), ne,
								sa + s * ABYTES + cw * 16384, rel, s_off[E]);
					} else {
						__syncwarp();
						if (lane == 0)
							wg_arrive(rel);
					}
				}
			pos0 += NGU;
			continue;
		}
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
					const int mrow = tl.m0 + (PP ? m : cw * MW + m) * 64;
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
				 * butterfly, then warps 0..3) into the tile's slot:
				 * cooperative, one slot per warpgroup; ping-pong, the
				 * first (the second zero).  s_ss alternates between two
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
					if (PP) {
						slot[0] = tot;
						slot[1] = 0.0;
					} else {
						slot[cw] = tot;
					}
				}
				nss++;
				ssq = 0.0;
			}
			continue;
		}

		if (SW) {
			/* SwiGLU.  Forward: the tile's gate column c in registers
			 * 4(c / 8).., its up column in 4(c / 8 + BN / 16).. (the B
			 * tile's rows BN / 2.. are the up rows): g, u rounded to bf16
			 * as stored, h = silu(g) u from them (swiglu.cu's values).
			 * Input gradient: dh rounded to bf16 (as stored unfused) with
			 * the matching g, u, read from global memory (prefetched into
			 * L2 when the tile started), into dg, du and the recomputed
			 * h.  Per 64 x 64 block of h: three blocks (gate or dg, up or
			 * du, h) through shared memory and TMA stores (gu / dgu as
			 * gate and up planes), or masked stores from the registers in
			 * the block the expert ends in. */
			const int I = g.ncols, ncl = I - tl.n0, cq = 2 * (lane % 4);
			constexpr int NB = MODE == GT_FWD ? BN / 128 : BN / 64;
#pragma unroll
			for (int m = 0; m < MW; m++) {
				const int rb = (PP ? m : cw * MW + m) * 64;
				if (tl.mi <= rb)
					continue; /* the whole warpgroup */
				const bool full = tl.mi >= rb + 64;
				const int r0 = rb + warp * 16 + lane / 4;
#pragma unroll
				for (int qq = 0; qq < NB; qq++) {
					if (qq * 64 >= ncl)
						continue;
					if constexpr (MODE == GT_FWD) {
						/* output p (0 gate, 1 up, 2 h) of the pair (jj, hh) */
						auto val = [&](int p, int jj, int hh) -> uint32_t {
							const int jr = qq * 8 + jj, ju = jr + BN / 16;
							__nv_bfloat162 gb = __floats2bfloat162_rn(acc[m][4 * jr + 2 * hh],
												  acc[m][4 * jr + 2 * hh + 1]);
							__nv_bfloat162 ub = __floats2bfloat162_rn(acc[m][4 * ju + 2 * hh],
												  acc[m][4 * ju + 2 * hh + 1]);
							__nv_bfloat162 r =
								p == 0	 ? gb
								: p == 1 ? ub
									 : __floats2bfloat162_rn(
										   moe_swiglu_h(__low2float(gb), __low2float(ub)),
										   moe_swiglu_h(__high2float(gb), __high2float(ub)));
							return *(uint32_t *)&r;
						};
						if (full) {
#pragma unroll
							for (int p = 0; p < 3; p++) {
								const uint32_t buf = gt_epi_buf(se, cw, nst++, lead);
#pragma unroll
								for (int jj = 0; jj < 8; jj++)
#pragma unroll
									for (int hh = 0; hh < 2; hh++) {
										const int rr = warp * 16 + lane / 4 + 8 * hh;
										gt_sts(buf + rr * 128 + ((jj ^ (rr & 7)) << 4) +
											       (lane % 4) * 4,
										       val(p, jj, hh));
									}
								wg_fence_proxy();
								gt_named_sync(1 + cw);
								if (lead) {
									if (p < 2)
										gt_tma_store3(&tc, buf, tl.n0 + qq * 64, p,
											      tl.row0 + rb, false);
									else
										gt_tma_store(&td, buf, tl.n0 + qq * 64,
											     tl.row0 + rb);
								}
							}
						} else {
#pragma unroll
							for (int jj = 0; jj < 8; jj++)
#pragma unroll
								for (int hh = 0; hh < 2; hh++) {
									const int i = r0 + 8 * hh, col = qq * 64 + jj * 8 + cq;
									if (i >= tl.mi || col >= ncl)
										continue;
									const size_t row = (size_t)tl.row0 + i;
									bf16 *C = (bf16 *)g.c + row * 2 * I + tl.n0 + col;
									*(uint32_t *)C = val(0, jj, hh);
									*(uint32_t *)(C + I) = val(1, jj, hh);
									*(uint32_t *)(g.h + row * I + tl.n0 + col) = val(2, jj, hh);
								}
						}
					} else {
						gt_dgrad_swiglu(acc[m], qq, g, tl, rb, r0, ncl, full, se, cw, nst, lead, tc, td,
								te, wg_smem_u32(&ebar[cw]), ne);
					}
				}
			}
			continue;
		}

		/* accumulator fragment: warp w holds rows 16w..16w+15 of each 64,
		 * register 4j + 2h + b row lane/4 + 8h, column 8j + 2(lane%4) + b;
		 * 64-row blocks inside the expert: 64 x 64 blocks through shared
		 * memory (the 128-byte-swizzled layout of the output map,
		 * conflict-free stores) and TMA stores, two buffers per
		 * warpgroup, drained while the next tile's main loop runs; the
		 * block the expert ends in: bf16 pairs from the registers */
		const int cq = 2 * (lane % 4), ncl = g.ncols - tl.n0;
#pragma unroll
		for (int m = 0; m < MW; m++) {
			const int rb = (PP ? m : cw * MW + m) * 64;
			if (tl.mi >= rb + 64) {
#pragma unroll
				for (int qq = 0; qq < BN / 64; qq++) {
					if (qq * 64 >= ncl)
						continue; /* the whole warpgroup */
					const uint32_t buf = gt_epi_buf(se, cw, nst++, lead);
#pragma unroll
					for (int jj = 0; jj < 8; jj++)
#pragma unroll
						for (int h = 0; h < 2; h++) {
							const int rr = warp * 16 + lane / 4 + 8 * h, jr = qq * 8 + jj;
							__nv_bfloat162 v = __floats2bfloat162_rn(acc[m][4 * jr + 2 * h],
												 acc[m][4 * jr + 2 * h + 1]);
							asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(
									     buf + rr * 128 + ((jj ^ (rr & 7)) << 4) + (lane % 4) * 4),
								     "r"(*(uint32_t *)&v)
								     : "memory");
						}
					wg_fence_proxy();
					gt_named_sync(1 + cw);
					if (lead)
						gt_tma_store(&tc, buf, tl.n0 + qq * 64, tl.row0 + rb);
				}
			} else if (tl.mi > rb) {
				bf16 *C = (bf16 *)g.c + (size_t)tl.row0 * g.ncols + tl.n0;
				const int r0 = rb + warp * 16 + lane / 4;
#pragma unroll
				for (int jj = 0; jj < BN / 8; jj++)
#pragma unroll
					for (int h = 0; h < 2; h++) {
						int i = r0 + 8 * h, col = jj * 8 + cq;
						if (i < tl.mi && col < ncl)
							*(__nv_bfloat162 *)(C + (size_t)i * g.ncols + col) =
								__floats2bfloat162_rn(acc[m][4 * jj + 2 * h],
										      acc[m][4 * jj + 2 * h + 1]);
					}
			}
		}
	}
	if (wl == 0) /* the output buffers stay until read */
		asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

/* Configuration and grid, process-wide (tests, benchmarks); launches that
 * took the wgmma kernels instead. */
static int gt_force_cfg, gt_force_grid, gt_fallbacks;

/* MOE_CUDA_TMA_TAILSKIP=0: the forward's and input gradient's MMAs on the
 * rows past an expert's end are issued as before (comparisons; the values
 * stored are the same either way) */
static int gt_all_mma(void)
{
	static int v = -1;
	if (v < 0)
		v = env_is("MOE_CUDA_TMA_TAILSKIP", "0");
	return v;
}

extern "C" int moe_cuda_grouped_tma_config(int cfg, int grid)
{
	gt_force_cfg = cfg >= 1 && cfg <= GT_NCFG ? cfg : 0;
	gt_force_grid = grid > 0 ? grid : 0;
	return gt_fallbacks;
}

extern "C" bool moe_cuda_grouped_tma_supported(void)
{
	return moe_cuda_grouped_wgmma_supported() && wg_tmap_encoder() != NULL;
}

/* A tensor map of rank 2 or 3, 128-byte swizzle (or none), zeros out of
 * bounds */
static bool gt_map(CUtensorMap *m, const void *p, CUtensorMapDataType dt, unsigned rank, const cuuint64_t *dims,
		   const cuuint64_t *strides, const cuuint32_t *box, CUtensorMapSwizzle sw = CU_TENSOR_MAP_SWIZZLE_128B)
{
	const cuuint32_t es[3] = {1, 1, 1};
	return wg_tmap_encoder()(m, dt, rank, (void *)p, dims, strides, box, es, CU_TENSOR_MAP_INTERLEAVE_NONE, sw,
			    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

/* 0 launched (or failed: rc < 0), 1: not launchable here, take the
 * wgmma kernel.  fwd, dgrad: c (rows, ncols) = a (rows, K) by w (E, Out,
 * In); wgrad: c (E, Out, In) fp32 (+)= a^T (dY: rows, Out) b (X: rows, In)
 * over each expert's rows, max_rows unknown (0); sched: the weight
 * gradient's tiles largest expert first, as a snake over the blocks.
 * SW: SwiGLU in the epilogue, I = ncols (forward: Out / 2; w's gate rows,
 * then its up rows), c: gu (forward) or dgu (input gradient) (rows, 2I), h
 * (rows, I), gu (input gradient) the forward's (rows, 2I). */
template <int MODE, int BM, int BN, int ST, int PP, int SW>
static int gt_launch(void *c, const bf16 *a, const bf16 *w, const int32_t *offsets, int max_rows, int E, int In,
		     int Out, bool store, bool sched, bf16 *h, const bf16 *gu, double *ssq, size_t *ssq_n, cudaStream_t s,
		     struct moe_error *err)
{
	/* MOE_CUDA_TMA_FUSE_DG (GT_DG_* bits, comparisons and tests), read at
	 * each launch */
	const char *dv = MODE == GT_DGRAD && SW ? getenv("MOE_CUDA_TMA_FUSE_DG") : NULL;
	int dgl = dv && *dv >= '0' && *dv <= '7' && !dv[1] ? *dv - '0' : GT_DG_DEFAULT;
	if ((dgl & GT_DG_STAGE) && !(BM == 256 && BN == 128 && !PP)) /* the ring's A holds no 4 blocks */
		dgl = (dgl & ~GT_DG_STAGE) | GT_DG_TMA;
	const int K = MODE == GT_FWD ? In : Out, ncols = MODE == GT_FWD ? (SW ? Out / 2 : Out) : In;
	const size_t smem = gt_cfg<BM, BN, ST>::SMEM + (size_t)2 * (E + 1) * sizeof(int);
	if (smem > GT_SMEM_MAX || ((uintptr_t)a | (uintptr_t)w | (uintptr_t)c | (uintptr_t)h | (uintptr_t)gu) % 16 ||
	    !wg_tmap_encoder())
		return 1;
	CUtensorMap ta, tb, tc, td, te;
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
		const cuuint32_t bbox[3] = {GT_BK, MODE == GT_FWD ? (cuuint32_t)(SW ? BN / 2 : BN) : 64u, 1};
		const cuuint64_t cdim[2] = {(cuuint64_t)ncols, rows}, cstr[1] = {(cuuint64_t)ncols * 2};
		const cuuint32_t cbox[2] = {64, 64};
		ok = gt_map(&ta, a, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, adim, astr, abox) &&
		     gt_map(&tb, w, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, bdim, bstr, bbox);
		if (SW) { /* gu, dgu as (I, 2, rows): the gate and up planes */
			const cuuint64_t gdim[3] = {(cuuint64_t)ncols, 2, rows},
					 gstr[2] = {(cuuint64_t)ncols * 2, (cuuint64_t)ncols * 4};
			const cuuint32_t gbox[3] = {64, 1, 64}, ebox[3] = {BN, 2, BM};
			ok = ok && gt_map(&tc, c, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, gdim, gstr, gbox) &&
			     gt_map(&td, h, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, cdim, cstr, cbox);
			if (MODE == GT_DGRAD) /* gu: loaded by blocks, or prefetched by tiles */
				ok = ok && (dgl & (GT_DG_TMA | GT_DG_STAGE) ? gt_map(&te, gu, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, gdim, gstr, gbox)
							    : gt_map(&te, gu, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, gdim, gstr,
								     ebox, CU_TENSOR_MAP_SWIZZLE_NONE));
		} else {
			ok = ok && gt_map(&tc, c, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, cdim, cstr, cbox);
		}
	}
	if (!ok)
		return 1;
	if (!SW)
		td = te = tc;
	else if (MODE != GT_DGRAD)
		te = tc;
	gt_args g = {a, MODE == GT_WGRAD ? w : nullptr, c, offsets, E, K, ncols,
		     (int)moe_cdiv(ncols, SW && MODE == GT_FWD ? BN / 2 : BN), (int)moe_cdiv(Out, BM), store, sched,
		     h, gu, dgl, MODE == GT_WGRAD && store ? ssq : nullptr, gt_all_mma()};
	if (ssq_n) /* the slots the kernel writes: two a tile */
		*ssq_n = g.ssq ? (size_t)2 * E * g.mt * g.nt : 0;
	size_t tiles = MODE == GT_WGRAD ? (size_t)E * g.mt * g.nt : (size_t)(moe_cdiv(max_rows, BM) + E) * g.nt;
	unsigned grid = gt_force_grid ? gt_force_grid : moe_cuda_sms();
	if (grid > tiles)
		grid = (unsigned)tiles;
	static bool attr_set;
	int rc;
	if constexpr (MODE == GT_DGRAD && SW == 1 && BM == 256 && BN == 128 && !PP) {
		if (dgl & GT_DG_STAGE) { /* the g, u blocks through the ring: its kernel */
			static bool attr2;
			if (!attr2) {
				if ((rc = CUDA_OK(cudaFuncSetAttribute(gt_kernel<MODE, BM, BN, ST, PP, 2>,
								       cudaFuncAttributeMaxDynamicSharedMemorySize,
								       GT_SMEM_MAX),
						  err)) != 0)
					return rc;
				attr2 = true;
			}
			moe_launch(gt_kernel<MODE, BM, BN, ST, PP, 2>, grid, GT_THREADS, smem, s, ta, tb, tc, td, te,
				   g);
			return CUDA_LAUNCHED(err);
		}
	}
	if (!attr_set) {
		if ((rc = CUDA_OK(cudaFuncSetAttribute(gt_kernel<MODE, BM, BN, ST, PP, SW>,
						       cudaFuncAttributeMaxDynamicSharedMemorySize, GT_SMEM_MAX),
				  err)) != 0)
			return rc;
		attr_set = true;
	}
	moe_launch(gt_kernel<MODE, BM, BN, ST, PP, SW>, grid, GT_THREADS, smem, s, ta, tb, tc, td, te, g);
	return CUDA_LAUNCHED(err);
}

/* Configurations, all storing full 64-row blocks through shared memory and
 * TMA: 1 cooperative 128 x 256, 4 stages; 2 ping-pong, 128 x 128 per
 * consumer warpgroup, 6 stages; 3 cooperative 256 x 128, 4 stages; 4
 * session 3's default (1, or 2 where 256-wide column tiles would leave half
 * of the last one empty, the weight gradient's tiles in order).  The
 * weight gradient's rows of W take the place of the rows (3: 256 rows of W
 * by 128 columns).  The default, 0: 1, or 3 where 256-wide column tiles
 * would leave half of the last one empty (640 columns), the weight
 * gradient's tiles largest expert first (tests/bench/RESULTS-tma.md).
 * The SwiGLU forward (SW) counts half of the tile's columns (its gate
 * columns) against I. */
template <int MODE, int SW = 0>
static int gt_run(void *c, const bf16 *a, const bf16 *w, const int32_t *offsets, int max_rows, int E, int In,
		  int Out, bool store, cudaStream_t s, struct moe_error *err, bf16 *h = nullptr,
		  const bf16 *gu = nullptr, double *ssq = nullptr, size_t *ssq_n = nullptr)
{
	static int env_cfg = -1;
	if (env_cfg < 0) { /* MOE_CUDA_GROUPED_TMA_CFG: one configuration for all (comparisons) */
		const char *v = getenv("MOE_CUDA_GROUPED_TMA_CFG");
		env_cfg = v && *v >= '1' && *v < '1' + GT_NCFG && !v[1] ? *v - '0' : 0;
	}
	static int env_fcfg = -1;
	if (SW && env_fcfg < 0) { /* MOE_CUDA_TMA_FUSE_CFG: the SwiGLU variants' alone */
		const char *v = getenv("MOE_CUDA_TMA_FUSE_CFG");
		env_fcfg = v && *v >= '1' && *v <= '3' && !v[1] ? *v - '0' : 0;
	}
	const int span = SW && MODE == GT_FWD ? 128 : 256;
	const int ncols = MODE == GT_FWD ? (SW ? Out / 2 : Out) : In, rem = ncols % span;
	const bool narrow = rem > 0 && rem <= span / 2;
	int cfg = gt_force_cfg ? gt_force_cfg : SW && env_fcfg > 0 ? env_fcfg : env_cfg;
	bool sched = true;
	if (cfg == 4) /* session 3 */
		cfg = narrow ? 2 : 1, sched = false;
	else if (cfg == 0)
		cfg = narrow ? 3 : 1;
	switch (cfg) {
	case 2:
		return gt_launch<MODE, 128, 128, 6, 1, SW>(c, a, w, offsets, max_rows, E, In, Out, store, sched, h, gu, ssq,
							   ssq_n, s, err);
	case 3:
		return gt_launch<MODE, 256, 128, 4, 0, SW>(c, a, w, offsets, max_rows, E, In, Out, store, sched, h, gu, ssq,
							   ssq_n, s, err);
	default:
		return gt_launch<MODE, 128, 256, 4, 0, SW>(c, a, w, offsets, max_rows, E, In, Out, store, sched, h, gu, ssq,
							   ssq_n, s, err);
	}
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
					  nullptr, nullptr, ssq, ssq_n);
		if (rc <= 0)
			return rc;
		*ssq_n = 0;
		gt_fallbacks++;
	}
	return moe_cuda_grouped_wgmma_wgrad_store(dw, dout, x, offsets, E, In, Out, true, s, err);
}

/* SwiGLU fused into the routed experts' GEMMs (forward and input
 * gradient): 1 where the TMA kernels cannot run them here (the caller runs
 * the unfused sequence). */
extern "C" int moe_cuda_grouped_tma_up_fwd(bf16_t *gu, bf16_t *h, const bf16_t *x, const bf16_t *w,
					   const int32_t *offsets, int max_rows, int E, int D, int I, cudaStream_t s,
					   struct moe_error *err)
{
	if (!gt_shape_ok(E, D, 2 * I) || I % 8 || !moe_cuda_grouped_tma_supported())
		return 1;
	if (max_rows <= 0)
		return 0;
	int rc = gt_run<GT_FWD, 1>(gu, (const bf16 *)x, (const bf16 *)w, offsets, max_rows, E, D, 2 * I, false, s, err,
				   (bf16 *)h);
	if (rc > 0)
		gt_fallbacks++;
	return rc;
}

extern "C" int moe_cuda_grouped_tma_down_dgrad_swiglu(bf16_t *dgu, bf16_t *h, const bf16_t *dy, const bf16_t *gu,
						      const bf16_t *w, const int32_t *offsets, int max_rows, int E,
						      int I, int D, cudaStream_t s, struct moe_error *err)
{
	if (!gt_shape_ok(E, I, D) || !moe_cuda_grouped_tma_supported())
		return 1;
	if (max_rows <= 0)
		return 0;
	int rc = gt_run<GT_DGRAD, 1>(dgu, (const bf16 *)dy, (const bf16 *)w, offsets, max_rows, E, I, D, false, s, err,
				     (bf16 *)h, (const bf16 *)gu);
	if (rc > 0)
		gt_fallbacks++;
	return rc;
}
