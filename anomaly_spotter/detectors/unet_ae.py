"""The original autoencoder as a Detector: fit = MSE training with early stopping, map = residual."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from anomaly_spotter.anomaly_map import gaussian_smooth, residual_map, ssim_map
from anomaly_spotter.config import TrainParams
from anomaly_spotter.data.images import denormalize, to_tensor_normalized
from anomaly_spotter.errors import ConfigError
from anomaly_spotter.models.base import Detector
from anomaly_spotter.models.unet_ae import UNetAutoencoder, UNetConfig
from anomaly_spotter.synthetic import corrupt

DEFAULT_SIGMA = 1.0
INFERENCE_BATCH = 16
MAP_KINDS = ("residual", "ssim")  # |x - x_hat| (the original's) or 1 - local SSIM


class UNetAEDetector(Detector):
    """U-Net autoencoder; anomaly map = Gaussian(sigma) of |x - x_hat| averaged over channels
    (`map_kind: residual`, the original's) or of 1 - local SSIM (`map_kind: ssim`)."""

    kind = "unet_ae"

    def __init__(
        self,
        config: UNetConfig | None = None,
        sigma: float = DEFAULT_SIGMA,
        train: TrainParams | None = None,
        seed: int = 0,
        progress: bool = True,
        map_kind: str = "residual",
    ) -> None:
        if map_kind not in MAP_KINDS:
            raise ConfigError(f"model.unet_ae.map_kind is {map_kind!r}; use one of {', '.join(MAP_KINDS)}")
        self.config = config or UNetConfig()
        self.sigma = sigma
        self.map_kind = map_kind
        self.train = train or TrainParams()
        self.seed = seed
        self.progress = progress

    @classmethod
    def from_options(cls, options: dict[str, Any], train: TrainParams, seed: int) -> Self:
        """Build from the `model.unet_ae` section of params.yaml."""
        options = dict(options)
        sigma = float(options.pop("sigma", DEFAULT_SIGMA))
        map_kind = str(options.pop("map_kind", "residual"))
        try:
            config = UNetConfig(**options)
        except TypeError as err:
            fields = [f.name for f in dataclasses.fields(UNetConfig)] + ["sigma", "map_kind"]
            raise ConfigError(f"model.unet_ae: {err}; valid keys: {fields}") from err
        return cls(config, sigma=sigma, train=train, seed=seed, map_kind=map_kind)

    def _check_size(self, images: np.ndarray) -> None:
        side = images.shape[1]
        if images.shape[1] != images.shape[2] or side % self.config.downsampling:
            raise ConfigError(
                f"unet_ae needs square images with a side that is a multiple of {self.config.downsampling}, "
                f"got {images.shape[1]}x{images.shape[2]}; set data.image_size accordingly"
            )

    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        """Adam + MSE on good images `(N, S, S, 3)` uint8; early stopping on validation loss.

        With `train.synthetic_defects` = p > 0, a share p of each batch's images get a synthetic defect
        (`synthetic.corrupt`, drawn anew every epoch) and the target stays the clean image: the network
        learns to remove defects rather than copy pixels. The validation loss then scores the same task
        on validation images corrupted once (seeded), so early stopping watches defect removal too.
        Keeps the weights of the best validation epoch; `history_` holds one row per epoch.
        """
        self._check_size(train_images)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        model = UNetAutoencoder(self.config)
        opt = torch.optim.Adam(model.parameters(), lr=self.train.lr, betas=tuple(self.train.betas))
        loss_fn = nn.MSELoss()
        x_train = torch.from_numpy(to_tensor_normalized(np.asarray(train_images)))
        x_val = (
            torch.from_numpy(to_tensor_normalized(np.asarray(val_images))) if val_images is not None else None
        )
        p_defect = self.train.synthetic_defects
        x_val_in = x_val
        if x_val is not None and p_defect > 0:
            corrupted, _ = corrupt(x_val.numpy(), p_defect, np.random.default_rng(self.seed + 1))
            x_val_in = torch.from_numpy(corrupted)
        history: list[dict[str, float]] = []
        best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
        bar = tqdm(range(1, self.train.max_epochs + 1), desc="train", unit="epoch", disable=not self.progress)
        for epoch in bar:
            model.train()
            order = torch.from_numpy(rng.permutation(len(x_train)))
            total = 0.0
            for start in range(0, len(order), self.train.batch_size):
                batch = x_train[order[start : start + self.train.batch_size]]
                inputs = batch
                if p_defect > 0:
                    inputs = torch.from_numpy(corrupt(batch.numpy(), p_defect, rng)[0])
                opt.zero_grad()
                loss = loss_fn(model(inputs), batch)
                loss.backward()
                opt.step()
                total += loss.item() * len(batch)
            train_loss = total / len(x_train)
            val_loss = _mean_loss(model, x_val_in, loss_fn, x_val) if x_val is not None else float("nan")
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            bar.set_postfix(train=f"{train_loss:.5f}", val=f"{val_loss:.5f}")
            monitored = val_loss if x_val is not None else train_loss
            if monitored < best_loss:
                best_loss, best_state, best_epoch, stale = (
                    monitored,
                    copy.deepcopy(model.state_dict()),
                    epoch,
                    0,
                )
            else:
                stale += 1
                if stale >= self.train.patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
        self.model_ = model
        self.history_ = pd.DataFrame(history)
        self.best_epoch_ = best_epoch
        return self

    def _reconstruct_normalized(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_size(images)
        x = to_tensor_normalized(np.asarray(images))
        out = np.empty_like(x)
        with torch.inference_mode():
            for start in range(0, len(x), INFERENCE_BATCH):
                out[start : start + INFERENCE_BATCH] = self.model_(
                    torch.from_numpy(x[start : start + INFERENCE_BATCH])
                )
        return x, out

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Raw maps `(N, S, S)`: Gaussian(sigma) of the channel-mean absolute residual in [-1, 1] units,
        or of the channel-mean 1 - SSIM (`map_kind`)."""
        x, x_hat = self._reconstruct_normalized(images)
        raw = ssim_map(x, x_hat) if self.map_kind == "ssim" else residual_map(x, x_hat)
        return gaussian_smooth(raw, self.sigma)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return denormalize(self._reconstruct_normalized(images)[1])

    def module(self) -> nn.Module:
        return self.model_

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": dataclasses.asdict(self.config),
            "sigma": self.sigma,
            "map": self.map_kind,
            "state_dict": self.model_.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        det = cls(
            UNetConfig(**state["config"]), sigma=float(state["sigma"]), map_kind=state.get("map", "residual")
        )
        det.model_ = UNetAutoencoder(det.config)
        det.model_.load_state_dict(state["state_dict"])
        det.model_.eval()
        return det


def _mean_loss(
    model: nn.Module, x: torch.Tensor, loss_fn: nn.Module, target: torch.Tensor | None = None
) -> float:
    """Mean loss of model(x) against `target` (default: x itself) over batches."""
    target = x if target is None else target
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(x), INFERENCE_BATCH):
            batch = x[start : start + INFERENCE_BATCH]
            total += float(loss_fn(model(batch), target[start : start + INFERENCE_BATCH])) * len(batch)
    return total / len(x)
