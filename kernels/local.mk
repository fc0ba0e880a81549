# kernels/: CUDA C behind extern "C" launchers (built only when nvcc works).
