"""Device check for the merged main: trainer=ddp (NCCL, 1 rank, sync-BN) and a multi-label MedMNIST
fixture on CUDA with bf16, plus the default job on trainer=gpu. Run from the repository root on a machine with one GPU:
    python experiments/bench_gpu/cuda_check.py [FASHION_MNIST_ROOT]
The lent device has no mlflow, so logger=csv and the MLflow run metadata step is skipped; .devsite/
(copies of hydra, omegaconf, timm, medmnist and the Lite0 weights package) is put on the path."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".devsite")
import src.training as T
from src.config import compose

T.open_run = lambda *a, **k: None  # MLflow metadata: no mlflow on the device
ROOT = Path.cwd()
tmp = Path(tempfile.mkdtemp())
FASHION = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"


def run(name, overrides):
    cfg, choices = compose(
        [
            f"paths.root_dir={tmp}",
            f"paths.output_dir={tmp}/{name}",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *overrides,
        ]
    )
    start = time.perf_counter()
    try:
        metrics = T.train(cfg, choices)
    except Exception as error:  # report and go on to the next check
        print(f"CHECK {name}: FAILED {type(error).__name__}: {error}", flush=True)
        return
    keys = [
        k
        for k in ("test/acc", "test/balanced_acc", "test/auroc", "test/ap", "test/f1_macro")
        if k in metrics
    ]
    print(
        f"CHECK {name}: ok in {time.perf_counter() - start:.1f} s | "
        + ", ".join(f"{k}={metrics[k]:.4f}" for k in keys),
        flush=True,
    )


from tests.helpers.medmnist_files import write_medmnist_npz  # noqa: E402

write_medmnist_npz(tmp / "med", "chestmnist")
write_medmnist_npz(tmp / "med", "pathmnist")
fm = [f"dataset.source.root={FASHION}"]
run("default_gpu", ["trainer=gpu", *fm])
run(
    "ddp_nccl_linear_probe_syncbn",
    [
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        "trainer.sync_batchnorm=true",
        "strategy=linear_probe",
        "trainer.max_epochs=2",
        *fm,
    ],
)
run(
    "ddp_nccl_lp_ft",
    [
        "trainer=ddp",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
        "strategy=lp_ft",
        "trainer.max_epochs=3",
        *fm,
    ],
)
run(
    "chestmnist_multilabel_bf16",
    [
        "trainer=gpu",
        "dataset=chestmnist",
        f"dataset.source.root={tmp}/med",
        "monitor.metric=val/auroc",
        "dataset.class_weights=auto",
        "trainer.max_epochs=2",
    ],
)
run(
    "pathmnist_balanced_sampler",
    [
        "trainer=gpu",
        "dataset=pathmnist",
        f"dataset.source.root={tmp}/med",
        "dataset.sampler=balanced",
        "trainer.max_epochs=2",
    ],
)
