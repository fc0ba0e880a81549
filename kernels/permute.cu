/* Moving rows between token order (N, D) and expert order (N*K, D): gather
 * (dispatch), its backward (a gather through the inverse permutation, so no
 * atomics), the combine with the gate weights (un-permute) and its backward. */
#include "cuda_common.h"
#include "kernels.h"

/* xg[j] = x[perm[j] / K]; eight bf16 per thread. */
__global__ void gather_kernel(bf16 *xg, const bf16 *x, const int32_t *perm, int S, int K, int D)
{
	MOE_PDL_ENTRY();
	size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	int per = D / 8;
	if (v >= (size_t)S * per)
		return;
	size_t j = v / per, c = (v % per) * 8;
	size_t n = perm[j] / K;
	*(uint4 *)(xg + j * D + c) = *(const uint4 *)(x + n * D + c);
}

/* The same in token order: xg[inv[n*K+k]] = x[n] for every k (one warp a
 * token, its row read once and written K times, four 16-byte loads a lane
 * in flight), so x is read once instead of K times; with w, also wg[inv[n*K
 * + k]] = w[n*K + k] (the gate weights in expert order). */
__global__ void gather_inv_kernel(bf16 *xg, const bf16 *x, const int32_t *inv, int N, int K, int D, const float *w,
				  float *wg)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	for (int k = lane; w && k < K; k += 32)
		wg[__ldg(inv + (size_t)n * K + k)] = __ldg(w + (size_t)n * K + k);
	int per = D / 8;
	const uint4 *xr = (const uint4 *)(x + (size_t)n * D);
	for (int c = lane; c < per; c += 4 * 32) {
		uint4 v[4];
#pragma unroll
		for (int u = 0; u < 4; u++)
			if (c + 32 * u < per)
				v[u] = xr[c + 32 * u];
		for (int k = 0; k < K; k++) {
			uint4 *o = (uint4 *)(xg + (size_t)__ldg(inv + (size_t)n * K + k) * D);
#pragma unroll
			for (int u = 0; u < 4; u++)
				if (c + 32 * u < per)
					o[c + 32 * u] = v[u];
		}
	}
}

/* out += sum_k y[inv[n*K+k]] (the gather's backward): one warp per token,
 * eight columns (16 bytes) per lane step, D % 8 == 0. */
__global__ void scatter_add_kernel(bf16 *out, const bf16 *yg, const int32_t *inv, int N, int K, int D)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	bf16 *o = out + (size_t)n * D;
	for (int c = lane * 8; c < D; c += 256) {
		float a[8], y[8];
		ld8(a, o + c);
		for (int k = 0; k < K; k++) {
			ld8(y, yg + (size_t)inv[(size_t)n * K + k] * D + c);
#pragma unroll
			for (int j = 0; j < 8; j++)
				a[j] += y[j];
		}
		st8(o + c, a);
	}
}

/* out = res (may be NULL) + sum_k w*y with 16-byte accesses (D % 8 == 0): one
 * warp per token, eight columns per lane step, fp32 sums rounded once. */
__global__ void combine_fwd8_kernel(bf16 *out, const bf16 *res, const bf16 *yg, const float *w, const int32_t *inv,
				    int N, int K, int D)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	for (int c = lane * 8; c < D; c += 256) {
		float a[8], y[8];
#pragma unroll
		for (int j = 0; j < 8; j++)
			a[j] = 0.f;
		for (int k = 0; k < K; k++) {
			float wk = w[(size_t)n * K + k];
			ld8(y, yg + (size_t)inv[(size_t)n * K + k] * D + c);
#pragma unroll
			for (int j = 0; j < 8; j++)
				a[j] += wk * y[j];
		}
		if (res) {
			ld8(y, res + (size_t)n * D + c);
#pragma unroll
			for (int j = 0; j < 8; j++)
				a[j] = y[j] + a[j];
		}
		st8(out + (size_t)n * D + c, a);
	}
}

/* dyg[inv[n*K+k]] = w[n,k] * dout[n]; dw[n,k] = <dout[n], yg[inv[n*K+k]]>. */
__global__ void combine_bwd_kernel(bf16 *dyg, float *dw, const bf16 *dout, const bf16 *yg, const float *w,
				   const int32_t *inv, int N, int K, int D)
{
	MOE_PDL_ENTRY();
	int warps = blockDim.x / 32, lane = threadIdx.x % 32;
	int n = blockIdx.x * warps + threadIdx.x / 32;
	if (n >= N)
		return;
	const bf16 *d = dout + (size_t)n * D;
	for (int k = 0; k < K; k++) {
		float wk = w[(size_t)n * K + k];
		size_t row = (size_t)inv[(size_t)n * K + k] * D;
		float dot = 0.f;
		for (int c = lane * 8; c < D; c += 256) { /* 16-byte accesses, D % 8 == 0 */
			float dv[8], yv[8], o[8];
			ld8(dv, d + c);
			ld8(yv, yg + row + c);
#pragma unroll
			for (int j = 0; j < 8; j++) {
				dot += dv[j] * yv[j];
				o[j] = wk * dv[j];
			}
			st8(dyg + row + c, o);
		}
		dot = warp_sum(dot);
		if (lane == 0)
			dw[(size_t)n * K + k] = dot;
	}
}

/* The row kernels (the default for K <= 4 and D <= 256 * NC, NC <= 4): a
 * warp per token, lane l owns columns l * 8 + 256 c; the token's K row
 * indices and gate weights are read first, then every 16-byte load of the
 * token (K expert rows, and the residual or dout) is issued before the first
 * use, so that 4 NC to 5 NC loads a lane are in flight instead of one. */
#define PK_THREADS 128
#define PK_K 4

extern int moe_memk_legacy_on; /* rmsnorm.cu: moe_cuda_memk_legacy() */

/* MODE 0: out = res (may be NULL) + sum_k w*y; MODE 1: out += sum_k y */
template <int NC, int MODE>
__global__ void __launch_bounds__(PK_THREADS)
combine_rows_kernel(bf16 *out, const bf16 *res, const bf16 *yg, const float *w, const int32_t *inv, int N, int K,
		    int D)
{
	MOE_PDL_ENTRY();
	int lane = threadIdx.x % 32, n = blockIdx.x * (PK_THREADS / 32) + threadIdx.x / 32;
	if (n >= N)
		return;
	size_t row[PK_K];
	float wk[PK_K];
#pragma unroll
	for (int k = 0; k < PK_K; k++) {
		row[k] = k < K ? (size_t)inv[(size_t)n * K + k] * D : 0;
		wk[k] = MODE == 0 && k < K ? w[(size_t)n * K + k] : 1.f;
	}
	uint4 y[PK_K][NC], rv[NC];
	const bf16 *rr = MODE == 0 ? res : out;
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		if (i < D) {
#pragma unroll
			for (int k = 0; k < PK_K; k++)
				if (k < K)
					y[k][c] = *(const uint4 *)(yg + row[k] + i);
			if (rr)
				rv[c] = *(const uint4 *)(rr + (size_t)n * D + i);
		}
	}
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		if (i >= D)
			continue;
		float a[8], f[8];
		if (MODE == 1)
			unpack8(a, rv[c]);
		else
#pragma unroll
			for (int j = 0; j < 8; j++)
				a[j] = 0.f;
#pragma unroll
		for (int k = 0; k < PK_K; k++)
			if (k < K) {
				unpack8(f, y[k][c]);
#pragma unroll
				for (int j = 0; j < 8; j++)
					a[j] += MODE == 0 ? wk[k] * f[j] : f[j];
			}
		if (MODE == 0 && rr) {
			unpack8(f, rv[c]);
#pragma unroll
			for (int j = 0; j < 8; j++)
				a[j] = f[j] + a[j];
		}
		st8(out + (size_t)n * D + i, a);
	}
}

template <int NC>
__global__ void __launch_bounds__(PK_THREADS)
combine_bwd_rows_kernel(bf16 *dyg, float *dw, const bf16 *dout, const bf16 *yg, const float *w, const int32_t *inv,
			int N, int K, int D)
{
	MOE_PDL_ENTRY();
	int lane = threadIdx.x % 32, n = blockIdx.x * (PK_THREADS / 32) + threadIdx.x / 32;
	if (n >= N)
		return;
	size_t row[PK_K];
	float wk[PK_K];
#pragma unroll
	for (int k = 0; k < PK_K; k++) {
		row[k] = k < K ? (size_t)inv[(size_t)n * K + k] * D : 0;
		wk[k] = k < K ? w[(size_t)n * K + k] : 0.f;
	}
	uint4 y[PK_K][NC], dv[NC];
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		if (i < D) {
			dv[c] = *(const uint4 *)(dout + (size_t)n * D + i);
#pragma unroll
			for (int k = 0; k < PK_K; k++)
				if (k < K)
					y[k][c] = *(const uint4 *)(yg + row[k] + i);
		}
	}
	float dot[PK_K];
#pragma unroll
	for (int k = 0; k < PK_K; k++)
		dot[k] = 0.f;
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		if (i >= D)
			continue;
		float dvf[8], f[8], o[8];
		unpack8(dvf, dv[c]);
#pragma unroll
		for (int k = 0; k < PK_K; k++)
			if (k < K) {
				unpack8(f, y[k][c]);
#pragma unroll
				for (int j = 0; j < 8; j++) {
					dot[k] += dvf[j] * f[j];
					o[j] = wk[k] * dvf[j];
				}
				st8(dyg + row[k] + i, o);
			}
	}
#pragma unroll
	for (int k = 0; k < PK_K; k++)
		if (k < K) {
			float d = warp_sum(dot[k]);
			if (lane == 0)
				dw[(size_t)n * K + k] = d;
		}
}

/* the row kernels' column chunks for D (0: the previous kernels) */
static int pk_nc(int K, int D)
{
	int nc = (D + 255) / 256;
	return moe_memk_legacy_on || K > PK_K || K < 1 || nc > 4 ? 0 : nc;
}

static int check_width(int D, int mult, struct moe_error *err)
{
	if (D % mult)
		return moe_error_set(err, MOE_EUNSUPPORTED, "permute: width %d is not a multiple of %d", D,
				     mult);
	return 0;
}

/* nb blocks of rows x n elements between row strides (copy_rows): eight
 * bf16 (16 bytes) a thread where every address and stride allows, else one */
template <int V>
__global__ void copy_rows_kernel(bf16 *dst, int ldd, size_t dst_stride, const bf16 *src, int lds, size_t src_stride,
				 int rows, int n, int nb)
{
	MOE_PDL_ENTRY();
	size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x, per = n / V;
	if (v >= (size_t)nb * rows * per)
		return;
	size_t c = (v % per) * V, r = (v / per) % rows, b = v / per / rows;
	const bf16 *s = src + b * src_stride + r * lds + c;
	bf16 *d = dst + b * dst_stride + r * ldd + c;
	if (V == 8)
		*(uint4 *)d = *(const uint4 *)s;
	else
		*d = *s;
}

extern "C" int moe_cuda_copy_rows(bf16_t *dst, int ldd, size_t dst_stride, const bf16_t *src, int lds,
				  size_t src_stride, int rows, int n, int nb, cudaStream_t s, struct moe_error *err)
{
	if (rows <= 0 || n <= 0 || nb <= 0)
		return 0;
	bool vec = ((uintptr_t)dst | (uintptr_t)src) % 16 == 0 && ldd % 8 == 0 && lds % 8 == 0 && n % 8 == 0 &&
		   dst_stride % 8 == 0 && src_stride % 8 == 0;
	size_t total = (size_t)nb * rows * (vec ? n / 8 : n);
	if (vec)
		moe_launch(copy_rows_kernel<8>, moe_cdiv(total, 256), 256, 0, s, (bf16 *)dst, ldd, dst_stride,
			   (const bf16 *)src, lds, src_stride, rows, n, nb);
	else
		moe_launch(copy_rows_kernel<1>, moe_cdiv(total, 256), 256, 0, s, (bf16 *)dst, ldd, dst_stride,
			   (const bf16 *)src, lds, src_stride, rows, n, nb);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_gather(bf16_t *xg, const bf16_t *x, const int32_t *perm, int NK, int K, int D,
			       cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 8, err)) != 0 || NK <= 0)
		return rc;
	moe_launch(gather_kernel, moe_cdiv((size_t)NK * (D / 8), 256), 256, 0, s, (bf16 *)xg, (const bf16 *)x, perm, NK,
		   K, D);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_gather_inv_w(bf16_t *xg, const bf16_t *x, const int32_t *inv, int N, int K, int D,
				     const float *w, float *wg, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 8, err)) != 0 || N <= 0)
		return rc;
	moe_launch(gather_inv_kernel, moe_cdiv(N, 8), 256, 0, s, (bf16 *)xg, (const bf16 *)x, inv, N, K, D, w, wg);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_gather_inv(bf16_t *xg, const bf16_t *x, const int32_t *inv, int N, int K, int D,
				   cudaStream_t s, struct moe_error *err)
{
	return moe_cuda_gather_inv_w(xg, x, inv, N, K, D, NULL, NULL, s, err);
}

extern "C" int moe_cuda_scatter_add(bf16_t *dx, const bf16_t *dxg, const int32_t *inv, int N, int K, int D,
				    cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 8, err)) != 0 || N <= 0)
		return rc;
	if (int nc = pk_nc(K, D)) {
#define SA(NC)                                                                                                         \
	moe_launch(combine_rows_kernel<NC, 1>, moe_cdiv(N, PK_THREADS / 32), PK_THREADS, 0, s, (bf16 *)dx, nullptr,    \
		   (const bf16 *)dxg, nullptr, inv, N, K, D)
		MOE_SWITCH4(nc, SA)
#undef SA
		return CUDA_LAUNCHED(err);
	}
	moe_launch(scatter_add_kernel, moe_cdiv(N, 8), 256, 0, s, (bf16 *)dx, (const bf16 *)dxg, inv, N, K, D);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_combine_fwd(bf16_t *out, const bf16_t *res, const bf16_t *yg, const float *w,
				    const int32_t *inv, int N, int K, int D, cudaStream_t s, struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 8, err)) != 0 || N <= 0)
		return rc;
	if (int nc = pk_nc(K, D)) {
#define CF(NC)                                                                                                         \
	moe_launch(combine_rows_kernel<NC, 0>, moe_cdiv(N, PK_THREADS / 32), PK_THREADS, 0, s, (bf16 *)out,            \
		   (const bf16 *)res, (const bf16 *)yg, w, inv, N, K, D)
		MOE_SWITCH4(nc, CF)
#undef CF
		return CUDA_LAUNCHED(err);
	}
	moe_launch(combine_fwd8_kernel, moe_cdiv(N, 8), 256, 0, s, (bf16 *)out, (const bf16 *)res, (const bf16 *)yg, w,
		   inv, N, K, D);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_combine_bwd(bf16_t *dyg, float *dw, const bf16_t *dout, const bf16_t *yg,
				    const float *w, const int32_t *inv, int N, int K, int D, cudaStream_t s,
				    struct moe_error *err)
{
	int rc;
	if ((rc = check_width(D, 8, err)) != 0 || N <= 0)
		return rc;
	if (int nc = pk_nc(K, D)) {
#define CB(NC)                                                                                                         \
	moe_launch(combine_bwd_rows_kernel<NC>, moe_cdiv(N, PK_THREADS / 32), PK_THREADS, 0, s, (bf16 *)dyg, dw,       \
		   (const bf16 *)dout, (const bf16 *)yg, w, inv, N, K, D)
		MOE_SWITCH4(nc, CB)
#undef CB
		return CUDA_LAUNCHED(err);
	}
	moe_launch(combine_bwd_kernel, moe_cdiv(N, 8), 256, 0, s, (bf16 *)dyg, dw, (const bf16 *)dout, (const bf16 *)yg,
		   w, inv, N, K, D);
	return CUDA_LAUNCHED(err);
}
