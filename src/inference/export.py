"""Ship a trained model: TorchScript, ONNX, an MLflow Model; each export is checked against the
checkpoint's own logits and says which run and checkpoint it came from."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.errors import AssetUnavailable, InvalidInput

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")


def check_formats(formats: list[str]) -> None:
    """Unknown formats and missing exporters are refused before any export starts."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise InvalidInput(f"formats: unknown {unknown}; valid: {list(FORMATS)}.")
    if "onnx" in formats:
        needed = ("onnx", "onnxscript", "onnxruntime")  # exporter, and the check of its file
        missing = [m for m in needed if importlib.util.find_spec(m) is None]
        if missing:
            raise AssetUnavailable(
                f"formats=[onnx] needs the Python packages {missing}, not installed here: "
                "`pip install onnx onnxscript onnxruntime`, or export formats=[torchscript]."
            )


def example_input(input_size: tuple[int, int, int], batch: int = 2) -> torch.Tensor:
    """A fixed random batch shaped like the model's preprocessed input."""
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, *input_size, generator=generator)


@torch.inference_mode()
def reference_logits(model: nn.Module, example: torch.Tensor) -> torch.Tensor:
    return model(example)


def to_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Callable:
    """Traced (timm models are traceable; not all are scriptable); returns the loaded export."""
    with torch.no_grad():
        traced = torch.jit.trace(model, example)
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    return lambda x: loaded(x)


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Callable:
    """Batch dimension left dynamic; returns an onnxruntime session's forward."""
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
    )
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


EXPORTERS = {"torchscript": (to_torchscript, "pt"), "onnx": (to_onnx, "onnx")}


def export(model: nn.Module, example: torch.Tensor, folder: Path, fmt: str, atol: float) -> Path:
    """Write one format and assert it reproduces the checkpoint's logits to atol."""
    exporter, suffix = EXPORTERS[fmt]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.{suffix}"
    forward = exporter(model, example, path)
    with torch.no_grad():
        error = max_abs_difference(reference_logits(model, example), forward(example))
    if error > atol:
        raise RuntimeError(f"{fmt} export differs from the checkpoint by {error:.2e} > {atol}.")
    log.info("Exported %s to %s (max |logit difference| %.2e)", fmt, path, error)
    return path


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def write_provenance(folder: Path, provenance: dict[str, str], exports: dict[str, Path]) -> Path:
    """provenance.json next to the exports: source run, checkpoint, files."""
    path = folder / "provenance.json"
    record = {**provenance, "exports": {k: str(v) for k, v in exports.items()}}
    path.write_text(json.dumps(record, indent=2))
    return path


def requirements() -> list[str]:
    """What serving the pickled timm model needs."""
    import timm

    return [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}"]


def log_mlflow_model(
    model: nn.Module,
    example: torch.Tensor,
    run_id: str,
    tracking_uri: str,
    provenance: dict[str, str],
    registered_name: str | None = None,
) -> str:
    """mlflow.pytorch model (signature + input example) in the training run; optionally registered.
    Returns its URI, which `mlflow.pyfunc.load_model` takes."""
    import mlflow
    from mlflow.models import infer_signature

    inputs = example.numpy().astype(np.float32)
    signature = infer_signature(inputs, reference_logits(model, example).numpy())
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=inputs,
            registered_model_name=registered_name,
            tags=provenance,
            # Given, not inferred: inference re-loads the model in a subprocess (~10 s).
            pip_requirements=requirements(),
        )
    log.info("MLflow model %s (registered as %s)", info.model_uri, registered_name)
    return info.model_uri
