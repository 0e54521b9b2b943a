"""stride: training data attribution with steering operators and sparse recovery (STRIDE)."""

from stride.errors import StrideError

__version__ = "0.1.0"

__all__ = ["StrideError", "__version__"]
