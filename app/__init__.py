"""ppchat: a terminal conversation console for NVIDIA PersonaPlex 7B on MLX."""

__version__ = "0.1.0"
