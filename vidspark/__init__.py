"""vidspark: distributed PySpark jobs that classify images and video frames from camera archives."""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = [
    "Conf",
    "Layout",
    "__version__",
    "featurize",
    "load_conf",
    "predict",
    "rolling_mean",
    "run",
    "train",
]


def __getattr__(name: str):  # lazy: importing vidspark must not import pyspark or TensorFlow
    if name in ("Conf", "load_conf"):
        from vidspark import config

        return getattr(config, name)
    if name == "Layout":
        from vidspark.layout import Layout

        return Layout
    if name == "featurize":
        from vidspark.featurize import featurize

        return featurize
    if name == "train":
        from vidspark.train import train

        return train
    if name in ("predict", "rolling_mean"):
        from vidspark import predict as _p

        return getattr(_p, name)
    if name == "run":
        from vidspark.pipeline import run

        return run
    raise AttributeError(name)
