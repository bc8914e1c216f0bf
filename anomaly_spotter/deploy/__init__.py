"""Taking a registered model elsewhere: ONNX / int8 export for small CPUs (`export.py`) and batch
scoring on Spark (`spark.py`). Neither travels inside a registered model."""
