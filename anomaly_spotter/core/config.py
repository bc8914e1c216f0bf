"""Typed parameters, read from params.yaml and validated with errors that name the key.

params.yaml has one section per stage (plus `seed`, `data` and `model`); each stage reads only
its own sections, and `dvc.yaml` declares exactly those as the stage's params. `train` reads
`model.name`, the active detector's section `model.<name>` and `train.*`. Here a detector's section is
kept as a mapping (`ModelParams.sections`); the detector registry parses it into that detector's own
frozen `Options` (`detectors.parse_options`), so changing one detector's keys never refits another.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly_spotter.core.anomaly_map import REGION_METHODS, check_reduction
from anomaly_spotter.core.errors import ConfigError

PARAMS_FILE = Path("params.yaml")
# A category is a folder directly under data.root, and names folders under data/, models/, outputs/, ...
CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Largest data.image_size: 1000 images cached at 1024 px are 3 GB (images.npy is N x S x S x 3 bytes)
MAX_IMAGE_SIZE = 1024


NATIVE = "native"  # data.resolution: work on the images as photographed


def check_resolution(value: Any, where: str = "data.resolution") -> int | str | None:
    """`data.resolution` -> None, NATIVE or a short side in pixels (>= 1); ConfigError otherwise."""
    if value is None or value == NATIVE:
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{where} must be null, native or the working image's short side in pixels (an integer >= 1), "
            f"got {value!r}"
        )
    return value


def check_overlap(overlap: float, where: str = "data.overlap") -> float:
    """A share of a window's side in [0, 1); ConfigError otherwise."""
    if isinstance(overlap, bool) or not isinstance(overlap, int | float) or not 0.0 <= overlap < 1.0:
        raise ConfigError(f"{where} must be in [0, 1), the share of a window's side shared, got {overlap!r}")
    return float(overlap)


@dataclass(frozen=True)
class DataParams:
    root: str = "data/builtin"
    categories: list[str] = field(default_factory=lambda: ["fabric", "washer", "label", "board", "component"])
    image_size: int = 128  # the detector's input side: the whole image's short side, or each window's
    val_fraction: float = 0.2
    resolution: int | str | None = None  # the working image's short side (null: image_size; native)
    overlap: float = 0.25  # least share of a window's side shared with its neighbour

    def __post_init__(self) -> None:
        if not self.categories:
            raise ConfigError("data.categories is empty: list at least one category folder name")
        for category in self.categories:
            if not isinstance(category, str) or not CATEGORY_NAME.fullmatch(category) or ".." in category:
                raise ConfigError(
                    f"data.categories: {category!r} is not a plain folder name (letters, digits, '_', '-', "
                    "'.'; no path separators or '..'); list the category folders under data.root by name"
                )
        if len(set(self.categories)) != len(self.categories):
            raise ConfigError(f"data.categories lists a category twice: {self.categories}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        check_resolution(self.resolution)
        object.__setattr__(self, "overlap", check_overlap(self.overlap))
        if not 16 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError(
                f"data.image_size is {self.image_size}; set it between 16 and {MAX_IMAGE_SIZE} (prepare "
                f"caches every image at image_size^2 x 3 bytes, and the detectors are built for 128-320 px)"
            )


@dataclass(frozen=True)
class FeedbackParams:
    """Read by prepare: the reviewed images of the line (anomaly_spotter.feedback, docs/line.md)."""

    root: str = "feedback"  # one folder per category, written by the dashboard's line review
    holdout_fraction: float = 0.3  # of reviewed goods, held out of training as the field set's goods

    def __post_init__(self) -> None:
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise ConfigError(f"feedback.holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


@dataclass(frozen=True)
class BuiltinParams:
    image_size: int = 160
    n_train: int = 60
    n_test_good: int = 12
    n_test_per_defect: int = 8


@dataclass(frozen=True)
class TrainParams:
    """How `train` runs, for any detector (params.yaml `train.*`); a detector's own training loop is in its
    section (`model.unet_ae.training`)."""

    num_threads: int = 2  # torch CPU threads in all (split between the processes when world_size > 1)
    pixel_quantile: float = 0.999  # pixel threshold = this quantile of validation good maps
    world_size: int = 1  # train data-parallel in this many processes (torchrun; detectors that support it)

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ConfigError(f"train.world_size must be >= 1, got {self.world_size}")
        if not 0.5 <= self.pixel_quantile < 1.0:
            raise ConfigError(f"train.pixel_quantile must be in [0.5, 1), got {self.pixel_quantile}")
        if self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1, got {self.num_threads}")


@dataclass(frozen=True)
class ModelParams:
    """`model.name` and every detector's section as written (`detectors.parse_options` checks them)."""

    name: str = "unet_ae"
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """The selected detector's own section, e.g. `model.patchcore` (empty when params.yaml has none)."""
        return dict(self.sections.get(self.name) or {})


@dataclass(frozen=True)
class ProcessParams:
    batch_size: int = 16
    image_score: str = "max"
    region_threshold: str = "calibrated"  # calibrated | otsu: how a map becomes the predicted region

    def __post_init__(self) -> None:
        try:
            check_reduction(self.image_score)
        except ValueError as err:
            raise ConfigError(f"process.image_score: {err}") from err
        if self.region_threshold not in REGION_METHODS:
            raise ConfigError(
                f"process.region_threshold is {self.region_threshold!r}; "
                f"use one of {', '.join(REGION_METHODS)}"
            )


@dataclass(frozen=True)
class MetricsParams:
    aupro_fpr_limit: float = 0.3


@dataclass(frozen=True)
class ThresholdParams:
    recall_target: float = 0.95
    n_folds: int = 5
    good_fpr: float = 0.01

    def __post_init__(self) -> None:
        if not 0.0 < self.recall_target <= 1.0:
            raise ConfigError(f"thresholds.recall_target must be in (0, 1], got {self.recall_target}")
        if not 0.0 <= self.good_fpr < 1.0:
            raise ConfigError(f"thresholds.good_fpr must be in [0, 1), got {self.good_fpr}")


@dataclass(frozen=True)
class VisualizeParams:
    max_per_defect: int = 3


THRESHOLD_METHODS = ("recall_target", "good_only")


@dataclass(frozen=True)
class RegistryParams:
    """Read by `register` and `anomaly-spotter promote`."""

    threshold: str = "recall_target"  # which calibrated threshold the served model applies
    promote_metric: str = "image_auroc"  # higher is better; champion moves only if the new version is >=
    tiebreak_metric: str = "pixel_auroc"
    # request limits of the served model (stored in its config; a request over one is answered 400)
    max_images_per_request: int = 64
    max_request_megapixels: float = 100.0  # decoded pixels of all images of one request, in millions
    min_image_side: int = 32  # smaller images are refused (capped at data.image_size)

    def __post_init__(self) -> None:
        if self.threshold not in THRESHOLD_METHODS:
            raise ConfigError(f"registry.threshold is {self.threshold!r}; use one of {THRESHOLD_METHODS}")
        for key in ("max_images_per_request", "max_request_megapixels", "min_image_side"):
            if getattr(self, key) < 1:
                raise ConfigError(f"registry.{key} must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class Params:
    seed: int = 42
    data: DataParams = field(default_factory=DataParams)
    feedback: FeedbackParams = field(default_factory=FeedbackParams)
    builtin: BuiltinParams = field(default_factory=BuiltinParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    process: ProcessParams = field(default_factory=ProcessParams)
    metrics: MetricsParams = field(default_factory=MetricsParams)
    thresholds: ThresholdParams = field(default_factory=ThresholdParams)
    visualize: VisualizeParams = field(default_factory=VisualizeParams)
    registry: RegistryParams = field(default_factory=RegistryParams)


def from_mapping(cls: type, raw: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types by name."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where or 'params'}; valid keys: {sorted(names)}")
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_mapping(hint, value, path)
        else:
            kwargs[key] = _check_type(hint, value, path)
    return cls(**kwargs)


def _check_type(hint: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(hint) or hint
    if origin is types.UnionType:
        return value
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin in (int, float, str, bool, list, dict) and not isinstance(value, origin):
        raise ConfigError(f"{path} must be {origin.__name__}, got {value!r}")
    if origin is int and isinstance(value, bool):
        raise ConfigError(f"{path} must be int, got {value!r}")
    return value


def _model_params(raw: Any) -> ModelParams:
    if not isinstance(raw, dict):
        raise ConfigError(f"model must be a mapping, got {type(raw).__name__}")
    name = raw.get("name", ModelParams.name)
    if not isinstance(name, str):
        raise ConfigError(f"model.name must be str, got {name!r}")
    sections = {key: value for key, value in raw.items() if key != "name"}
    for key, value in sections.items():
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"model.{key} must be a mapping (a detector's section), got {value!r}")
    return ModelParams(name, sections)


def params_from_dict(raw: dict[str, Any]) -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"params must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    model = _model_params(raw.pop("model", {}))
    return dataclasses.replace(from_mapping(Params, raw, ""), model=model)


def params_to_dict(params: Params) -> dict[str, Any]:
    """`params` in params.yaml's layout, e.g. for MLflow."""
    raw = dataclasses.asdict(params)
    raw["model"] = {"name": params.model.name, **copy.deepcopy(params.model.sections)}
    return raw


def load_params(path: Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml; a missing file or bad value raises ConfigError naming it."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: parameters file not found; run from the repository root") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from err
    try:
        return params_from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def flatten(params: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a params dataclass/dict into `{"thresholds.n_folds": 5, ...}` for MLflow."""
    raw = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else params
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
