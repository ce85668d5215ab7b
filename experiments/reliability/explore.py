"""Issue 20's second look: cases NOT in the issue's list, run in one process on digits and on small
image folders built here. Each case is expected to be refused (one line, exit-2 error, nothing
created) or to run to a FINISHED run; anything else (a traceback, a FAILED run) is a defect.

    .venv/bin/python experiments/reliability/explore.py [/tmp/explore]

Prints one line per case and the totals; the kill cases are tests/reliability/test_fault_matrix.py.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.errors import InvalidInput  # noqa: E402
from tests.helpers.compose import compose_train, train  # noqa: E402

TINY = [
    "dataset=digits",
    "backbone.input_size=[3,32,32]",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger.mlflow.log_model=false",
]
REFUSE, RUN = "refuse", "run"


def folder(root: Path, classes: dict[str, int], make=None) -> Path:
    """root/<class>/<i>.png with random 16x16 RGB pixels (or make(class, i, path))."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = root / name / f"{i}.png"
            if make:
                make(name, i, path)
            else:
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return root


def images(tmp: Path, classes=None, make=None, extra=()) -> list[str]:
    root = folder(tmp / "images", classes or {"a": 12, "b": 12, "c": 12}, make)
    return ["dataset=imagefolder", f"dataset.source.root={root}", *extra]


def sixteen_bit(name, i, path):
    high = {"a": 16383, "b": 65535, "c": 4095}[name]
    ramp = np.linspace(0, high, 256).reshape(16, 16) * (0.5 + i / 24)
    Image.fromarray(ramp.astype(np.uint16)).save(path)


def rgba_hidden(name, i, path):
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[..., :3] = {"a": 10, "b": 120, "c": 240}[name] + i
    pixels[..., 3] = 255 if i % 2 else 128
    Image.fromarray(pixels, "RGBA").save(path)


def same_key_classes(tmp: Path) -> list[str]:
    return images(tmp, {"a b": 12, "a_b": 12, "c": 12})


def root_equals_test(tmp: Path) -> list[str]:
    root = folder(tmp / "images", {"a": 12, "b": 12})
    return [
        "dataset=imagefolder",
        f"dataset.source.root={root}",
        f"dataset.source.test_root={root}",
    ]


def root_is_file(tmp: Path) -> list[str]:
    (tmp / "f.png").write_bytes(b"x")
    return ["dataset=imagefolder", f"dataset.source.root={tmp / 'f.png'}"]


def odd_files(tmp: Path) -> list[str]:
    overrides = images(tmp)
    root = tmp / "images"
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "a" / "empty.png").write_bytes(b"")
    Image.new("1", (16, 16)).save(root / "b" / "bilevel.PNG")
    Image.new("RGB", (1, 1)).save(root / "c" / "pixel.png")
    Image.new("RGB", (400, 2)).save(root / "c" / "strip.png")
    (root / "stray.png").write_bytes((root / "a" / "0.png").read_bytes())
    return [*overrides, "dataset.source.on_bad_image=skip"]


def nested_and_linked(tmp: Path) -> list[str]:
    overrides = images(tmp)
    root = tmp / "images"
    (root / "a" / "deeper").mkdir()
    Image.new("RGB", (16, 16), (1, 2, 3)).save(root / "a" / "deeper" / "x.png")
    outside = folder(tmp / "outside", {"more": 3})
    os.symlink(outside / "more", root / "b" / "more")
    os.symlink(root / "a" / "0.png", root / "a" / "0-again.png")
    return overrides


def unreadable_class(tmp: Path) -> list[str]:
    overrides = images(tmp, {"a": 12, "b": 12, "c": 0})
    (tmp / "images" / "c" / "x.png").write_bytes(b"\x89PNG broken")
    return [*overrides, "dataset.source.on_bad_image=skip"]


CASES = [
    # (name, overrides or a function of the scratch folder, expected)
    ("seed above 2**32-1", ["seed=4294967296"], REFUSE),
    ("seed=true", ["seed=true"], REFUSE),
    ("max_epochs=1.5", ["trainer.max_epochs=1.5"], REFUSE),
    ("max_epochs=abc", ["trainer.max_epochs=abc"], REFUSE),
    ("max_steps=-5", ["trainer.max_steps=-5"], REFUSE),
    ("limit_train_batches=-1", ["trainer.limit_train_batches=-1"], REFUSE),
    ("limit_test_batches=0 with test", ["trainer.limit_test_batches=0"], REFUSE),
    ("monitor.mode=null", ["monitor.mode=null"], REFUSE),
    ("monitor on test/acc", ["monitor.metric=test/acc"], REFUSE),
    ("monitor a class's val/acc_class/3", ["monitor.metric=val/acc_class/3"], RUN),
    ("monitor train/loss_epoch min", ["monitor.metric=train/loss_epoch", "monitor.mode=min"], RUN),
    ("monitor val/ece max", ["monitor.metric=val/ece"], REFUSE),
    ("val_fraction=0.99", ["dataset.val_fraction=0.99"], RUN),
    ("test_fraction=0.999", ["dataset.test_fraction=0.999"], REFUSE),
    ("fraction=0.001", ["dataset.fraction=0.001"], RUN),
    (
        "samples_per_class=2, val 0.5",
        ["dataset.samples_per_class=2", "dataset.val_fraction=0.5"],
        RUN,
    ),
    ("batch_size=100000", ["dataset.batch_size=100000"], RUN),
    ("val_fraction=0", ["dataset.val_fraction=0"], REFUSE),
    ("optimizer.lr=inf", ["optimizer.lr=inf"], REFUSE),
    ("optimizer.lr=nan", ["optimizer.lr=nan"], REFUSE),
    ("optimizer.weight_decay=-1", ["optimizer.weight_decay=-1"], REFUSE),
    ("head_dropout=1.0", ["regularisation.head_dropout=1.0"], REFUSE),
    ("drop_path_rate=1.5", ["regularisation.drop_path_rate=1.5"], REFUSE),
    ("label_smoothing=-0.1", ["regularisation.label_smoothing=-0.1"], REFUSE),
    ("backbone_lr_mult=inf", ["strategy.backbone_lr_mult=inf"], REFUSE),
    ("surgical block=-1", ["strategy=surgical", "strategy.block=-1"], RUN),
    ("partial freeze_stages=-1", ["strategy=partial", "strategy.freeze_stages=-1"], RUN),
    ("input_size=[3,-5,-5]", ["backbone.input_size=[3,-5,-5]"], REFUSE),
    ("input_size=[3,7,7]", ["backbone.input_size=[3,7,7]"], RUN),
    ("std=[0,0,0]", ["backbone.std=[0,0,0]"], REFUSE),
    ("mean of 2 values", ["backbone.mean=[0.5,0.5]"], REFUSE),
    ("crop_pct=0", ["backbone.crop_pct=0"], REFUSE),
    ("gradient_clip_val=-1", ["trainer.gradient_clip_val=-1"], REFUSE),
    ("accumulate_grad_batches=0", ["+trainer.accumulate_grad_batches=0"], REFUSE),
    ("devices=0", ["trainer.devices=0"], REFUSE),
    ("experiment_name empty", ["experiment_name=''"], REFUSE),
    ("resume=auto on an empty store", ["resume=auto"], RUN),
    ("16-bit classes of different range", lambda t: images(t, make=sixteen_bit), RUN),
    ("RGBA, colour under half alpha", lambda t: images(t, make=rgba_hidden), RUN),
    ("two classes with one metric key", same_key_classes, REFUSE),
    ("test_root equals root", root_equals_test, REFUSE),
    ("root is a file", root_is_file, REFUSE),
    ("odd files, skip", odd_files, RUN),
    ("nested folders and links", nested_and_linked, RUN),
    ("class folder of 3 images", lambda t: images(t, {"a": 12, "b": 12, "c": 3}), RUN),
    ("class of only unreadable files, skip", unreadable_class, REFUSE),
    ("unicode class names", lambda t: images(t, {"chat": 12, "café": 12, "猫": 12}), RUN),
    ("feature_extract, 1 epoch", ["strategy=feature_extract", "regularisation=light"], RUN),
    ("lp_ft probe_epochs=max_epochs", ["strategy=lp_ft", "strategy.probe_epochs=1"], REFUSE),
    ("step scheduler", ["scheduler=step"], RUN),
]


def run_case(name: str, spec, expected: str, scratch: Path) -> tuple[str, str]:
    overrides = spec(scratch) if callable(spec) else spec
    cfg = compose_train(scratch, [*TINY, *overrides])
    try:
        metrics = train(cfg)
    except InvalidInput as error:
        created = (scratch / "mlflow.db").exists() or (scratch / "run").exists()
        clean = "\n" not in str(error) and not created
        return ("refused" if clean else "refused-unclean"), str(error)[:160]
    except Exception as error:  # a traceback where a refusal or a run was due
        return "traceback", f"{type(error).__name__}: {str(error)[:160]}"
    client = mlflow.MlflowClient(cfg.paths.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    statuses = [r.info.status for r in client.search_runs([experiment.experiment_id])]
    acc = metrics.get("test/acc", float("nan"))
    return ("ran" if statuses == ["FINISHED"] else f"ran-{statuses}"), f"test/acc={acc:.3f}"


def main(base: Path) -> None:
    logging.basicConfig(level=logging.WARNING)
    tally: dict[str, int] = {}
    for index, (name, spec, expected) in enumerate(CASES):
        scratch = base / f"case{index:02d}"
        scratch.mkdir(parents=True)
        outcome, detail = run_case(name, spec, expected, scratch)
        good = (outcome == "refused") if expected == REFUSE else (outcome == "ran")
        tally[outcome] = tally.get(outcome, 0) + 1
        tally["as expected"] = tally.get("as expected", 0) + good
        print(f"{index:02d} {'ok ' if good else 'BAD'} {outcome:16s} {name}: {detail}", flush=True)
    print(f"{len(CASES)} cases: {tally}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="explore-")))
