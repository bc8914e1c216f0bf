"""Core post-processing shared by every other folder: anomaly maps (smoothing, normalisation, Otsu,
calibrated regions), image scores, metrics, thresholds, overlays and plots, typed params, errors.

Nothing here imports a detector, MLflow or DVC."""
