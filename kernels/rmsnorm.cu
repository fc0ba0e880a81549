/* RMSNorm on bf16 rows (D % 8 == 0, 16-byte accesses) with fp32 statistics
 * and fp32 weights: a warp a row up to 2048 columns, a block of 4 warps a
 * row up to 8192 and of 8 up to 16384 (wider rows: the previous kernels,
 * whose backward takes at most 6144); the backward keeps each thread's part
 * of dw in registers across its rows, then one global add per block and
 * column. */
#include "cuda_common.h"
#include "kernels.h"

/* moe_cuda_memk_legacy(): the previous kernels of rmsnorm.cu, qknorm_rope.cu,
 * permute.cu and xent.cu, kept for same-run comparisons (bench_kernels -m) */
int moe_memk_legacy_on = 0;

extern "C" void moe_cuda_memk_legacy(int on) { moe_memk_legacy_on = on; }

/* MOE_CUDA_MEMK=legacy in the environment: the previous kernels from the
 * start (whole-step comparisons in one run) */
static int memk_env_read = moe_memk_legacy_on = env_is("MOE_CUDA_MEMK", "legacy");

/* The backward on 8 columns of a row (x: fx, dout: fd, weights wv; r the
 * row's rstd, k its dot term r^3 (dout w . x) / D): the input gradient
 * dout w r - k x into g, dw's share dout x r added into acc */
static __device__ __forceinline__ void rms_bwd8(float *g, float *acc, const float *fx, const float *fd,
						const float *wv, float r, float k)
{
#pragma unroll
	for (int j = 0; j < 8; j++) {
		g[j] = fd[j] * wv[j] * r - k * fx[j];
		acc[j] += fd[j] * fx[j] * r;
	}
}

/* The row kernels (the default for D <= 256 * NC, NC <= RN_MAXNC): lane l of a warp
 * owns columns l * 8 + 256 c of every row, the weights come through the
 * read-only cache (forward) or shared memory (backward, loaded once per
 * block), every 16-byte load of a row (R rows at a time in the forward; x,
 * dout and the residual gradient in the backward) is issued before the
 * first use.  The backward's grid fills the card once, with as many rows
 * for every warp as the card allows (balanced_blocks), so that its dw
 * partials are added once per block. */
#define RN_THREADS 128
#define RN_MAXNC 8 /* the row kernels up to D = 2048 (olmoe's width); wider rows, the old kernels */
#define RN_U 4     /* the old kernels' 256-column chunks a lane loads at once */

/* rows n0 .. n0 + R - 1 of x, a lane's NC chunks of each (zeros past N or D) */
template <int NC, int R>
static __device__ __forceinline__ void rn_load(uint4 (*v)[NC], const bf16 *x, int n0, int N, int D, int lane)
{
#pragma unroll
	for (int r = 0; r < R; r++)
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			v[r][c] = n0 + r < N && i < D ? *(const uint4 *)(x + (size_t)(n0 + r) * D + i)
						       : make_uint4(0, 0, 0, 0);
		}
}

/* A block per RN_THREADS / 32 * R rows (grid-stride: each block's rows
 * once).  (Loading the next rows ahead of these rows' arithmetic, on a grid
 * filling the card once, measured no faster: H100, 0.044 against 0.043 ms;
 * the backward's 0.081 against 0.082 ms.) */
template <int NC, int R>
__global__ void __launch_bounds__(RN_THREADS)
rmsnorm_rows_fwd_kernel(bf16 *out, float *rstd, const bf16 *x, const float *w, int N, int D, float eps)
{
	MOE_PDL_ENTRY();
	const int lane = threadIdx.x % 32, warps = blockDim.x / 32, stride = gridDim.x * warps * R;
	int n0 = (blockIdx.x * warps + threadIdx.x / 32) * R;
	for (; n0 < N; n0 += stride) {
		uint4 v[R][NC];
		rn_load<NC, R>(v, x, n0, N, D, lane);
#pragma unroll
		for (int r = 0; r < R; r++) {
			float ss = 0.f;
#pragma unroll
			for (int c = 0; c < NC; c++) {
				float f[8];
				unpack8(f, v[r][c]);
#pragma unroll
				for (int j = 0; j < 8; j++)
					ss += f[j] * f[j];
			}
			ss = warp_sum(ss);
			int n = n0 + r;
			if (n >= N)
				break;
			float rs = rsqrtf(ss / D + eps);
#pragma unroll
			for (int c = 0; c < NC; c++) {
				int i = lane * 8 + 256 * c;
				if (i < D) {
					float f[8], wv[8];
					unpack8(f, v[r][c]);
					ld8g(wv, w + i);
#pragma unroll
					for (int j = 0; j < 8; j++)
						f[j] *= rs * wv[j];
					st8(out + (size_t)n * D + i, f);
				}
			}
			if (lane == 0)
				rstd[n] = rs;
		}
	}
}

/* row n of x, dout and (ADD) dx, a lane's NC chunks of each (zeros past N or D) */
template <int NC, bool ADD>
static __device__ __forceinline__ void rn_load3(uint4 (*v)[NC], const bf16 *x, const bf16 *dout, const bf16 *dx,
						int n, int N, int D, int lane)
{
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		bool in = n < N && i < D;
		size_t o = (size_t)n * D + i;
		v[0][c] = in ? *(const uint4 *)(x + o) : make_uint4(0, 0, 0, 0);
		v[1][c] = in ? *(const uint4 *)(dout + o) : make_uint4(0, 0, 0, 0);
		v[2][c] = ADD && in ? *(const uint4 *)(dx + o) : make_uint4(0, 0, 0, 0);
	}
}

/* shared memory: w (D), then the warps' dw partials (warps, D) at the end */
template <int NC, bool ADD>
__global__ void __launch_bounds__(RN_THREADS)
rmsnorm_rows_bwd_kernel(bf16 *dx, float *dw, const bf16 *dout, const bf16 *x, const float *w, const float *rstd,
			int N, int D, int dwb)
{
	MOE_PDL_ENTRY();
	extern __shared__ __align__(16) float sw[];
	for (int i = threadIdx.x; i < D; i += blockDim.x)
		sw[i] = w[i];
	__syncthreads();
	const int lane = threadIdx.x % 32, wi = threadIdx.x / 32, warps = blockDim.x / 32;
	float acc[NC][8] = {};
	const int stride = gridDim.x * warps;
	int n = blockIdx.x * warps + wi;
	for (; n < N; n += stride) {
		bf16 *dxr = dx + (size_t)n * D;
		uint4 v[3][NC]; /* x, dout, dx (ADD) */
		rn_load3<NC, ADD>(v, x, dout, dx, n, N, D, lane);
		uint4 *xv = v[0], *dv = v[1], *ov = v[2];
		float r = rstd[n], dot = 0.f;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				float fx[8], fd[8], wv[8];
				unpack8(fx, xv[c]);
				unpack8(fd, dv[c]);
				lds8(wv, sw + i);
#pragma unroll
				for (int j = 0; j < 8; j++)
					dot += fd[j] * wv[j] * fx[j];
			}
		}
		dot = warp_sum(dot);
		float k = dot * r * r * r / D;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				float fx[8], fd[8], wv[8], g[8];
				unpack8(fx, xv[c]);
				unpack8(fd, dv[c]);
				lds8(wv, sw + i);
				rms_bwd8(g, acc[c], fx, fd, wv, r, k);
				if (ADD) {
					float o[8];
					unpack8(o, ov[c]);
#pragma unroll
					for (int j = 0; j < 8; j++)
						g[j] += o[j];
				}
				st8(dxr + i, g);
			}
		}
	}
	if (!dw)
		return;
	float *my = sw + D + (size_t)wi * D;
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		if (i < D)
#pragma unroll
			for (int j = 0; j < 8; j++)
				my[i + j] = acc[c][j];
	}
	__syncthreads();
	block_rows_sum_add(dw, sw + D, warps, D, dwb);
}

/* Rows wider than 2048 columns (RN_MAXNC chunks of 256 a lane): a block of
 * W warps per row, thread t of the block owning columns t * 8 + 256 W c
 * (c < NC), so each row is read once (all of a thread's loads issued
 * before their use), the weights come through the read-only cache, and a
 * thread's share of dw stays in registers across the block's rows.  The
 * row's sum crosses the warps through shared memory (block_sum_alt: in
 * warp order, one barrier a row).  A block's rows are blockIdx.x,
 * + gridDim.x, ...: every thread of a block runs the same iterations. */
#define RW_MAXNC 8

template <int NC, int W>
__global__ void __launch_bounds__(W * 32)
rmsnorm_wide_fwd_kernel(bf16 *out, float *rstd, const bf16 *x, const float *w, int N, int D, float eps)
{
	MOE_PDL_ENTRY();
	__shared__ float rs[2][W];
	int it = 0;
	for (int n = blockIdx.x; n < N; n += gridDim.x, it ^= 1) {
		const bf16 *xr = x + (size_t)n * D;
		uint4 v[NC];
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = threadIdx.x * 8 + 256 * W * c;
			v[c] = i < D ? *(const uint4 *)(xr + i) : make_uint4(0, 0, 0, 0);
		}
		float ss = 0.f;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			float f[8];
			unpack8(f, v[c]);
#pragma unroll
			for (int j = 0; j < 8; j++)
				ss += f[j] * f[j];
		}
		float r = rsqrtf(block_sum_alt<W>(ss, rs, it) / D + eps);
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = threadIdx.x * 8 + 256 * W * c;
			if (i < D) {
				float f[8], wv[8];
				unpack8(f, v[c]);
				ld8g(wv, w + i);
#pragma unroll
				for (int j = 0; j < 8; j++)
					f[j] *= r * wv[j];
				st8(out + (size_t)n * D + i, f);
			}
		}
		if (threadIdx.x == 0)
			rstd[n] = r;
	}
}

/* dw: added atomically (dwb 0) or stored into the block's own row of a
 * (grid, D) buffer (dwb 1) */
template <int NC, int W, bool ADD>
__global__ void __launch_bounds__(W * 32)
rmsnorm_wide_bwd_kernel(bf16 *dx, float *dw, const bf16 *dout, const bf16 *x, const float *w, const float *rstd,
			int N, int D, int dwb)
{
	MOE_PDL_ENTRY();
	__shared__ float rs[2][W];
	float acc[NC][8] = {};
	int it = 0;
	for (int n = blockIdx.x; n < N; n += gridDim.x, it ^= 1) {
		size_t o0 = (size_t)n * D;
		uint4 v[3][NC]; /* x, dout, dx (ADD) */
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = threadIdx.x * 8 + 256 * W * c;
			bool in = i < D;
			v[0][c] = in ? *(const uint4 *)(x + o0 + i) : make_uint4(0, 0, 0, 0);
			v[1][c] = in ? *(const uint4 *)(dout + o0 + i) : make_uint4(0, 0, 0, 0);
			v[2][c] = ADD && in ? *(const uint4 *)(dx + o0 + i) : make_uint4(0, 0, 0, 0);
		}
		float r = rstd[n], dot = 0.f;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = threadIdx.x * 8 + 256 * W * c;
			if (i < D) {
				float fx[8], fd[8], wv[8];
				unpack8(fx, v[0][c]);
				unpack8(fd, v[1][c]);
				ld8g(wv, w + i);
#pragma unroll
				for (int j = 0; j < 8; j++)
					dot += fd[j] * wv[j] * fx[j];
			}
		}
		float k = block_sum_alt<W>(dot, rs, it) * r * r * r / D;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = threadIdx.x * 8 + 256 * W * c;
			if (i < D) {
				float fx[8], fd[8], wv[8], g[8];
				unpack8(fx, v[0][c]);
				unpack8(fd, v[1][c]);
				ld8g(wv, w + i);
				rms_bwd8(g, acc[c], fx, fd, wv, r, k);
				if (ADD) {
					float a[8];
					unpack8(a, v[2][c]);
#pragma unroll
					for (int j = 0; j < 8; j++)
						g[j] += a[j];
				}
				st8(dx + o0 + i, g);
			}
		}
	}
	if (!dw)
		return;
	float *dst = dwb ? dw + (size_t)blockIdx.x * D : dw;
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = threadIdx.x * 8 + 256 * W * c;
		if (i < D)
			dw_put8(dst + i, acc[c], dwb);
	}
}

/* The wide kernels' warps a row and chunks a thread for width D (0: wider
 * than they take): 4 warps up to 8192 columns, 8 up to 16384. */
static int rw_shape(int D, int *nc)
{
	int W = D <= 256 * 4 * RW_MAXNC ? 4 : D <= 256 * 8 * RW_MAXNC ? 8 : 0;
	*nc = W ? (D + 256 * W - 1) / (256 * W) : 0;
	return W;
}

template <int W>
static void rw_fwd(int nc, bf16 *out, float *rstd, const bf16 *x, const float *w, int N, int D, float eps,
		   cudaStream_t s)
{
#define RWF(NC)                                                                                                        \
	moe_launch(rmsnorm_wide_fwd_kernel<NC, W>,                                                                     \
		   balanced_blocks(N, 1, resident_blocks(rmsnorm_wide_fwd_kernel<NC, W>, W * 32, 0)), W * 32, 0, s,    \
		   out, rstd, x, w, N, D, eps)
	MOE_SWITCH8(nc, RWF)
#undef RWF
}

template <int W, bool ADD>
static unsigned rw_bwd(int nc, bf16 *dx, float *dw, const bf16 *dout, const bf16 *x, const float *w,
		       const float *rstd, int N, int D, int dwb, cudaStream_t s)
{
	unsigned nb = 0;
#define RWB(NC)                                                                                                        \
	{                                                                                                              \
		nb = balanced_blocks(N, 1, resident_blocks(rmsnorm_wide_bwd_kernel<NC, W, ADD>, W * 32, 0));           \
		nb = dwb && nb > MOE_CUDA_NORM_PART_BLOCKS ? MOE_CUDA_NORM_PART_BLOCKS : nb;                           \
		moe_launch(rmsnorm_wide_bwd_kernel<NC, W, ADD>, nb, W * 32, 0, s, dx, dw, dout, x, w, rstd, N, D,      \
			   dwb);                                                                                       \
	}
	MOE_SWITCH8(nc, RWB)
#undef RWB
	return nb;
}

/* One warp per row; 16-byte accesses (D % 8 == 0). */
__global__ void rmsnorm_fwd_kernel(bf16 *out, float *rstd, const bf16 *x, const float *w, int N, int D,
				   float eps)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	const bf16 *xr = x + (size_t)n * D;
	float ss = 0.f;
	/* RN_U chunks of 256 columns loaded before their use (the sum's order
	 * per lane is the columns' order either way) */
	for (int i0 = lane * 8; i0 < D; i0 += 256 * RN_U) {
		float f[RN_U][8];
#pragma unroll
		for (int u = 0; u < RN_U; u++)
			if (i0 + 256 * u < D)
				ld8(f[u], xr + i0 + 256 * u);
#pragma unroll
		for (int u = 0; u < RN_U; u++)
			if (i0 + 256 * u < D)
#pragma unroll
				for (int j = 0; j < 8; j++)
					ss += f[u][j] * f[u][j];
	}
	ss = warp_sum(ss);
	float r = rsqrtf(ss / D + eps);
	bf16 *o = out + (size_t)n * D;
	for (int i0 = lane * 8; i0 < D; i0 += 256 * RN_U) {
		float f[RN_U][8];
#pragma unroll
		for (int u = 0; u < RN_U; u++)
			if (i0 + 256 * u < D)
				ld8(f[u], xr + i0 + 256 * u);
#pragma unroll
		for (int u = 0; u < RN_U; u++) {
			int i = i0 + 256 * u;
			if (i < D) {
#pragma unroll
				for (int j = 0; j < 8; j++)
					f[u][j] *= r * w[i + j];
				st8(o + i, f[u]);
			}
		}
	}
	if (lane == 0)
		rstd[n] = r;
}

/* ADD: dx += the input gradient (one rounding of the fp32 sum) */
template <bool ADD>
__global__ void rmsnorm_bwd_kernel(bf16 *dx, float *dw, const bf16 *dout, const bf16 *x, const float *w,
				   const float *rstd, int N, int D, int dwb)
{
	MOE_PDL_ENTRY();
	extern __shared__ float sdw[]; /* (warps, D) */
	int warps = blockDim.x / 32, lane = threadIdx.x % 32, wi = threadIdx.x / 32;
	float *my = sdw + (size_t)wi * D;
	for (int i = lane; i < D; i += 32)
		my[i] = 0.f;
	for (int n = blockIdx.x * warps + wi; n < N; n += gridDim.x * warps) {
		const bf16 *xr = x + (size_t)n * D, *dr = dout + (size_t)n * D;
		float r = rstd[n];
		float dot = 0.f;
		/* RN_U chunks of x and dout loaded before their use (each lane's
		 * sums keep the columns' order) */
		for (int i0 = lane * 8; i0 < D; i0 += 256 * RN_U) {
			float fx[RN_U][8], fd[RN_U][8];
#pragma unroll
			for (int u = 0; u < RN_U; u++)
				if (i0 + 256 * u < D) {
					ld8(fx[u], xr + i0 + 256 * u);
					ld8(fd[u], dr + i0 + 256 * u);
				}
#pragma unroll
			for (int u = 0; u < RN_U; u++) {
				int i = i0 + 256 * u;
				if (i < D)
#pragma unroll
					for (int j = 0; j < 8; j++)
						dot += fd[u][j] * w[i + j] * fx[u][j];
			}
		}
		dot = warp_sum(dot);
		float c = dot * r * r * r / D;
		bf16 *dxr = dx + (size_t)n * D;
		for (int i0 = lane * 8; i0 < D; i0 += 256 * RN_U) {
			float fx[RN_U][8], fd[RN_U][8], o[RN_U][8];
#pragma unroll
			for (int u = 0; u < RN_U; u++)
				if (i0 + 256 * u < D) {
					ld8(fx[u], xr + i0 + 256 * u);
					ld8(fd[u], dr + i0 + 256 * u);
					if (ADD)
						ld8(o[u], dxr + i0 + 256 * u);
				}
#pragma unroll
			for (int u = 0; u < RN_U; u++) {
				int i = i0 + 256 * u;
				if (i >= D)
					continue;
				float g[8];
#pragma unroll
				for (int j = 0; j < 8; j++) {
					g[j] = fd[u][j] * w[i + j] * r - c * fx[u][j];
					my[i + j] += fd[u][j] * fx[u][j] * r;
					if (ADD)
						g[j] += o[u][j];
				}
				st8(dxr + i, g);
			}
		}
	}
	__syncthreads();
	if (!dw)
		return;
	block_rows_sum_add(dw, sdw, warps, D, dwb);
}

/* The same for D <= 256 * NC: every lane of a warp always touches columns
 * lane * 8 + 256 c, so its share of dw stays in registers across the
 * warp's rows (no shared-memory traffic per row) and each row is read once. */
template <int NC, bool ADD>
__global__ void __launch_bounds__(256) rmsnorm_bwd_reg_kernel(bf16 *dx, float *dw, const bf16 *dout,
							      const bf16 *x, const float *w,
							      const float *rstd, int N, int D, int dwb)
{
	MOE_PDL_ENTRY();
	extern __shared__ float sdw[]; /* (warps, D) */
	int warps = blockDim.x / 32, lane = threadIdx.x % 32, wi = threadIdx.x / 32;
	float acc[NC][8], wr[NC][8];
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
#pragma unroll
		for (int j = 0; j < 8; j++) {
			acc[c][j] = 0.f;
			wr[c][j] = i < D ? w[i + j] : 0.f;
		}
	}
	for (int n = blockIdx.x * warps + wi; n < N; n += gridDim.x * warps) {
		const bf16 *xr = x + (size_t)n * D, *dr = dout + (size_t)n * D;
		float r = rstd[n], dot = 0.f, fx[NC][8], fd[NC][8];
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				ld8(fx[c], xr + i);
				ld8(fd[c], dr + i);
			} else {
#pragma unroll
				for (int j = 0; j < 8; j++)
					fx[c][j] = fd[c][j] = 0.f;
			}
#pragma unroll
			for (int j = 0; j < 8; j++)
				dot += fd[c][j] * wr[c][j] * fx[c][j];
		}
		dot = warp_sum(dot);
		float k = dot * r * r * r / D;
		bf16 *dxr = dx + (size_t)n * D;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			float g[8];
			rms_bwd8(g, acc[c], fx[c], fd[c], wr[c], r, k);
			if (i < D) {
				if (ADD) {
					float o[8];
					ld8(o, dxr + i);
#pragma unroll
					for (int j = 0; j < 8; j++)
						g[j] += o[j];
				}
				st8(dxr + i, g);
			}
		}
	}
	if (!dw)
		return;
	float *my = sdw + (size_t)wi * D;
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		if (i < D)
#pragma unroll
			for (int j = 0; j < 8; j++)
				my[i + j] = acc[c][j];
	}
	__syncthreads();
	block_rows_sum_add(dw, sdw, warps, D, dwb);
}

static int check_d(int D, struct moe_error *err)
{
	if (D % 8)
		return moe_error_set(err, MOE_EUNSUPPORTED, "rmsnorm: width %d is not a multiple of 8", D);
	return 0;
}

extern "C" int moe_cuda_rmsnorm_fwd(bf16_t *out, float *rstd, const bf16_t *x, const float *w, int N,
				    int D, float eps, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_d(D, err)) != 0 || N <= 0)
		return rc;
	int nc = (D + 255) / 256;
	if (!moe_memk_legacy_on && nc <= RN_MAXNC) {
#define RF(NC)                                                                                                         \
	case NC:                                                                                                       \
		moe_launch(rmsnorm_rows_fwd_kernel<NC, 2>, moe_cdiv(N, RN_THREADS / 32 * 2), RN_THREADS, 0, s,         \
			   (bf16 *)out, rstd, (const bf16 *)x, w, N, D, eps);                                          \
		break;
		switch (nc) {
			RF(1) RF(2) RF(3) RF(4) RF(5) RF(6) RF(7) RF(8)
		}
#undef RF
		return CUDA_LAUNCHED(err);
	}
	int wnc, W = moe_memk_legacy_on ? 0 : rw_shape(D, &wnc);
	if (W) {
		if (W == 4)
			rw_fwd<4>(wnc, (bf16 *)out, rstd, (const bf16 *)x, w, N, D, eps, s);
		else
			rw_fwd<8>(wnc, (bf16 *)out, rstd, (const bf16 *)x, w, N, D, eps, s);
		return CUDA_LAUNCHED(err);
	}
	moe_launch(rmsnorm_fwd_kernel, moe_cdiv(N, 8), 256, 0, s, (bf16 *)out, rstd, (const bf16 *)x, w, N, D, eps);
	return CUDA_LAUNCHED(err);
}

template <bool ADD>
static int rmsnorm_bwd(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const bf16_t *x, const float *w,
		       const float *rstd, int N, int D, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_d(D, err)) != 0 || N <= 0)
		return rc;
	/* part: the blocks' dw rows, added up in block order afterwards */
	float *kdw = part && dw ? part : dw;
	int dwb = part && dw;
	unsigned nb;
	int nc = (D + 255) / 256, wnc = 0, W = moe_memk_legacy_on ? 0 : rw_shape(D, &wnc);
	if (!moe_memk_legacy_on && nc <= RN_MAXNC) {
		size_t sm = (size_t)(1 + RN_THREADS / 32) * D * sizeof(float); /* <= 40 KiB */
#define RB(NC)                                                                                                         \
	{                                                                                                              \
		nb = balanced_blocks(N, RN_THREADS / 32,                                                               \
				     resident_blocks(rmsnorm_rows_bwd_kernel<NC, ADD>, RN_THREADS, sm));               \
		nb = dwb && nb > MOE_CUDA_NORM_PART_BLOCKS ? MOE_CUDA_NORM_PART_BLOCKS : nb;                           \
		moe_launch(rmsnorm_rows_bwd_kernel<NC, ADD>, nb, RN_THREADS, sm, s, (bf16 *)dx, kdw,                   \
			   (const bf16 *)dout, (const bf16 *)x, w, rstd, N, D, dwb);                                   \
	}
		switch (nc) {
		case 1: RB(1) break;
		case 2: RB(2) break;
		case 3: RB(3) break;
		case 4: RB(4) break;
		case 5: RB(5) break;
		case 6: RB(6) break;
		case 7: RB(7) break;
		default: RB(8) break;
		}
#undef RB
	} else if (W) {
		if (W == 4)
			nb = rw_bwd<4, ADD>(wnc, (bf16 *)dx, kdw, (const bf16 *)dout, (const bf16 *)x, w, rstd, N, D,
					    dwb, s);
		else
			nb = rw_bwd<8, ADD>(wnc, (bf16 *)dx, kdw, (const bf16 *)dout, (const bf16 *)x, w, rstd, N, D,
					    dwb, s);
	} else if (nc <= 4) {
		size_t sm = (size_t)8 * D * sizeof(float);
		nb = moe_cdiv(N, 8 * 4);
		if (nb > 132 * 3)
			nb = 132 * 3;
#define REG(NC)                                                                                                        \
	moe_launch(rmsnorm_bwd_reg_kernel<NC, ADD>, nb, 256, sm, s, (bf16 *)dx, kdw, (const bf16 *)dout,               \
		   (const bf16 *)x, w, rstd, N, D, dwb)
		if (nc == 1)
			REG(1);
		else if (nc == 2)
			REG(2);
		else if (nc == 3)
			REG(3);
		else
			REG(4);
#undef REG
	} else {
		int warps = D > 1536 ? 2 : 8;
		size_t smem = (size_t)warps * D * sizeof(float);
		if (smem > 48 * 1024)
			return moe_error_set(err, MOE_EUNSUPPORTED, "rmsnorm_bwd: width %d too large", D);
		/* as many blocks as the card holds at once, the rows shared
		 * evenly over the fewest sweeps (was 264 blocks: at 2048 columns,
		 * 2 warps a block, 0.30 ms for 12,288 rows on an H200) */
		unsigned cap = resident_blocks(rmsnorm_bwd_kernel<ADD>, warps * 32, smem);
		nb = balanced_blocks((size_t)N, (unsigned)warps, cap);
		if (dwb && nb > MOE_CUDA_NORM_PART_BLOCKS)
			nb = MOE_CUDA_NORM_PART_BLOCKS;
		moe_launch(rmsnorm_bwd_kernel<ADD>, nb, warps * 32, smem, s, (bf16 *)dx, kdw, (const bf16 *)dout,
			   (const bf16 *)x, w, rstd, N, D, dwb);
	}
	if ((rc = CUDA_LAUNCHED(err)) != 0 || !dwb)
		return rc;
	return moe_cuda_colsum_add(dw, part, (int)nb, D, s, err);
}

extern "C" int moe_cuda_rmsnorm_bwd(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const bf16_t *x,
				    const float *w, const float *rstd, int N, int D, cudaStream_t s,
				    struct moe_error *err)
{
	return rmsnorm_bwd<false>(dx, dw, part, dout, x, w, rstd, N, D, s, err);
}

extern "C" int moe_cuda_rmsnorm_bwd_add(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const bf16_t *x,
					const float *w, const float *rstd, int N, int D, cudaStream_t s,
					struct moe_error *err)
{
	return rmsnorm_bwd<true>(dx, dw, part, dout, x, w, rstd, N, D, s, err);
}

/* dw[i] += sum over rows b < nb of part[b * D + i], in row order: 32
 * columns a block, 32 row groups (rows g, g + 32, ...) whose sums are then
 * added in group order. */
__global__ void __launch_bounds__(1024) colsum_add_kernel(float *dw, const float *part, int nb, int D)
{
	MOE_PDL_ENTRY();
	__shared__ float sg[32][33];
	int col = blockIdx.x * 32 + threadIdx.x, g = threadIdx.y;
	float a = 0.f;
	if (col < D)
		for (int b = g; b < nb; b += 32)
			a += part[(size_t)b * D + col];
	sg[g][threadIdx.x] = a;
	__syncthreads();
	if (g == 0 && col < D) {
		float t = 0.f;
		for (int q = 0; q < 32; q++)
			t += sg[q][threadIdx.x];
		dw[col] += t;
	}
}

extern "C" int moe_cuda_colsum_add(float *dw, const float *part, int nb, int D, cudaStream_t s,
				   struct moe_error *err)
{
	if (nb <= 0 || D <= 0)
		return 0;
	moe_launch(colsum_add_kernel, moe_cdiv(D, 32), dim3(32, 32), 0, s, dw, part, nb, D);
	return CUDA_LAUNCHED(err);
}
