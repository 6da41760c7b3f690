"""The served Triton model repository's source (README.md), installed as package data for `captioning export`."""
