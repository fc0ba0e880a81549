/* RoPE (rotate-half, HF Llama/OLMoE), in place on bf16 (B, T, H, Dh), with
 * a cos/sin table built once on the host in double precision. */
#include <math.h>

#include "cuda_common.h"
#include "kernels.h"

/* One thread per rotated pair. */
__global__ void rope_kernel(bf16 *x, const float *cosb, const float *sinb, size_t rows, int T, int H,
			    int Dh, float sgn)
{
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
	rope_kernel<<<moe_cdiv(n, 256), 256, 0, s>>>((bf16 *)x, cosb, sinb, (size_t)B * T, T, H, Dh,
						     inverse ? -1.f : 1.f);
	return CUDA_LAUNCHED(err);
}
