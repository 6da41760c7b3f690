"""Checkpoint -> ONNX graphs -> validated Triton model repository."""
