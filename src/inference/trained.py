"""A trained model found from an MLflow run id or a checkpoint path, rebuilt from the run's own
stored config (config.yaml), so its preprocessing is the training's, never retyped."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from src.errors import InvalidInput
from src.tracking.kinds import MODEL_LESS_KINDS, model_less_line

log = logging.getLogger(__name__)


@dataclass
class Trained:
    """What a trained model needs to be used: where it came from and how it was configured."""

    config: dict[str, Any]  # the training run's resolved config.yaml
    checkpoint: Path
    run_id: str | None = None
    tracking_uri: str | None = None
    class_names: list[str] = field(default_factory=list)
    # Filled by load_model: a multi-label model's per-label decision thresholds (None: softmax),
    # and whether its scores are logits (False: an SVM's margins, no probabilities).
    thresholds: list[float] | None = None
    probabilistic: bool = True
    dataset_name: str = "training"  # the run's dataset tag: what src.eval names its metrics by

    @property
    def split_seed(self) -> int:
        """The seed its train/val/test splits were drawn with: its dataset.seed, which a run may
        set apart from its `seed` (the advisor's trials: seed 42 on the user's fixed split)."""
        dataset = self.config.get("dataset") or {}
        return dataset.get("seed", self.config["seed"])

    @property
    def provenance(self) -> dict[str, str]:
        return {"source_run_id": self.run_id or "none", "source_checkpoint": str(self.checkpoint)}


def locate(
    run_id: str | None, ckpt_path: str | None, tracking_uri: str, which: str = "best"
) -> Trained:
    """The run's checkpoint (`which`: best | last) and config; or a checkpoint's, whose config
    sits two folders up (<output_dir>/checkpoints/x.ckpt). Refuses anything missing up front."""
    from omegaconf import OmegaConf

    if bool(run_id) == bool(ckpt_path):
        raise InvalidInput("Give exactly one of run_id=<MLflow run id> or ckpt_path=<file>.")
    tags = {}
    if run_id:
        output_dir, tags = _run_output_dir(run_id, tracking_uri)
        checkpoint = find_checkpoint(output_dir / "checkpoints", which)
    else:
        checkpoint = Path(ckpt_path)
        if not checkpoint.is_file():
            raise InvalidInput(f"ckpt_path: no such checkpoint file '{checkpoint}'.")
        with open(checkpoint, "rb") as file:  # torch.save writes a zip (or, before 1.6, a pickle)
            header = file.read(2)
        if header != b"PK" and header[:1] != b"\x80":
            raise InvalidInput(f"ckpt_path='{checkpoint}': not a checkpoint (not a torch file).")
        output_dir = checkpoint.resolve().parent.parent
    config_file = output_dir / "config.yaml"
    if not config_file.is_file():
        raise InvalidInput(f"No training config.yaml next to the checkpoint, in {output_dir}.")
    config = OmegaConf.to_container(OmegaConf.load(config_file), resolve=False)
    trained = Trained(config, checkpoint, run_id, tracking_uri)
    target = str(config.get("dataset", {}).get("source", {}).get("_target_", "training"))
    trained.dataset_name = tags.get("dataset") or target.rsplit(".", 1)[-1]
    return trained


def _run_output_dir(run_id: str, tracking_uri: str) -> tuple[Path, dict[str, str]]:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from src.tracking.store import missing_sqlite_store

    database = missing_sqlite_store(tracking_uri)
    if database is not None:
        raise InvalidInput(f"run_id={run_id}: no MLflow store at {database} (paths.tracking_uri).")
    try:
        run = MlflowClient(tracking_uri).get_run(run_id)
    except MlflowException:
        raise InvalidInput(f"run_id={run_id}: no such MLflow run in {tracking_uri}.") from None
    kind = run.data.tags.get("kind")
    if kind in MODEL_LESS_KINDS:
        raise InvalidInput(model_less_line(run_id, kind))
    output_dir = run.data.tags.get("output_dir")
    if not output_dir or not Path(output_dir).is_dir():
        raise InvalidInput(f"run_id={run_id}: its output_dir '{output_dir}' no longer exists.")
    return Path(output_dir), run.data.tags


def find_checkpoint(folder: Path, which: str) -> Path:
    """best: the file ModelCheckpoint recorded as best (in last.ckpt's callback state), else the
    one file besides last.ckpt; last: last.ckpt. Several candidates and no record: refused."""
    if which not in ("best", "last"):
        raise InvalidInput(f"checkpoint={which}: must be best or last.")
    last = folder / "last.ckpt"
    if which == "last" or not folder.is_dir():
        if last.is_file():
            return last
        raise InvalidInput(f"No {which} checkpoint in {folder}.")
    candidates = sorted(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    recorded = _recorded_best(last)[1] if last.is_file() else _newest_record(candidates)
    if recorded is not None and recorded in candidates:
        return recorded
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        if last.is_file():  # save_top_k=0: the last is all there is
            return last
        raise InvalidInput(f"No best checkpoint in {folder}.")
    raise InvalidInput(
        f"{len(candidates)} checkpoints in {folder} ({', '.join(p.name for p in candidates[:5])}) "
        "and no record of which is best: give ckpt_path=<one of them>."
    )


def _recorded_best(checkpoint: Path) -> tuple[int, Path | None]:
    """(global step, ModelCheckpoint's best_model_path) as a checkpoint records them
    (memory-mapped: only the callback state is read), the path taken in the same folder."""
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an unreadable checkpoint says nothing about the best
        return -1, None
    step = state.get("global_step", -1)
    for key, value in (state.get("callbacks") or {}).items():
        if "ModelCheckpoint" in str(key) and isinstance(value, dict):
            path = value.get("best_model_path")
            if path:
                return step, checkpoint.parent / Path(path).name
    return step, None


def _newest_record(candidates: list[Path]) -> Path | None:
    """Without last.ckpt (save_last=false), the record of the checkpoint written last (the
    highest global step): a resumed run leaves the checkpoint it resumed from beside its new best
    (Lightning never deletes the file a run resumed from), and only the newer one knows."""
    records = [_recorded_best(path) for path in candidates]
    step, best = max(records, key=lambda record: record[0], default=(-1, None))
    return best if step >= 0 else None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint as plain data (tensors, numbers, strings, lists, dicts): torch's
    weights_only loader, which refuses anything that would run code while unpickling."""
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line for line in str(error).splitlines() if "Unsupported global" in line]
        if not lines:  # not a pickle at all ("Unsupported operand"): text, another format
            raise InvalidInput(f"{path}: not a readable checkpoint (not a torch file).") from None
        reason = lines[0].strip()
        raise InvalidInput(
            f"{path}: refused, it holds more than plain data (tensors, numbers, strings), which "
            f"could run code when loaded ({reason[:160]}). Only checkpoints written by "
            "src.train load here."
        ) from None
    except Exception as error:  # truncated, a text file, another format: never a traceback
        reason = f"{type(error).__name__}: {error}"[:160]
        raise InvalidInput(f"{path}: not a readable checkpoint ({reason}).") from None
    if not isinstance(state, dict) or not isinstance(state.get("state_dict"), dict):
        raise InvalidInput(
            f"{path}: not a checkpoint of src.train (no state_dict; a bare weights file loads "
            "as backbone.weights=<file> instead)."
        )
    return state


def load_model(trained: Trained) -> nn.Module:
    """The run's backbone with its trained weights, in eval mode; fills trained.class_names,
    thresholds and probabilistic."""
    from omegaconf import OmegaConf

    from src.config import instantiate_node
    from src.strategies.heads import KernelSVM, replace_classifier

    state = load_checkpoint(trained.checkpoint)
    # The backbone's weights only (the module also holds the task's class weights, thresholds).
    weights = {
        k.removeprefix("model."): v
        for k, v in state["state_dict"].items()
        if k.startswith("model.")
    }
    backbone_cfg = OmegaConf.create(trained.config["backbone"])
    # No pretrained download: every weight comes from the checkpoint.
    num_classes = len(state.get("class_names") or []) or _head_size(weights)
    model = instantiate_node(backbone_cfg, num_classes=num_classes, pretrained=False)
    head = state.get("head") or {}
    if "kernel_svm" in head:  # feature_extract's RBF SVM in place of the linear classifier
        replace_classifier(model, KernelSVM(head["kernel_svm"]))
    check_architecture(model, weights, state, trained)
    model.load_state_dict(weights)
    trained.class_names = state.get("class_names") or [str(i) for i in range(model.num_classes)]
    thresholds = state["state_dict"].get("task.thresholds")
    trained.thresholds = None if thresholds is None else thresholds.tolist()
    trained.probabilistic = head.get("probabilistic", True)
    log.info("Loaded %s (%d classes)", trained.checkpoint, model.num_classes)
    return model.eval()


def check_architecture(model: nn.Module, weights: dict, state: dict, trained: Trained) -> None:
    """A checkpoint of another backbone than the config beside it names (a reused run folder, a
    copied file): one line naming both, not torch's list of every size mismatch."""
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in weights.items()}
    missing, unexpected = expected.keys() - got.keys(), got.keys() - expected.keys()
    resized = [key for key in expected.keys() & got.keys() if expected[key] != got[key]]
    recorded = state.get("architecture")
    wanted = trained.config["backbone"].get("name", type(model).__name__)
    if not (missing or unexpected or resized):
        return  # it loads: the names may differ (resnet18 vs resnet18.a1_in1k), the weights fit
    theirs = recorded or f"another architecture ({len(got)} tensors, not {len(expected)})"
    example = sorted(resized or missing or unexpected)[:1]
    raise InvalidInput(
        f"{trained.checkpoint}: its weights are {theirs}, but its run's config builds {wanted}: "
        f"{len(resized)} tensors differ in shape, {len(missing)} are missing, "
        f"{len(unexpected)} unexpected (e.g. {', '.join(example)}). Give the checkpoint of a "
        f"{wanted} run, or the run_id that made this one."
    )


def _head_size(weights: dict[str, torch.Tensor]) -> int:
    """Classes of the checkpoint: the rows of the last 2-D weight (timm puts the head last)."""
    matrices = [v for k, v in weights.items() if k.endswith("weight") and v.ndim == 2]
    return matrices[-1].shape[0]


def data_config(model: nn.Module) -> dict[str, Any]:
    """Input size, mean, std, crop: the backbone's, overrides included, as in training."""
    from timm.data import resolve_model_data_config

    return resolve_model_data_config(model)
