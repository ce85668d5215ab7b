"""`python -m src.export run_id=<id> formats=[torchscript,onnx] mlflow_model=true
registered_name=<name>`: TorchScript / ONNX files and an MLflow Model, checked against the
checkpoint's logits, each recording the run and checkpoint it came from."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from src.cli import entry_point

log = logging.getLogger(__name__)


def export_run(cfg: DictConfig) -> dict[str, str]:
    """{format: path or model URI} of every export made."""
    from mlflow.tracking import MlflowClient

    from src.errors import InvalidInput, refuse_bad_input
    from src.inference import export as E
    from src.inference.trained import data_config, load_model, locate
    from src.outputs import check_output_folder

    # 1. Source, formats and exporters are checked before anything is written.
    with refuse_bad_input():
        formats = [cfg.formats] if isinstance(cfg.formats, str) else list(cfg.formats or [])
        E.check_formats(formats)
        if not formats and not cfg.mlflow_model:
            raise InvalidInput(
                "Nothing to export: give formats=[torchscript,onnx] or mlflow_model=true."
            )
        if cfg.registered_name and not cfg.mlflow_model:
            raise InvalidInput(
                "registered_name= registers the MLflow model: add mlflow_model=true."
            )
        atol = cfg.atol
        if isinstance(atol, bool) or not isinstance(atol, int | float) or not 0 < atol < 1:
            raise InvalidInput(f"atol={atol}: the largest logit difference allowed, in (0, 1).")
        trained = locate(cfg.run_id, cfg.ckpt_path, cfg.paths.tracking_uri, cfg.checkpoint)
        if cfg.mlflow_model and not trained.run_id:
            raise InvalidInput("mlflow_model=true logs into the training run: give run_id.")
        if formats and cfg.output_dir is not None:  # the files go there (a model: the run)
            check_output_folder(cfg.output_dir, "output_dir")
        model = load_model(trained)
    config = data_config(model)
    example = E.example_input(config["input_size"])
    usage = E.usage(trained.class_names, config, trained)
    metadata = E.metadata_props(usage, trained.provenance)
    # 2. Each export, verified against the checkpoint's logits.
    folder = Path(cfg.output_dir)
    files = {fmt: E.export(model, example, folder, fmt, cfg.atol, metadata) for fmt in formats}
    E.write_provenance(folder, trained.provenance, files, usage)
    made = {fmt: str(path) for fmt, path in files.items()}
    if trained.run_id:  # provenance on the run's side too
        client = MlflowClient(cfg.paths.tracking_uri)
        for fmt, path in made.items():
            client.set_tag(trained.run_id, f"export/{fmt}", path)
    if cfg.mlflow_model:
        made["mlflow"] = E.log_mlflow_model(
            model,
            example,
            trained.run_id,
            cfg.paths.tracking_uri,
            trained.provenance,
            cfg.registered_name,
            usage,
        )
    return made


@entry_point(
    "export",
    stores=lambda cfg: {"paths.tracking_uri": cfg.paths.tracking_uri if cfg.run_id else None},
)
def main(cfg: DictConfig) -> None:
    from src.tracking.store import done_line

    made = export_run(cfg)

    for fmt, where in made.items():
        log.info("%s: %s", fmt, where)
    log.info(done_line(cfg.run_id, cfg.output_dir, cfg.paths.tracking_uri))


if __name__ == "__main__":
    main()
