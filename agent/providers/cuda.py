"""CUDA: NVIDIA GPUs through onnxruntime-gpu; needs the NVIDIA driver's libcuda."""

from dal.agent.providers.base import Provider

PROVIDER = Provider("CUDAExecutionProvider", library="libcuda.so.1", default=True)
