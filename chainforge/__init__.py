"""ChainForge: DeepSeek-R1-style reasoning for your own models."""

__version__ = "0.1.0"
