"""`trainer=ddp` on CPU (gloo), two ranks, through the real CLI: one MLflow run, written by rank 0
only, with metrics reduced over both ranks, and one checkpoint that a single process scores alike."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from src.eval import evaluate_run
from tests.helpers.compose import artifact_paths, compose_entry
from tests.helpers.jobs import ROOT, child_env

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def run_cli(tmp_path: Path, overrides: list[str], log: str = "train.log") -> str:
    """`python -m src.train ...` writing into tmp_path; returns its output (fails on non-zero)."""
    env = child_env(OMP_NUM_THREADS="1")
    command = [
        sys.executable,
        "-m",
        "src.train",
        *overrides,
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path}/run",
        "dataset.num_workers=0",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    (tmp_path / log).write_text(done.stdout + done.stderr)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def the_run(tmp_path: Path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return client, run


# --- Done when 1: one run, complete metrics, val/acc = a single process on the checkpoint -------
@pytest.mark.slow
def test_ddp_on_two_cpu_ranks_logs_one_run_that_a_single_process_confirms(tmp_path, tiny_overrides):
    overrides = [
        *tiny_overrides,
        *DDP,
        "trainer.limit_val_batches=1.0",  # the whole val split, as the single process scores it
        "strategy=linear_probe",  # it used to fail under DDP with the unused-parameters error
        "callbacks.model_checkpoint.save_last=false",
    ]
    text = run_cli(tmp_path, overrides)
    # The backbone is frozen before DDP wraps the model: DDP reduces the head's gradients only.
    assert "DDP over 12810 trainable parameters (find_unused_parameters=False)" in text
    client, run = the_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.tags["ddp.world_size"] == "2"
    fingerprints = run.data.tags["ddp.config_fingerprints"].split(",")
    assert fingerprints == [run.data.tags["config_fingerprint"]] * 2
    metrics = run.data.metrics
    expected = {"train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/f1_macro", "val/ece"}
    expected |= {"test/acc", "test/loss", "test/f1_macro", "lr/head"}
    expected |= {f"val/acc_class/{digit}" for digit in range(10)}
    assert expected <= set(metrics), expected - set(metrics)
    # One value per epoch: the second rank logged nothing of its own.
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == sorted({m.step for m in history})
    assert len(history) == 2

    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert [p.suffix for p in checkpoints] == [".ckpt"], checkpoints  # saved once, by rank 0
    logged = artifact_paths(client, run.info.run_id)
    assert [p for p in logged if p.endswith(".ckpt")] == [
        f"{checkpoints[0].stem}/{checkpoints[0].name}"
    ]

    # The best epoch's val/acc, reduced over both ranks' halves of the split, is the accuracy a
    # single process finds on the whole split with the saved checkpoint.
    entry = compose_entry(
        "eval", tmp_path, [f"run_id={run.info.run_id}", "dataset=digits", "split=val"]
    )
    single = evaluate_run(entry)["eval/digits.val/acc"]
    assert max(m.value for m in history) == pytest.approx(single, abs=1e-6)


# --- a strategy that unfreezes mid-run -------------------------------------------------------------
@pytest.mark.slow
def test_ddp_trains_through_a_mid_run_unfreeze(tmp_path, tiny_overrides):
    """lp_ft unfreezes the backbone at epoch 1: DDP tracks every parameter from the start and is
    told that the frozen ones go unused meanwhile."""
    overrides = [*tiny_overrides, *DDP, "strategy=lp_ft", "strategy.probe_epochs=1", "test=false"]
    text = run_cli(tmp_path, overrides)
    assert "(find_unused_parameters=True)" in text
    _, run = the_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert len(run.data.params) > 20 and run.data.tags["ddp.world_size"] == "2"


# --- the feature cache is built once, however many processes ask at once ------------------------
def test_concurrent_feature_extraction_is_done_once(tmp_path, monkeypatch):
    from src.pipelines import features

    calls = []

    def slow_extract(model, batches, device, logits=False, channels_last=False):
        calls.append(threading.get_ident())
        time.sleep(0.5)
        return torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)

    class Data:
        eval_transform_repr = "t"

        def identity(self, split):
            return {"split": split}

        batch_size = 4

        def eval_batches(self, split, device, batch_size=None):
            return []

        def eval_loader(self, split, batch_size=None):
            return []

    model = torch.nn.Linear(2, 2)
    model.pretrained_cfg = {"architecture": "linear"}
    monkeypatch.setattr(features, "extract", slow_extract)
    results = []

    def rank():
        results.append(
            features.cached_features(model, Data(), tmp_path, torch.device("cpu"), ("train",))
        )

    threads = [threading.Thread(target=rank) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert sorted(stats["feature_cache/hits"] for _, stats in results) == [0, 1]


# --- every rank resumes the same run -------------------------------------------------------------
def test_ranks_take_rank_zeros_resume_decision(tmp_path, monkeypatch):
    """Ranks Lightning launches inherit rank 0's choice; ranks that torchrun/srun start together
    cannot share one search, so `resume=auto` is refused there before any work."""
    from src.errors import InvalidInput
    from src.tracking import resume

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.delenv(resume.RESUME_ENV, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(InvalidInput, match="resume=auto with 4 ranks started by torchrun/srun"):
        resume.resume_point("auto", uri, "x", "fingerprint")
    with resume.shared_with_ranks(None):  # rank 0 found nothing to resume: nor do the others
        assert os.environ[resume.RESUME_ENV] == ""
        assert resume.resume_point("auto", uri, "x", "fingerprint") is None
    assert resume.RESUME_ENV not in os.environ


@pytest.mark.slow  # ~10 s: builds two timm models
def test_sync_batchnorm_keeps_timm_norm_activation_layers():
    """torch's converter drops the activation inside timm's BatchNormAct2d; ours keeps it."""
    import timm
    from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm

    from src.models.distributed import TimmSyncBatchNorm, TransferDDP

    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=3).eval()
    with torch.no_grad():
        expected = model(images)
        ours = TimmSyncBatchNorm().apply(copy.deepcopy(model)).eval()(images)
        torchs = TorchSyncBatchNorm().apply(copy.deepcopy(model)).eval()(images)
    assert torch.equal(ours, expected)
    assert not torch.allclose(torchs, expected)  # the bug this plugin exists for
    strategy = TransferDDP()
    strategy._layer_sync = TorchSyncBatchNorm()  # what Lightning hands over for sync_batchnorm
    assert isinstance(strategy._layer_sync, TimmSyncBatchNorm)
