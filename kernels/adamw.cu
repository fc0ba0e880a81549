/* Optimizer-side helpers on flat fp32 buffers: AdamW (torch semantics, fp32
 * state) that also refreshes the bf16 compute copy, sum of squares in double
 * with a fixed reduction order, scaling, dtype conversions, bf16 add. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"
#include "kernels.h"

/* The AdamW constants of one call; the gradient is g * gs (clip factor). */
struct adamw_hp {
	float b1, b2, eps, decay, step, sbc2, gs;
};

/* One element, each operation rounded on its own in moe_adamw_step's
 * order (the intrinsics keep the compiler from contracting a product and a
 * sum into one fused multiply-add, which it otherwise does or not as the
 * code around changes): the CPU reference's bits. */
static __device__ __forceinline__ float adamw_one(float p, float g, float &m, float &v, const adamw_hp &h)
{
	g = __fmul_rn(g, h.gs);
	m = __fadd_rn(__fmul_rn(h.b1, m), __fmul_rn(__fsub_rn(1.f, h.b1), g));
	v = __fadd_rn(__fmul_rn(h.b2, v), __fmul_rn(__fmul_rn(__fsub_rn(1.f, h.b2), g), g));
	float d = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), h.sbc2), h.eps);
	return __fsub_rn(__fmul_rn(p, h.decay), __fdiv_rn(__fmul_rn(h.step, m), d));
}

/* The bf16 compute copy of an fp32 master: rounded to nearest, ties away
 * from zero (not to even, as every other cast here), so that the packed
 * masters below hold the same copy as plain ones; the two roundings differ
 * only on exact ties.  A NaN gives a quiet NaN. */
static __device__ __forceinline__ uint32_t copy_bits(float p)
{
	uint32_t u = __float_as_uint(p);
	return (u & 0x7fffffffu) > 0x7f800000u ? 0x7fc0u : ((u + 0x8000u) >> 16) & 0xffffu;
}

static __device__ __forceinline__ bf16 copy_round(float p)
{
	return __ushort_as_bfloat16((unsigned short)copy_bits(p));
}

/* Packed masters (moe_cuda_adamw_packed): an fp32 master kept as two 16-bit
 * halves, hi its bf16 compute copy (copy_bits), lo its low 16 bits.  hi - (lo >> 15) is the master's top half (the
 * rounding carried exactly when lo >= 0x8000), so the pair holds the fp32
 * value exactly; ties to even (the cast everywhere else) would map 65,537
 * masters onto some bf16 values, which 16 bits cannot tell apart.  The two
 * roundings differ only where lo is exactly 0x8000.  A NaN packs as a quiet
 * NaN (its payload is not kept). */
static __device__ __forceinline__ float unpack_master(uint32_t hi, uint32_t lo)
{
	return __uint_as_float((((hi - (lo >> 15)) & 0xffffu) << 16) | lo);
}

static __device__ __forceinline__ void pack_master(float p, uint32_t &hi, uint32_t &lo)
{
	uint32_t u = __float_as_uint(p);
	hi = copy_bits(p);
	lo = (u & 0x7fffffffu) > 0x7f800000u ? 0u : u & 0xffffu;
}

/* A span's masters: fp32 p with its compute copy p16 (may be NULL), or
 * packed (p NULL): the compute copy p16 and the low halves lo. */
struct adamw_masters {
	float *p;
	bf16 *p16;
	uint16_t *lo;
};

static adamw_masters masters_at(adamw_masters w, size_t k)
{
	return {w.p ? w.p + k : nullptr, w.p16 ? w.p16 + k : nullptr, w.lo ? w.lo + k : nullptr};
}

/* one element per thread and step (any alignment); PK: packed masters */
template <bool PK>
__global__ void adamw_kernel(adamw_masters w, const float *g, float *m, float *v, size_t n, adamw_hp h)
{
	MOE_PDL_ENTRY();
	uint16_t *hi = (uint16_t *)w.p16;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float mi = m[i], vi = v[i];
		float pi = adamw_one(PK ? unpack_master(hi[i], w.lo[i]) : w.p[i], g[i], mi, vi, h);
		m[i] = mi;
		v[i] = vi;
		if (PK) {
			uint32_t a, b;
			pack_master(pi, a, b);
			hi[i] = (uint16_t)a;
			w.lo[i] = (uint16_t)b;
		} else {
			w.p[i] = pi;
			if (hi)
				hi[i] = (uint16_t)copy_bits(pi);
		}
	}
}

/* four elements per thread and step: 16-byte loads and stores of p, g, m, v
 * and 8-byte ones of the compute copy and the low halves, all aligned
 * (checked by the launcher); the gradient is read once, so it is loaded
 * with the evict-first hint. */
template <bool PK>
__global__ void adamw4_kernel(adamw_masters w, const float4 *g, float4 *m, float4 *v, size_t n4, adamw_hp h)
{
	MOE_PDL_ENTRY();
	uint2 *hi = (uint2 *)w.p16, *lo = (uint2 *)w.lo;
	float4 *p = (float4 *)w.p;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4;
	     i += (size_t)gridDim.x * blockDim.x) {
		float4 gi = __ldcs(g + i), mi = m[i], vi = v[i], pi;
		if (PK) {
			uint2 hw = hi[i], lw = lo[i];
			pi = make_float4(unpack_master(hw.x & 0xffffu, lw.x & 0xffffu), unpack_master(hw.x >> 16, lw.x >> 16),
					 unpack_master(hw.y & 0xffffu, lw.y & 0xffffu), unpack_master(hw.y >> 16, lw.y >> 16));
		} else {
			pi = p[i];
		}
		pi.x = adamw_one(pi.x, gi.x, mi.x, vi.x, h);
		pi.y = adamw_one(pi.y, gi.y, mi.y, vi.y, h);
		pi.z = adamw_one(pi.z, gi.z, mi.z, vi.z, h);
		pi.w = adamw_one(pi.w, gi.w, mi.w, vi.w, h);
		m[i] = mi;
		v[i] = vi;
		if (PK) {
			uint32_t h0, l0, h1, l1, h2, l2, h3, l3;
			pack_master(pi.x, h0, l0);
			pack_master(pi.y, h1, l1);
			pack_master(pi.z, h2, l2);
			pack_master(pi.w, h3, l3);
			hi[i] = make_uint2(h0 | h1 << 16, h2 | h3 << 16);
			lo[i] = make_uint2(l0 | l1 << 16, l2 | l3 << 16);
		} else {
			p[i] = pi;
			if (hi)
				hi[i] = make_uint2(copy_bits(pi.x) | copy_bits(pi.y) << 16,
						   copy_bits(pi.z) | copy_bits(pi.w) << 16);
		}
	}
}

__global__ void masters_pack_kernel(const float *src, uint16_t *hi, uint16_t *lo, size_t n)
{
	MOE_PDL_ENTRY();
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		uint32_t a, b;
		pack_master(src[i], a, b);
		hi[i] = (uint16_t)a;
		lo[i] = (uint16_t)b;
	}
}

__global__ void masters_unpack_kernel(float *dst, const uint16_t *hi, const uint16_t *lo, size_t n)
{
	MOE_PDL_ENTRY();
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		dst[i] = unpack_master(hi[i], lo[i]);
}

static int adamw_vector = -1; /* MOE_CUDA_ADAMW=scalar: the one-element kernel only (comparisons) */

/* Short blocks (each thread at most 4 steps of the loop), as session 4
 * chose them for an optimizer stream since removed; at seed-base AdamW runs
 * at 1.05x its memory floor with them (tests/bench/RESULTS-cuda.md). */
static unsigned adamw_blocks(size_t n)
{
	return (unsigned)moe_cdiv(n ? n : 1, 256 * 4);
}

/* The AdamW constants of step t (bias corrections in double) */
static adamw_hp adamw_params(float gscale, float lr, float beta1, float beta2, float eps, float weight_decay,
			     int64_t t)
{
	double bc1 = 1.0 - pow((double)beta1, (double)t);
	double bc2 = 1.0 - pow((double)beta2, (double)t);
	return {beta1, beta2, eps, 1.0f - lr * weight_decay, (float)((double)lr / bc1), (float)sqrt(bc2), gscale};
}

static bool aligned(const void *p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* AdamW on n elements: the scalar kernel up to g's first 16-byte boundary
 * and after the last whole vector, the vector kernel between, where every
 * array is aligned for it there (else the scalar kernel throughout). */
template <bool PK>
static int adamw_run(adamw_masters w, const float *g, float *m, float *v, size_t n, adamw_hp h, cudaStream_t s,
		     struct moe_error *err)
{
	if (n == 0)
		return 0;
	if (adamw_vector < 0)
		adamw_vector = !env_is("MOE_CUDA_ADAMW", "scalar");
	size_t head = aligned(g, 16) ? 0 : (16 - ((uintptr_t)g & 15)) / 4;
	adamw_masters wh = masters_at(w, head);
	bool vec = adamw_vector && aligned(g, 4) && head < n && aligned(m + head, 16) && aligned(v + head, 16) &&
		   (!wh.p || aligned(wh.p, 16)) && (!wh.p16 || aligned(wh.p16, 8)) && (!wh.lo || aligned(wh.lo, 8));
	if (!vec) {
		moe_launch(adamw_kernel<PK>, adamw_blocks(n), 256, 0, s, w, g, m, v, n, h);
		return CUDA_LAUNCHED(err);
	}
	size_t n4 = (n - head) / 4, tail = head + 4 * n4;
	int rc;
	if (head) {
		moe_launch(adamw_kernel<PK>, 1, 32, 0, s, w, g, m, v, head, h);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
	}
	moe_launch(adamw4_kernel<PK>, adamw_blocks(n4), 256, 0, s, wh, (const float4 *)(g + head),
		   (float4 *)(m + head), (float4 *)(v + head), n4, h);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	if (tail < n) {
		moe_launch(adamw_kernel<PK>, 1, 32, 0, s, masters_at(w, tail), g + tail, m + tail, v + tail, n - tail, h);
		rc = CUDA_LAUNCHED(err);
	}
	return rc;
}

extern "C" int moe_cuda_adamw(float *p, bf16_t *p16, const float *g, float gscale, float *m, float *v, size_t n,
			      float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t,
			      cudaStream_t s, struct moe_error *err)
{
	return adamw_run<false>({p, (bf16 *)p16, nullptr}, g, m, v, n,
				adamw_params(gscale, lr, beta1, beta2, eps, weight_decay, t), s, err);
}

extern "C" int moe_cuda_adamw_packed(bf16_t *hi, uint16_t *lo, const float *g, float gscale, float *m, float *v,
				     size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
				     int64_t t, cudaStream_t s, struct moe_error *err)
{
	return adamw_run<true>({nullptr, (bf16 *)hi, lo}, g, m, v, n,
			       adamw_params(gscale, lr, beta1, beta2, eps, weight_decay, t), s, err);
}

extern "C" int moe_cuda_masters_pack(bf16_t *hi, uint16_t *lo, const float *src, size_t n, cudaStream_t s,
				     struct moe_error *err)
{
	if (n == 0)
		return 0;
	moe_launch(masters_pack_kernel, adamw_blocks(n), 256, 0, s, src, (uint16_t *)hi, lo, n);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_masters_unpack(float *dst, const bf16_t *hi, const uint16_t *lo, size_t n, cudaStream_t s,
				       struct moe_error *err)
{
	if (n == 0)
		return 0;
	moe_launch(masters_unpack_kernel, adamw_blocks(n), 256, 0, s, dst, (const uint16_t *)hi, lo, n);
	return CUDA_LAUNCHED(err);
}

#define SQ_BLOCK 65536 /* elements per partial */

/* The sum of a over a block of 256 threads, in a fixed order (thread 0's
 * result is the total; sh: 256 doubles of shared memory). */
static __device__ double block_sum256(double a, double *sh)
{
	sh[threadIdx.x] = a;
	__syncthreads();
	for (int o = 128; o > 0; o >>= 1) {
		if (threadIdx.x < o)
			sh[threadIdx.x] += sh[threadIdx.x + o];
		__syncthreads();
	}
	return sh[0];
}

/* Block b sums x[b * SQ_BLOCK, ...) (fewer in the last block): the
 * elements before the first 16-byte boundary, then float4s, then the rest,
 * each thread its own in a fixed order (deterministic for given x, n). */
static __device__ double sumsq_block(const float *x, size_t n, size_t blk, double *sh)
{
	size_t b0 = blk * SQ_BLOCK, b1 = b0 + SQ_BLOCK < n ? b0 + SQ_BLOCK : n;
	size_t mis = (uintptr_t)(x + b0) & 15, head = mis ? (16 - mis) / 4 : 0;
	if (head > b1 - b0)
		head = b1 - b0;
	size_t n4 = (b1 - b0 - head) / 4, rest = b0 + head + 4 * n4;
	const float4 *x4 = (const float4 *)(x + b0 + head);
	double a = 0;
	if (threadIdx.x < head) {
		double v = x[b0 + threadIdx.x];
		a += v * v;
	}
	for (size_t j = threadIdx.x; j < n4; j += 256) {
		float4 v = __ldcs(x4 + j);
		a += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
	}
	for (size_t i = rest + threadIdx.x; i < b1; i += 256) {
		double v = x[i];
		a += v * v;
	}
	return block_sum256(a, sh);
}

__global__ void sumsq_partial_kernel(double *part, const float *x, size_t n)
{
	MOE_PDL_ENTRY();
	__shared__ double sh[256];
	double a = sumsq_block(x, n, blockIdx.x, sh);
	if (threadIdx.x == 0)
		part[blockIdx.x] = a;
}

/* Every region's blocks in one launch: block b belongs to the region r
 * with blk[r] <= b < blk[r + 1] and writes part[b], the same partial as
 * sumsq_partial_kernel's for that block of the region. */
__global__ void sumsq_batch_partial_kernel(double *part, const struct moe_cuda_sq_batch q)
{
	MOE_PDL_ENTRY();
	__shared__ double sh[256];
	int lo = 0, hi = q.nr - 1; /* the last region starting at or before b */
	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;
		if (q.blk[mid] <= blockIdx.x)
			lo = mid;
		else
			hi = mid - 1;
	}
	double a = sumsq_block(q.rx[lo], q.rn[lo], blockIdx.x - q.blk[lo], sh);
	if (threadIdx.x == 0)
		part[blockIdx.x] = a;
}

/* Block k stores sum k: its items' doubles in order (a region's partials
 * in part, or an array of the epilogues' per-tile sums), each thread
 * striding over each item as sumsq_segs_kernel does (fixed order). */
__global__ void sumsq_batch_finish_kernel(const double *part, const struct moe_cuda_sq_batch q)
{
	MOE_PDL_ENTRY();
	__shared__ double sh[256];
	double a = 0;
	for (int k = q.first[blockIdx.x]; k < q.first[blockIdx.x + 1]; k++) {
		const double *p = q.ireg[k] >= 0 ? part + q.blk[q.ireg[k]] : q.ip[k];
		size_t n = q.ireg[k] >= 0 ? q.blk[q.ireg[k] + 1] - q.blk[q.ireg[k]] : q.in[k];
		for (size_t i = threadIdx.x; i < n; i += 256)
			a += p[i];
	}
	a = block_sum256(a, sh);
	if (threadIdx.x == 0)
		*q.acc[blockIdx.x] = a;
}

extern "C" unsigned moe_cuda_sumsq_blocks(size_t n)
{
	return (unsigned)moe_cdiv(n, SQ_BLOCK);
}

extern "C" int moe_cuda_sumsq_batch(double *part, const struct moe_cuda_sq_batch *q, cudaStream_t s,
				    struct moe_error *err)
{
	int rc;
	if (q->nsum <= 0)
		return 0;
	if (q->nr > 0 && q->blk[q->nr] > 0) {
		moe_launch(sumsq_batch_partial_kernel, q->blk[q->nr], 256, 0, s, part, *q);
		if ((rc = CUDA_LAUNCHED(err)) != 0)
			return rc;
	}
	moe_launch(sumsq_batch_finish_kernel, q->nsum, 256, 0, s, (const double *)part, *q);
	return CUDA_LAUNCHED(err);
}

__global__ void sumsq_finish_kernel(double *acc, const double *part, int nb)
{
	MOE_PDL_ENTRY();
	__shared__ double sh[256];
	double a = 0;
	for (int i = threadIdx.x; i < nb; i += 256)
		a += part[i];
	a = block_sum256(a, sh);
	if (threadIdx.x == 0)
		*acc = a;
}

extern "C" size_t moe_cuda_sumsq_scratch(size_t n)
{
	return (size_t)moe_cdiv(n ? n : 1, SQ_BLOCK) * sizeof(double);
}

extern "C" int moe_cuda_sumsq(double *acc, void *scratch, const float *x, size_t n, cudaStream_t s,
			      struct moe_error *err)
{
	int rc;
	if (n == 0) { /* the finishing kernel over no partials stores 0 */
		moe_launch(sumsq_finish_kernel, 1, 256, 0, s, acc, (const double *)scratch, 0);
		return CUDA_LAUNCHED(err);
	}
	unsigned nb = moe_cdiv(n, SQ_BLOCK);
	moe_launch(sumsq_partial_kernel, nb, 256, 0, s, (double *)scratch, x, n);
	if ((rc = CUDA_LAUNCHED(err)) != 0)
		return rc;
	moe_launch(sumsq_finish_kernel, 1, 256, 0, s, acc, (const double *)scratch, (int)nb);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_sumsq_partials(double *part, const float *x, size_t n, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	moe_launch(sumsq_partial_kernel, moe_cdiv(n, SQ_BLOCK), 256, 0, s, part, x, n);
	return CUDA_LAUNCHED(err);
}

/* *acc += the segments' doubles: thread i sums elements i, i + 256, ... of
 * each segment in turn, then the block's 256 sums in a fixed order. */
__global__ void sumsq_segs_kernel(double *acc, const struct moe_cuda_ssq_segs sg)
{
	MOE_PDL_ENTRY();
	__shared__ double sh[256];
	double a = 0;
	for (int k = 0; k < sg.count; k++)
		for (size_t i = threadIdx.x; i < sg.n[k]; i += 256)
			a += sg.p[k][i];
	a = block_sum256(a, sh);
	if (threadIdx.x == 0)
		*acc = sg.store ? a : *acc + a;
}

extern "C" int moe_cuda_sumsq_add_segs(double *acc, const struct moe_cuda_ssq_segs *segs, cudaStream_t s,
				       struct moe_error *err)
{
	if (segs->count <= 0)
		return 0;
	moe_launch(sumsq_segs_kernel, 1, 256, 0, s, acc, *segs);
	return CUDA_LAUNCHED(err);
}

__global__ void masters_copy_kernel(bf16 *dst, const float *src, size_t n)
{
	MOE_PDL_ENTRY();
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		dst[i] = copy_round(src[i]);
}

__global__ void to_f32_kernel(float *dst, const bf16 *src, size_t n)
{
	MOE_PDL_ENTRY();
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		dst[i] = bf2f(src[i]);
}

__global__ void axpy_kernel(float *y, const float *x, size_t n, float a)
{
	MOE_PDL_ENTRY();
	size_t stride = (size_t)gridDim.x * blockDim.x;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		y[i] += a * x[i];
}

__global__ void scale_bf16_kernel(bf16 *x, size_t n, float a)
{
	MOE_PDL_ENTRY();
	size_t stride = (size_t)gridDim.x * blockDim.x;
	for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
		x[i] = f2bf(bf2f(x[i]) * a);
}

static unsigned grid_for(size_t n)
{
	unsigned b = moe_cdiv(n, 256);
	return b > 132 * 32 ? 132 * 32 : (b ? b : 1);
}

extern "C" int moe_cuda_masters_copy(bf16_t *dst, const float *src, size_t n, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	moe_launch(masters_copy_kernel, grid_for(n), 256, 0, s, (bf16 *)dst, src, n);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_to_f32(float *dst, const bf16_t *src, size_t n, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	moe_launch(to_f32_kernel, grid_for(n), 256, 0, s, dst, (const bf16 *)src, n);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_axpy(float *y, const float *x, size_t n, float a, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	moe_launch(axpy_kernel, grid_for(n), 256, 0, s, y, x, n, a);
	return CUDA_LAUNCHED(err);
}

extern "C" int moe_cuda_scale_bf16(bf16_t *x, size_t n, float a, cudaStream_t s, struct moe_error *err)
{
	if (n == 0)
		return 0;
	moe_launch(scale_bf16_kernel, grid_for(n), 256, 0, s, (bf16 *)x, n, a);
	return CUDA_LAUNCHED(err);
}
