"""Exceptions raised by Anomaly Spotter. Each message names the file or setting and says what to do."""


class AnomalySpotterError(Exception):
    """Base class for every error this package raises on purpose."""


class DatasetError(AnomalySpotterError):
    """The input dataset is unreadable or not in the MVTec AD layout."""


class ConfigError(AnomalySpotterError):
    """params.yaml (or a CLI option) holds a missing or invalid value."""


class TrackingError(AnomalySpotterError):
    """The MLflow tracking store cannot be reached or written."""


class ExportError(AnomalySpotterError):
    """The model cannot be exported as asked (unsupported detector, output folder in the way, ...)."""
