"""Save the backbone of a finished training run's best checkpoint as a plain timm state dict, the
format `backbone.weights=<file>` loads: `export_source.py <run output dir> <weights.pth>`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def main(run_dir: str, out: str) -> None:
    checkpoints = [p for p in Path(run_dir, "checkpoints").glob("*.ckpt") if p.name != "last.ckpt"]
    assert len(checkpoints) == 1, f"expected the one best checkpoint in {run_dir}: {checkpoints}"
    state = torch.load(checkpoints[0], map_location="cpu", weights_only=True)["state_dict"]
    model = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    torch.save(model, out)
    print(f"{checkpoints[0]} -> {out} ({len(model)} tensors)")


if __name__ == "__main__":
    main(*sys.argv[1:])
