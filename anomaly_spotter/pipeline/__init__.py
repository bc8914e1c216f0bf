"""One module per DVC stage, one function each: read inputs, compute, write exactly the stage's outputs.

No MLflow and no DVC here: the stage scripts in `stages/` call these and do the tracking, so every
step is importable and testable on its own. Each function returns the metrics its stage logs. A stage
imports only its own module, so dvc.yaml can list exactly the code each stage runs as its deps.
"""
