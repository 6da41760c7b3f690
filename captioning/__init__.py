"""Bilingual (English + Arabic) image captioning served through NVIDIA Triton."""

__version__ = "0.1.0"
