"""agent/providers: execution providers as plug-ins, chosen by what this machine can run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dal.agent.providers import (
    DEFAULT_PROVIDERS,
    PROVIDERS,
    Provider,
    choose_providers,
    register_provider,
)

CPU = "CPUExecutionProvider"


@pytest.fixture
def fake() -> Iterator[Provider]:
    """A provider whose library is nowhere, registered for one test."""
    provider = register_provider(Provider("FakeExecutionProvider", library="libdal-none.so.0"))
    yield provider
    PROVIDERS.pop(provider.name)


def test_defaults_are_tensorrt_then_cuda_then_cpu() -> None:
    assert DEFAULT_PROVIDERS == ("TensorrtExecutionProvider", "CUDAExecutionProvider", CPU)
    assert "OpenVINOExecutionProvider" in PROVIDERS  # known, but only tried when configured


def test_a_provider_without_its_library_is_skipped_and_cpu_comes_last(fake: Provider) -> None:
    assert choose_providers([fake.name], [fake.name, CPU]) == [CPU]
    assert choose_providers([fake.name, CPU], [CPU]) == [CPU]


def test_names_without_a_plug_in_pass_through_when_available() -> None:
    assert choose_providers(["ROCMExecutionProvider"], ["ROCMExecutionProvider", CPU]) == [
        "ROCMExecutionProvider",
        CPU,
    ]
    assert choose_providers(["ROCMExecutionProvider"], [CPU]) == [CPU]


def test_a_name_can_be_registered_once(fake: Provider) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_provider(Provider(fake.name))


def test_openvino_runs_fp32_on_the_cpu_with_the_configured_threads() -> None:
    from dal.agent.providers import provider_options

    assert provider_options("OpenVINOExecutionProvider", threads=2) == {
        "device_type": "CPU",
        "precision": "FP32",
        "num_of_threads": "2",
    }
    # threads = 0 leaves OpenVINO's own default; providers without options get none
    assert "num_of_threads" not in provider_options("OpenVINOExecutionProvider")
    assert provider_options("CPUExecutionProvider", threads=2) == {}
    assert provider_options("SomeFutureExecutionProvider") == {}
