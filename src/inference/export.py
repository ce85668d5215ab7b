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


# ONNX files are protobufs, capped at 2 GiB: a model below this keeps its weights inside.
ONNX_SINGLE_FILE_BYTES = 1_800_000_000


def to_onnx(
    model: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str] | None = None
) -> Callable:
    """Batch dimension left dynamic; one .onnx file (weights inside) where the model fits in
    one; `metadata` goes into the file's metadata_props. Returns an onnxruntime session's forward."""
    import onnx

    batch = torch.export.Dim("batch", min=1)
    tensors = [*model.parameters(), *model.buffers()]
    size = sum(t.numel() * t.element_size() for t in tensors)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: batch}},
        dynamo=True,
    )
    program.save(str(path), external_data=size >= ONNX_SINGLE_FILE_BYTES)
    if metadata:
        proto = onnx.load(str(path), load_external_data=False)
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save(proto, str(path))
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


EXPORTERS = {"torchscript": (to_torchscript, "pt"), "onnx": (to_onnx, "onnx")}


def export(
    model: nn.Module,
    example: torch.Tensor,
    folder: Path,
    fmt: str,
    atol: float,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write one format and assert it reproduces the checkpoint's logits to atol. `metadata`
    (how to use the model) goes into the file where the format has room for it (ONNX)."""
    exporter, suffix = EXPORTERS[fmt]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model.{suffix}"
    forward = (
        exporter(model, example, path, metadata)
        if fmt == "onnx"
        else exporter(model, example, path)
    )
    with torch.no_grad():
        error = max_abs_difference(reference_logits(model, example), forward(example))
    if error > atol:
        raise RuntimeError(f"{fmt} export differs from the checkpoint by {error:.2e} > {atol}.")
    log.info("Exported %s to %s (max |logit difference| %.2e)", fmt, path, error)
    return path


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def usage(class_names: list[str], data_config: dict, trained) -> dict:
    """What a consumer needs to use an exported model on its own: the class of each output, the
    input size, normalisation and resizing it expects, how to read its outputs."""
    return {
        "class_names": list(class_names),
        "input_size": list(data_config["input_size"]),
        "mean": [float(v) for v in data_config["mean"]],
        "std": [float(v) for v in data_config["std"]],
        "interpolation": str(data_config.get("interpolation", "bilinear")),
        "crop_pct": float(data_config.get("crop_pct", 1.0)),
        "outputs": (
            "logits: sigmoid per label, a label is predicted at or above its threshold"
            if trained.thresholds is not None
            else "logits: softmax over classes"
            if trained.probabilistic
            else "SVM margins: the highest is the predicted class (no probabilities)"
        ),
        **({"thresholds": trained.thresholds} if trained.thresholds is not None else {}),
    }


def metadata_props(usage_record: dict, provenance: dict[str, str]) -> dict[str, str]:
    """ONNX metadata_props are strings: lists as JSON."""
    return {
        key: value if isinstance(value, str) else json.dumps(value)
        for key, value in {**usage_record, **provenance}.items()
    }


def write_provenance(
    folder: Path, provenance: dict[str, str], exports: dict[str, Path], usage_record: dict
) -> Path:
    """provenance.json next to the exports: source run, checkpoint, files, and how to use them."""
    path = folder / "provenance.json"
    record = {**provenance, **usage_record, "exports": {k: str(v) for k, v in exports.items()}}
    path.write_text(json.dumps(record, indent=2))
    return path


def requirements(model: nn.Module) -> list[str]:
    """What serving the pickled model needs, pinned to the versions here: torch and timm; with a
    module of this project inside (own_code), every runtime dependency of the project too, since
    importing any of src's modules imports its package (lightning, torchmetrics, omegaconf ...)."""
    import re
    from importlib import metadata

    import timm

    pins = {"torch": torch.__version__.split("+")[0], "timm": timm.__version__}
    if own_code(model):
        for requirement in metadata.requires("transferlab") or []:
            if "extra ==" in requirement:
                continue
            name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
            pins.setdefault(name, metadata.version(name).split("+")[0])
    return [f"{name}=={version}" for name, version in pins.items()]


def own_code(model: nn.Module) -> list[str] | None:
    """This project's package, shipped with a model that holds one of its modules (a
    feature_extract run's KernelSVM head), so the pickled model loads where src is not installed."""
    if not any(type(m).__module__.startswith("src.") for m in model.modules()):
        return None
    return [str(Path(__file__).resolve().parents[1])]


def log_mlflow_model(
    model: nn.Module,
    example: torch.Tensor,
    run_id: str,
    tracking_uri: str,
    provenance: dict[str, str],
    registered_name: str | None = None,
    usage_record: dict | None = None,
) -> str:
    """mlflow.pytorch model (signature + input example) in the training run; optionally registered.
    Returns its URI, which `mlflow.pyfunc.load_model` takes."""
    import mlflow
    from mlflow.models import infer_signature

    inputs = example.numpy().astype(np.float32)
    signature = infer_signature(inputs, reference_logits(model, example).numpy())
    from src.tracking.store import tracking

    with tracking(tracking_uri), mlflow.start_run(run_id=run_id):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=inputs,
            registered_model_name=registered_name,
            tags=provenance,
            metadata=usage_record,  # class names, input size, mean, std: in the MLmodel file
            # Given, not inferred: inference re-loads the model in a subprocess (~10 s).
            pip_requirements=requirements(model),
            code_paths=own_code(model),
        )
    log.info("MLflow model %s (registered as %s)", info.model_uri, registered_name)
    return info.model_uri
