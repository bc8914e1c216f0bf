"""`anomaly-spotter serve`: a registered (or exported) service model over HTTP, as `mlflow models serve`
serves it, with a cap on the request body (`anomaly_spotter.serving.app`, which says why).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from anomaly_spotter.serving.app import DEFAULT_MAX_REQUEST_MB, LIMIT_ENV, LOG_ENV, LOG_MODEL_ENV, MODEL_ENV

__all__ = ["DEFAULT_MAX_REQUEST_MB", "serve"]


def serve(
    model_uri: str, host: str, port: int, workers: int, max_request_mb: float, log: Path | None = None
) -> None:
    """Download `model_uri` (registry, run or folder; an alias pinned to the version holding it now), then
    serve it until interrupted; with `log`, every scored image is appended to that scoring log."""
    import tempfile

    import mlflow
    import uvicorn

    from anomaly_spotter import tracking
    from anomaly_spotter.core.errors import AnomalySpotterError

    if max_request_mb <= 0:
        raise AnomalySpotterError(f"--max-request-mb must be > 0, got {max_request_mb}")
    pinned, name, version = tracking.model_identity(model_uri)
    with tempfile.TemporaryDirectory(prefix="anomaly-spotter-serve-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=tmp)
        except Exception as err:  # noqa: BLE001 - any download failure is reported with the URI
            raise AnomalySpotterError(f"cannot load model {model_uri!r}: {err}") from err
        os.environ[MODEL_ENV] = local
        os.environ[LIMIT_ENV] = str(int(max_request_mb * 2**20))
        if log is not None:
            try:  # a folder it cannot make fails here, not in every request
                Path(log).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise AnomalySpotterError(
                    f"{log}: cannot make the scoring log folder ({err.strerror or err}); choose another --log"
                ) from err
            os.environ[LOG_ENV] = str(Path(log).resolve())
            os.environ[LOG_MODEL_ENV] = json.dumps({"uri": model_uri, "name": name, "version": version})
        uvicorn.run(
            "anomaly_spotter.serving.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="info",
        )
