"""`make ui`: the runs page of every experiment in the store, as URLs to open.

`python -m src.tracking.ui <tracking URI> <host> <port>` gives each experiment the tags that make
MLflow's UI a model-training page (src/tracking/store.py: experiment kind, the runs view), which
experiments created by an older version lack, and prints one URL per experiment.
"""

from __future__ import annotations

import sys


def runs_urls(tracking_uri: str, base: str) -> dict[str, str]:
    """{experiment name: its runs page} for every experiment of the store, tagged on the way."""
    from mlflow import MlflowClient

    from src.tracking.store import runs_url, tag_experiment

    client = MlflowClient(tracking_uri)
    urls = {}
    for experiment in client.search_experiments():
        tag_experiment(client, experiment)
        urls[experiment.name] = runs_url(base, experiment.experiment_id)
    return urls


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m src.tracking.ui",
        description="Tag every experiment of a store as model training and print its runs page "
        "(what `make ui` prints before it starts the MLflow UI).",
    )
    parser.add_argument("tracking_uri", help="the store, e.g. sqlite:///mlflow.db")
    parser.add_argument("host", help="where the UI listens, e.g. 127.0.0.1")
    parser.add_argument("port", help="its port, e.g. 5000")
    args = parser.parse_args(argv)
    tracking_uri, host, port = args.tracking_uri, args.host, args.port
    from src.tracking.store import check_tracking_uri

    try:  # another program's sqlite file would be migrated into an MLflow store: refused
        check_tracking_uri(tracking_uri, "tracking_uri")
    except ValueError as error:
        parser.error(str(error))
    urls = runs_urls(tracking_uri, f"http://{host}:{port}")
    if not urls:
        print(f"No experiment in {tracking_uri} yet: train something first (make train).")
    for name, url in urls.items():
        print(f"Runs of {name}: {url}")


if __name__ == "__main__":  # not through src.cli (src.tracking sits below it): argparse's errors
    main(sys.argv[1:])
