"""src.report over a fixture MLflow store whose values are known: every printed number is checked."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
import subprocess
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from src.errors import InvalidInput
from src.report.__main__ import report_from_config
from src.report.build import write_report
from tests.helpers.compose import compose_raw
from tests.helpers.servers import mlflow_server

EXPERIMENT = "fixture_study"
# Drawn from the fixture; data_efficiency and imagenet_vs_transfer are not: every run there has
# one fraction and one backbone, a single point on their x-axes (tested below).
PLOTS = ("learning_curves.png", "similarity_vs_gain.png")
# (dataset, strategy, seed) -> test/acc of the finished runs in study "demo".
VALUES = {
    ("digits", "finetune", 0): 0.80,
    ("digits", "finetune", 1): 0.83,
    ("digits", "finetune", 2): 0.84,
    ("digits", "lp_ft", 0): 0.81,
    ("digits", "lp_ft", 1): 0.83,
    ("digits", "lp_ft", 2): 0.85,
    ("digits", "scratch", 0): 0.50,
    ("digits", "scratch", 1): 0.60,  # one seed missing
    ("mnist", "finetune", 0): 0.90,
    ("mnist", "finetune", 1): 0.91,
    ("mnist", "finetune", 2): 0.92,
    ("mnist", "scratch", 0): 0.70,  # mnist x lp_ft: no run at all
}
# What the table must print (x100, 2 digits, sample std), worked out by hand.
EXPECTED = {
    ("digits", "finetune"): "82.33 ± 2.08",
    ("digits", "lp_ft"): "83.00 ± 2.00",  # alone in its column: nothing to be best of
    ("digits", "scratch"): "55.00 ± 7.07 (n=2)",
    ("mnist", "finetune"): "**91.00 ± 1.00**",
    ("mnist", "lp_ft"): "—",
    ("mnist", "scratch"): "**70.00 (n=1)**",
}


SIMILARITY = {
    "digits": 0.3,
    "mnist": 0.6,
    "fashion_mnist": 0.5,
}  # metric similarity/domain_similarity


def add_run(client, experiment_id, tags, acc, start_time, status="FINISHED", curve=(), params=None):
    run = client.create_run(experiment_id, start_time=start_time, tags=tags)
    metrics = [Metric("test/acc", acc, start_time, 0)]
    metrics += [Metric("similarity/domain_similarity", SIMILARITY[tags["dataset"]], start_time, 0)]
    # As Lightning logs them: val/acc at the step ending each epoch, `epoch` at the same step.
    metrics += [
        Metric("val/acc", value, start_time, 7 * (step + 1)) for step, value in enumerate(curve)
    ]
    metrics += [Metric("epoch", step, start_time, 7 * (step + 1)) for step in range(len(curve))]
    client.log_batch(run.info.run_id, metrics=metrics)
    for key, value in {"optimizer/lr": "0.001", "seed": tags["seed"], **(params or {})}.items():
        client.log_param(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def tags_of(dataset, strategy, seed, study="demo", fraction="0.1"):
    return {
        "pretrained": str(strategy != "scratch"),
        "study": study,
        "dataset": dataset,
        "strategy": strategy,
        "seed": str(seed),
        "fraction": fraction,
        "backbone": "tf_efficientnet_lite0",
        "dataset_key": dataset,
        "weights": "package",
    }


def build_store(root: Path) -> str:
    """The runs of VALUES, plus three that must not count: an older rerun of a seed (the newest
    run of a seed wins), a failed run and a run of another study."""
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=str(root / "artifacts"))
    add_run(client, experiment_id, tags_of("digits", "finetune", 0), 0.10, start_time=1_000)
    for (dataset, strategy, seed), acc in VALUES.items():
        curve = (acc - 0.2, acc - 0.1, acc)
        add_run(client, experiment_id, tags_of(dataset, strategy, seed), acc, 2_000, curve=curve)
    add_run(client, experiment_id, tags_of("digits", "finetune", 3), 0.99, 3_000, status="FAILED")
    add_run(client, experiment_id, tags_of("digits", "finetune", 0, study="other"), 0.99, 3_000)
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("store")
    return build_store(root), root


def compose_report(uri: str, out: Path, overrides: list[str] = ()):
    return compose_raw(
        "report",
        [
            f"tracking_uri={uri}",
            f"output_dir={out}",
            f"paths.artifact_location={out}/art",
            f"experiments=[{EXPERIMENT}]",
            "+filters.study=demo",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def report(store, tmp_path_factory) -> tuple[dict[str, Path], str]:
    uri, _ = store
    out = tmp_path_factory.mktemp("report")
    paths = write_report(report_from_config(compose_report(uri, out)))
    return {path.name: path for path in paths}, uri


def test_training_runs_carry_the_tags_a_report_filters_by(tmp_path):
    from src.config import run_tags
    from tests.helpers.compose import choices, compose_train

    tags = run_tags(compose_train(tmp_path, ["experiment_name=transfer_table"]), choices())
    assert {"backbone", "strategy", "dataset", "fraction", "seed"} <= set(tags)
    assert tags["study"] == "transfer_table"  # the experiment name unless `study=` says otherwise


def markdown_cells(text: str) -> dict[tuple[str, str], str]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in line.strip("|").split(" | ")]  # noqa: E731
    header, body = split(lines[0]), [split(line) for line in lines[2:]]
    return {
        (row[0], col): cell for row in body for col, cell in zip(header[1:], row[1:], strict=True)
    }


def test_markdown_numbers_match_to_the_last_digit(report):
    files, _ = report
    assert markdown_cells(files["table.md"].read_text()) == EXPECTED


def test_markdown_is_a_table(report):
    lines = [
        line for line in report[0]["table.md"].read_text().splitlines() if line.startswith("|")
    ]
    assert len(lines) == 2 + 2  # header, separator, two data sets
    assert re.fullmatch(r"\|(---\|){4}", lines[1])
    assert all(line.endswith("|") and line.count(" | ") == 3 for line in (lines[0], *lines[2:]))


def test_csv_holds_the_unrounded_statistics(report):
    rows = {(r["row"], r["column"]): r for r in csv.DictReader(report[0]["table.csv"].open())}
    for (dataset, strategy), row in rows.items():
        values = [v for (d, s, _), v in VALUES.items() if (d, s) == (dataset, strategy)]
        assert int(row["n"]) == len(values)
        if values:
            assert float(row["mean"]) == pytest.approx(statistics.mean(values), rel=1e-12)
        if len(values) > 1:  # sample std, ddof=1
            assert float(row["std"]) == pytest.approx(statistics.stdev(values), rel=1e-12)
        assert row["best"] == str(EXPECTED[dataset, strategy].startswith("**"))


def latex_problems(tex: str) -> list[str]:
    """A LaTeX-aware structural check, for machines without TeX: balanced braces and
    environments, booktabs rules in order, the tabular's column count on every row, and no
    unescaped special character."""
    problems, stack, depth = [], [], 0
    for match in re.finditer(r"\\(begin|end)\{(\w+)\}|(?<!\\)[{}]", tex):
        if match.group(1) == "begin":
            stack.append(match.group(2))
        elif match.group(1) == "end" and (not stack or stack.pop() != match.group(2)):
            problems.append(f"\\end{{{match.group(2)}}} does not close its \\begin")
        elif match.group(0) in "{}":
            depth += 1 if match.group(0) == "{" else -1
            problems += ["unbalanced }"] if depth < 0 else []
    problems += [f"unclosed {stack}"] * bool(stack) + ["unbalanced {"] * bool(depth)
    spec = re.search(r"\\begin\{tabular\}\{([lcr]+)\}", tex).group(1)
    body = tex.split("\\begin{tabular}", 1)[1].split("\\end{tabular}")[0].splitlines()[1:]
    rules = [line for line in body if line.startswith(("\\toprule", "\\midrule", "\\bottomrule"))]
    if rules != ["\\toprule", "\\midrule", "\\bottomrule"]:
        problems.append(f"booktabs rules {rules}")
    for line in (line for line in body if line.endswith("\\\\")):
        cells = re.split(r"(?<!\\)&", line)
        spans = [
            int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells
        ]
        problems += [f"{sum(spans)} cells for {len(spec)} columns: {line}"] * (
            sum(spans) != len(spec)
        )
        problems += [f"unescaped special: {line}"] * bool(re.search(r"(?<!\\)[_%#]", line))
    return problems


def test_latex_is_booktabs_and_well_formed(report):
    files, _ = report
    table = files["table.tex"].read_text()
    assert latex_problems(files["table_document.tex"].read_text()) == []
    assert "\\textbf{91.00 $\\pm$ 1.00}" in table and "70.00 (n=1)" in table
    assert "MNIST & 91.00" not in table and "---" in table  # bold, and the missing cell's dash
    # Words for the reader, not keys: the metric, the data sets, the strategies.
    assert "Test accuracy (\\%), mean $\\pm$ sample standard deviation over 3 seeds" in table
    assert "test/acc" not in table and "LP-FT" in table and "Fine-tuning" in table
    assert "\\multicolumn{3}{c}{Strategy}" in table and "\\cmidrule(lr){2-4}" in table


def compile_latex(document: Path, out: Path) -> str:
    """pdflatex's log of the document; the test fails on a LaTeX error."""
    result = subprocess.run(
        [
            "pdflatex",
            "-interaction=nonstopmode",
            "-halt-on-error",
            f"-output-directory={out}",
            str(document),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    return result.stdout


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no TeX installed")
def test_latex_compiles(report, tmp_path):
    assert "Overfull \\hbox" not in compile_latex(report[0]["table_document.tex"], tmp_path)


def test_report_is_a_kind_report_run_recording_the_query(report):
    files, uri = report
    client = MlflowClient(uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("reports").experiment_id], "tags.kind = 'report'"
    )
    assert run.data.params["experiments"] == EXPERIMENT
    assert "tags.`study` = 'demo'" in run.data.params["filter"]
    assert (run.data.params["rows"], run.data.params["columns"]) == ("dataset", "strategy")
    logged = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert logged == set(files)
    assert set(PLOTS) <= logged


def test_plots_are_png(report):
    for name in PLOTS:
        assert report[0][name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_efficiency_points_are_the_table_cells(store):
    from src.report.plots import curve_data, seed_stats
    from src.report.query import Query, search
    from src.report.table import Layout, select

    frame = search(Query(store[0], (EXPERIMENT,), {"study": "demo"}))
    selection = select(frame, Layout(rows=("dataset",), columns=("strategy",)))
    keys = {"x": "fraction", "line": "strategy", "panel": "dataset"}
    data = curve_data(selection.frame, "test/acc", keys)
    stats = seed_stats(data[data["panel"] == "digits"], ["line", "x"], "value").set_index("line")
    finetune = [VALUES["digits", "finetune", seed] for seed in range(3)]  # not the older rerun
    assert stats.loc["Fine-tuning", "mean"] == pytest.approx(statistics.mean(finetune), rel=1e-12)
    assert stats.loc["Fine-tuning", "std"] == pytest.approx(statistics.stdev(finetune), rel=1e-12)
    assert stats.loc["Scratch", "count"] == 2  # the legend reads words


def test_rows_and_columns_are_any_tag_or_param_and_filters_take_lists(store, tmp_path):
    uri, _ = store
    overrides = [
        "rows=[strategy]",
        "columns=[params.optimizer/lr]",
        "formats=[csv]",
        "plots=null",
        "+filters.dataset=[mnist]",
        "scale=1",
        "digits=4",
    ]
    paths = write_report(report_from_config(compose_report(uri, tmp_path, overrides)))
    rows = {r["row"]: r for r in csv.DictReader(paths[0].open())}
    assert set(rows) == {"finetune", "scratch"} and rows["finetune"]["column"] == "0.001"
    assert int(rows["finetune"]["n"]) == 3


def test_several_keys_make_one_label_and_a_configured_order_comes_first(store, tmp_path):
    uri, _ = store
    overrides = [
        "rows=[dataset,fraction]",
        "column_order=[scratch,lp_ft]",
        "formats=[md]",
        "plots=null",
    ]
    (path,) = write_report(report_from_config(compose_report(uri, tmp_path, overrides)))
    header, _, first, second = [
        line for line in path.read_text().splitlines() if line.startswith("|")
    ]
    assert header == "| dataset / fraction \\\\ strategy | scratch | lp_ft | finetune |"
    assert first.startswith("| digits / 0.1 | 55.00 ± 7.07 (n=2) |") and second.startswith(
        "| mnist / 0.1 |"
    )


# --- runs that must not be mixed ------------------------------------------------------------------
def fresh_store(root: Path):
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment(EXPERIMENT, artifact_location=str(root / "art"))


def csv_cells(paths: list[Path]) -> dict[tuple[str, str], dict]:
    (table,) = [p for p in paths if p.suffix == ".csv"]
    return {(r["row"], r["column"]): r for r in csv.DictReader(table.open())}


def test_a_sweep_in_the_experiment_leaves_the_plain_runs_cell_alone(tmp_path):
    """Done when: plain runs plus a 4-trial sweep in one experiment, same strategy, seed and
    study tags: the finetune cell is the plain runs' mean; the trials are a report of their own."""
    uri, client, experiment = fresh_store(tmp_path)
    plain = {0: 0.95, 1: 0.97, 2: 0.96}
    for seed, acc in plain.items():
        tags = tags_of("digits", "finetune", seed) | {"kind": "train"}
        add_run(client, experiment, tags, acc, 2_000 + seed, params={"trainer/max_epochs": "5"})
    trials = [(1e-2, 0.633), (1e-3, 0.90), (1e-4, 0.50), (3e-3, 0.162)]
    for number, (lr, acc) in enumerate(trials):  # newer than the plain runs, seed 0 among them
        tags = tags_of("digits", "finetune", 0) | {"optuna.trial.number": str(number)}
        if number < 3:  # trial 3 was logged before runs had a kind tag: found by its trial number
            tags["kind"] = "sweep_trial"
        add_run(
            client,
            experiment,
            tags,
            acc,
            5_000 + number,
            params={"optimizer/lr": str(lr), "trainer/max_epochs": "3"},
        )
    client.create_run(experiment, tags={"kind": "sweep", "study": "demo"})  # the study's parent
    overrides = ["rows=[backbone]", "columns=[strategy]", "formats=[csv,md]", "plots=null"]

    paths = write_report(report_from_config(compose_report(uri, tmp_path / "a", overrides)))
    (cell,) = csv_cells(paths).values()
    assert float(cell["mean"]) == pytest.approx(statistics.mean(plain.values()), rel=1e-12)
    assert int(cell["n"]) == 3 and cell["best"] == "False"  # one cell: nothing to be best of
    assert "**" not in paths[1].read_text()

    paths = write_report(
        report_from_config(compose_report(uri, tmp_path / "b", [*overrides, "kind=sweep_trial"]))
    )
    cells = csv_cells(paths)  # one row per learning rate: trials differ in it, not by seed
    assert sorted(float(c["mean"]) for c in cells.values()) == sorted(a for _, a in trials)
    assert "Rows also split by learning rate" in paths[1].read_text()


def test_params_that_differ_split_a_cell_or_are_named_in_the_caption(tmp_path):
    uri, client, experiment = fresh_store(tmp_path)
    for seed, epochs, acc in [(0, "5", 0.9), (1, "5", 0.92), (2, "3", 0.7)]:  # epochs differ
        add_run(
            client,
            experiment,
            tags_of("digits", "finetune", seed),
            acc,
            2_000 + seed,
            params={"trainer/max_epochs": epochs},
        )
    for seed in range(2):  # another cell, constant inside, other epochs than its neighbours
        add_run(
            client,
            experiment,
            tags_of("digits", "lp_ft", seed),
            0.8,
            2_000,
            params={"trainer/max_epochs": "10", "strategy/probe_epochs": "2"},
        )
    overrides = ["rows=[dataset]", "columns=[strategy]", "formats=[csv,md,tex]", "plots=null"]
    paths = write_report(report_from_config(compose_report(uri, tmp_path / "r", overrides)))
    cells = csv_cells(paths)
    assert cells["digits / 5", "finetune"]["mean"] == repr(statistics.mean([0.9, 0.92]))
    assert cells["digits / 3", "finetune"]["n"] == "1"
    assert cells["digits / 10", "lp_ft"]["n"] == "2"
    tex = next(p for p in paths if p.name == "table.tex").read_text()
    assert "Rows also split by epochs" in tex
    # trainer/max_epochs is a row key now; the probe epochs differ between cells only.
    assert "Cells also differ in: LP-FT probe epochs" not in tex  # one value where it is set


def test_two_column_keys_get_a_grouped_header_and_the_table_fits_the_page(tmp_path):
    uri, client, experiment = fresh_store(tmp_path)
    strategies = ("scratch", "linear_probe", "feature_extract", "finetune", "lp_ft", "partial")
    for dataset in ("fashion_mnist", "mnist"):
        for fraction in ("0.01", "0.1", "1.0"):
            for strategy in strategies:
                for seed in range(2):
                    tags = tags_of(dataset, strategy, seed, fraction=fraction)
                    add_run(client, experiment, tags, 0.5 + 0.1 * seed, 2_000)
    overrides = [
        "rows=[strategy]",
        "columns=[dataset,fraction]",
        "formats=[tex]",
        "plots=null",
        "title='Transfer from ImageNet'",
    ]
    paths = write_report(report_from_config(compose_report(uri, tmp_path / "r", overrides)))
    document = next(p for p in paths if p.name == "table_document.tex")
    tex = document.read_text()
    assert latex_problems(tex) == []
    assert "\\multicolumn{3}{c}{Fashion-MNIST} & \\multicolumn{3}{c}{MNIST}" in tex
    assert "\\cmidrule(lr){2-4} \\cmidrule(lr){5-7}" in tex
    assert "Strategy & 1\\% & 10\\% & 100\\% & 1\\% & 10\\% & 100\\%" in tex
    assert "\\caption{Transfer from ImageNet. Test accuracy" in tex
    assert "\\resizebox{\\ifdim\\width>\\linewidth" in tex
    if shutil.which("pdflatex"):
        assert "Overfull \\hbox" not in compile_latex(document, tmp_path)


def test_bands_stay_in_the_metric_range_and_curves_are_by_epoch(store):
    from matplotlib.figure import Figure

    from src.report.plots import bounds, draw_lines, histories
    from src.report.query import Query, search

    stats = __import__("pandas").DataFrame(
        {"line": ["a", "a"], "x": [1, 2], "mean": [0.95, 0.99], "std": [0.2, 0.3]}
    )
    ax = Figure().subplots()
    draw_lines(ax, stats, "x", "line", 100.0, bounds("test/acc", 100.0))
    (band,) = ax.collections
    assert band.get_paths()[0].vertices[:, 1].max() <= 100.0
    assert bounds("val/loss", 100.0) is None  # a loss has no upper end
    frame = search(Query(store[0], (EXPERIMENT,), {"study": "demo"}))
    values = histories(MlflowClient(store[0]), frame.head(1), "val/acc")
    assert sorted(values["epoch"]) == [1, 2, 3]  # logged at steps 7, 14, 21


def test_plots_take_the_title_and_skip_single_point_panels(store, tmp_path, monkeypatch, caplog):
    from src.report import plots

    titles = []
    original = plots.save
    monkeypatch.setattr(plots, "save", lambda *a, **k: titles.append(a[3]) or original(*a, **k))
    uri, _ = store
    with caplog.at_level("INFO"):
        paths = write_report(report_from_config(compose_report(uri, tmp_path, ["title=Demo"])))
    assert titles and set(titles) == {"Demo"}
    names = {path.name for path in paths}
    assert "data_efficiency.png" not in names and "imagenet_vs_transfer.png" not in names
    assert "panel digits left out: 1 point(s) on its x-axis" in caplog.text


@pytest.mark.parametrize(
    "override, message",
    [
        ("experiments=[nope]", "No MLflow experiment named"),
        ("formats=[docx]", "unknown"),
        ("mode=best", "mode="),
        ("++filters.study=absent", "No run matched"),
        ("kind=nosuchkind", r"kind=nosuchkind: no run of that kind; the runs found are of kinds"),
        ("rows=[stratgy]", r"rows/columns \['stratgy'\]: no run has such a tag"),
    ],
)
def test_bad_input_is_refused_before_a_report_run(store, tmp_path, override, message):
    uri, _ = store
    with pytest.raises(InvalidInput, match=message):
        write_report(report_from_config(compose_report(uri, tmp_path, [override])))


def rest(base: str, endpoint: str, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{base}/api/2.0/mlflow/{endpoint}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server(store) -> str:
    """`mlflow server` on a free loopback port over the fixture store, as `make ui` starts it."""
    uri, root = store
    with mlflow_server(uri, root / "artifacts", proxied=False) as base:
        yield base


@pytest.mark.slow
def test_mlflow_server_finds_a_study_with_its_params_and_metrics(server):
    experiment = rest(server, f"experiments/get-by-name?experiment_name={EXPERIMENT}")["experiment"]
    found = rest(
        server,
        "runs/search",
        {
            "experiment_ids": [experiment["experiment_id"]],
            "filter": "tags.study = 'demo' and attributes.status = 'FINISHED'",
            "max_results": 100,
        },
    )["runs"]
    assert len(found) == len(VALUES) + 1  # the older rerun of a seed is a run of the study too
    for run in found:
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert {"backbone", "strategy", "dataset", "fraction", "seed", "study"} <= set(tags)
        assert params["optimizer/lr"] == "0.001"
        key = (tags["dataset"], tags["strategy"], int(tags["seed"]))
        assert metrics["test/acc"] in (VALUES[key], 0.10)
        assert "val/acc" in metrics or metrics["test/acc"] == 0.10


@pytest.mark.slow
def test_analysis_notebook_runs_over_the_fixture_store(store, monkeypatch, tmp_path):
    """The notebook runs in a real kernel (nbclient) over the fixture store."""
    import nbclient
    import nbformat

    uri, _ = store
    notebook = Path(__file__).resolve().parents[2] / "notebooks" / "analysis.ipynb"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("STUDY", "demo")
    monkeypatch.chdir(notebook.parents[1])
    executed = nbclient.NotebookClient(nbformat.read(notebook, as_version=4), timeout=120).execute()
    outputs = json.dumps([cell.get("outputs", []) for cell in executed.cells], ensure_ascii=False)
    assert "91.00 ± 1.00" in outputs and "image/png" in outputs


def test_a_moved_callback_class_does_not_split_a_cell_but_its_settings_do():
    import pandas as pd

    from src.report.table import Layout, select

    frame = pd.DataFrame(
        {
            "run_id": ["a", "b"],
            "start_time": pd.to_datetime(["2026-01-01", "2026-01-02"]),
            "tags.backbone": ["x", "x"],
            "tags.seed": ["0", "1"],
            "metrics.test/acc": [0.5, 0.6],
            "params.callbacks/run_artifacts/_target_": [
                "src.tracking.A",
                "src.tracking.callbacks.A",
            ],
            "params.callbacks/early_stopping/patience": ["3", "3"],
        }
    )
    layout = Layout(rows=("backbone",), columns=("backbone",))
    assert select(frame, layout).split_by == []
    frame["params.callbacks/early_stopping/patience"] = ["3", "5"]
    assert select(frame, layout).split_by == ["callbacks/early_stopping/patience"]


@pytest.mark.parametrize("seed_column", ["tags.seed", None])
def test_runs_without_a_seed_count_once_each_not_as_one(seed_column):
    """A run with no seed (no such tag, or no value) is a seed of its own: three such runs make
    n=3, not one run that 'replaces' the others as a rerun would."""
    import pandas as pd

    from src.report.table import Layout, aggregate, select

    frame = pd.DataFrame(
        {
            "run_id": ["a", "b", "c"],
            "start_time": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"]),
            "tags.backbone": ["x", "x", "x"],
            "metrics.test/acc": [0.5, 0.6, 0.7],
        }
    )
    if seed_column:
        frame[seed_column] = [None, None, None]
    layout = Layout(rows=("backbone",), columns=("backbone",))
    selection = select(frame, layout)
    (cell,) = aggregate(selection.frame, selection.layout).cells.values()
    assert cell.n == 3 and cell.mean == pytest.approx(0.6)


def test_curve_labels_survive_runs_without_a_key():
    """pandas 3's astype(str) keeps NaN: `src.report kind=explain` (runs with no dataset/strategy
    params) died in line_labels with 'expected str instance, float found'."""
    import numpy as np
    import pandas as pd

    from src.report.plots import curve_data

    frame = pd.DataFrame(
        {
            "params.fraction": [np.nan, "0.5", "0.5"],
            "params.strategy": [np.nan, "finetune", "finetune"],
            "params.dataset": [np.nan, "digits", "digits"],
            "params.backbone": ["a", np.nan, "b"],
            "metrics.test/acc": [0.5, 0.7, 0.8],
        }
    )
    data = curve_data(
        frame, "test/acc", {"x": "fraction", "line": "strategy", "panel": "dataset"}, ("backbone",)
    )
    lines = data["line"].tolist()
    assert lines[0].startswith("?") and lines[1].endswith(", ?") and lines[2].endswith(", b")
    assert len(set(lines)) == 3  # a run without the key is its own line, not a crash
