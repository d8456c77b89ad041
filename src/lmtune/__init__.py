"""lmtune: fine-tune pre-trained language models from raw data to a gated, exported release."""

__version__ = "0.1.0"
