"""The one road into every entry point (train, eval, predict, export, advise, report, similarity,
bench): Hydra, `--help`, error handling, signals and exit codes, fixed once here.

- Bad input (`InvalidInput`, or Hydra's own: an unknown key, an unknown group option, an override
  it cannot parse; a value of the wrong kind for its default, `optimizer.lr=fast`): one line
  naming the key and what is valid, exit 2, before any run or store. A refusal removes the run
  folder Hydra made for the job when it holds nothing but Hydra's own files.
- `+key=value` (Hydra: add a key the config lacks) is taken inside a section the project reads
  (`+callbacks.mine._target_=...`, `+trainer.accumulate_grad_batches=2`) and for a config group
  (`+experiment=...`); a new top-level key (`+foo.bar=1`) is read by no code, so it is refused
  in one line that lists the top-level keys (check_added_keys).
- The tracking store is probed before the task (src.tracking.store.check_tracking_uri): a server
  that does not answer, a file that is not an MLflow store, a locked store, a read-only or full
  disk are refused in one line, exit 2, the store untouched. A store failing mid-run: one line,
  exit 1; the runs already opened end FAILED with the reason (src.tracking.runs.run_status).
- SIGTERM raises `Terminated` (exit 143) and SIGINT KeyboardInterrupt (exit 130) in the main
  thread, so every run the process opened ends KILLED with the signal as `killed_reason`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
SIGINT_EXIT = 130  # 128 + 2, as a shell reports Ctrl-C
log = logging.getLogger(__name__)

# Whether Hydra handed the job its config: an OSError before that is Hydra making its folder.
_task_started = False
# The task's config -> {config key: tracking URI} it reads or writes (probed before the task).
Stores = Callable[[Any], Mapping[str, str | None]]


def entry_point(config_name: str, stores: Stores | None = None, in_sweep_fails_job: bool = True):
    """`@entry_point("eval", stores=...)` on `task(cfg)`: the decorated function is the command.

    in_sweep_fails_job: in a -m multirun, a refusal fails that job (its trial FAIL) and the sweep
    goes on; the sweep as a whole still exits 2 if its sweeper raises it."""

    def decorate(task: Callable[[Any], Any]) -> Callable[[], Any]:
        @wraps(task)
        def main() -> Any:
            import hydra

            @wraps(task)  # Hydra names the job (its .log file) after the task's own file
            def job(cfg):
                return _run_job(task, cfg, stores, in_sweep_fails_job, config_name)

            hydra_main = hydra.main(
                version_base="1.3", config_path=str(CONF_DIR), config_name=config_name
            )(job)
            return guarded(hydra_main, config_name)()

        return main

    return decorate


def _run_job(task, cfg, stores: Stores | None, in_sweep_fails_job: bool, config_name: str) -> Any:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from src.errors import InvalidInput

    global _task_started
    _task_started = True
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    fresh = _only_hydra_files(folder, hydra_cfg.job.name, log_empty=True)
    try:
        overrides = list(hydra_cfg.overrides.task)
        check_required(cfg)
        check_value_types(config_name, cfg, overrides, hydra_cfg.runtime.choices)
        check_added_keys(config_name, overrides, hydra_cfg.runtime.choices)
        if stores is not None:
            check_stores(stores(cfg))
        return task(cfg)
    except InvalidInput as error:
        if in_sweep_fails_job and hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # this job fails (its trial FAIL), the others go on
        log.error("Invalid input: %s", error)
        if fresh and _only_hydra_files(folder, hydra_cfg.job.name):
            _remove_run_folder(folder, cfg)
        raise SystemExit(2) from None
    except Exception as error:  # the store failing mid-run: one line here, not Hydra's report
        fault = store_fault_line(error)
        if fault is None:
            raise
        log.error("Tracking store failed: %s", fault)
        raise SystemExit(1) from None


def _only_hydra_files(folder: Path, job_name: str, log_empty: bool = False) -> bool:
    """Whether the run folder holds nothing but what Hydra put there (.hydra/, the job's log,
    empty marker files): a refusal may then remove it. log_empty: the log has no line yet, so
    the folder is no earlier run's."""
    log_file = folder / f"{job_name}.log"
    if log_empty and log_file.exists() and log_file.stat().st_size:
        return False
    for child in folder.iterdir() if folder.is_dir() else []:
        hydra_own = child.name == ".hydra" and child.is_dir() or child == log_file
        if not hydra_own and not (child.is_file() and child.stat().st_size == 0):
            return False
    return True


def _remove_run_folder(folder: Path, cfg) -> None:
    """A refused job leaves no run folder: Hydra's own (and its now empty date folder under
    paths.log_dir/runs, the default hydra.run.dir) goes; a log line is already on stderr."""
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    try:
        runs = Path(str(cfg.paths.log_dir)).resolve() / "runs"
    except Exception:  # a config without paths.log_dir (or one that does not resolve)
        return
    parent = folder.resolve().parent
    if parent.is_relative_to(runs) and parent != runs and not any(parent.iterdir()):
        parent.rmdir()


def check_required(cfg) -> None:
    """Every mandatory key (??? in conf/: predict's images, explain's run_id, an image folder's
    root) given, before any work starts: otherwise the task would stop at its first use with
    OmegaConf's traceback."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationToMissingValueError

    from src.config import required_line
    from src.errors import InvalidInput

    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except InterpolationToMissingValueError as error:  # a key interpolating a missing one
        found = re.search(r"Missing mandatory value: (\S+)", str(error))
        missing = [found.group(1) if found else str(error.full_key)]
    if missing:
        raise InvalidInput(required_line(missing))


def check_value_types(config_name: str, cfg, overrides: list[str], groups) -> None:
    """A value given on the command line must have its default's kind: a number where a number
    goes, true/false where a switch goes (`optimizer.lr=fast` is refused here, in one line, not
    a TypeError deep in a constructor). Keys without a typed default are left to their checks."""
    from src.errors import InvalidInput

    given = {}
    for override in overrides:
        key, _, _ = override.partition("=")
        if key.startswith(("+", "~", "hydra.")) or key.lstrip("+") in groups or "=" not in override:
            continue
        given[key] = override
    if not given:
        return
    kept = [o for o in overrides if o not in given.values() and not o.startswith("hydra.")]
    defaults = _composed(config_name, kept)
    if defaults is None:
        return
    from omegaconf import OmegaConf

    for key, override in given.items():
        default = _plain(defaults, key)
        value = _plain(OmegaConf.to_container(cfg, resolve=False), key)
        if value in SWITCH_WORDS.get(key, ()):
            continue
        wrong = _wrong_kind(default, value)
        if wrong and key in SWITCH_WORDS:  # a switch that also takes a word: name them all
            wrong = f"true, false or {' or '.join(SWITCH_WORDS[key])}"
        if wrong:
            raise InvalidInput(f"{override}: {wrong} (its default is {default!r}).")


# Switches (a true/false default) that also take a word; the consumer checks the word itself.
SWITCH_WORDS = {"lr_find": ("use",), "trainer.deterministic": ("warn",)}


def check_added_keys(config_name: str, overrides: list[str], groups) -> None:
    """`+key=value` is Hydra's way to add a key the config lacks. Inside a section the project
    reads (`+callbacks.mine._target_=...`, `+trainer.accumulate_grad_batches=2`) the new key is
    used; a new top-level key (`+foo.bar=1`) is read by no code and would be silently ignored,
    so it is refused. A `+group=option` (a config group, e.g. +experiment=...) is Hydra's own."""
    from src.errors import InvalidInput

    added = {}
    for override in overrides:
        key, equals, _ = override.partition("=")
        name = key.lstrip("+")
        if key.startswith("+") and equals and name not in groups and not name.startswith("hydra."):
            added.setdefault(name.split(".")[0], []).append(override)
    if not added:
        return
    adding = [o for group in added.values() for o in group]
    kept = [o for o in overrides if o not in adding and not o.startswith("hydra.")]
    known = _composed(config_name, kept)
    if known is None:
        return
    for top, (override, *_) in added.items():
        if top not in known:
            raise InvalidInput(
                f"{override}: '{top}' is not a key of {config_name}'s config, so nothing would "
                f"read it; keys at the top level: {', '.join(sorted(map(str, known)))}."
            )


def _plain(tree, key: str):
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _wrong_kind(default, value) -> str | None:
    if value is None or default is None or isinstance(value, str) and value.startswith("${"):
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int | float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return None if number else "a number"
    return None


def _composed(config_name: str, overrides: list[str]):
    """The config as Hydra composes it with these overrides, unresolved; None if it cannot be."""
    from omegaconf import OmegaConf

    from src.config import hydra_config_kept, load

    try:
        with hydra_config_kept():
            return OmegaConf.to_container(load(config_name, overrides), resolve=False)
    except Exception:  # whatever Hydra refuses here, it refused for the job first
        return None


def check_stores(stores: Mapping[str, str | None]) -> None:
    from src.errors import InvalidInput
    from src.tracking.store import check_tracking_uri

    for key, uri in stores.items():
        if uri is not None and not str(uri).strip():  # MLFLOW_TRACKING_URI= (set, but empty)
            raise InvalidInput(
                f"{key} is empty (MLFLOW_TRACKING_URI set to ''?): unset it for the default "
                "sqlite store, or give one (sqlite:///mlflow.db, http://host:5000)."
            )
        if uri:
            try:
                check_tracking_uri(str(uri), key)
            except ValueError as error:
                raise InvalidInput(str(error)) from None


def guarded(command: Callable[..., Any], config_name: str | None = None) -> Callable[..., Any]:
    """Any command (Hydra's or argparse's) with the project's errors, signals and exit codes."""

    @wraps(command)
    def run(*args, **kwargs) -> Any:
        from src.config import register_resolvers
        from src.errors import SIGTERM_EXIT, InvalidInput, is_sigterm

        os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
        quiet_store_tracebacks()
        register_resolvers()  # conf/ resolves ${store_dir:...}: here, not at import of src
        try:
            with hydra_errors_raised(), signals_raise():
                return command(*args, **kwargs)
        except KeyboardInterrupt:
            _say("Stopped by SIGINT (Ctrl-C): the runs it opened are KILLED")
            raise SystemExit(SIGINT_EXIT) from None
        except SystemExit as stop:
            if is_sigterm(stop):  # Lightning's SIGTERMException would exit 0: no success
                _say("Stopped by SIGTERM: the runs it opened are KILLED; resume=auto continues")
                raise SystemExit(SIGTERM_EXIT) from None
            raise
        except InvalidInput as error:  # a multirun's refusal that its sweeper passed on
            _say(f"Invalid input: {error}")
            raise SystemExit(2) from None
        except Exception as error:
            line = hydra_error_line(error, config_name)
            if line is None and isinstance(error, OSError) and config_name and not _task_started:
                line = f"hydra.run.dir / hydra.sweep.dir: {error}"  # Hydra making its folder
            if line is not None:
                _say(f"Invalid input: {line}")
                raise SystemExit(2) from None
            fault = store_fault_line(error)
            if fault is None:
                raise
            _say(f"Tracking store failed: {fault}")
            raise SystemExit(1) from None

    return run


def quiet_store_tracebacks() -> None:
    """MLflow's sqlite store logs each failed commit with its whole traceback before it raises;
    the raised error reaches the one "Tracking store failed" line, so those records are dropped."""
    store_log = logging.getLogger("mlflow.store.db.utils")
    if not any(f is _drop_store_error for f in store_log.filters):
        store_log.addFilter(_drop_store_error)


def _drop_store_error(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("SQLAlchemy database error")


def _say(line: str) -> None:
    """To the log once Hydra configured it (the job's log file keeps it), else to stderr."""
    if logging.getLogger().handlers:
        log.error(line)
    else:
        print(line, file=sys.stderr)


@contextmanager
def hydra_errors_raised() -> Iterator[None]:
    """Hydra prints its errors over several lines and exits 1; with HYDRA_FULL_ERROR they reach
    `guarded` as exceptions, which words them in one line."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before


@contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM raises Terminated wherever the main thread is (training nests its own handler,
    src.errors.sigterm_raises, which defers to Lightning's safe points). SIGINT keeps Python's
    KeyboardInterrupt (ignored, as a shell's background job inherits it, it stays ignored)."""
    import threading

    from src.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def hydra_error_line(error: BaseException, config_name: str | None = None) -> str | None:
    """One line for Hydra's composition and override errors; None for any other error."""
    from hydra.errors import MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and error.options:
        group = (error.missing_cfg_file or "").rsplit("/", 1)
        wanted = f"{group[0]}={group[-1]}" if len(group) == 2 else error.missing_cfg_file
        return f"{wanted}: unknown option; choose one of {list(error.options)}."
    if isinstance(error, OverrideParseException):
        first = str(error).splitlines()[0]
        return f"cannot read the override ({first}); the form is key=value or group=option."
    if type(error).__name__ == "ConfigCompositionException":
        return unknown_key_line(str(error), config_name) or " ".join(str(error).split())
    return None


def unknown_key_line(message: str, config_name: str | None) -> str | None:
    """An unknown key ("Could not override 'trainer.max_epoch'"): it and the keys beside it."""
    import re

    found = re.search(r"Could not override '([^']+)'", message) or re.search(
        r"'([^']+)' does not exist", message
    )
    if not found:
        return None
    key = found.group(1)
    parent, _, leaf = key.rpartition(".")
    keys = _keys_under(config_name, parent)
    if keys is None:
        return f"{key}: no such key (+{key}=<value> adds one)."
    import difflib

    close = difflib.get_close_matches(leaf, keys, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    where = f"'{parent}'" if parent else "the top level"
    shown = keys if len(keys) <= 20 else [*keys[:20], "..."]
    return f"{key}: no such key; {hint}keys at {where}: {', '.join(shown)}."


def _keys_under(config_name: str | None, parent: str) -> list[str] | None:
    """The keys of the default config at `parent` (None when it cannot be composed alone)."""
    if config_name is None:
        return None
    node = _composed(config_name, [])
    for part in parent.split(".") if parent else []:
        node = node.get(part) if isinstance(node, dict) else None
    return sorted(map(str, node)) if isinstance(node, dict) else None


def store_fault_line(error: BaseException) -> str | None:
    """The tracking store's own failures mid-run (sqlite locked, disk full or read-only, a server
    gone), in one line; None for anything else, which keeps its traceback."""
    faults = (
        "database is locked",
        "disk is full",
        "disk I/O error",
        "readonly database",
        "unable to open database",
        "file is not a database",
        "Max retries exceeded",
        "Connection refused",
        "API request to",
    )
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen)
        for fault in faults:
            if fault in text:
                detail = next((line for line in text.splitlines() if fault in line), fault)
                return " ".join(detail.split())[:300]
        seen = seen.__cause__ or seen.__context__
    return None
