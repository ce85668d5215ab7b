"""The launch recipes of experiments/cluster/ and conf/hydra/launcher/, checked without a cluster:
each is rendered, its launcher's own argument parser (torchrun's, submitit's, Lightning's SLURM
environment) accepts it, and the training overrides in it compose with conf/train.yaml."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.helpers.compose import compose_raw
from tests.helpers.jobs import ROOT

CLUSTER = ROOT / "experiments" / "cluster"


def compose_job(overrides: list[str], hydra: bool = False):
    """conf/train.yaml with a recipe's overrides (hydra.* ones apply to Hydra, checked apart)."""
    return compose_raw("train", [o for o in overrides if not o.startswith("hydra.")], hydra)


# --- torchrun --------------------------------------------------------------------------------------
def test_torchrun_recipe_renders_a_command_torchrun_and_hydra_accept():
    from torch.distributed.run import get_args_parser

    env = {**os.environ, "DRY_RUN": "1", "NNODES": "2", "NODE_RANK": "1", "NPROC_PER_NODE": "4"}
    env |= {"MASTER_ADDR": "10.0.0.1", "RUN_ID": "demo"}
    rendered = subprocess.run(
        [CLUSTER / "torchrun.sh", "backbone=mobilenetv2", "strategy=linear_probe"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    argv = shlex.split(rendered)
    assert argv[0] == ".venv/bin/torchrun"
    args = get_args_parser().parse_args(argv[1:])
    assert (args.nnodes, args.node_rank, args.nproc_per_node) == ("2", 1, "4")
    assert (args.master_addr, args.module, args.training_script) == ("10.0.0.1", True, "src.train")
    cfg = compose_job(args.training_script_args)
    # torchrun starts nproc_per_node ranks on each of nnodes machines: Lightning must expect as many.
    assert (cfg.trainer.devices, cfg.trainer.num_nodes) == (4, 2)
    assert cfg.trainer.strategy._target_ == "src.models.distributed.TransferDDP"
    assert cfg.backbone.name == "mobilenetv2_100"
    assert "hydra.run.dir=outputs/torchrun/demo" in args.training_script_args


# --- sbatch ----------------------------------------------------------------------------------------
def sbatch_options(script: Path) -> dict[str, str]:
    options = {}
    for line in script.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            options[key.strip()] = value.split("#")[0].strip()
    return options


def test_slurm_script_is_valid_bash_and_matches_lightnings_slurm_environment(monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    script = CLUSTER / "slurm.sbatch"
    subprocess.run(["bash", "-n", script], check=True)
    options = sbatch_options(script)
    # Lightning saves and requeues on SIGUSR1 (its SLURMEnvironment's default requeue signal).
    assert re.fullmatch(r"SIGUSR1@\d+", options["--signal"]) and "--requeue" in options
    assert options["--ntasks-per-node"] == options["--gpus-per-node"]

    # What the job sees on a node: the srun line, rendered with SLURM's variables.
    tasks, nodes = options["--ntasks-per-node"], options["--nodes"]
    slurm = {"SLURM_NTASKS_PER_NODE": tasks, "SLURM_NNODES": nodes, "SLURM_JOB_ID": "77"}
    slurm |= {"SLURM_NTASKS": str(int(tasks) * int(nodes)), "SLURM_JOB_NAME": "transferlab"}
    slurm |= {"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    slurm |= {"SLURM_NODELIST": "gpu[01-02]", "MLFLOW_TRACKING_URI": "http://mlflow:5000"}
    srun = script.read_text().split("\nsrun ", 1)[1].replace("\\\n", " ").splitlines()[0]
    rendered = subprocess.run(
        ["bash", "-c", f"set -- backbone=mobilenetv2; printf '%s\\n' {srun}"],
        env={**os.environ, **slurm},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert rendered[:3] == [".venv/bin/python", "-m", "src.train"]
    assert "hydra.run.dir=outputs/slurm/77" in rendered  # a requeued job finds its checkpoint
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    cfg = compose_job(rendered[3:])
    assert cfg.paths.tracking_uri == "http://mlflow:5000" and cfg.paths.artifact_location is None
    environment = SLURMEnvironment()
    assert SLURMEnvironment.detect() and environment.auto_requeue
    environment.validate_settings(cfg.trainer.devices, cfg.trainer.num_nodes)  # raises if off
    assert environment.world_size() == cfg.trainer.devices * cfg.trainer.num_nodes


# --- submitit (sweeps on SLURM) --------------------------------------------------------------------
def test_submitit_launcher_config_renders_an_sbatch_file(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    overrides = ["hparams_search=lr_wd", "hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4"]
    cfg = compose_job(overrides, hydra=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["tasks_per_node"] == launcher["gpus_per_node"] == 4
    # The launcher's own translation into submitit parameters (SlurmLauncher.launch).
    launcher.pop("_target_")
    launcher["submitit_folder"] = str(tmp_path / "%j")
    folder, max_timeout = launcher.pop("submitit_folder"), launcher.pop("max_num_timeout")
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"slurm_{k}": v for k, v in launcher.items()}
    # submitit checks that it runs on a SLURM cluster by looking for srun: a stand-in on PATH.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=folder, slurm_max_num_timeout=max_timeout
    )
    executor.update_parameters(**params)  # refuses any name submitit does not know
    text = executor._executor._make_submission_file_text("python -u -m job", "uid")
    assert "#SBATCH --ntasks-per-node=4" in text and "#SBATCH --gpus-per-node=4" in text
    assert "#SBATCH --signal=USR2@120" in text and "#SBATCH --time=240" in text
    script = tmp_path / "job.sh"
    script.write_text(text)
    subprocess.run(["bash", "-n", script], check=True)


@pytest.mark.parametrize("target", ["server", "ui"])
def test_make_server_and_ui_bind_to_loopback_by_default(target):
    dry = subprocess.run(
        ["make", "-n", "-W", ".venv/.installed", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    command = next(line for line in dry.splitlines() if "mlflow" in line and " --host " in line)
    assert "--host 127.0.0.1" in command
    if target == "server":
        assert "--artifacts-destination" in command and "--backend-store-uri" in command
