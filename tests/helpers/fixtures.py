"""Fixtures of every test module (tests/conftest.py loads this as a plugin)."""

from __future__ import annotations

import os

import pytest

from tests.helpers.jobs import tiny


@pytest.fixture
def tiny_overrides() -> list[str]:
    """The tiny job (tests/helpers/jobs.py tiny()): seconds-long real training, digits at 32 px."""
    return tiny()


@pytest.fixture
def one_thread():
    """One torch thread: on a busy shared CPU two OpenMP threads spin-wait on each other (a step
    measured 15x slower with two)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL server on loopback for the test module (tests/helpers/servers.py)."""
    from tests.helpers.servers import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """`mlflow server` with a PostgreSQL backend store and an artifact destination: what
    docs/cluster.md sets up for workers on several machines. Yields (url, artifacts folder)."""
    from tests.helpers.servers import create_database, mlflow_server

    artifacts = tmp_path_factory.mktemp("mlflow-server") / "artifacts"
    artifacts.mkdir()
    with mlflow_server(create_database(postgres, "mlflow"), artifacts) as url:
        yield url, artifacts


# What the person running the tests set (usually nothing), read before any test could change it.
SESSION_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def _restore_tracking_uri() -> None:
    if SESSION_TRACKING_URI is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = SESSION_TRACKING_URI


@pytest.fixture(autouse=True)
def _tracking_uri_stays_per_test():
    """mlflow.set_tracking_uri (Lightning's MLFlowLogger calls it) also exports
    MLFLOW_TRACKING_URI to this process; left set, a later test's config (paths.tracking_uri reads
    it) and its subprocesses would write into an earlier test's store. Reset before and after each
    test: a module-scoped fixture that trains (test_use's) runs before this one and set it too."""
    _restore_tracking_uri()
    yield
    _restore_tracking_uri()
