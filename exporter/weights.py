"""The weights' fingerprint written into every exported model (and used for model versions)."""

from __future__ import annotations

import hashlib

import torch


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of the weights alone (names, shapes, bytes), independent of optimizer state."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()
