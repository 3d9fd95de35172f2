"""OpenVINO: Intel CPUs, GPUs and NPUs. Needs the onnxruntime-openvino build instead of
onnxruntime-gpu (never both in one environment), so it is not tried unless configured."""

from dal.agent.providers.base import Provider

PROVIDER = Provider("OpenVINOExecutionProvider")
