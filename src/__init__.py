"""transferlab: transfer learning for image classification (see README.md)."""

from omegaconf import OmegaConf


def _store_dir(tracking_uri: str, default: str) -> str:
    from src.tracking.store import store_dir

    return store_dir(str(tracking_uri), str(default))


# conf/paths: artifacts and caches default to the folder beside the tracking store.
OmegaConf.register_new_resolver("store_dir", _store_dir, replace=True)
