"""Configuration: YAML files in ``conf/`` loaded once into frozen dataclasses and validated.

A conf file has one section per dataclass below (``input``, ``storage``, ``featurizer``, ``job``,
``train``, ``predict``) plus ``spark``, a flat mapping of Spark settings handed to the session
builder. ``--set section.key=value`` overrides any key; values are parsed as YAML scalars.
Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from vidspark.errors import ConfigError

logger = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"(secret|passw|token|credential|private|access[_.-]?key|account\.key|encryption\.key|(^|[._-])key$|signature)", re.IGNORECASE)
REDACTED = "***"


# Where Keras downloads the ImageNet ResNet50 "notop" weights from (keras.applications.resnet).
IMAGENET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/" + IMAGENET_NOTOP_FILE
IMAGENET_NOTOP_MD5 = "4d473c1dd8becc155b73f8504c6f6626"


@dataclass(frozen=True)
class InputConf:
    """How object keys map to fields (see :mod:`vidspark.layout`)."""

    layout: str = "{label}/**"
    ts_format: str = "%Y%m%dT%H%M%S"
    date_format: str = "%Y-%m-%d"
    list_parallelism: int = 16  # listing tasks at once (each lists some of the planned prefixes)
    max_list_children: int = 10_000  # a delimiter listing with more children than this is not expanded further
    driver_list_max: int = 10_000  # a listing of up to this many objects is read and parsed by the driver (no Spark job); 0: always on the executors
    timezone: str = "UTC"  # IANA zone a {ts} without an offset and a {date} are in
    timezones: Mapping[str, str] = field(default_factory=dict)  # camera_id -> IANA zone, over `timezone`


@dataclass(frozen=True)
class StorageConf:
    """boto3 client settings; credentials always come from boto3's standard chain."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str = "auto"
    retry_mode: str = "standard"
    max_attempts: int = 5
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class FeaturizerConf:
    """The ResNet50 featurizer and the decode step in front of it."""

    backbone: str = "resnet50"
    weights: str = "imagenet"
    seed: int = 0
    image_size: int = 224
    batch_size: int = 0  # 0 = auto: measured per executor (cached per CPU/GPU model); "auto" in YAML and --set
    threads: int = 0
    fetch_threads: int = 4
    max_image_pixels: int = 89_478_485
    decode_timeout_s: float = 120.0
    cache_dir: str | None = None
    imagenet_url: str = IMAGENET_NOTOP_URL
    precision: str = "auto"
    xla: bool = False
    warm_up: bool = True
    decode_mode: str = "auto"  # alternate | overlap | auto (alternate when the model has every core of the task)
    skip_static: float = 0.0  # > 0: a video frame this close to the last featurized one reuses its features
    task_gpus: float = 0.0  # GPU share of each featurize task, asked for by its stage alone (0: auto, from the executors' GPUs and cores)
    task_cpus: int = 0  # CPUs of each featurize task under that request (0: spark.task.cpus)


@dataclass(frozen=True)
class VideoConf:
    """Video objects: frame sampling, splitting of long recordings, streaming reads.

    ``every_n_frames`` keeps frames whose stream index is a multiple of N; ``fps`` instead keeps the
    first frame at or after every 1/fps seconds of video time (set one of them). ``max_frames``
    caps the sampled frames per video. Videos larger than ``split_min_bytes`` are probed and cut
    at keyframes into segments of about ``segment_seconds``, each a Spark task of its own.
    """

    every_n_frames: int = 1
    fps: float | None = None
    max_frames: int | None = None
    split_min_bytes: int = 64 * 1024 * 1024
    segment_seconds: float = 300.0
    read_block_bytes: int = 8 * 1024 * 1024
    decode_threads: int = 1
    max_frame_pixels: int = 8192 * 4352


@dataclass(frozen=True)
class EventsConf:
    """Motion-triggered stills: group frames of a camera into events by time gap."""

    gap_seconds: float | None = None


@dataclass(frozen=True)
class JobConf:
    """Job-wide behaviour."""

    max_error_fraction: float = 0.05
    rows_per_task: int = 256
    progress_seconds: float = 30.0  # a progress line this often while featurize and predict run; 0 = none
    framework_logs: bool = False  # true: TensorFlow/absl/CUDA start-up notices as they come (off: filtered out)
    target_file_mb: float = 128.0  # Parquet files per partition are cut at about this size (rows per file from the table's row size)


@dataclass(frozen=True)
class TrainConf:
    """LightGBM training and cross-validation."""

    folds: int = 5
    seed: int = 42
    num_boost_round: int = 400
    early_stopping_rounds: int = 30
    max_rows: int = 200_000
    register_model: str | None = None  # NAME or NAME@ALIAS: register the trained model in MLflow (needs MLFLOW_TRACKING_URI)
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictConf:
    """Per-frame prediction and rolling smoothing."""

    window: int = 128


@dataclass(frozen=True)
class Conf:
    """The whole effective configuration of one job."""

    input: InputConf = field(default_factory=InputConf)
    storage: StorageConf = field(default_factory=StorageConf)
    featurizer: FeaturizerConf = field(default_factory=FeaturizerConf)
    video: VideoConf = field(default_factory=VideoConf)
    events: EventsConf = field(default_factory=EventsConf)
    job: JobConf = field(default_factory=JobConf)
    train: TrainConf = field(default_factory=TrainConf)
    predict: PredictConf = field(default_factory=PredictConf)
    spark: Mapping[str, Any] = field(default_factory=dict)

    def replace(self, section: str, **values: Any) -> Conf:
        """Return a copy with keys of one section replaced (validated again)."""
        raw = to_dict(self)
        raw[section].update(values)
        return from_dict(raw)


_SECTIONS = {f.name: f for f in fields(Conf)}

_CHOICES: dict[str, tuple[str, ...]] = {
    "storage.addressing_style": ("auto", "virtual", "path"),
    "storage.retry_mode": ("standard", "adaptive", "legacy"),
    "featurizer.backbone": ("resnet50",),
    "featurizer.precision": ("auto", "float32", "bfloat16", "float16"),
    "featurizer.decode_mode": ("auto", "alternate", "overlap"),
}
# (minimum, maximum) inclusive; None is unbounded.
_RANGES: dict[str, tuple[float | None, float | None]] = {
    "input.list_parallelism": (1, 4096),
    "input.max_list_children": (1, None),
    "input.driver_list_max": (0, 1_000_000),
    "storage.max_attempts": (1, 50),
    "storage.connect_timeout": (0.1, None),
    "storage.read_timeout": (0.1, None),
    "featurizer.image_size": (32, 1024),
    "featurizer.batch_size": (0, 4096),
    "featurizer.skip_static": (0.0, 1.0),
    "featurizer.task_gpus": (0.0, 64.0),
    "featurizer.task_cpus": (0, 1024),
    "featurizer.threads": (0, 1024),
    "featurizer.fetch_threads": (1, 256),
    "featurizer.max_image_pixels": (1, None),
    "featurizer.decode_timeout_s": (0.01, None),
    "featurizer.seed": (0, 2**31 - 1),
    "video.every_n_frames": (1, 1_000_000),
    "video.fps": (0.001, 1000.0),
    "video.max_frames": (1, None),
    "video.split_min_bytes": (0, None),
    "video.segment_seconds": (0.001, None),
    "video.read_block_bytes": (4096, 1024**3),
    "video.decode_threads": (0, 64),
    "video.max_frame_pixels": (1, None),
    "events.gap_seconds": (0.0, None),
    "job.max_error_fraction": (0.0, 1.0),
    "job.rows_per_task": (1, None),
    "job.progress_seconds": (0.0, None),
    "job.target_file_mb": (1.0, None),
    "train.folds": (2, 100),
    "train.num_boost_round": (1, 100_000),
    "train.early_stopping_rounds": (0, 100_000),
    "train.max_rows": (10, None),
    "predict.window": (1, 1_000_000),
}


def to_dict(conf: Conf) -> dict[str, Any]:
    """Plain nested dict of a :class:`Conf` (mappings copied)."""
    out: dict[str, Any] = {}
    for name in _SECTIONS:
        value = getattr(conf, name)
        out[name] = dict(value) if name == "spark" else dataclasses.asdict(value)
        if name == "train":
            out[name]["params"] = dict(value.params)
    return out


def _check_type(key: str, value: Any, annotation: Any) -> Any:
    """Coerce ``value`` to the annotated type or raise ConfigError naming ``key``."""
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Union or (origin is not None and type(None) in args):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _check_type(key, value, inner[0])
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif origin in (Mapping, dict) or annotation in (Mapping, dict):
        if isinstance(value, Mapping):
            return dict(value)
    else:  # pragma: no cover - every field above is one of these
        return value
    expected = getattr(annotation, "__name__", str(annotation))
    raise ConfigError(f"conf key {key!r}: expected {expected}, got {value!r} ({type(value).__name__})")


def _validate_value(key: str, value: Any) -> None:
    if key == "input.timezone":
        _validate_zone(key, value)
    if key == "input.timezones":
        for camera, name in value.items():
            if not isinstance(camera, str):
                raise ConfigError(f"conf key {key!r}: camera id {camera!r} is a {type(camera).__name__}; allowed: camera ids as strings (quote it in YAML: '{camera}': {name})")
            _validate_zone(f"{key}.{camera}", name)
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"conf key {key!r}: {value!r} is not allowed; allowed: {', '.join(_CHOICES[key])}")
    if key in _RANGES and value is not None:
        lo, hi = _RANGES[key]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            bounds = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise ConfigError(f"conf key {key!r}: {value!r} is out of range; allowed: {bounds}")


def _validate_zone(key: str, value: Any) -> None:
    from vidspark.layout import get_zone

    if not isinstance(value, str):
        raise ConfigError(f"conf key {key!r}: expected an IANA time zone name (str), got {value!r} ({type(value).__name__})")
    get_zone(value, what=f"conf key {key!r}")  # ConfigError naming the key, the value and what is allowed


def from_dict(raw: Mapping[str, Any] | None) -> Conf:
    """Build and validate a :class:`Conf` from a nested mapping.

    Raises
    ------
    ConfigError
        On an unknown section or key, a wrong type or an out-of-range value.
    """
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown conf section(s) {unknown}; allowed: {', '.join(_SECTIONS)}")
    sections: dict[str, Any] = {}
    for name, fld in _SECTIONS.items():
        value = raw.get(name) or {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"conf section {name!r} must be a mapping, got {value!r}")
        if name == "spark":
            for k, v in value.items():
                if not str(k).startswith("spark."):
                    raise ConfigError(f"conf key 'spark.{k}': Spark settings must start with 'spark.'")
                if isinstance(v, (Mapping, list)):
                    raise ConfigError(f"conf key 'spark.{k}': expected a scalar, got {v!r}")
            sections[name] = {str(k): v for k, v in value.items()}
            continue
        cls: Any = fld.default_factory
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        bad = sorted(set(value) - known)
        if bad:
            raise ConfigError(f"unknown conf key(s) {[f'{name}.{b}' for b in bad]}; allowed in {name!r}: {', '.join(sorted(known))}")
        kwargs = {}
        for key, val in value.items():
            full = f"{name}.{key}"
            if full == "input.layout" and isinstance(val, list) and val and all(isinstance(v, str) for v in val):
                val = " | ".join(val)  # a YAML list of templates: alternatives, first match wins
            if full == "featurizer.batch_size" and val == "auto":
                val = 0  # measured on each executor (Featurizer.calibrate)
            coerced = _check_type(full, val, hints[key])
            _validate_value(full, coerced)
            kwargs[key] = coerced
        sections[name] = cls(**kwargs)
    conf = Conf(**sections)
    _validate_cross(conf)
    return conf


def _validate_cross(conf: Conf) -> None:
    from vidspark.layout import Layout

    Layout.from_conf(conf.input)  # raises LayoutError (a ConfigError) naming the problem
    if conf.train.register_model:
        from vidspark.tracking import registration_target

        registration_target(conf.train.register_model, key="conf key 'train.register_model'")
    if conf.video.fps is not None and conf.video.every_n_frames != 1:
        raise ConfigError(
            f"conf keys 'video.fps' ({conf.video.fps}) and 'video.every_n_frames' ({conf.video.every_n_frames}) are both set; allowed: one of them (leave every_n_frames at 1 to sample by fps)"
        )
    weights = conf.featurizer.weights
    if not weights:
        raise ConfigError("conf key 'featurizer.weights': empty; allowed: imagenet, random, a local path or s3:// URI")


def _scalar(text: str) -> Any:
    """A ``--set`` value: YAML scalar (int, float, bool, null) or else the text itself.

    Text such as ``{label}/**`` is YAML flow syntax, but on the command line it is meant as a string.
    """
    if text == "":
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, (dict, list)) else value


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, for example featurizer.batch_size=64")
    key, _, text = item.partition("=")
    key = key.strip()
    value = _scalar(text)
    if key.startswith("spark."):
        return ["spark", key], value
    parts = key.split(".")
    if len(parts) == 3 and parts[:2] in (["train", "params"], ["input", "timezones"]):
        return parts, value
    if len(parts) != 2:
        raise ConfigError(f"--set {item!r}: key must be section.key (or train.params.NAME, input.timezones.CAMERA), for example predict.window=64")
    return parts, value


def load_conf(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Conf:
    """Load a YAML conf file (or the defaults) and apply ``--set`` overrides.

    Parameters
    ----------
    path
        YAML file; None means built-in defaults.
    overrides
        ``section.key=value`` strings; ``spark.*`` keys go to the ``spark`` section.

    Raises
    ------
    ConfigError
        If the file is missing or invalid, or a key/value is not allowed.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"conf file {str(p)!r} does not exist; pass --conf with a YAML file such as conf/local.yaml")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"conf file {str(p)!r} is not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"conf file {str(p)!r} must hold a mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        parts, value = _parse_override(item)
        node = raw.setdefault(parts[0], {})
        if not isinstance(node, dict):
            raise ConfigError(f"conf section {parts[0]!r} must be a mapping")
        for part in parts[1:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return from_dict(raw)


def is_secret_key(key: str) -> bool:
    """Whether a conf or Spark key looks like it holds a secret (its value is never logged or recorded)."""
    return bool(_SECRET_KEY.search(key))


def redacted(conf: Conf) -> dict[str, Any]:
    """Nested dict of the conf with secret-looking keys replaced by ``***``."""

    def scrub(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v is not None else scrub(v)) for k, v in node.items()}
        return node

    return scrub(to_dict(conf))


def log_effective(conf: Conf) -> None:
    """Log every effective conf value once at job start (DEBUG; the run record keeps them too), secrets redacted."""
    for section, values in redacted(conf).items():
        for key, value in sorted(values.items()):
            logger.debug("conf %s = %r", key if section == "spark" else f"{section}.{key}", value)
