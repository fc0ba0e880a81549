/* Grouped (per-expert) GEMMs on Hopper with the bulk tensor copy engine
 * (TMA) and warp specialisation, for the forward and the input gradient,
 * with the arguments and contracts of grouped_wgmma.cu (device offsets, no
 * host synchronisation, max_rows bounding offsets[E], experts without rows):
 *
 *   fwd:   C (rows, Out) = X_e W_e^T        A = X   K-major,  B = W_e K-major
 *   dgrad: C (rows, In)  = dY_e W_e         A = dY  K-major,  B = W_e MN-major
 *
 * A persistent grid (one block of 384 threads per multiprocessor) walks the
 * output tiles, 128 rows x BN columns, numbered over the experts on the
 * device (each block builds the experts' row-tile prefix in shared memory),
 * row tiles outer so that blocks running together share the A rows and one
 * or two experts' W in L2.  Warpgroup 0 is the producer: one warp issues the
 * TMA loads of each 64-deep k-slice (A through a 2D map over the (rows, K)
 * activations, B through a 3D map over W (E, Out, In)) into a ring of ST
 * shared-memory stages in wgmma's 128-byte-swizzled layouts, completing on
 * one mbarrier per stage; the consumers give a stage back through a second
 * mbarrier once their MMAs have read it.  Two consumer warpgroups issue
 * wgmma only, with the registers the producer gave up (setmaxnreg):
 *   cooperative (PP 0): both on each tile, 64 rows x BN each;
 *   ping-pong (PP 1):   alternate tiles, 128 rows x BN each, so that one's
 *                       epilogue overlaps the other's MMAs; an mbarrier
 *                       orders their main loops (tile j's waits start after
 *                       tile j - 1's have passed), which keeps every waiter
 *                       within one phase of the stage barriers.
 * The epilogue stores bf16 pairs straight from the accumulators, masked to
 * the expert's rows and the output columns.  Rows past the expert's end are
 * loaded (they belong to the next expert) and masked; a tile that reaches
 * past offsets[E] (possibly unallocated when max_rows is larger) loads its A
 * rows with cp.async instead, zero-filled past the end.  K tails and
 * columns past Out / In are zero-filled by the copy engine.
 * Built for sm_90a only; the launchers fall back to grouped_wgmma.cu where
 * the tensor maps cannot be made (the driver entry point, unaligned
 * pointers) or the experts' tables do not fit in shared memory. */

#include <cuda.h>
#include <cudaTypedefs.h>

#include "cuda_common.h"
#include "kernels.h"

#define GT_BM 128
#define GT_BK 64
#define GT_THREADS 384
#define GT_SMEM_MAX (226 * 1024) /* dynamic, beside the static barriers */

enum { GT_FWD = 0, GT_DGRAD = 1 };

struct gt_args {
	const bf16 *a; /* X or dY (rows, K): the cp.async loads past offsets[E] */
	bf16 *c;       /* (rows, ncols) */
	const int32_t *offsets; /* (E+1) */
	int E, K, ncols, nt;    /* nt: tiles along the output columns */
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ uint32_t gt_u32(const void *p) { return (uint32_t)__cvta_generic_to_shared(p); }

static __device__ __forceinline__ void gt_bar_init(uint32_t bar, int count)
{
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
static __device__ __forceinline__ void gt_arrive(uint32_t bar)
{
	asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void gt_arrive_tx(uint32_t bar, uint32_t bytes)
{
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/* until the phase of parity ph has completed */
static __device__ __forceinline__ void gt_wait(uint32_t bar, uint32_t ph)
{
	uint32_t ok;
	do {
		asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
			     "selp.u32 %0, 1, 0, p;\n}\n"
			     : "=r"(ok)
			     : "r"(bar), "r"(ph)
			     : "memory");
	} while (!ok);
}
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
static __device__ __forceinline__ void gt_cp16(uint32_t dst, const void *src, bool pred)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0));
}
static __device__ __forceinline__ void gt_fence_proxy() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
static __device__ __forceinline__ void gt_wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void gt_wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N> static __device__ __forceinline__ void gt_wg_wait()
{
	asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}

/* Shared-memory matrix descriptor, 128-byte swizzle (as grouped_wgmma.cu):
 * K-major: stride offset 1024 (8 rows of 128 bytes); MN-major: leading
 * offset 8192 (the next 64-column block), stride 1024 (8 k-rows). */
static __device__ __forceinline__ uint64_t gt_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
	return (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
	       (1ull << 62);
}

/* D (64 x 128, fp32, 64 registers a thread) = A B (+ D when acc) on the
 * descriptors da, db; A K-major, B MN-major when TB */
template <int TB> static __device__ __forceinline__ void gt_wgmma_n128(float *d, uint64_t da, uint64_t db, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {"
		     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
		     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
		     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
		     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
		     "}, %64, %65, p, 1, 1, 0, %67;\n}\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
		       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
		       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
		       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
		       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
		       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
		       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
		       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
		     : "l"(da), "l"(db), "r"(acc), "n"(TB));
}

/* D (64 x 256, fp32, 128 registers a thread) = A B (+ D when acc) on the
 * descriptors da, db; A K-major, B MN-major when TB */
template <int TB> static __device__ __forceinline__ void gt_wgmma_n256(float *d, uint64_t da, uint64_t db, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 {"
		     "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
		     "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
		     "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
		     "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
		     "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
		     "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
		     "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
		     "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
		     "}, %128, %129, p, 1, 1, 0, %131;\n}\n"
		     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
		       "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
		       "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
		       "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
		       "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
		       "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
		       "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
		       "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
		       "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
		       "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
		       "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
		       "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
		       "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
		       "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
		       "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
		       "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
		     : "l"(da), "l"(db), "r"(acc), "n"(TB));
}

template <int BN, int TB> static __device__ __forceinline__ void gt_mma(float *d, uint64_t da, uint64_t db, int acc)
{
	if (BN == 128)
		gt_wgmma_n128<TB>(d, da, db, acc);
	else
		gt_wgmma_n256<TB>(d, da, db, acc);
}

/* Output tile t of a block's walk: its expert, first row, the rows left in
 * the expert from there, first column. */
struct gt_tile {
	int e, row0, mi, n0;
};

template <int BN>
static __device__ __forceinline__ gt_tile gt_decode(int t, int nt, int E, const int *s_start, const int *s_off)
{
	int tm = t / nt, lo = 0, hi = E - 1;
	while (lo < hi) { /* the last expert whose first row tile is <= tm (skips empty ones) */
		int mid = (lo + hi + 1) / 2;
		if (s_start[mid] <= tm)
			lo = mid;
		else
			hi = mid - 1;
	}
	gt_tile r;
	r.e = lo;
	r.row0 = s_off[lo] + (tm - s_start[lo]) * GT_BM;
	r.mi = s_off[lo + 1] - r.row0;
	r.n0 = (t % nt) * BN;
	return r;
}
#endif

/* ST stages of A (128 x 64) and B (BN x 64) bf16, after slack to align them
 * to the swizzle's 1024-byte period; the experts' tables after them. */
template <int BN, int ST> struct gt_cfg {
	static constexpr int ABYTES = GT_BM * GT_BK * 2, BBYTES = BN * GT_BK * 2;
	static constexpr size_t SMEM = 1024 + (size_t)ST * (ABYTES + BBYTES);
};

template <int MODE, int BN, int ST, int PP>
__global__ void __launch_bounds__(GT_THREADS, 1)
	gt_kernel(const __grid_constant__ CUtensorMap ta, const __grid_constant__ CUtensorMap tb, const gt_args g)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr int TB = MODE == GT_DGRAD;
	constexpr int ABYTES = gt_cfg<BN, ST>::ABYTES, BBYTES = gt_cfg<BN, ST>::BBYTES;
	constexpr int MW = PP ? 2 : 1; /* 64-row MMAs per consumer warpgroup */
	extern __shared__ unsigned char gt_smem[];
	__shared__ __align__(8) uint64_t full[ST], empty[ST], order;
	const uint32_t base = (gt_u32(gt_smem) + 1023) & ~1023u, sa = base, sb = base + ST * ABYTES;
	int *s_start = (int *)(gt_smem + (base - gt_u32(gt_smem)) + ST * (ABYTES + BBYTES)); /* (E+1) row tiles */
	int *s_off = s_start + g.E + 1;                                                     /* (E+1) offsets */
	const int tid = threadIdx.x, E = g.E;

	if (tid == 0) {
		for (int s = 0; s < ST; s++) {
			gt_bar_init(gt_u32(&full[s]), 1);
			gt_bar_init(gt_u32(&empty[s]), PP ? 4 : 8); /* one arrival per consumer warp */
		}
		gt_bar_init(gt_u32(&order), 1);
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	if (tid < 32) {
		/* the experts' first row tiles: a prefix sum, 32 experts at a time */
		int lane = tid, acc = 0;
		for (int x0 = 0; x0 < E; x0 += 32) {
			int x = x0 + lane, o0 = 0, tiles = 0;
			if (x < E) {
				o0 = g.offsets[x];
				tiles = (max(g.offsets[x + 1] - o0, 0) + GT_BM - 1) / GT_BM;
			}
			int incl = tiles;
#pragma unroll
			for (int o = 1; o < 32; o <<= 1) {
				int v = __shfl_up_sync(0xffffffffu, incl, o);
				if (lane >= o)
					incl += v;
			}
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

	const int total = s_start[E] * g.nt, KT = (g.K + GT_BK - 1) / GT_BK, wg = tid / 128;
	if (wg == 0) {
		/* producer */
		asm volatile("setmaxnreg.dec.sync.aligned.u32 56;\n" ::: "memory");
		if (tid >= 32)
			return;
		const int lane = tid, tot = s_off[E];
		int pos = 0;
		for (int t = blockIdx.x; t < total; t += gridDim.x) {
			gt_tile tl = gt_decode<BN>(t, g.nt, E, s_start, s_off);
			const bool cp = tl.row0 + GT_BM > tot; /* A rows past offsets[E]: cp.async */
			for (int kt = 0; kt < KT; kt++, pos++) {
				const int s = pos % ST, k0 = kt * GT_BK;
				if (pos >= ST)
					gt_wait(gt_u32(&empty[s]), ((pos / ST) - 1) & 1);
				const uint32_t dA = sa + s * ABYTES, dB = sb + s * BBYTES, bar = gt_u32(&full[s]);
				if (cp) {
					const int nr = tot - tl.row0;
					for (int c = lane; c < GT_BM * 8; c += 32) {
						int r = c >> 3, ch = c & 7;
						bool ok = r < nr && k0 + ch * 8 < g.K;
						gt_cp16(dA + r * 128 + ((ch ^ (r & 7)) << 4),
							ok ? g.a + (size_t)(tl.row0 + r) * g.K + k0 + ch * 8 : g.a, ok);
					}
					asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
					gt_fence_proxy();
					__syncwarp();
				}
				if (lane == 0) {
					gt_arrive_tx(bar, (cp ? 0 : ABYTES) + BBYTES);
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
				__syncwarp();
			}
		}
		return;
	}

	/* consumers */
	asm volatile("setmaxnreg.inc.sync.aligned.u32 224;\n" ::: "memory");
	const int cw = wg - 1, lane = tid % 32, warp = (tid % 128) / 32;
	int j = 0;
	for (int t = blockIdx.x; t < total; t += gridDim.x, j++) {
		if (PP && (j & 1) != cw)
			continue;
		const gt_tile tl = gt_decode<BN>(t, g.nt, E, s_start, s_off);
		const int pos0 = j * KT;
		if (PP && j > 0) /* tile j - 1's main loop has passed its waits */
			gt_wait(gt_u32(&order), (j - 1) & 1);
		float acc[MW][BN / 2];
		for (int kt = 0; kt < KT; kt++) {
			const int pos = pos0 + kt, s = pos % ST;
			gt_wait(gt_u32(&full[s]), (pos / ST) & 1);
			const uint32_t a0 = sa + s * ABYTES + (PP ? 0 : cw * 8192), b0 = sb + s * BBYTES;
			gt_wg_fence();
#pragma unroll
			for (int kk = 0; kk < GT_BK / 16; kk++) {
				uint64_t db = gt_desc(b0 + (TB ? kk * 2048 : kk * 32), TB ? 8192 : 16, 1024);
#pragma unroll
				for (int m = 0; m < MW; m++)
					gt_mma<BN, TB>(acc[m], gt_desc(a0 + m * 8192 + kk * 32, 16, 1024), db,
						       kt > 0 || kk > 0);
			}
			gt_wg_commit();
			gt_wg_wait<1>(); /* the previous k-slice's MMAs are done with their stage */
			if (kt > 0 && lane == 0)
				gt_arrive(gt_u32(&empty[(pos - 1) % ST]));
		}
		if (PP && tid % 128 == 0)
			gt_arrive(gt_u32(&order));
		gt_wg_wait<0>();
		if (lane == 0)
			gt_arrive(gt_u32(&empty[(pos0 + KT - 1) % ST]));

		/* accumulator fragment: warp w holds rows 16w..16w+15 of each 64,
		 * register 4j + 2h + b row lane/4 + 8h, column 8j + 2(lane%4) + b */
		bf16 *C = g.c + (size_t)tl.row0 * g.ncols + tl.n0;
		const int cq = 2 * (lane % 4), ncl = g.ncols - tl.n0;
#pragma unroll
		for (int m = 0; m < MW; m++) {
			const int r0 = (PP ? m : cw) * 64 + warp * 16 + lane / 4;
#pragma unroll
			for (int jj = 0; jj < BN / 8; jj++)
#pragma unroll
				for (int h = 0; h < 2; h++) {
					int i = r0 + 8 * h, col = jj * 8 + cq;
					if (i < tl.mi && col < ncl)
						*(__nv_bfloat162 *)(C + (size_t)i * g.ncols + col) = __floats2bfloat162_rn(
							acc[m][4 * jj + 2 * h], acc[m][4 * jj + 2 * h + 1]);
				}
		}
	}
#endif
}

/* Configuration and grid, process-wide (tests, benchmarks); launches that
 * took the wgmma kernels instead. */
static int gt_force_cfg, gt_force_grid, gt_fallbacks;

extern "C" int moe_cuda_grouped_tma_config(int cfg, int grid)
{
	gt_force_cfg = cfg >= 1 && cfg <= 3 ? cfg : 0;
	gt_force_grid = grid > 0 ? grid : 0;
	return gt_fallbacks;
}

typedef PFN_cuTensorMapEncodeTiled_v12000 gt_encode_fn;

/* cuTensorMapEncodeTiled through the runtime's driver entry point (no link
 * against libcuda); NULL when the driver does not offer it. */
static gt_encode_fn gt_encoder(void)
{
	static gt_encode_fn fn;
	static bool tried;
	if (!tried) {
		void *p = NULL;
		cudaDriverEntryPointQueryResult q;
		if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
			    cudaSuccess &&
		    q == cudaDriverEntryPointSuccess)
			fn = (gt_encode_fn)p;
		else
			cudaGetLastError();
		tried = true;
	}
	return fn;
}

extern "C" bool moe_cuda_grouped_tma_supported(void)
{
	return moe_cuda_grouped_wgmma_supported() && gt_encoder() != NULL;
}

/* A bf16 tensor map of rank 2 or 3, 128-byte swizzle, zeros out of bounds */
static bool gt_map(CUtensorMap *m, const void *p, unsigned rank, const cuuint64_t *dims, const cuuint64_t *strides,
		   const cuuint32_t *box)
{
	const cuuint32_t es[3] = {1, 1, 1};
	return gt_encoder()(m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, rank, (void *)p, dims, strides, box, es,
			    CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
			    CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

static int gt_sms(void)
{
	static int n;
	int dev = 0;
	if (n <= 0 && (cudaGetDevice(&dev) != cudaSuccess ||
		       cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)) {
		cudaGetLastError();
		n = 132;
	}
	return n;
}

/* 0 launched (or failed: rc < 0), 1: not launchable here, take the
 * wgmma kernel */
template <int MODE, int BN, int ST, int PP>
static int gt_launch(bf16 *c, const bf16 *a, const bf16 *w, const int32_t *offsets, int max_rows, int E, int In,
		     int Out, cudaStream_t s, struct moe_error *err)
{
	const int K = MODE == GT_FWD ? In : Out, ncols = MODE == GT_FWD ? Out : In;
	const size_t smem = gt_cfg<BN, ST>::SMEM + (size_t)2 * (E + 1) * sizeof(int);
	if (smem > GT_SMEM_MAX || ((uintptr_t)a | (uintptr_t)w) % 16 || (uintptr_t)c % 4 || !gt_encoder())
		return 1;
	CUtensorMap ta, tb;
	const cuuint64_t adim[2] = {(cuuint64_t)K, (cuuint64_t)max_rows}, astr[1] = {(cuuint64_t)K * 2};
	const cuuint32_t abox[2] = {GT_BK, GT_BM};
	const cuuint64_t bdim[3] = {(cuuint64_t)In, (cuuint64_t)Out, (cuuint64_t)E},
			 bstr[2] = {(cuuint64_t)In * 2, (cuuint64_t)In * Out * 2};
	const cuuint32_t bbox[3] = {GT_BK, MODE == GT_FWD ? (cuuint32_t)BN : 64u, 1};
	if (!gt_map(&ta, a, 2, adim, astr, abox) || !gt_map(&tb, w, 3, bdim, bstr, bbox))
		return 1;
	gt_args g = {a, c, offsets, E, K, ncols, (int)moe_cdiv(ncols, BN)};
	size_t tiles = (size_t)(moe_cdiv(max_rows, GT_BM) + E) * g.nt;
	unsigned grid = gt_force_grid ? gt_force_grid : gt_sms();
	if (grid > tiles)
		grid = (unsigned)tiles;
	static bool attr_set;
	int rc;
	if (!attr_set) {
		if ((rc = CUDA_OK(cudaFuncSetAttribute(gt_kernel<MODE, BN, ST, PP>,
						       cudaFuncAttributeMaxDynamicSharedMemorySize, GT_SMEM_MAX),
				  err)) != 0)
			return rc;
		attr_set = true;
	}
	gt_kernel<MODE, BN, ST, PP><<<grid, GT_THREADS, smem, s>>>(ta, tb, g);
	return CUDA_LAUNCHED(err);
}

/* Configurations: 1 cooperative 128 x 256, 4 stages; 2 ping-pong 128 x 128
 * per consumer warpgroup, 6 stages; 3 cooperative 128 x 128, 6 stages. */
template <int MODE>
static int gt_run(int dflt, bf16 *c, const bf16 *a, const bf16 *w, const int32_t *offsets, int max_rows, int E,
		  int In, int Out, cudaStream_t s, struct moe_error *err)
{
	switch (gt_force_cfg ? gt_force_cfg : dflt) {
	case 2:
		return gt_launch<MODE, 128, 6, 1>(c, a, w, offsets, max_rows, E, In, Out, s, err);
	case 3:
		return gt_launch<MODE, 128, 6, 0>(c, a, w, offsets, max_rows, E, In, Out, s, err);
	default:
		return gt_launch<MODE, 256, 4, 0>(c, a, w, offsets, max_rows, E, In, Out, s, err);
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
		int rc = gt_run<GT_FWD>(1, (bf16 *)out, (const bf16 *)x, (const bf16 *)w, offsets, max_rows, E, In,
					Out, s, err);
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
		int rc = gt_run<GT_DGRAD>(1, (bf16 *)dx, (const bf16 *)dout, (const bf16 *)w, offsets, max_rows, E,
					  In, Out, s, err);
		if (rc <= 0)
			return rc;
		gt_fallbacks++;
	}
	return moe_cuda_grouped_wgmma_dgrad(dx, dout, w, offsets, max_rows, E, In, Out, s, err);
}
