"""Checks of exported files against the model they were exported from."""

from __future__ import annotations

import torch


def assert_onnx_predicts(path: str, model: torch.nn.Module, images: torch.Tensor) -> None:
    """The ONNX file, run by onnxruntime, gives the model's logits (to 1e-4)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(images).numpy()
    exported = session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    assert abs(exported - expected).max() < 1e-4
