"""`python -m src.predict run_id=<id> images=<file|folder>`: top-k labels with probabilities;
without a run or checkpoint, the ImageNet-pretrained backbone names ImageNet classes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger(__name__)


def predict_images(cfg: DictConfig) -> list[list[tuple[str, float]]]:
    """Per image, the top-k (label, probability): softmax over classes; for a multi-label model
    every label whose sigmoid reaches its stored threshold; for an SVM head its margins (score).
    Printed, and written to cfg.csv when set."""
    from src.config import build
    from src.data.preprocessing import eval_transform
    from src.errors import InvalidInput, refuse_bad_input
    from src.inference import predict as P
    from src.inference.trained import Trained, data_config, load_model, locate

    # 1. Files, images and model are checked before anything is predicted.
    with refuse_bad_input():
        P.check_top_k(cfg.top_k)
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
            model, names = build(cfg.backbone, num_classes=None).eval(), P.imagenet_names()
            trained = Trained({}, Path())
    # 2. The model's own evaluation preprocessing, then its labels.
    scores = P.logits(model, images, eval_transform(data_config(model)), cfg.batch_size)
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
    return tops


@hydra.main(version_base="1.3", config_path=str(PROJECT_ROOT / "conf"), config_name="predict")
def main(cfg: DictConfig) -> None:
    from src.errors import InvalidInput
    from src.tracking.store import done_line

    try:
        predict_images(cfg)
    except InvalidInput as error:
        log.error("Invalid input: %s", error)
        raise SystemExit(2) from None
    # No run of its own: the run it predicted with, and where the CSV went.
    log.info(done_line(cfg.run_id, cfg.csv or "stdout (csv= writes a file)"))


if __name__ == "__main__":
    from src.config import register_resolvers

    register_resolvers()  # conf/ resolves ${store_dir:...}
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    main()
