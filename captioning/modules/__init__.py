"""The checkpoints' own PyTorch modules arranged as the six graph functions of docs/design.md.

`captioning export` traces these to ONNX; the torch runner (`captioning.runtime.torch_runner`) runs them
directly on a CPU or a GPU. One definition, so the exported graphs and the torch runner compute the same thing.
"""
