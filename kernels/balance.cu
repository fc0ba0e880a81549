/* Loss-free balancing on the device: one MoE layer's selection-bias step
 * (moe_balance_apply of lib/model/ops.c: b += dir * u, clamped), with the
 * directions passed by value in the launch, so the update is queued on the
 * stream with no host round trip, and the bf16 compute copy refreshed. */
#include <stdint.h>

#include "cuda_common.h"
#include "kernels.h"

struct balance_dirs {
	int8_t d[MOE_CUDA_BALANCE_MAX_E];
};

__global__ void balance_bias_kernel(float *b, bf16 *b16, balance_dirs dir, int E, float u, float clamp)
{
	MOE_PDL_ENTRY();
	for (int e = threadIdx.x; e < E; e += blockDim.x) {
		float x = b[e];
		if (dir.d[e] > 0)
			x += u;
		else if (dir.d[e] < 0)
			x -= u;
		x = x > clamp ? clamp : x;
		x = x < -clamp ? -clamp : x;
		b[e] = x;
		if (b16)
			b16[e] = f2bf(x);
	}
}

extern "C" int moe_cuda_balance_bias(float *b, bf16_t *b16, const int8_t *dir, int E, float u, float clamp,
				     cudaStream_t s, struct moe_error *err)
{
	if (E <= 0)
		return 0;
	if (E > MOE_CUDA_BALANCE_MAX_E)
		return moe_error_set(err, MOE_EINVAL, "cuda: balance_bias: %d experts (at most %d)", E,
				     MOE_CUDA_BALANCE_MAX_E);
	balance_dirs d;
	for (int e = 0; e < E; e++)
		d.d[e] = dir[e];
	moe_launch(balance_bias_kernel, 1, 256, 0, s, b, (bf16 *)b16, d, E, u, clamp);
	return CUDA_LAUNCHED(err);
}
