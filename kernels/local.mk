# kernels/: the CUDA training backend (built only when nvcc works).
# One operation per .cu file behind the extern "C" launchers of kernels.h;
# backend_cuda.cu fills lib/model's backend table with them.
if HAVE_CUDA
noinst_LIBRARIES += kernels/libmoekernels.a
kernels_libmoekernels_a_SOURCES = kernels/kernels.h kernels/cuda_common.h \
	kernels/attention_common.cuh kernels/attention_fa3.cuh kernels/attention_wgmma.cuh kernels/wgmma.cuh \
	kernels/embedding.cu kernels/rmsnorm.cu kernels/rope.cu kernels/qknorm_rope.cu kernels/swiglu.cu \
	kernels/router.cu kernels/route_group.cu kernels/permute.cu kernels/xent.cu \
	kernels/adamw.cu kernels/balance.cu kernels/attention_fwd.cu kernels/attention_bwd.cu \
	kernels/attention_small.cu kernels/attention_wgmma.cu kernels/attention_fa3.cu kernels/attention_fa3p.cu \
	kernels/gemm.cu kernels/grouped_gemm.cu kernels/grouped_wgmma.cu kernels/grouped_tma.cu \
	kernels/backend_cuda.cu
CLEANFILES += kernels/*.d
endif
