# tests/kernels: (to be filled by its owner)
