"""src/cli.py, the one road into every entry point: Hydra's own errors in one line with exit 2
before any folder or store exists; output paths checked before work; every run a process opened
ends KILLED with the signal as its reason; wrong kinds of input named."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from src.errors import InvalidInput, Terminated
from tests.helpers.jobs import ROOT, child_env

HYDRA_ERRORS = [
    ("src.train", ["backbone=resnet_50"], "backbone=resnet_50: unknown option; choose one of"),
    (
        "src.train",
        ["trainer.max_epoch=3"],
        "trainer.max_epoch: no such key; did you mean max_epochs",
    ),
    ("src.eval", ["run_id=x", "dataset=fashionmnist"], "dataset=fashionmnist: unknown option"),
    ("src.report", ["metrc=test/acc"], "metrc: no such key; did you mean metric"),
    ("src.predict", ["seed=["], "cannot read the override"),
    ("src.similarity", ["~knn"], "knn: no such key; did you mean knn_k"),
]


@pytest.mark.parametrize("module,overrides,fragment", HYDRA_ERRORS, ids=lambda v: str(v)[:30])
def test_hydra_errors_are_one_line_with_exit_2_before_anything(
    tmp_path, module, overrides, fragment
):
    result = subprocess.run(
        [sys.executable, "-m", module, *overrides, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=child_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1 and lines[0].startswith("Invalid input: ") and fragment in lines[0]
    assert list(tmp_path.iterdir()) == []  # no run folder, no store


@pytest.mark.parametrize(
    "module,override,fragment",
    [
        ("src.train", "optimizer.lr=fast", "optimizer.lr=fast: a number (its default is 0.001)"),
        ("src.train", "trainer.enable_progress_bar=maybe", "true or false (its default is True)"),
        ("src.similarity", "knn_k=[3]", "knn_k=[3]: a number (its default is 10)"),
        ("src.train", "+foo.bar=1", "+foo.bar=1: 'foo' is not a key of train's config"),
        ("src.report", "title=x", "tracking_uri: no MLflow store at"),  # nothing to report
        ("src.predict", "top_k=3", "images is required: add images=<value> to the command"),
    ],
)
def test_a_value_of_the_wrong_kind_is_refused_before_the_task(tmp_path, module, override, fragment):
    result = subprocess.run(
        [sys.executable, "-m", module, override, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT,
        env=child_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-2000:]
    errors = [line for line in output.splitlines() if "Invalid input" in line]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in output
    assert not (tmp_path / "m.db").exists()
    assert not (tmp_path / "run").exists()  # the folder Hydra made for the job is gone


def test_added_keys_are_taken_inside_known_sections_only():
    from src.cli import check_added_keys

    inside = ["+trainer.accumulate_grad_batches=2", "+callbacks.kill._target_=x.Y", "++kind=trial"]
    check_added_keys("train", inside, {})
    with pytest.raises(InvalidInput, match=r"\+\+foo=1: 'foo' is not a key of train's config"):
        check_added_keys("train", ["++foo=1", "+foo.bar=2"], {})
    check_added_keys("similarity", ["+source=digits"], {"source": "digits"})  # a group: Hydra's


@pytest.mark.parametrize("override", ["lr_find=use", "trainer.deterministic=warn"])
def test_a_switchs_documented_word_passes_the_kind_check(override):
    """lr_find=use was refused as "true or false" (the kind check came with #34, `use` with #30)."""
    from omegaconf import OmegaConf

    from src.cli import check_value_types
    from src.config import load, register_resolvers

    register_resolvers()
    cfg = load("train", [override])
    check_value_types("train", cfg, [override], {})
    with pytest.raises(InvalidInput, match="true or false"):
        check_value_types("train", OmegaConf.merge(cfg, {"test": "maybe"}), ["test=maybe"], {})
    # A wrong word names every valid one, the switch's own word included.
    key = override.split("=")[0]
    bad = OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{key}=maybe"]))
    with pytest.raises(InvalidInput, match=f"{key}=maybe: true, false or {override.split('=')[1]}"):
        check_value_types("train", bad, [f"{key}=maybe"], {})


def test_unknown_key_lists_the_keys_beside_it():
    from src.cli import unknown_key_line

    line = unknown_key_line("Could not override 'optimizer.lrr'.", "train")
    assert line.startswith("optimizer.lrr: no such key; did you mean lr?")
    assert "keys at 'optimizer':" in line and "_target_" in line and "lr" in line


@pytest.mark.parametrize(
    "make,check,fragment",
    [
        ("dir", "file", "is a folder; give a file name"),
        ("file", "folder", "is a file; give a folder"),
        ("file", "under", "is a file, so no folder can be made under it"),
    ],
)
def test_output_paths_of_the_wrong_kind_are_refused(tmp_path, make, check, fragment):
    from src.outputs import check_output_file, check_output_folder

    target = tmp_path / "out"
    target.mkdir() if make == "dir" else target.write_text("keep me")
    with pytest.raises(InvalidInput, match=fragment):
        if check == "file":
            check_output_file(target, "csv")
        elif check == "folder":
            check_output_folder(target, "output_dir")
        else:
            check_output_folder(target / "sub" / "deeper", "output_dir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing made
    assert make == "dir" or target.read_text() == "keep me"


def test_fresh_output_paths_pass_without_being_created(tmp_path):
    from src.outputs import check_output_file, check_output_folder

    assert check_output_file(tmp_path / "a" / "b.csv", "csv") == tmp_path / "a" / "b.csv"
    check_output_folder(tmp_path / "x" / "y", "output_dir")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One MLflow sqlite store for this module's runs (its schema takes seconds to make)."""
    return f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"


@pytest.mark.parametrize(
    "error,status,tag",
    [
        (Terminated(), "KILLED", ("killed_reason", "SIGTERM")),
        (KeyboardInterrupt(), "KILLED", ("killed_reason", "KeyboardInterrupt")),
        (RuntimeError("disk is full"), "FAILED", ("error", "RuntimeError: disk is full")),
    ],
)
def test_a_run_opened_by_a_tool_ends_with_the_reason(store_uri, error, status, tag):
    from mlflow import MlflowClient

    from src.tracking.runs import mlflow_run

    uri = store_uri
    opened = mlflow_run(uri, "e", None, "r", {"kind": "similarity"}, {})
    with pytest.raises(type(error)), opened as (_, run_id):
        raise error
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == status and run.data.tags[tag[0]] == tag[1]


def test_sigterm_raises_in_the_main_thread_and_the_handler_comes_back():
    import signal

    from src.cli import signals_raise

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), signals_raise():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 0.1) if hasattr(signal, "sigtimedwait") else None
    assert signal.getsignal(signal.SIGTERM) is before


def test_store_faults_mid_run_are_one_line():
    import sqlite3

    from src.cli import store_fault_line

    try:
        raise RuntimeError("log_batch failed") from sqlite3.OperationalError(
            "database or disk is full"
        )
    except RuntimeError as error:
        assert store_fault_line(error) == "database or disk is full"
    assert store_fault_line(KeyError("a bug")) is None  # a bug keeps its traceback


@pytest.mark.parametrize("kind", ["similarity", "similarity_ranking", "explain", "sweep"])
def test_a_run_that_holds_no_model_is_refused_naming_the_kinds_that_do(store_uri, kind):
    from mlflow import MlflowClient

    from src.explain.checks import check_run
    from src.inference.trained import locate

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("kinds") or client.create_experiment("kinds")
    experiment_id = getattr(experiment, "experiment_id", experiment)
    run_id = client.create_run(experiment_id, tags={"kind": kind}).info.run_id
    refusal = rf"run_id={run_id} is a {kind} run: it holds no trained model; .*wise_ft, soup"
    with pytest.raises(InvalidInput, match=refusal):  # eval, predict, export, posthoc
        locate(run_id, None, store_uri)
    with pytest.raises(InvalidInput, match=refusal):
        check_run(run_id, store_uri)


def test_a_checkpoint_of_another_backbone_names_both():
    import timm

    from src.inference.trained import Trained, check_architecture

    model = timm.create_model("resnet10t", num_classes=3)
    other = timm.create_model("tf_efficientnet_lite0", num_classes=3).state_dict()
    trained = Trained({"backbone": {"name": "resnet10t"}}, checkpoint="x.ckpt")
    state = {"architecture": "tf_efficientnet_lite0"}
    with pytest.raises(InvalidInput) as refused:
        check_architecture(model, other, state, trained)
    message = str(refused.value)
    assert "its weights are tf_efficientnet_lite0, but its run's config builds resnet10t" in message
    assert "\n" not in message
    check_architecture(model, model.state_dict(), {"architecture": "resnet10t"}, trained)


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("knn_k", "ten", "knn_k='ten': an integer >= 1"),
        ("knn_k", 0, "knn_k=0"),
        ("max_per_class", 1, "max_per_class=1"),
        ("seed", -1, "seed=-1"),
    ],
)
def test_similarity_knobs_are_typed(key, value, fragment):
    from omegaconf import OmegaConf

    from src.similarity.__main__ import check_knobs

    cfg = OmegaConf.create({"knn_k": 10, "max_per_class": 300, "seed": 0, key: value})
    with pytest.raises(ValueError, match=fragment):
        check_knobs(cfg)


def test_knn_k_beyond_half_the_training_split_is_refused():
    from src.similarity.__main__ import check_knn_k

    check_knn_k(10, 1250)
    with pytest.raises(ValueError, match="knn_k=100000: the training split has 1250 images"):
        check_knn_k(100000, 1250)


def test_two_fresh_runs_in_one_folder_get_their_own(tmp_path):
    from src.tracking.claim import own_folder

    first = own_folder(tmp_path)  # claims it (as two runs started in the same second would race)
    second = own_folder(tmp_path)
    (tmp_path / "run3" / "checkpoints").mkdir(parents=True)  # an older run's files, unclaimed
    third = own_folder(tmp_path)
    assert (first, second, third) == (tmp_path, tmp_path / "run2", tmp_path / "run4")


@pytest.mark.parametrize("runs", [1, 2, 3, 7, 30])
@pytest.mark.parametrize("backbones", [1, 2, 3, 5])
def test_a_run_budget_starts_at_most_its_runs(runs, backbones):
    from src.advise.budget import Budget

    budget = Budget.parse(f"{runs}t")
    search = budget.trials_per_backbone(0.5, backbones)
    data_quota = max(0, runs - budget.run_quota(0.5))  # src.advise.stages.data
    assert sum(search) + data_quota == runs and search[0] >= 1 and len(search) == backbones
    assert Budget.parse("10m").trials_per_backbone(0.5, backbones) is None


def test_a_file_under_a_file_names_the_file_in_the_way(tmp_path):
    from src.outputs import check_output_file

    (tmp_path / "notes.txt").write_text("keep")
    with pytest.raises(InvalidInput, match=r"notes.txt' is a file, not a folder"):
        check_output_file(tmp_path / "notes.txt" / "p.csv", "csv")


def test_a_run_folder_under_a_file_is_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    result = subprocess.run(
        [sys.executable, "-m", "src.train", f"hydra.run.dir={tmp_path / 'notes.txt' / 'run'}"],
        cwd=ROOT,
        env=child_env(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output[-2000:]
    assert "Invalid input: hydra.run.dir / hydra.sweep.dir: [Errno 20] Not a directory" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_ui_never_migrates_another_programs_sqlite(tmp_path, capsys):
    import sqlite3

    from src.tracking.ui import main

    database = tmp_path / "customers.db"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE customers (name TEXT)")
    with pytest.raises(SystemExit) as stopped:
        main([f"sqlite:///{database}", "127.0.0.1", "5000"])
    assert stopped.value.code == 2 and "not an MLflow store" in capsys.readouterr().err
    with sqlite3.connect(database) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
    assert tables == ["customers"]


@pytest.mark.parametrize("digits,scale,fragment", [(-1, 100, "digits=-1"), (2, 0, "scale=0")])
def test_report_layout_knobs_are_ranged(tmp_path, digits, scale, fragment):
    from src.report.build import Report
    from src.report.query import Query
    from src.report.table import Layout

    layout = Layout(rows=("a",), columns=("b",), metric="test/acc", digits=digits, scale=scale)
    report = Report(
        Query(f"sqlite:///{tmp_path}/m.db", (), {}, "FINISHED", "train"),
        layout,
        output_dir=tmp_path,
        stem="t",
        formats=("md",),
        title="",
        plots={},
        experiment="reports",
        run_name="r",
        artifact_location=None,
    )
    with pytest.raises(InvalidInput, match=fragment):
        report.check()


def test_a_text_file_as_checkpoint_is_named_as_such(tmp_path):
    from src.inference.trained import locate

    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    with pytest.raises(InvalidInput, match="notes.txt': not a checkpoint"):
        locate(None, str(notes), f"sqlite:///{tmp_path}/m.db")


def test_an_empty_tracking_uri_is_refused_not_taken_for_mlflows_file_store():
    from src.cli import check_stores

    with pytest.raises(InvalidInput, match=r"^paths.tracking_uri is empty \(MLFLOW_TRACKING_URI"):
        check_stores({"paths.tracking_uri": "  "})
    check_stores({"paths.tracking_uri": None})  # not used by this entry point: nothing to check


def test_a_report_status_mlflow_never_sets_is_named():
    from src.report.query import Query

    with pytest.raises(InvalidInput, match=r"^status=NOPE: one of \['FINISHED', 'FAILED'"):
        Query("sqlite:///unused.db", status="NOPE")
    assert Query("sqlite:///unused.db", status=None).filter_string() in ("", None)
