/* RoPE (rotate-half, HF Llama/OLMoE), in place on bf16 (B, T, H, Dh), with
 * a cos/sin table built once on the host in double precision.  Head sizes
 * with Dh/2 % 8 == 0 take eight pairs per thread with 16-byte accesses. */
#include <math.h>

#include "cuda_common.h"
#include "kernels.h"

/* One thread per rotated pair. */
__global__ void rope_kernel(bf16 *x, const float *cosb, const float *sinb, size_t rows, int T, int H,
			    int Dh, float sgn)
{
	MOE_PDL_ENTRY();
	int half = Dh / 2;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= rows * H * half)
		return;
	int j = i % half;
	size_t rh = i / half; /* (b*T + t)*H + h */
	int t = (rh / H) % T;
	bf16 *v = x + rh * Dh;
	float c = cosb[(size_t)t * half + j], sn = sgn * sinb[(size_t)t * half + j];
	float x1 = bf2f(v[j]), x2 = bf2f(v[j + half]);
	v[j] = f2bf(x1 * c - x2 * sn);
	v[j + half] = f2bf(x2 * c + x1 * sn);
}

/* Eight pairs per thread (half % 8 == 0): 16-byte loads of x[j..j+7],
 * x[j+half..j+half+7] and of the table's 8 cos and 8 sin values. */
__global__ void rope8_kernel(bf16 *x, const float *cosb, const float *sinb, size_t rows, int T, int H, int Dh,
			     float sgn)
{
	MOE_PDL_ENTRY();
	int half = Dh / 2, per = half / 8;
	size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (i >= rows * H * per)
		return;
	int j = (int)(i % per) * 8;
	size_t rh = i / per; /* (b*T + t)*H + h */
	int t = (rh / H) % T;
	bf16 *v = x + rh * Dh;
	uint4 a = *(const uint4 *)(v + j), b = *(const uint4 *)(v + j + half);
	const float4 *cp = (const float4 *)(cosb + (size_t)t * half + j);
	const float4 *sp = (const float4 *)(sinb + (size_t)t * half + j);
	float4 c0 = cp[0], c1 = cp[1], s0 = sp[0], s1 = sp[1];
	float c[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
	float sn[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
	bf16 *ah = (bf16 *)&a, *bh = (bf16 *)&b;
#pragma unroll
	for (int q = 0; q < 8; q++) {
		float x1 = bf2f(ah[q]), x2 = bf2f(bh[q]), sq = sgn * sn[q];
		ah[q] = f2bf(x1 * c[q] - x2 * sq);
		bh[q] = f2bf(x2 * c[q] + x1 * sq);
	}
	*(uint4 *)(v + j) = a;
	*(uint4 *)(v + j + half) = b;
}

extern "C" void moe_cuda_rope_table(float *cosb, float *sinb, int T, int Dh, float theta)
{
	int half = Dh / 2;
	for (int t = 0; t < T; t++)
		for (int i = 0; i < half; i++) {
			double a = t * pow((double)theta, -2.0 * i / Dh);
			cosb[(size_t)t * half + i] = (float)cos(a);
			sinb[(size_t)t * half + i] = (float)sin(a);
		}
}

extern "C" int moe_cuda_rope(bf16_t *x, const float *cosb, const float *sinb, int B, int T, int H, int Dh,
			     int inverse, cudaStream_t s, struct moe_error *err)
{
	size_t n = (size_t)B * T * H * (Dh / 2);
	if (n == 0)
		return 0;
	if ((Dh / 2) % 8 == 0 && (uintptr_t)x % 16 == 0 && (uintptr_t)cosb % 16 == 0 && (uintptr_t)sinb % 16 == 0)
		moe_launch(rope8_kernel, moe_cdiv(n / 8, 256), 256, 0, s, (bf16 *)x, cosb, sinb, (size_t)B * T, T, H,
			   Dh, inverse ? -1.f : 1.f);
	else
		moe_launch(rope_kernel, moe_cdiv(n, 256), 256, 0, s, (bf16 *)x, cosb, sinb, (size_t)B * T, T, H, Dh,
			   inverse ? -1.f : 1.f);
	return CUDA_LAUNCHED(err);
}
