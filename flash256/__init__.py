"""flash256: exact attention for wide heads (head_dim up to 256), Triton and Gluon."""
from .interface import attention, available_backends, flash_attn_func, flash_attn_varlen_func

__version__ = "0.1.0"
__all__ = ["flash_attn_func", "flash_attn_varlen_func", "attention", "available_backends",
           "__version__"]
