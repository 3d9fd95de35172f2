"""TensorRT: NVIDIA's optimiser on top of CUDA, when TensorRT 10 is installed."""

from dal.agent.providers.base import Provider

PROVIDER = Provider("TensorrtExecutionProvider", library="libnvinfer.so.10", default=True)
