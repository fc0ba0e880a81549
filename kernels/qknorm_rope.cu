/* QK-norm and RoPE in one pass: RMSNorm over a whole row of H heads (the
 * OLMoE q_norm/k_norm width D = H * Dh), then rotate-half RoPE of each head,
 * and the backward of the pair.  Three layouts: the pair kernels (the
 * default up to 2048 columns) and the wide ones (up to 8192), both below,
 * and the previous kernels (moe_cuda_memk_legacy), described here: one warp
 * per row; each lane owns the
 * columns lane * 8 + 256 c (c < NC).  The row is staged in shared memory
 * (fp32, 16-byte accesses) so that each group of eight columns finds its
 * RoPE partners Dh/2 columns away (Dh % 16 == 0: a group never straddles
 * the half).  Compared with rmsnorm + rope it saves a write and a read of
 * the row each way, and the normalised values are rounded to bf16 once.
 * Every kernel takes x (and the backward's dx) at a row stride ldx, so that
 * q and k can stay inside the q, k, v projections' rows; the pair
 * backward can also read its dout from fa3f's fp32 dQ tiles (ACC),
 * rounding each value to bf16 as the tiles' conversion kernel would. */
#include "cuda_common.h"
#include "kernels.h"

#define QR_WARPS 8
#define QR_MAXNC 6 /* D <= 1536 */

static __device__ __forceinline__ void st8s(float *p, const float *f)
{
	*(float4 *)p = make_float4(f[0], f[1], f[2], f[3]);
	*(float4 *)(p + 4) = make_float4(f[4], f[5], f[6], f[7]);
}

/* RoPE of the staged row y (fp32) at position t for columns col..col+7:
 * sgn 1 rotates (forward), -1 rotates back (backward). */
static __device__ __forceinline__ void rope8(float *o, const float *y, int col, int t, int Dh,
					     const float *cosb, const float *sinb, float sgn)
{
	int half = Dh / 2, jj = col % Dh;
	bool first = jj < half;
	int k = first ? jj : jj - half;
	float a[8], p[8], cs[8], sn[8];
	lds8(a, y + col);
	lds8(p, y + (first ? col + half : col - half));
	lds8(cs, cosb + (size_t)t * half + k);
	lds8(sn, sinb + (size_t)t * half + k);
#pragma unroll
	for (int j = 0; j < 8; j++) {
		float s = sgn * sn[j];
		o[j] = first ? a[j] * cs[j] - p[j] * s : a[j] * cs[j] + p[j] * s;
	}
}

template <int NC>
__global__ void __launch_bounds__(QR_WARPS * 32)
qknorm_rope_fwd_kernel(bf16 *out, float *rstd, const bf16 *x, const float *w, const float *cosb, const float *sinb,
		       int N, int T, int Dh, int D, int ldx, float eps)
{
	MOE_PDL_ENTRY();
	extern __shared__ __align__(16) float sy[]; /* (warps, D) */
	int lane = threadIdx.x % 32, wi = threadIdx.x / 32;
	float *y = sy + (size_t)wi * D;
	for (int n = blockIdx.x * QR_WARPS + wi; n < N; n += gridDim.x * QR_WARPS) {
		const bf16 *xr = x + (size_t)n * ldx;
		float f[NC][8], ss = 0.f;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				ld8(f[c], xr + i);
#pragma unroll
				for (int j = 0; j < 8; j++)
					ss += f[c][j] * f[c][j];
			}
		}
		ss = warp_sum(ss);
		float r = rsqrtf(ss / D + eps);
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				float v[8];
#pragma unroll
				for (int j = 0; j < 8; j++)
					v[j] = f[c][j] * r * w[i + j];
				st8s(y + i, v);
			}
		}
		__syncwarp();
		int t = n % T;
		bf16 *o = out + (size_t)n * D;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				float v[8];
				rope8(v, y, i, t, Dh, cosb, sinb, 1.f);
				st8(o + i, v);
			}
		}
		if (lane == 0)
			rstd[n] = r;
		__syncwarp(); /* y is refilled for the next row */
	}
}

/* dout: the gradient after RoPE; dx: before the norm; dw += (D). */
template <int NC>
__global__ void __launch_bounds__(QR_WARPS * 32)
qknorm_rope_bwd_kernel(bf16 *dx, float *dw, const bf16 *dout, const bf16 *x, const float *w, const float *rstd,
		       const float *cosb, const float *sinb, int N, int T, int Dh, int D, int ldx, int dwb)
{
	MOE_PDL_ENTRY();
	extern __shared__ __align__(16) float sy[]; /* (warps, D): the row, then dw partials */
	int lane = threadIdx.x % 32, wi = threadIdx.x / 32;
	float *y = sy + (size_t)wi * D;
	float acc[NC][8] = {};
	for (int n = blockIdx.x * QR_WARPS + wi; n < N; n += gridDim.x * QR_WARPS) {
		const bf16 *dr = dout + (size_t)n * D, *xr = x + (size_t)n * ldx;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				float v[8];
				ld8(v, dr + i);
				st8s(y + i, v);
			}
		}
		__syncwarp();
		int t = n % T;
		float r = rstd[n], dot = 0.f, g[NC][8], xv[NC][8];
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				rope8(g[c], y, i, t, Dh, cosb, sinb, -1.f); /* the gradient before RoPE */
				ld8(xv[c], xr + i);
#pragma unroll
				for (int j = 0; j < 8; j++)
					dot += g[c][j] * w[i + j] * xv[c][j];
			}
		}
		dot = warp_sum(dot);
		float k = dot * r * r * r / D;
		bf16 *dxr = dx + (size_t)n * ldx;
#pragma unroll
		for (int c = 0; c < NC; c++) {
			int i = lane * 8 + 256 * c;
			if (i < D) {
				float v[8];
#pragma unroll
				for (int j = 0; j < 8; j++) {
					acc[c][j] += g[c][j] * xv[c][j] * r;
					v[j] = g[c][j] * w[i + j] * r - k * xv[c][j];
				}
				st8(dxr + i, v);
			}
		}
		__syncwarp(); /* y is refilled for the next row */
	}
	if (!dw)
		return;
#pragma unroll
	for (int c = 0; c < NC; c++) {
		int i = lane * 8 + 256 * c;
		if (i < D)
			st8s(y + i, acc[c]);
	}
	__syncthreads();
	block_rows_sum_add(dw, sy, QR_WARPS, D, dwb);
}


/* The pair layout (the default): a row's D/16 pairs of eight-column groups,
 * each group in the first half of a head with its RoPE partner Dh/2 columns
 * on, spread over L lanes (NP pairs a lane, fixed for every row), so that a
 * lane rotates its own values: no shared-memory staging of the row, all
 * 2 NP (forward) or 4 NP (backward) 16-byte loads of a row in flight at once,
 * the norm weights read through the read-only cache (forward) or from
 * shared memory (backward, loaded once per block).  A warp
 * takes 32 / L rows at a time; the backward's dw partials live in shared
 * memory per row group (fixed columns per lane: no races, fixed order; the
 * weights and the partials in lane order, qp_lm), and
 * its grid fills the card once with as many rows for every group as the card
 * allows (balanced_blocks), so that they are added once per block. */
#define QP_THREADS 128

static __device__ __forceinline__ float group_sum(float v, int L)
{
	for (int o = L / 2; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

/* the columns of this lane's pairs: c1 (first half; -1 past the row) and
 * the table offset kc of each */
template <int L, int NP>
static __device__ __forceinline__ void qp_cols(int *c1, int *kc, int gl, int Dh, int D)
{
	int gph = Dh / 16, P = D / 16;
#pragma unroll
	for (int q = 0; q < NP; q++) {
		int p = gl + L * q, h = p / gph, k = p - h * gph;
		c1[q] = p < P ? h * Dh + k * 8 : -1;
		kc[q] = k * 8;
	}
}

/* a lane's pairs of row n (zeros past the row or past N): NA arrays of the
 * first halves and NA of the second, from the NA tensors p[] of row
 * strides ld[] */
template <int NP, int NA>
static __device__ __forceinline__ void qp_load(uint4 (*a)[NP], uint4 (*b)[NP], const bf16 *const *p, int n, int N,
					       const int *c1, int half, const int *ld)
{
#pragma unroll
	for (int u = 0; u < NA; u++)
#pragma unroll
		for (int q = 0; q < NP; q++) {
			if (n < N && c1[q] >= 0) {
				const bf16 *r = p[u] + (size_t)n * ld[u] + c1[q];
				a[u][q] = *(const uint4 *)r;
				b[u][q] = *(const uint4 *)(r + half);
			} else {
				a[u][q] = b[u][q] = make_uint4(0, 0, 0, 0);
			}
		}
}

/* The per-row work of a lane's NP pairs, shared by the pair kernels and
 * the wide ones: the sum of squares of x (a, b: first and second halves) */
template <int NP>
static __device__ __forceinline__ float qp_sumsq(const uint4 *a, const uint4 *b)
{
	float ss = 0.f;
#pragma unroll
	for (int q = 0; q < NP; q++) {
		float fa[8], fb[8];
		unpack8(fa, a[q]);
		unpack8(fb, b[q]);
#pragma unroll
		for (int j = 0; j < 8; j++)
			ss += fa[j] * fa[j] + fb[j] * fb[j];
	}
	return ss;
}

/* the forward's outputs into row o: x r w, rotated by the position's
 * cos/sin (cr, sr) */
template <int NP>
static __device__ __forceinline__ void qp_fwd_out(bf16 *o, const uint4 *a, const uint4 *b, const int *c1,
						  const int *kc, float r, const float *w, const float *cr,
						  const float *sr, int half)
{
#pragma unroll
	for (int q = 0; q < NP; q++) {
		if (c1[q] < 0)
			continue;
		float fa[8], fb[8], cs[8], sn[8], wa[8], wb[8], oa[8], ob[8];
		unpack8(fa, a[q]);
		unpack8(fb, b[q]);
		lds8(cs, cr + kc[q]);
		lds8(sn, sr + kc[q]);
		ld8g(wa, w + c1[q]);
		ld8g(wb, w + c1[q] + half);
#pragma unroll
		for (int j = 0; j < 8; j++) {
			float ya = fa[j] * r * wa[j], yb = fb[j] * r * wb[j];
			oa[j] = ya * cs[j] - yb * sn[j];
			ob[j] = yb * cs[j] + ya * sn[j];
		}
		st8(o + c1[q], oa);
		st8(o + c1[q] + half, ob);
	}
}

/* dout's 8-column pair (a: first half of the head, b: second) rotated
 * back by the position's cos/sin at the pair (cr, sr): the gradient before
 * RoPE, ga, gb */
static __device__ __forceinline__ void qp_unrope8(float *ga, float *gb, uint4 a, uint4 b, const float *cr,
						  const float *sr)
{
	float fa[8], fb[8], cs[8], sn[8];
	unpack8(fa, a);
	unpack8(fb, b);
	lds8(cs, cr);
	lds8(sn, sr);
#pragma unroll
	for (int j = 0; j < 8; j++) {
		ga[j] = fa[j] * cs[j] + fb[j] * sn[j];
		gb[j] = fb[j] * cs[j] - fa[j] * sn[j];
	}
}

/* The backward's outputs of a pair with the gradient before RoPE (ga, gb),
 * x's halves (fa, fb) and the weights (wa, wb): dw's share g x r added into
 * acca, accb, and the input gradient g w r - k x into ga, gb */
static __device__ __forceinline__ void qp_bwd_out8(float *ga, float *gb, float *acca, float *accb, const float *fa,
						   const float *fb, const float *wa, const float *wb, float r, float k)
{
#pragma unroll
	for (int j = 0; j < 8; j++) {
		acca[j] += ga[j] * fa[j] * r;
		accb[j] += gb[j] * fb[j] * r;
		ga[j] = ga[j] * wa[j] * r - k * fa[j];
		gb[j] = gb[j] * wb[j] * r - k * fb[j];
	}
}

/* The pair backward's shared memory (qp_slot): the weights, then each row
 * group's dw partials, each as S = 16 NP L floats in lane order, so that
 * the L lanes of a group read or write one 16-byte piece each from 16 L
 * contiguous bytes (2 wavefronts for 16 lanes), where D columns in column
 * order put the lanes' pieces 32 bytes apart (twice the wavefronts) and the
 * weights' pieces of the warp's two row groups apart (four times).  Piece
 * j4 (0, 1) of half hf of pair q of lane gl: floats
 * ((2 q + hf) 2 L + j4 L + gl) 4 .. + 3.  (ncu, call 102: the column-order
 * layout made 61% of the kernel's shared-memory wavefronts excessive and
 * its L1 89% busy.) */
template <int L, int NP> struct qp_lm {
	static constexpr int S = 16 * NP * L;
	/* lane gl's base; pair q's half hf at + 16 L q + 8 L hf, pieces 4 L apart */
	static __device__ __forceinline__ int lane(int gl) { return 4 * gl; }
	static __device__ __forceinline__ int at(int q, int hf) { return 16 * L * q + 8 * L * hf; }
	/* the column of float i of the layout, -1 for a pair past the row */
	static __device__ __forceinline__ int col(int i, int Dh, int D)
	{
		int e = i % 4, r = i / 4, gl = r % L, j4 = (r / L) % 2, hf = (r / (2 * L)) % 2, q = r / (4 * L);
		int p = gl + L * q, gph = Dh / 16;
		if (p >= D / 16)
			return -1;
		return (p / gph) * Dh + (p % gph) * 8 + hf * (Dh / 2) + 4 * j4 + e;
	}
};

/* eight floats of a lane-order piece pair (p: lane base + at(q, hf)) */
template <int L> static __device__ __forceinline__ void lds8l(float *f, const float *p)
{
	float4 a = *(const float4 *)p, b = *(const float4 *)(p + 4 * L);
	f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
template <int L> static __device__ __forceinline__ void sts8l(float *p, const float *f)
{
	*(float4 *)p = make_float4(f[0], f[1], f[2], f[3]);
	*(float4 *)(p + 4 * L) = make_float4(f[4], f[5], f[6], f[7]);
}
/* the same in lane order (LM) or column order (8 adjacent floats) */
template <bool LM, int L> static __device__ __forceinline__ void lds8x(float *f, const float *p)
{
	if (LM)
		lds8l<L>(f, p);
	else
		lds8(f, p);
}
template <bool LM, int L> static __device__ __forceinline__ void sts8x(float *p, const float *f)
{
	if (LM)
		sts8l<L>(p, f);
	else
		st8s(p, f);
}

/* the backward's sum over the lane's pairs of g w x, g the gradient
 * before RoPE (a, b: dout's halves; xa, xb: x's); the weights through the
 * read-only cache (WM 0), from shared memory in column order (1) or in
 * lane order (L: qp_lm; w is the lane's base) */
template <int NP, int WM, int L = 16>
static __device__ __forceinline__ float qp_bwd_dot(const uint4 *a, const uint4 *b, const uint4 *xa, const uint4 *xb,
						   const int *c1, const int *kc, const float *w, const float *cr,
						   const float *sr, int half)
{
	float dot = 0.f;
#pragma unroll
	for (int q = 0; q < NP; q++) {
		if (c1[q] < 0)
			continue;
		float fa[8], fb[8], ga[8], gb[8], cs[8], sn[8], wa[8], wb[8];
		unpack8(fa, a[q]);
		unpack8(fb, b[q]);
		lds8(cs, cr + kc[q]);
		lds8(sn, sr + kc[q]);
		if (WM == 2) {
			lds8l<L>(wa, w + qp_lm<L, NP>::at(q, 0));
			lds8l<L>(wb, w + qp_lm<L, NP>::at(q, 1));
		} else if (WM == 1) {
			lds8(wa, w + c1[q]);
			lds8(wb, w + c1[q] + half);
		} else {
			ld8g(wa, w + c1[q]);
			ld8g(wb, w + c1[q] + half);
		}
#pragma unroll
		for (int j = 0; j < 8; j++) { /* qp_unrope8's, the weights' loads issued before it */
			ga[j] = fa[j] * cs[j] + fb[j] * sn[j];
			gb[j] = fb[j] * cs[j] - fa[j] * sn[j];
		}
		unpack8(fa, xa[q]);
		unpack8(fb, xb[q]);
#pragma unroll
		for (int j = 0; j < 8; j++)
			dot += ga[j] * wa[j] * fa[j] + gb[j] * wb[j] * fb[j];
	}
	return dot;
}

/* One tensor's forward operands (the pair kernel takes two: q and k) */
struct qp_fwd_io {
	bf16 *out;
	float *rstd;
	const bf16 *x;
	const float *w;
};

/* A block per QP_THREADS / L rows (grid-stride: each block's rows once).
 * With two tensors (nt 2: q and k, each row's at the same ldx) the blocks
 * alternate between them, so that blocks running together read both
 * tensors' parts of the same rows.  (Loading the next row ahead of this
 * row's arithmetic on a grid filling the card once measured no faster:
 * H100, 0.048 against 0.045 ms.) */
template <int L, int NP>
__global__ void __launch_bounds__(QP_THREADS)
qknorm_rope_pair_fwd_kernel(const qp_fwd_io io0, const qp_fwd_io io1, int nt, const float *cosb, const float *sinb,
			    int N, int T, int Dh, int D, int ldx, float eps)
{
	MOE_PDL_ENTRY();
	const bool k1 = blockIdx.x % nt;
	bf16 *out = k1 ? io1.out : io0.out;
	float *rstd = k1 ? io1.rstd : io0.rstd;
	const float *w = k1 ? io1.w : io0.w;
	const int lane = threadIdx.x % 32, gl = lane % L, half = Dh / 2;
	const int rpw = 32 / L, warps = blockDim.x / 32, stride = gridDim.x / nt * warps * rpw;
	int c1[NP], kc[NP];
	qp_cols<L, NP>(c1, kc, gl, Dh, D);
	const bf16 *src[1] = {k1 ? io1.x : io0.x};
	const int ld[1] = {ldx};
	int n0 = (blockIdx.x / nt * warps + threadIdx.x / 32) * rpw;
	for (; n0 < N; n0 += stride) {
		int n = n0 + lane / L;
		uint4 a[1][NP], b[1][NP];
		qp_load<NP, 1>(a, b, src, n, N, c1, half, ld);
		float ss = qp_sumsq<NP>(a[0], b[0]);
		ss = group_sum(ss, L);
		float r = rsqrtf(ss / D + eps);
		if (n < N) {
			int t = n % T;
			const float *cr = cosb + (size_t)t * half, *sr = sinb + (size_t)t * half;
			qp_fwd_out<NP>(out + (size_t)n * D, a[0], b[0], c1, kc, r, w, cr, sr, half);
			if (gl == 0)
				rstd[n] = r;
		}
	}
}

/* eight fp32 values rounded to bf16, packed as a 16-byte load of bf16
 * would have them */
static __device__ __forceinline__ uint4 qp_acc8(const float *p)
{
	float4 x = __ldcs((const float4 *)p), y = __ldcs((const float4 *)p + 1);
	union {
		__nv_bfloat162 h[4];
		uint4 u;
	} v;
	v.h[0] = __floats2bfloat162_rn(x.x, x.y);
	v.h[1] = __floats2bfloat162_rn(x.z, x.w);
	v.h[2] = __floats2bfloat162_rn(y.x, y.y);
	v.h[3] = __floats2bfloat162_rn(y.z, y.w);
	return v.u;
}

/* qp_load's of one tensor from fa3f's fp32 dQ tiles (acc: (B H, nq, 64,
 * Dh), column c of a tile's row r at c ^ 8 (r & 3); row n = b T + t) */
template <int NP>
static __device__ __forceinline__ void qp_load_acc(uint4 *a, uint4 *b, const float *acc, int n, int N,
						   const int *c1, int half, int Dh, int T, int H, int nq)
{
	int bb = n / T, t = n - bb * T, sw = 8 * (t & 3);
	size_t tile = (size_t)bb * H * nq + t / 64;
#pragma unroll
	for (int q = 0; q < NP; q++) {
		if (n < N && c1[q] >= 0) {
			int h = c1[q] / Dh, cc = c1[q] - h * Dh;
			const float *r = acc + ((tile + (size_t)h * nq) * 64 + (t & 63)) * Dh;
			a[q] = qp_acc8(r + (cc ^ sw));
			b[q] = qp_acc8(r + ((cc + half) ^ sw));
		} else {
			a[q] = b[q] = make_uint4(0, 0, 0, 0);
		}
	}
}

/* shared memory: w, then the dw partials (row groups of the block), each
 * D floats in column order or (LM) qp_lm's S in lane order.
 * ACC: dout from fa3f's fp32 dQ tiles (acc, H, nq: qp_load_acc) */
template <int L, int NP, bool ACC, bool LM>
__global__ void __launch_bounds__(QP_THREADS)
qknorm_rope_pair_bwd_kernel(bf16 *dx, float *dw, const bf16 *dout, const float *acc, const bf16 *x, const float *w,
			    const float *rstd, const float *cosb, const float *sinb, int N, int T, int H, int nq,
			    int Dh, int D, int ldx, int dwb)
{
	MOE_PDL_ENTRY();
	using Y = qp_lm<L, NP>;
	extern __shared__ __align__(16) float sw[];
	const int lane = threadIdx.x % 32, gl = lane % L, half = Dh / 2, S = LM ? Y::S : D;
	const int rpw = 32 / L, warps = blockDim.x / 32, groups = blockDim.x / L, stride = gridDim.x * warps * rpw;
	float *sacc = sw + S + (size_t)(threadIdx.x / L) * S;
	for (int i = threadIdx.x; i < S; i += blockDim.x) {
		int c = LM ? Y::col(i, Dh, D) : i;
		sw[i] = c >= 0 ? w[c] : 0.f;
	}
	for (int i = threadIdx.x; i < groups * S; i += blockDim.x)
		sw[S + i] = 0.f;
	__syncthreads();
	int c1[NP], kc[NP];
	qp_cols<L, NP>(c1, kc, gl, Dh, D);
	/* where the lane's pair q, half hf is in w's and its group's dw's layout */
	auto wp = [&](float *base, int q, int hf) {
		return LM ? base + Y::lane(gl) + Y::at(q, hf) : base + c1[q] + hf * half;
	};
	const bf16 *src[2] = {dout, x};
	const int ld[2] = {D, ldx};
	int n0 = (blockIdx.x * warps + threadIdx.x / 32) * rpw;
	for (; n0 < N; n0 += stride) {
		int n = n0 + lane / L;
		bool ok = n < N;
		uint4 a[2][NP], b[2][NP]; /* dout, x: first and second halves */
		if (ACC) {
			qp_load<NP, 1>(a + 1, b + 1, src + 1, n, N, c1, half, ld + 1);
			qp_load_acc<NP>(a[0], b[0], acc, n, N, c1, half, Dh, T, H, nq);
		} else {
			qp_load<NP, 2>(a, b, src, n, N, c1, half, ld);
		}
		int t = ok ? n % T : 0;
		const float *cr = cosb + (size_t)t * half, *sr = sinb + (size_t)t * half;
		float r = ok ? rstd[n] : 0.f;
		float dot = LM ? qp_bwd_dot<NP, 2, L>(a[0], b[0], a[1], b[1], c1, kc, sw + Y::lane(gl), cr, sr, half)
			       : qp_bwd_dot<NP, 1>(a[0], b[0], a[1], b[1], c1, kc, sw, cr, sr, half);
		dot = group_sum(dot, L);
		if (ok) {
			float k = dot * r * r * r / D;
			bf16 *dxr = dx + (size_t)n * ldx;
#pragma unroll
			for (int q = 0; q < NP; q++) {
				if (c1[q] < 0)
					continue;
				float fa[8], fb[8], ga[8], gb[8], wa[8], wb[8], aa[8], ab[8];
				qp_unrope8(ga, gb, a[0][q], b[0][q], cr + kc[q], sr + kc[q]);
				unpack8(fa, a[1][q]);
				unpack8(fb, b[1][q]);
				lds8x<LM, L>(wa, wp(sw, q, 0));
				lds8x<LM, L>(wb, wp(sw, q, 1));
				lds8x<LM, L>(aa, wp(sacc, q, 0));
				lds8x<LM, L>(ab, wp(sacc, q, 1));
				qp_bwd_out8(ga, gb, aa, ab, fa, fb, wa, wb, r, k);
				sts8x<LM, L>(wp(sacc, q, 0), aa);
				sts8x<LM, L>(wp(sacc, q, 1), ab);
				st8(dxr + c1[q], ga);
				st8(dxr + c1[q] + half, gb);
			}
		}
	}
	if (!dw)
		return;
	__syncthreads();
	if (!LM) {
		block_rows_sum_add(dw, sw + D, groups, D, dwb);
		return;
	}
	/* block_rows_sum_add's sums (the groups in order) over the lane-order
	 * layout, each put at its column */
	float *dst = dwb ? dw + (size_t)blockIdx.x * D : dw;
	for (int i = threadIdx.x; i < S; i += blockDim.x) {
		int c = Y::col(i, Dh, D);
		if (c < 0)
			continue;
		float v = 0.f;
		for (int g = 0; g < groups; g++)
			v += sw[S + (size_t)g * S + i];
		if (dwb)
			dst[c] = v;
		else
			atomicAdd(dst + c, v);
	}
}

/* Rows wider than QP_MAXD (up to QW_MAXD): a block of QW_THREADS per row,
 * thread t owning pairs t + QW_THREADS q (q < NP) in qp_cols's numbering;
 * the row's sums cross the warps through shared memory (block_sum_alt, in
 * warp order), the weights come through the read-only cache, and each
 * thread's share of dw stays in registers across the block's rows (its
 * pairs are the same in every row).  A block's rows: blockIdx.x,
 * + gridDim.x, ... */
#define QW_THREADS 128
#define QW_MAXNP 4
#define QW_MAXD (QW_THREADS * QW_MAXNP * 16) /* 8192 */

template <int NP>
__global__ void __launch_bounds__(QW_THREADS)
qknorm_rope_wide_fwd_kernel(bf16 *out, float *rstd, const bf16 *x, const float *w, const float *cosb,
			    const float *sinb, int N, int T, int Dh, int D, int ldx, float eps)
{
	MOE_PDL_ENTRY();
	__shared__ float rs[2][QW_THREADS / 32];
	const int half = Dh / 2;
	int c1[NP], kc[NP], it = 0;
	qp_cols<QW_THREADS, NP>(c1, kc, threadIdx.x, Dh, D);
	const bf16 *src[1] = {x};
	const int ld[1] = {ldx};
	for (int n = blockIdx.x; n < N; n += gridDim.x, it ^= 1) {
		uint4 a[1][NP], b[1][NP];
		qp_load<NP, 1>(a, b, src, n, N, c1, half, ld);
		float ss = qp_sumsq<NP>(a[0], b[0]);
		float r = rsqrtf(block_sum_alt<QW_THREADS / 32>(ss, rs, it) / D + eps);
		int t = n % T;
		const float *cr = cosb + (size_t)t * half, *sr = sinb + (size_t)t * half;
		qp_fwd_out<NP>(out + (size_t)n * D, a[0], b[0], c1, kc, r, w, cr, sr, half);
		if (threadIdx.x == 0)
			rstd[n] = r;
	}
}

/* dw: added atomically (dwb 0) or stored into the block's own row of a
 * (grid, D) buffer (dwb 1) */
template <int NP>
__global__ void __launch_bounds__(QW_THREADS)
qknorm_rope_wide_bwd_kernel(bf16 *dx, float *dw, const bf16 *dout, const bf16 *x, const float *w,
			    const float *rstd, const float *cosb, const float *sinb, int N, int T, int Dh, int D,
			    int ldx, int dwb)
{
	MOE_PDL_ENTRY();
	__shared__ float rs[2][QW_THREADS / 32];
	const int half = Dh / 2;
	int c1[NP], kc[NP], it = 0;
	qp_cols<QW_THREADS, NP>(c1, kc, threadIdx.x, Dh, D);
	float acc[NP][2][8];
#pragma unroll
	for (int q = 0; q < NP; q++)
#pragma unroll
		for (int j = 0; j < 8; j++)
			acc[q][0][j] = acc[q][1][j] = 0.f;
	const bf16 *src[2] = {dout, x};
	const int ld[2] = {D, ldx};
	for (int n = blockIdx.x; n < N; n += gridDim.x, it ^= 1) {
		uint4 a[2][NP], b[2][NP]; /* dout, x: first and second halves */
		qp_load<NP, 2>(a, b, src, n, N, c1, half, ld);
		int t = n % T;
		const float *cr = cosb + (size_t)t * half, *sr = sinb + (size_t)t * half;
		float r = rstd[n];
		float dot = qp_bwd_dot<NP, 0>(a[0], b[0], a[1], b[1], c1, kc, w, cr, sr, half);
		float k = block_sum_alt<QW_THREADS / 32>(dot, rs, it) * r * r * r / D;
		bf16 *dxr = dx + (size_t)n * ldx;
#pragma unroll
		for (int q = 0; q < NP; q++) {
			if (c1[q] < 0)
				continue;
			float fa[8], fb[8], ga[8], gb[8], wa[8], wb[8];
			qp_unrope8(ga, gb, a[0][q], b[0][q], cr + kc[q], sr + kc[q]);
			unpack8(fa, a[1][q]);
			unpack8(fb, b[1][q]);
			ld8g(wa, w + c1[q]);
			ld8g(wb, w + c1[q] + half);
			qp_bwd_out8(ga, gb, acc[q][0], acc[q][1], fa, fb, wa, wb, r, k);
			st8(dxr + c1[q], ga);
			st8(dxr + c1[q] + half, gb);
		}
	}
	if (!dw)
		return;
	float *dst = dwb ? dw + (size_t)blockIdx.x * D : dw;
#pragma unroll
	for (int q = 0; q < NP; q++) {
		if (c1[q] < 0)
			continue;
#pragma unroll
		for (int hh = 0; hh < 2; hh++)
			dw_put8(dst + c1[q] + hh * half, acc[q][hh], dwb);
	}
}

/* moe_cuda_memk_legacy() (rmsnorm.cu): the previous kernels for comparisons */
extern int moe_memk_legacy_on;

/* rows up to 2048 wide (olmoe's 16 x 128) in the pair kernels, up to
 * QW_MAXD in the wide ones; 1536 in the previous ones */
#define QP_MAXD 2048

extern "C" bool moe_cuda_qknorm_rope_supported(int H, int Dh)
{
	return H > 0 && Dh % 16 == 0 && Dh > 0 &&
	       (moe_memk_legacy_on ? (H * Dh + 255) / 256 <= QR_MAXNC : H * Dh <= QW_MAXD);
}

/* Blocks for N rows: four rows per warp, at most eight blocks per SM of an H100. */
static unsigned qr_blocks(int N)
{
	unsigned nb = moe_cdiv(N, QR_WARPS * 4);
	return nb > 132 * 8 ? 132 * 8 : nb;
}

/* The launchers' checks: MOE_EUNSUPPORTED for a row of H x Dh the kernels
 * do not take, 0 otherwise (nothing to launch when B * T <= 0). */
static int qr_check(int H, int Dh, struct moe_error *err)
{
	if (!moe_cuda_qknorm_rope_supported(H, Dh))
		return moe_error_set(err, MOE_EUNSUPPORTED, "qknorm_rope: %d heads of %d not supported", H, Dh);
	return 0;
}

/* the pair kernels' lanes a row L and pairs a lane NP: (16, 1..4) up to
 * D 1024, (32, 3) up to 1536, (32, 4) up to QP_MAXD */
#define QP_SWITCH(D, LAUNCH)                                  \
	do {                                                  \
		int p_ = (D) / 16;                            \
		if (p_ <= 16)                                 \
			LAUNCH(16, 1)                         \
		else if (p_ <= 32)                            \
			LAUNCH(16, 2)                         \
		else if (p_ <= 48)                            \
			LAUNCH(16, 3)                         \
		else if (p_ <= 64)                            \
			LAUNCH(16, 4)                         \
		else if (p_ <= 96)                            \
			LAUNCH(32, 3)                         \
		else                                          \
			LAUNCH(32, 4)                         \
	} while (0)

/* x's rows ldx apart (a multiple of 8, at least H Dh); the others' H Dh */
static int qr_ld(int ldx, int D, struct moe_error *err)
{
	if (ldx < D || ldx % 8)
		return moe_error_set(err, MOE_EINVAL, "qknorm_rope: row stride %d (rows of %d; a multiple of 8)", ldx, D);
	return 0;
}

/* The forward of nt (1 or 2) tensors of the same shape, rows ldx apart */
static int qr_fwd(const qp_fwd_io *io, int nt, int ldx, const float *cosb, const float *sinb, int B, int T, int H,
		  int Dh, float eps, cudaStream_t s, struct moe_error *err)
{
	int N = B * T, D = H * Dh, rc;
	if ((rc = qr_check(H, Dh, err)) != 0 || (rc = qr_ld(ldx, D, err)) != 0 || N <= 0)
		return rc;
	if (!moe_memk_legacy_on && D <= QP_MAXD) {
#define QP_FWD(L, NP)                                                                                                  \
	moe_launch(qknorm_rope_pair_fwd_kernel<L, NP>, moe_cdiv(N, QP_THREADS / L) * nt, QP_THREADS, 0, s, io[0],     \
		   io[nt - 1], nt, cosb, sinb, N, T, Dh, D, ldx, eps);
		QP_SWITCH(D, QP_FWD);
#undef QP_FWD
		return CUDA_LAUNCHED(err);
	}
	for (int i = 0; i < nt; i++) {
		bf16 *out = io[i].out;
		float *rstd = io[i].rstd;
		const bf16 *x = io[i].x;
		const float *w = io[i].w;
		if (!moe_memk_legacy_on) {
#define QW_FWD(NP)                                                                                                     \
	moe_launch(qknorm_rope_wide_fwd_kernel<NP>,                                                                    \
		   balanced_blocks(N, 1, resident_blocks(qknorm_rope_wide_fwd_kernel<NP>, QW_THREADS, 0)), QW_THREADS, \
		   0, s, out, rstd, x, w, cosb, sinb, N, T, Dh, D, ldx, eps)
			MOE_SWITCH4(moe_cdiv(D / 16, QW_THREADS), QW_FWD)
#undef QW_FWD
		} else {
			unsigned nb = qr_blocks(N);
			size_t sm = (size_t)QR_WARPS * D * sizeof(float);
#define QR_FWD(NC)                                                                                                     \
	moe_launch(qknorm_rope_fwd_kernel<NC>, nb, QR_WARPS * 32, sm, s, out, rstd, x, w, cosb, sinb, N, T, Dh, D,     \
		   ldx, eps)
			MOE_SWITCH6((D + 255) / 256, QR_FWD)
#undef QR_FWD
		}
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
	}
	return 0;
}

extern "C" int moe_cuda_qknorm_rope_fwd_ld(bf16_t *out, float *rstd, const bf16_t *x, int ldx, const float *w,
					   const float *cosb, const float *sinb, int B, int T, int H, int Dh,
					   float eps, cudaStream_t s, struct moe_error *err)
{
	const qp_fwd_io io = {(bf16 *)out, rstd, (const bf16 *)x, w};
	return qr_fwd(&io, 1, ldx, cosb, sinb, B, T, H, Dh, eps, s, err);
}

extern "C" int moe_cuda_qknorm_rope_fwd2_ld(bf16_t *outq, float *rstdq, const bf16_t *xq, const float *wq,
					    bf16_t *outk, float *rstdk, const bf16_t *xk, const float *wk, int ldx,
					    const float *cosb, const float *sinb, int B, int T, int H, int Dh,
					    float eps, cudaStream_t s, struct moe_error *err)
{
	const qp_fwd_io io[2] = {{(bf16 *)outq, rstdq, (const bf16 *)xq, wq}, {(bf16 *)outk, rstdk, (const bf16 *)xk, wk}};
	return qr_fwd(io, 2, ldx, cosb, sinb, B, T, H, Dh, eps, s, err);
}

extern "C" int moe_cuda_qknorm_rope_fwd(bf16_t *out, float *rstd, const bf16_t *x, const float *w,
					const float *cosb, const float *sinb, int B, int T, int H, int Dh,
					float eps, cudaStream_t s, struct moe_error *err)
{
	return moe_cuda_qknorm_rope_fwd_ld(out, rstd, x, H * Dh, w, cosb, sinb, B, T, H, Dh, eps, s, err);
}

extern "C" bool moe_cuda_qknorm_rope_acc_supported(int H, int Dh)
{
	return !moe_memk_legacy_on && (Dh == 96 || Dh == 128) && moe_cuda_qknorm_rope_supported(H, Dh) &&
	       H * Dh <= QP_MAXD;
}

/* The pair backward's shared memory in lane order (qp_lm), the default;
 * MOE_CUDA_QP_LM=0: in column order, as before session 15 (comparisons;
 * the same bits) */
static const bool qp_lane_order = !env_is("MOE_CUDA_QP_LM", "0");

/* acc: dout from fa3f's fp32 dQ tiles (the pair kernels only) */
static int qknorm_rope_bwd(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const float *acc,
			   const bf16_t *x, int ldx, const float *w, const float *rstd, const float *cosb,
			   const float *sinb, int B, int T, int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	int N = B * T, D = H * Dh, rc, nq = (int)moe_cdiv(T, 64);
	if ((rc = qr_check(H, Dh, err)) != 0 || (rc = qr_ld(ldx, D, err)) != 0)
		return rc;
	if (acc && !moe_cuda_qknorm_rope_acc_supported(H, Dh))
		return moe_error_set(err, MOE_EUNSUPPORTED, "qknorm_rope: %d heads of %d not supported from fp32 dQ tiles",
				     H, Dh);
	if (N <= 0)
		return 0;
	/* part: the blocks' dw rows, added up in block order afterwards */
	float *kdw = part && dw ? part : dw;
	int dwb = part && dw;
	unsigned nb;
	if (!moe_memk_legacy_on && D > QP_MAXD) {
#define QW_BWD(NP)                                                                                                     \
	{                                                                                                              \
		nb = balanced_blocks(N, 1, resident_blocks(qknorm_rope_wide_bwd_kernel<NP>, QW_THREADS, 0));           \
		nb = dwb && nb > MOE_CUDA_NORM_PART_BLOCKS ? MOE_CUDA_NORM_PART_BLOCKS : nb;                           \
		moe_launch(qknorm_rope_wide_bwd_kernel<NP>, nb, QW_THREADS, 0, s, (bf16 *)dx, kdw, (const bf16 *)dout, \
			   (const bf16 *)x, w, rstd, cosb, sinb, N, T, Dh, D, ldx, dwb);                               \
	}
		MOE_SWITCH4(moe_cdiv(D / 16, QW_THREADS), QW_BWD)
#undef QW_BWD
	} else if (!moe_memk_legacy_on) {
#define QP_BWDL(L, NP, ACC, LM)                                                                                        \
	{                                                                                                              \
		size_t sm = (size_t)(1 + QP_THREADS / L) * (LM ? qp_lm<L, NP>::S : D) * sizeof(float);                  \
		nb = balanced_blocks(N, QP_THREADS / L,                                                                \
				     resident_blocks(qknorm_rope_pair_bwd_kernel<L, NP, ACC, LM>, QP_THREADS, sm));    \
		nb = dwb && nb > MOE_CUDA_NORM_PART_BLOCKS ? MOE_CUDA_NORM_PART_BLOCKS : nb;                           \
		moe_launch(qknorm_rope_pair_bwd_kernel<L, NP, ACC, LM>, nb, QP_THREADS, sm, s, (bf16 *)dx, kdw,        \
			   (const bf16 *)dout, acc, (const bf16 *)x, w, rstd, cosb, sinb, N, T, H, nq, Dh, D, ldx,     \
			   dwb);                                                                                       \
	}
#define QP_BWDK(L, NP, ACC)             \
	if (qp_lane_order)              \
		QP_BWDL(L, NP, ACC, true)   \
	else                            \
		QP_BWDL(L, NP, ACC, false)
#define QP_BWD(L, NP)                   \
	if (acc)                        \
		QP_BWDK(L, NP, true)    \
	else                            \
		QP_BWDK(L, NP, false)
		QP_SWITCH(D, QP_BWD);
#undef QP_BWD
#undef QP_BWDK
#undef QP_BWDL
	} else {
		nb = qr_blocks(N);
		size_t sm = (size_t)QR_WARPS * D * sizeof(float);
#define QR_BWD(NC)                                                                                                     \
	moe_launch(qknorm_rope_bwd_kernel<NC>, nb, QR_WARPS * 32, sm, s, (bf16 *)dx, kdw, (const bf16 *)dout,          \
		   (const bf16 *)x, w, rstd, cosb, sinb, N, T, Dh, D, ldx, dwb)
		MOE_SWITCH6((D + 255) / 256, QR_BWD)
#undef QR_BWD
	}
	if ((rc = CUDA_LAUNCHED(err)) != 0 || !dwb)
		return rc;
	return moe_cuda_colsum_add(dw, part, (int)nb, D, s, err);
}

extern "C" int moe_cuda_qknorm_rope_bwd(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const bf16_t *x,
					const float *w, const float *rstd, const float *cosb, const float *sinb, int B,
					int T, int H, int Dh, cudaStream_t s, struct moe_error *err)
{
	return qknorm_rope_bwd(dx, dw, part, dout, NULL, x, H * Dh, w, rstd, cosb, sinb, B, T, H, Dh, s, err);
}

extern "C" int moe_cuda_qknorm_rope_bwd_ld(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const bf16_t *x,
					   int ldx, const float *w, const float *rstd, const float *cosb,
					   const float *sinb, int B, int T, int H, int Dh, cudaStream_t s,
					   struct moe_error *err)
{
	return qknorm_rope_bwd(dx, dw, part, dout, NULL, x, ldx, w, rstd, cosb, sinb, B, T, H, Dh, s, err);
}

extern "C" int moe_cuda_qknorm_rope_bwd_acc(bf16_t *dx, float *dw, float *part, const float *dqacc, const bf16_t *x,
					    int ldx, const float *w, const float *rstd, const float *cosb,
					    const float *sinb, int B, int T, int H, int Dh, cudaStream_t s,
					    struct moe_error *err)
{
	if (!dqacc)
		return moe_error_set(err, MOE_EINVAL, "qknorm_rope: no fp32 dQ tiles");
	return qknorm_rope_bwd(dx, dw, part, NULL, dqacc, x, ldx, w, rstd, cosb, sinb, B, T, H, Dh, s, err);
}
