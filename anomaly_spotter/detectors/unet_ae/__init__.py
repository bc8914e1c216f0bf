"""The U-Net autoencoder (the original prototype's detector, DRAEM-style when it segments).

`network.py` holds the torch modules, `options.py` params.yaml's `model.unet_ae` section, `detector.py`
the `Detector` with its training loop (data-parallel under torchrun: `detectors.distributed`)."""
