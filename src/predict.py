"""`python -m src.predict run_id=<id> images=<file|folder>`: top-k labels with probabilities;
without a run or checkpoint, the ImageNet-pretrained backbone names ImageNet classes."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, ListConfig

from src.cli import entry_point

log = logging.getLogger(__name__)


def predict_images(cfg: DictConfig) -> list[list[tuple[str, float]]]:
    """Per image, the top-k (label, probability): softmax over classes; for a multi-label model
    every label whose sigmoid reaches its stored threshold; for an SVM head its margins (score).
    Printed, and written to cfg.csv when set."""
    from src.config import instantiate_node
    from src.data.preprocessing import eval_transform
    from src.errors import InvalidInput, refuse_bad_input
    from src.inference import predict as P
    from src.inference.trained import Trained, data_config, load_model, locate
    from src.outputs import check_output_file
    from src.posthoc.tta import TestTimeAugmented, run_views

    # 1. Files, images and model are checked before anything is predicted.
    with refuse_bad_input():
        P.check_top_k(cfg.top_k)
        if cfg.csv:  # before any image is read or predicted
            check_output_file(cfg.csv, "csv")
        size = cfg.batch_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise InvalidInput(f"batch_size={size}: an integer >= 1.")
        paths = list(cfg.images) if isinstance(cfg.images, ListConfig) else [cfg.images]
        files = P.image_files(map(str, paths))
        images = P.read_images(files)
        if cfg.run_id or cfg.ckpt_path:
            trained = locate(cfg.run_id, cfg.ckpt_path, cfg.paths.tracking_uri, cfg.checkpoint)
            model, names = load_model(trained), trained.class_names
        else:  # num_classes=None keeps the ImageNet head the weights came with
            model = instantiate_node(cfg.backbone, num_classes=None).eval()
            names = P.imagenet_names()
            trained = Trained({}, Path())
        tta = run_views(cfg.get("tta"), trained)
        explaining = explain_predictions(model, cfg, names)  # explain=: method, class checked
    # 2. The model's own evaluation preprocessing, then its labels.
    transform = eval_transform(data_config(model))
    if tta:  # the mean softmax over the views, as log-probabilities: softmax gives it back
        model = TestTimeAugmented(model, tta)
    scores = P.logits(model, images, transform, cfg.batch_size)
    if trained.thresholds is not None:
        tops = P.multilabel(scores, names, trained.thresholds)
    else:
        tops = P.top_k(scores.softmax(-1) if trained.probabilistic else scores, names, cfg.top_k)
    print(P.format_table(files, tops))
    if cfg.csv:
        if trained.thresholds is not None:
            P.write_label_csv(Path(cfg.csv), files, scores.sigmoid(), names, trained.thresholds)
        else:
            P.write_csv(
                Path(cfg.csv), files, tops, "probability" if trained.probabilistic else "score"
            )
        log.info("Predictions written to %s", cfg.csv)
    if explaining is not None:
        from src.explain.predict import classes_of, write

        classes = classes_of(scores, trained.thresholds, explaining.asked)
        write(explaining, images, files, classes, names)
    return tops


def explain_predictions(model, cfg: DictConfig, names: list[str]):
    """explain=true|<method>: heatmaps beside the predictions (the CSV's folder, else the job's
    output folder), in <that folder>/explain/."""
    from src.explain.predict import prepare

    def folder() -> Path:  # asked only when explaining: without csv=, the job's output folder
        return (Path(cfg.csv).parent if cfg.csv else Path(cfg.paths.output_dir)) / "explain"

    return prepare(model, cfg.get("explain"), cfg.get("explain_class"), names, folder)


@entry_point(
    "predict",
    stores=lambda cfg: {"paths.tracking_uri": cfg.paths.tracking_uri if cfg.run_id else None},
)
def main(cfg: DictConfig) -> None:
    from src.tracking.store import done_line

    predict_images(cfg)
    # No run of its own: the run it predicted with, and where the CSV went.
    log.info(done_line(cfg.run_id, cfg.csv or "stdout (csv= writes a file)"))


if __name__ == "__main__":
    main()
