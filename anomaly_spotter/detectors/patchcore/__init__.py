"""PatchCore: ImageNet features (EfficientNet-Lite, offline) and memory banks of good patches.

`network.py` holds the torch module and its config (`PatchCoreConfig`, params.yaml's `model.patchcore`),
`detector.py` the `Detector`, `export.py` its ONNX graph."""
