"""No host synchronisation in the training step of the real job, except on logging steps and at
epoch ends: every read of a tensor's value and every data-dependent op is counted, per batch."""

from __future__ import annotations

import collections

import lightning.pytorch as L
import pytest
import torch

from src.bench.syncs import StepWindows, SyncCounter
from tests.helpers.compose import compose_train, train
from tests.helpers.jobs import tiny

STEPS, LOG_EVERY = 8, 4


def counted_run(tmp_path, overrides: list[str], monkeypatch) -> StepWindows:
    """The composed default job (every default callback, the MLflow logger, the progress bar),
    shrunk to STEPS batches, with its syncs filed per training batch."""
    job = tiny(
        "dataset.batch_size=16",
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={STEPS}",
        "trainer.limit_val_batches=1",
        f"trainer.log_every_n_steps={LOG_EVERY}",
        "test=false",
        *overrides,
        without=("trainer.enable_progress_bar", "trainer.enable_model_summary"),
    )
    cfg = compose_train(tmp_path, job)
    counter = SyncCounter()
    windows = StepWindows(counter)
    trainer_init = L.Trainer.__init__

    def with_windows(self, *args, callbacks=None, **kwargs):
        trainer_init(self, *args, callbacks=[windows, *(callbacks or [])], **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", with_windows)
    with counter.active():
        train(cfg)
    return windows


def describe(windows: list) -> str:
    lines = []
    for w in windows:
        lines.append(f"step {w.step} (epoch {w.epoch}): {len(w.syncs)} syncs")
        for (what, where), n in collections.Counter((s.what, s.where) for s in w.syncs).items():
            lines.append(f"  {n} x {what} at {where}")
    return "\n".join(lines)


@pytest.mark.slow  # a real training job
def test_default_job_syncs_only_on_logging_steps_and_epoch_ends(tmp_path, monkeypatch, one_thread):
    windows = counted_run(tmp_path, [], monkeypatch)
    assert len(windows.windows) == STEPS
    assert windows.offending() == [], describe(windows.offending())
    logging = [w for w in windows.windows if w.logging]
    assert [w.step for w in logging] == [3, 7]  # Lightning's rule: (step + 1) % 4 == 0
    # The counter sees Lightning's own reads where it logs: it is not blind.
    assert all(w.syncs for w in logging)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["regularisation=strong"],  # mixup/cutmix, label smoothing, drop path, random erasing
        ["regularisation=l2sp"],
        ["strategy=gradual_unfreeze", "strategy.milestones=[1]", "trainer.max_epochs=2"],
        ["strategy=partial", "dataset.class_weights=auto", "dataset.sampler=balanced"],
        ["callbacks.finite_loss.policy=skip", "strategy=linear_probe", "trainer.max_epochs=2"],
    ],
    ids=["strong", "l2sp", "gradual_unfreeze", "partial_balanced", "finite_skip"],
)
def test_other_jobs_sync_only_on_logging_steps_and_epoch_ends(
    tmp_path, monkeypatch, one_thread, overrides
):
    windows = counted_run(tmp_path, overrides, monkeypatch)
    offending = windows.offending()
    if "callbacks.finite_loss.policy=skip" in overrides:
        # Documented: skip checks every step's gradients before the optimizer acts.
        whats = {s.what for w in offending for s in w.syncs}
        assert offending and whats <= {"Tensor.__bool__"}, describe(offending)
    else:
        assert offending == [], describe(offending)


def test_counter_sees_every_kind_of_read_back():
    x = torch.arange(6.0)
    reads = [
        lambda: x.sum().item(),
        lambda: x.tolist(),
        lambda: x.cpu(),
        lambda: x.numpy(),
        lambda: bool(x.sum() > 0),
        lambda: float(x.sum()),
        lambda: int(x.sum()),
        lambda: x.nonzero(),
        lambda: x[x > 2],
        lambda: x.masked_select(x > 2),
        lambda: torch.unique(x),
        lambda: torch.bincount(x.long()),
        lambda: torch.linalg.svdvals(x.reshape(2, 3)),
    ]
    before = {name: getattr(torch.Tensor, name) for name in ("item", "__bool__", "__float__")}
    counts = []
    for read in reads:
        with SyncCounter().active() as counter:
            read()
        counts.append(len(counter.syncs))
    assert counts == [1] * len(reads)
    with SyncCounter().active() as counter:  # device-side work only: nothing to count
        (x * 2 + 1).softmax(0).argmax()
        torch.isfinite(x).all()
    assert counter.syncs == []
    assert {name: getattr(torch.Tensor, name) for name in before} == before  # all restored
