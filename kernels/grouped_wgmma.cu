/* Grouped (per-expert) GEMMs on Hopper's warpgroup MMA (wgmma, sm_90a), with
 * the arguments and contracts of grouped_gemm.cu: expert boundaries come from
 * the device offsets of the routing, no host synchronisation.
 *
 * Tiles of 128 x BN x 64 (BN = 128 or 256), two warpgroups of 64 x BN each,
 * one block per multiprocessor with 6 (BN 128) or 4 (BN 256) stages, or (the
 * default) two blocks of 3 stages (BN 128) so that one's epilogue overlaps
 * the other's main loop.  Operands are in shared memory in the
 * 128-byte-swizzled layouts that wgmma reads through matrix descriptors: a
 * K-major operand (x, dY, W in the forward) as rows of 64 elements (128
 * bytes), a MN-major one (W in the input gradient, dY and X in the weight
 * gradient) as 64-element-wide column blocks of 64 k-rows, transposed by
 * wgmma itself.  A multi-stage cp.async pipeline
 * (zero-filled tails: partial row tiles, partial column tiles, and the
 * weight gradient's reduction over a group's rows) loads the next stages
 * while WGW (0 or 1) wgmma groups beside the current one run.
 *
 *   fwd:   C (rows, Out) = X_e W_e^T        A = X   K-major,  B = W_e K-major
 *   dgrad: C (rows, In)  = dY_e W_e         A = dY  K-major,  B = W_e MN-major
 *   wgrad: C (Out, In)  += dY_e^T X_e       A = dY  MN-major, B = X   MN-major
 *
 * Row tiles of the forward and input gradient are numbered over the experts
 * on the device (one warp's prefix sum over the offsets); the weight
 * gradient has one block per (expert, output tile) and accumulates fp32 +=.
 * Built for sm_90a only: on other devices the launchers return
 * MOE_EUNSUPPORTED.
 */

#include "wgmma.cuh"
#include "kernels.h"

#define GW_BM 128
#define GW_BK 64
#define GW_THREADS 256

enum { GW_FWD = 0, GW_DGRAD = 1, GW_WGRAD = 2 };

struct gw_args {
	const bf16 *a, *b; /* X or dY; W or X */
	void *c;
	const int32_t *offsets; /* (E+1) */
	int E, In, Out;
	int nt; /* tiles along the output columns */
	int mt; /* wgrad: tiles along Out */
	int store;           /* weight gradient: store (no read) instead of adding; an
				expert without rows stores zeros */
};

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* One pipeline stage: the A tile (128 rows or columns) and the B tile (BN)
 * of reduction slice [k0, k0 + 64), zero-filled outside Mi x K and Nj x K. */
template <bool AT, bool BT, int BN>
static __device__ __forceinline__ void gw_load(uint32_t sa, uint32_t sb, const bf16 *A, int lda, const bf16 *B,
					       int ldb, int Mi, int Nj, int K, int k0)
{
	const int tid = threadIdx.x;
	if (!AT) {
		/* 128 rows of 64 k (8 chunks of 16 bytes each) */
#pragma unroll
		for (int it = 0; it < GW_BM * 8 / GW_THREADS; it++) {
			int c = tid + it * GW_THREADS, r = c >> 3, ch = c & 7;
			bool ok = r < Mi && k0 + ch * 8 < K;
			wg_cp16(sa + r * 128 + ((ch ^ (r & 7)) << 4), ok ? A + (size_t)r * lda + k0 + ch * 8 : A, ok);
		}
	} else {
		/* 64 k-rows of 128 columns, as two 64-column blocks */
#pragma unroll
		for (int it = 0; it < GW_BK * (GW_BM / 8) / GW_THREADS; it++) {
			int c = tid + it * GW_THREADS, k = c >> 4, cc = c & 15;
			bool ok = k0 + k < K && cc * 8 < Mi;
			wg_cp16(sa + (cc >> 3) * 8192 + k * 128 + (((cc & 7) ^ (k & 7)) << 4),
				ok ? A + (size_t)(k0 + k) * lda + cc * 8 : A, ok);
		}
	}
	if (!BT) {
#pragma unroll
		for (int it = 0; it < BN * 8 / GW_THREADS; it++) {
			int c = tid + it * GW_THREADS, r = c >> 3, ch = c & 7;
			bool ok = r < Nj && k0 + ch * 8 < K;
			wg_cp16(sb + r * 128 + ((ch ^ (r & 7)) << 4), ok ? B + (size_t)r * ldb + k0 + ch * 8 : B, ok);
		}
	} else {
		constexpr int CPR = BN / 8; /* 16-byte chunks per k-row */
#pragma unroll
		for (int it = 0; it < GW_BK * CPR / GW_THREADS; it++) {
			int c = tid + it * GW_THREADS, k = c / CPR, cc = c % CPR;
			bool ok = k0 + k < K && cc * 8 < Nj;
			wg_cp16(sb + (cc >> 3) * 8192 + k * 128 + (((cc & 7) ^ (k & 7)) << 4),
				ok ? B + (size_t)(k0 + k) * ldb + cc * 8 : B, ok);
		}
	}
}
#endif

/* f(j, h, i, col) for each pair of accumulator registers 4j + 2h, 4j + 2h + 1
 * (j < NJ) of this thread that falls inside the tile's Mi x Nj: row i
 * (r0 + 8h) and columns col, col + 1 (8j + cq) of the warpgroup's fragment. */
template <int NJ, class F>
static __device__ __forceinline__ void gw_frag_pairs(int r0, int cq, int Mi, int Nj, F &&f)
{
#pragma unroll
	for (int j = 0; j < NJ; j++)
#pragma unroll
		for (int h = 0; h < 2; h++) {
			int i = r0 + 8 * h, col = j * 8 + cq;
			if (i >= Mi || col >= Nj)
				continue;
			f(j, h, i, col);
		}
}

/* ST stages of (128 + BN) x 64 bf16, plus slack to align the base to the
 * 1024-byte period of the swizzle. */
template <int BN, int ST> struct gw_cfg {
	static constexpr int ABYTES = GW_BM * GW_BK * 2, BBYTES = BN * GW_BK * 2;
	static constexpr size_t SMEM = (size_t)ST * (ABYTES + BBYTES) + 1024;
};

template <int MODE, int BN, int ST, int WGW, int MINB>
__global__ void __launch_bounds__(GW_THREADS, MINB) gw_kernel(const gw_args g)
{
	MOE_PDL_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	constexpr bool AT = MODE == GW_WGRAD; /* A MN-major */
	constexpr bool BT = MODE != GW_FWD;   /* B MN-major */
	constexpr int ABYTES = gw_cfg<BN, ST>::ABYTES, BBYTES = gw_cfg<BN, ST>::BBYTES;
	constexpr int D = ST - 1 - WGW; /* k-slices loaded ahead */
	static_assert(D >= 1, "too few stages");
	extern __shared__ unsigned char gw_smem[];
	__shared__ int s_e, s_mt;
	const uint32_t sa = (wg_smem_u32(gw_smem) + 1023) & ~1023u, sb = sa + ST * ABYTES;
	const int tid = threadIdx.x;

	const bf16 *A, *B;
	int lda, ldb, Mi, Nj, K, ldc, row0, ntile;
	size_t c_off;
	if (MODE == GW_WGRAD) {
		int b = blockIdx.x, jt = b % g.nt, it = (b / g.nt) % g.mt, e = b / g.nt / g.mt;
		row0 = g.offsets[e];
		ntile = jt;
		K = g.offsets[e + 1] - row0;
		if (K <= 0) {
			if (g.store) { /* the tile of an expert that got no rows: zeros */
				float *C = (float *)g.c + (size_t)e * g.Out * g.In + (size_t)it * GW_BM * g.In + jt * BN;
				int mi = min(GW_BM, g.Out - it * GW_BM), nj = min(BN, g.In - jt * BN);
				for (int q = tid; q < mi * nj; q += GW_THREADS)
					C[(size_t)(q / nj) * g.In + q % nj] = 0.f;
			}
			return;
		}
		A = g.a + (size_t)row0 * g.Out + it * GW_BM;
		lda = g.Out;
		Mi = g.Out - it * GW_BM;
		B = g.b + (size_t)row0 * g.In + jt * BN;
		ldb = g.In;
		Nj = g.In - jt * BN;
		ldc = g.In;
		c_off = (size_t)e * g.Out * g.In + (size_t)it * GW_BM * g.In + jt * BN;
	} else {
		int nt = blockIdx.x % g.nt, mlin = blockIdx.x / g.nt;
		if (tid < 32) {
			/* which expert's row tile is mlin: prefix sum of the experts'
			 * tile counts, 32 experts at a time */
			int lane = tid, base = 0, e = -1, mt = 0;
			for (int x0 = 0; x0 < g.E; x0 += 32) {
				int x = x0 + lane;
				int tiles = x < g.E ? (g.offsets[x + 1] - g.offsets[x] + GW_BM - 1) / GW_BM : 0;
				int incl = warp_incl_scan(tiles, lane);
				int excl = incl - tiles;
				unsigned hit = __ballot_sync(0xffffffffu, tiles > 0 && mlin >= base + excl && mlin < base + incl);
				if (hit) {
					int src = __ffs(hit) - 1;
					e = x0 + src;
					mt = mlin - base - __shfl_sync(0xffffffffu, excl, src);
					break;
				}
				base += __shfl_sync(0xffffffffu, incl, 31);
			}
			if (lane == 0) {
				s_e = e;
				s_mt = mt;
			}
		}
		__syncthreads();
		int e = s_e;
		if (e < 0)
			return;
		row0 = g.offsets[e] + s_mt * GW_BM;
		ntile = nt;
		Mi = g.offsets[e + 1] - row0;
		int red = MODE == GW_FWD ? g.In : g.Out;
		int ncols = MODE == GW_FWD ? g.Out : g.In;
		K = red;
		lda = red;
		A = g.a + (size_t)row0 * red;
		const bf16 *W = g.b + (size_t)e * g.Out * g.In;
		B = MODE == GW_FWD ? W + (size_t)nt * BN * g.In : W + nt * BN;
		ldb = g.In;
		Nj = ncols - nt * BN;
		ldc = ncols;
		c_off = (size_t)row0 * ncols + nt * BN;
	}

	float acc[BN / 2]; /* the first wgmma overwrites (scale-d 0) */

	const int KT = (K + GW_BK - 1) / GW_BK, wg = tid / 128;
#pragma unroll
	for (int s = 0; s < D; s++) {
		if (s < KT)
			gw_load<AT, BT, BN>(sa + s * ABYTES, sb + s * BBYTES, A, lda, B, ldb, Mi, Nj, K, s * GW_BK);
		wg_cp_commit();
	}
	for (int kt = 0; kt < KT; kt++) {
		int nk = kt + D;
		/* stage kt has landed (this thread's copies), is made visible to
		 * the tensor cores, and every thread got here: the stage loaded
		 * next was last read by the wgmma group of kt - 1 - WGW, finished */
		wg_cp_wait<D - 1>();
		wg_fence_proxy();
		__syncthreads();
		if (nk < KT)
			gw_load<AT, BT, BN>(sa + (nk % ST) * ABYTES, sb + (nk % ST) * BBYTES, A, lda, B, ldb, Mi, Nj, K,
					    nk * GW_BK);
		wg_cp_commit();
		const uint32_t a0 = sa + (kt % ST) * ABYTES + wg * 8192, b0 = sb + (kt % ST) * BBYTES;
		wg_fence();
#pragma unroll
		for (int kk = 0; kk < GW_BK / 16; kk++) {
			uint64_t da = wg_desc(a0 + (AT ? kk * 2048 : kk * 32), AT ? 8192 : 16, 1024);
			uint64_t db = wg_desc(b0 + (BT ? kk * 2048 : kk * 32), BT ? 8192 : 16, 1024);
			wg_mma<BN, AT ? 1 : 0, BT ? 1 : 0>(acc, da, db, kt > 0 || kk > 0);
		}
		wg_commit();
		wg_wait<WGW>();
	}
	wg_wait<0>();
	wg_cp_wait<0>();

	/* accumulator fragment: warp w of the warpgroup holds rows 16w..16w+15,
	 * register 4j + 2h + b row lane/4 + 8h, column 8j + 2(lane%4) + b */
	const int lane = tid % 32, r0 = wg * 64 + ((tid % 128) / 32) * 16 + lane / 4, cq = 2 * (lane % 4);
	gw_frag_pairs<BN / 8>(r0, cq, Mi, Nj, [&](int j, int h, int i, int col) {
		float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
		if (MODE == GW_WGRAD) {
			float2 *C = (float2 *)((float *)g.c + c_off + (size_t)i * ldc + col);
			if (g.store) {
				*C = make_float2(v0, v1);
			} else {
				float2 o = *C;
				o.x += v0;
				o.y += v1;
				*C = o;
			}
		} else {
			*(__nv_bfloat162 *)((bf16 *)g.c + c_off + (size_t)i * ldc + col) = __floats2bfloat162_rn(v0, v1);
		}
	});
#endif
}

/* Configuration: 0 chooses, 1..3 force one (benchmarks, tests). */
static int gw_force_cfg;

extern "C" void moe_cuda_grouped_wgmma_config(int cfg) { gw_force_cfg = cfg >= 1 && cfg <= 4 ? cfg : 0; }

template <int MODE, int BN, int ST, int WGW, int MINB>
static int gw_launch(const gw_args &g0, int ncols, unsigned mblocks, cudaStream_t s, struct moe_error *err)
{
	gw_args g = g0;
	g.nt = (int)moe_cdiv(ncols, BN);
	g.mt = MODE == GW_WGRAD ? (int)moe_cdiv(g.Out, GW_BM) : 0;
	unsigned blocks = MODE == GW_WGRAD ? (unsigned)g.E * g.mt * g.nt : mblocks * g.nt;
	static bool attr_set;
	int rc;
	if (!attr_set) {
		if ((rc = CUDA_OK(cudaFuncSetAttribute(gw_kernel<MODE, BN, ST, WGW, MINB>,
						       cudaFuncAttributeMaxDynamicSharedMemorySize,
						       (int)gw_cfg<BN, ST>::SMEM),
				  err)) != 0)
			return rc;
		attr_set = true;
	}
	moe_launch(gw_kernel<MODE, BN, ST, WGW, MINB>, blocks, GW_THREADS, gw_cfg<BN, ST>::SMEM, s, g);
	return CUDA_LAUNCHED(err);
}

template <int MODE>
static int gw_run(const gw_args &g, int ncols, unsigned mblocks, cudaStream_t s, struct moe_error *err)
{
	/* two blocks of 128 x 128 per multiprocessor measured fastest for all
	 * three at the seed-base shapes on an H100 (tests/bench/RESULTS-cuda.md):
	 * one block's prologue and epilogue (the weight gradient's fp32
	 * read-modify-write above all) overlap the other's main loop */
	int cfg = gw_force_cfg ? gw_force_cfg : 3;
	switch (cfg) {
	case 2:
		return gw_launch<MODE, 256, 4, 1, 1>(g, ncols, mblocks, s, err);
	case 3:
		return gw_launch<MODE, 128, 3, 0, 2>(g, ncols, mblocks, s, err);
	case 4:
		return gw_launch<MODE, 128, 3, 1, 2>(g, ncols, mblocks, s, err);
	default:
		return gw_launch<MODE, 128, 6, 1, 1>(g, ncols, mblocks, s, err);
	}
}

extern "C" bool moe_cuda_grouped_wgmma_supported(void)
{
	int dev = 0, major = 0, minor = 0;
	if (cudaGetDevice(&dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
	    cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
		cudaGetLastError();
		return false;
	}
	return major == 9 && minor == 0;
}

/* 0 on an sm_90 device (the sm_90a code runs there) and supported shapes,
 * else MOE_EUNSUPPORTED. */
static int gw_check(int E, int In, int Out, struct moe_error *err)
{
	static int dev_ok = -1;
	if (dev_ok < 0)
		dev_ok = moe_cuda_grouped_wgmma_supported();
	if (!dev_ok)
		return moe_error_set(err, MOE_EUNSUPPORTED, "grouped wgmma: needs an sm_90 (Hopper) device");
	if (In % 8 || Out % 8 || In <= 0 || Out <= 0 || E <= 0)
		return moe_error_set(err, MOE_EUNSUPPORTED,
				     "grouped wgmma: In=%d Out=%d must be positive multiples of 8, E=%d positive", In, Out,
				     E);
	return 0;
}

extern "C" int moe_cuda_grouped_wgmma_fwd(bf16_t *out, const bf16_t *x, const bf16_t *w, const int32_t *offsets,
					  int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = gw_check(E, In, Out, err)) != 0)
		return rc;
	if (max_rows <= 0)
		return 0;
	gw_args g = {(const bf16 *)x, (const bf16 *)w, out, offsets, E, In, Out, 0, 0};
	return gw_run<GW_FWD>(g, Out, moe_cdiv(max_rows, GW_BM) + E, s, err);
}

extern "C" int moe_cuda_grouped_wgmma_dgrad(bf16_t *dx, const bf16_t *dout, const bf16_t *w, const int32_t *offsets,
					    int max_rows, int E, int In, int Out, cudaStream_t s,
					    struct moe_error *err)
{
	int rc;
	if ((rc = gw_check(E, In, Out, err)) != 0)
		return rc;
	if (max_rows <= 0)
		return 0;
	gw_args g = {(const bf16 *)dout, (const bf16 *)w, dx, offsets, E, In, Out, 0, 0};
	return gw_run<GW_DGRAD>(g, In, moe_cdiv(max_rows, GW_BM) + E, s, err);
}

extern "C" int moe_cuda_grouped_wgmma_wgrad_store(float *dw, const bf16_t *dout, const bf16_t *x,
						  const int32_t *offsets, int E, int In, int Out, bool store,
						  cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = gw_check(E, In, Out, err)) != 0)
		return rc;
	gw_args g = {(const bf16 *)dout, (const bf16 *)x, dw, offsets, E, In, Out, 0, 0};
	g.store = store;
	return gw_run<GW_WGRAD>(g, In, 0, s, err);
}

extern "C" int moe_cuda_grouped_wgmma_wgrad(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
					    int E, int In, int Out, cudaStream_t s, struct moe_error *err)
{
	return moe_cuda_grouped_wgmma_wgrad_store(dw, dout, x, offsets, E, In, Out, false, s, err);
}
