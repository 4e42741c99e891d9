"""Kernel families: portable Triton-language kernels (any GPU, CPU interpreter) and the
Hopper (sm_90a) Gluon fast path. Shared tl building blocks live beside them."""
