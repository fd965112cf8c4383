"""archscale: choose an LLM architecture before you pretrain it."""

__version__ = "0.1.0"
