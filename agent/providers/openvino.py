"""OpenVINO: Intel CPUs, iGPUs and NPUs, through the onnxruntime-openvino build (`dal[intel]`,
instead of the cpu or nvidia runtime: never two in one environment), so it is not tried unless
configured.

No library check: the OpenVINO runtime ships inside that wheel, and onnxruntime lists the
provider only when it is the build installed. Options: device CPU; precision FP32, because
OpenVINO would otherwise run FP32 models in bf16 on CPUs with AMX, which changes the detections
(an INT8 model stays INT8 either way); threads as [detector] threads.
"""

from dal.agent.providers.base import Provider

PROVIDER = Provider(
    "OpenVINOExecutionProvider",
    options=(("device_type", "CPU"), ("precision", "FP32"), ("num_of_threads", "{threads}")),
)
