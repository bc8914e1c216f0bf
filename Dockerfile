# The served edge model: `mlflow models serve` of a folder written by `anomaly-spotter export --out DIR`
# (an MLflow pyfunc whose detector runs on ONNX Runtime). It installs only what serving needs: the
# model's own requirements.txt (NumPy, SciPy, scikit-image, Pillow, pandas, ONNX Runtime; no torch), with
# mlflow-skinny, which holds the scoring server, instead of the whole MLflow. The anomaly_spotter code
# travels inside the model folder (code/). Build with the exported folder as the context:
#
#   anomaly-spotter export --model models:/anomaly-spotter-bottle@champion --int8 --out edge/bottle
#   docker build -f Dockerfile -t anomaly-spotter-edge-bottle edge/bottle
#   docker run --rm -p 8080:8080 anomaly-spotter-edge-bottle
#   curl -s -H 'Content-Type: application/json' -d @request.json 127.0.0.1:8080/invocations
#
# tests/unit/test_export_files.py lints this file with hadolint; the image itself is not built in the
# tests (no container registry is reachable where they run).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

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
CMD ["mlflow", "models", "serve", "-m", "/opt/model", "--env-manager", "local", "--host", "0.0.0.0", "--port", "8080"]
