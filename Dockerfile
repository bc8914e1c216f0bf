# The served edge model: a folder written by `anomaly-spotter export --out DIR` (an MLflow pyfunc whose
# detector runs on ONNX Runtime), served by `mlflow models serve`'s scoring app with a cap on the request
# body (anomaly_spotter/serving/app.py: a body over ANOMALY_SPOTTER_SERVE_MAX_BYTES is answered 413 unread,
# and each worker hands freed memory back after every request). It installs only what serving needs: the
# model's own requirements.txt (NumPy, SciPy, scikit-image, Pillow, pandas, ONNX Runtime; no torch), with
# mlflow-skinny, which holds the scoring server and uvicorn, instead of the whole MLflow. The anomaly_spotter
# code travels inside the model folder (code/). Build with the exported folder as the context:
#
#   anomaly-spotter export --model models:/anomaly-spotter-bottle@champion --int8 --out edge/bottle
#   docker build -f Dockerfile -t anomaly-spotter-edge-bottle edge/bottle
#   docker run --rm -p 8080:8080 anomaly-spotter-edge-bottle    # -e ANOMALY_SPOTTER_SERVE_MAX_BYTES=... to
#                                                                 # change the 64 MB cap
#   curl -s -H 'Content-Type: application/json' -d @request.json 127.0.0.1:8080/invocations
#
# tests/unit/test_export_files.py lints this file with hadolint; tests/integration/test_export.py runs its
# CMD with its ENV on an exported folder. The image itself is not built in the tests (no container
# registry is reachable where they run).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/opt/model/code \
    ANOMALY_SPOTTER_SERVE_MODEL=/opt/model \
    ANOMALY_SPOTTER_SERVE_MAX_BYTES=67108864

WORKDIR /opt/model
COPY requirements.txt /tmp/requirements.txt
RUN sed 's/^mlflow==/mlflow-skinny==/' /tmp/requirements.txt > /tmp/serve-requirements.txt \
    && pip install --no-cache-dir -r /tmp/serve-requirements.txt \
    && rm /tmp/requirements.txt /tmp/serve-requirements.txt \
    && useradd --create-home --uid 10001 serve
COPY --chown=serve:serve . /opt/model
USER 10001

EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/ping', timeout=4)"]
CMD ["uvicorn", "--factory", "anomaly_spotter.serving.app:app_from_env", "--host", "0.0.0.0", "--port", "8080"]
