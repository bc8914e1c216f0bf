"""The original autoencoder as a Detector: fit = training with early stopping; map = the residual
|x - x_hat| (the original's), 1 - local SSIM, or (DRAEM) a second network's segmentation of the defect."""

from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from anomaly_spotter.core.anomaly_map import dissimilarity, gaussian_smooth, residual_map, ssim_map
from anomaly_spotter.core.errors import ConfigError
from anomaly_spotter.core.machine import cpu_model, native_bf16
from anomaly_spotter.data.images import denormalize, to_tensor_normalized
from anomaly_spotter.data.synthetic import corrupt
from anomaly_spotter.detectors import distributed
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.detectors.unet_ae.network import (
    Ensemble,
    ReconstructAndSegment,
    UNetAutoencoder,
    UNetConfig,
    segmenter_config,
)
from anomaly_spotter.detectors.unet_ae.options import (
    DEFAULT_SEGMENTER,
    DEFAULT_SIGMA,
    MAP_KINDS,
    MEMBER_SEED_STEP,
    TRAINING_SECTION,
    UNetAEOptions,
    UNetTraining,
)

INFERENCE_BATCH = 16
SEGMENTATION_WEIGHT = 10.0  # the focal loss's mean is ~10x below the reconstruction terms'
FOCAL_GAMMA = 2.0


class UNetAEDetector(Detector):
    """U-Net autoencoder; anomaly map = Gaussian(sigma) of |x - x_hat| averaged over channels
    (`map_kind: residual`, the original's), of 1 - local SSIM (`map_kind: ssim`), or of the defect
    probability a second U-Net (`segmenter_channels`) reads from the image and its reconstruction
    (`map_kind: segmentation`, DRAEM). The image score is reduced from the same raw map smoothed with
    `score_sigma` (None: `sigma`, one map for both)."""

    kind = "unet_ae"
    Options = UNetAEOptions
    data_parallel = True

    def __init__(
        self,
        config: UNetConfig | None = None,
        sigma: float = DEFAULT_SIGMA,
        train: UNetTraining | None = None,
        seed: int = 0,
        progress: bool = True,
        map_kind: str = "residual",
        segmenter_channels: tuple[int, ...] = DEFAULT_SEGMENTER,
        score_sigma: float | None = None,
    ) -> None:
        if map_kind not in MAP_KINDS:
            raise ConfigError(f"model.unet_ae.map_kind is {map_kind!r}; use one of {', '.join(MAP_KINDS)}")
        self.config = config or UNetConfig()
        self.sigma = sigma
        self.score_sigma = score_sigma
        self.map_kind = map_kind
        self.segmenter_channels = tuple(int(w) for w in segmenter_channels)
        self.segmenter = segmenter_config(self.segmenter_channels) if map_kind == "segmentation" else None
        self.train = train or UNetTraining()
        self.seed = seed
        self.progress = progress

    @classmethod
    def from_options(cls, options: UNetAEOptions, seed: int) -> Self:
        """Build from params.yaml's `model.unet_ae` section, parsed (`detectors.parse_options`)."""
        config = UNetConfig(
            encoder_channels=tuple(options.encoder_channels),
            bottleneck_channels=options.bottleneck_channels,
            convs_per_block=options.convs_per_block,
            batch_norm=options.batch_norm,
            skip_connections=options.skip_connections,
        )
        return cls(
            config,
            float(options.sigma),
            options.training,
            seed,
            map_kind=options.map_kind,
            segmenter_channels=tuple(options.segmenter_channels),
            score_sigma=None if options.score_sigma is None else float(options.score_sigma),
        )

    def _check_size(self, images: np.ndarray) -> None:
        side = images.shape[1]
        if images.shape[1] != images.shape[2] or side % self.config.downsampling:
            raise ConfigError(
                f"unet_ae needs square images with a side that is a multiple of {self.config.downsampling}, "
                f"got {images.shape[1]}x{images.shape[2]}; set data.image_size accordingly"
            )

    def fit(self, train_images: np.ndarray, val_images: np.ndarray | None = None) -> Self:
        """Adam on good images `(N, S, S, 3)` uint8; the weights kept are chosen on the validation loss.

        The loss is the MSE (+ `training.ssim_loss` x the mean 1 - SSIM) between the network's output and
        the clean image. With `training.synthetic_defects` = p > 0, a share p of each batch's images get
        a synthetic defect (`synthetic.corrupt`, drawn anew every step; `training.synthetic_scars` of them
        thin curved scars, the rest blobs) and the target stays the clean image: the network learns to
        remove defects rather than copy pixels. With `map_kind:
        segmentation` a second U-Net learns, from the (corrupted) image and its reconstruction, where the
        synthetic defects are (focal loss on their masks; DRAEM). `training.crop_size` trains on one
        random crop per batch (the networks are fully convolutional; scoring sees the whole image), and
        `training.lr_schedule: onecycle` warms the learning rate up to `lr` and anneals it to ~0.
        `training.epoch_size` fixes an epoch's number of images (drawn cycling through the shuffled set),
        so training costs the same on 50 images as on 500.

        The validation loss scores the same objective on the whole validation images, corrupted once
        (seeded), so early stopping watches defect removal too. `training.ema_decay` > 0 keeps an
        exponential moving average of the weights (`WeightAverage`), which is what is validated and
        kept. `training.checkpoint: best` keeps the weights of the best validation epoch and stops after
        `patience` epochs without one; `last` trains all `max_epochs` and keeps the last (with the
        one-cycle schedule, the end of an annealing to ~0). `training.val_every` validates every that
        many epochs and after the last (the others' val_loss is NaN; patience still counts epochs).
        `history_` holds one row per epoch.

        `training.candidates` = K > 1 starts K networks, initialised one after the other from the seed
        (the first is the one a single run has), and trains them side by side on the same batches, crops
        and defects for `candidate_epochs` epochs (at most `max_epochs`). Then the one with the lowest
        validation loss (without validation images: training loss) goes on alone; `candidate_losses_`
        holds the K losses and `history_` the chosen one's rows. Some initialisations send the pair of
        networks down a path that ends about 0.1 lower in pixel AUROC, and their loss is already far
        above the others' after a few epochs (docs/detectors.md); the contest costs (K - 1) x
        candidate_epochs epochs.

        `training.members` = M > 1 trains M times, member m from seed + m x MEMBER_SEED_STEP (its own
        initialisations, contest, batches, crops and defects), and keeps an `Ensemble` of the M networks:
        the map is the mean of their maps, a figure that moves less with the seed (docs/detectors.md).
        `history_` then holds each other member's curves as `train_loss_<m>`, `val_loss_<m>`, then the
        first member's (`train_loss`, `val_loss`: the last column is what DVC charts);
        `candidate_losses_` the first member's contest and `member_candidate_losses_` every member's.
        `training.precision: bf16` computes the networks in bfloat16 (autocast; the weights, their
        average and the losses stay float32) and `training.channels_last` trains NHWC weights: both
        faster on a CPU with bfloat16 instructions, and each another draw of every seed (rounding).

        In a `torch.distributed` group (`detectors.distributed`, torchrun), every process draws
        the same batches, crops and defects (same seed) and trains on its share of each batch, with
        DistributedDataParallel averaging the gradients; validation is split between the processes and
        the sums added, so all of them stop at the same epoch with the same weights. Batches smaller
        than the group are skipped. Reproducible for a given world size.
        """
        self._check_size(train_images)
        self._check_precision()
        if self.train.members > 1:
            return self._fit_members(train_images, val_images)
        return self._fit_one(train_images, val_images)

    def _fit_one(self, train_images: np.ndarray, val_images: np.ndarray | None) -> Self:
        """One training (`fit` with `training.members: 1`, checks done): the contest, then the chosen run."""
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        tp = self.train
        device = self._device()
        x_train = torch.from_numpy(to_tensor_normalized(np.asarray(train_images)))
        epoch_size = tp.epoch_size or len(x_train)
        steps_per_epoch = -(-epoch_size // tp.batch_size)
        # candidate 0 is the one initialisation a single run has: candidates: 1 trains exactly that
        runs = [self._start(device, tp.max_epochs * steps_per_epoch) for _ in range(tp.candidates)]
        choose_at = min(tp.candidate_epochs, tp.max_epochs) if tp.candidates > 1 else 0
        crop = self._crop_side(x_train.shape[-1])
        val = None
        if val_images is not None:
            x_val = to_tensor_normalized(np.asarray(val_images))
            val_rng = np.random.default_rng(self.seed + 1)
            val = (x_val, *corrupt(x_val, tp.synthetic_defects, val_rng, tp.synthetic_scars))
        world = distributed.world_size()
        best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
        self.images_trained_ = 0  # stepped on by this process (its share of every batch, in a process group),
        # once per candidate while they compete
        self.epoch_seconds_: list[float] = []  # wall time per epoch, validation included (not in history_,
        # which is a DVC output and must be the same on every run)
        losses: list[float] = []  # each candidate's loss when one was chosen (candidate_losses_)
        bar = tqdm(range(1, tp.max_epochs + 1), desc="train", unit="epoch", disable=not self.progress)
        for epoch in bar:
            epoch_start = time.perf_counter()
            for run in runs:
                run.model.train()
                run.total = 0.0
            order = epoch_order(len(x_train), epoch_size, rng)
            for start in range(0, len(order), tp.batch_size):
                batch = x_train[torch.from_numpy(order[start : start + tp.batch_size])]
                if crop < batch.shape[-1]:
                    y, x = (int(v) for v in rng.integers(0, batch.shape[-1] - crop + 1, size=2))
                    batch = batch[..., y : y + crop, x : x + crop].contiguous()
                inputs, masks = corrupt(batch.numpy(), tp.synthetic_defects, rng, tp.synthetic_scars)
                if len(batch) < world:
                    continue
                part = distributed.shard(len(batch))
                step = (
                    torch.from_numpy(inputs[part]).to(device),
                    batch[part].to(device),
                    torch.from_numpy(masks[part]).to(device),
                )
                for run in runs:  # every candidate trains on the same batches, crops and defects
                    run.total += run.step(*step) * len(batch[part])
                    self.images_trained_ += len(batch[part])
            selecting = epoch == choose_at
            validate = val is not None and (epoch % tp.val_every == 0 or epoch == tp.max_epochs or selecting)
            for run in runs:
                train_loss = distributed.all_sum(run.total)[0] / len(order)
                val_loss = self._val_loss(run.kept, *val) if validate else float("nan")
                run.history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
            if selecting:  # keep the candidate with the lowest validation (else training) loss
                column = "val_loss" if val is not None else "train_loss"
                losses = [run.history[-1][column] for run in runs]
                runs = [runs[int(np.argmin(losses))]]
            run = runs[0]
            train_loss, val_loss = run.history[-1]["train_loss"], run.history[-1]["val_loss"]
            self.epoch_seconds_.append(time.perf_counter() - epoch_start)
            bar.set_postfix(train=f"{train_loss:.5f}", val=f"{val_loss:.5f}")
            monitored = val_loss if val is not None else train_loss
            if tp.checkpoint == "last" or epoch < choose_at:
                best_epoch = epoch
            elif monitored < best_loss:  # False for an epoch not validated (NaN): it counts as stale
                best_loss, best_state, best_epoch, stale = (
                    monitored,
                    copy.deepcopy(run.kept.state_dict()),
                    epoch,
                    0,
                )
            else:
                stale += 1
                if stale >= tp.patience:
                    break
        model = runs[0].model
        model.load_state_dict(runs[0].kept.state_dict() if tp.checkpoint == "last" else best_state)
        model.eval()
        self.model_ = _scoring_layout(model.cpu())  # scoring runs on the CPU
        self.history_ = pd.DataFrame(runs[0].history)
        self.best_epoch_ = best_epoch
        self.member_candidate_losses_ = [losses]
        return self

    def _fit_members(self, train_images: np.ndarray, val_images: np.ndarray | None) -> Self:
        """`training.members` trainings, each a single one from its own seed; an `Ensemble` of them."""
        fitted = []
        for m in range(self.train.members):
            member = copy.copy(self)
            member.train = dataclasses.replace(self.train, members=1)
            member.seed = self.seed + m * MEMBER_SEED_STEP
            fitted.append(member._fit_one(train_images, val_images))
        self.model_ = Ensemble([member.model_ for member in fitted])
        first = fitted[0]
        curves = ["train_loss", "val_loss"]  # the others' suffixed, then the first's (DVC charts the last)
        others = [member.history_[curves].add_suffix(f"_{m}") for m, member in enumerate(fitted[1:], 1)]
        self.history_ = pd.concat([*others, first.history_[curves]], axis=1)  # members may stop apart
        self.history_.insert(0, "epoch", np.arange(1, len(self.history_) + 1))
        self.best_epoch_ = first.best_epoch_
        self.member_candidate_losses_ = [member.candidate_losses_ for member in fitted]
        self.epoch_seconds_ = [seconds for member in fitted for seconds in member.epoch_seconds_]
        self.images_trained_ = sum(member.images_trained_ for member in fitted)
        return self

    @property
    def candidate_losses_(self) -> list[float]:
        """The (first member's) candidates' losses when one was chosen; empty with one candidate."""
        return self.member_candidate_losses_[0]

    def _start(self, device: torch.device, total_steps: int) -> _Run:
        """A freshly initialised network (from torch's global generator) with its optimiser, learning-rate
        schedule and weight average; wrapped for DistributedDataParallel in a process group."""
        tp = self.train
        model = self._new_model().to(device)
        if tp.channels_last:
            model = model.to(memory_format=torch.channels_last)
        objective: nn.Module = _Objective(self, model)
        if distributed.world_size() > 1:
            objective = nn.parallel.DistributedDataParallel(
                objective, device_ids=[device.index] if device.type == "cuda" else None
            )
        opt = torch.optim.Adam(model.parameters(), lr=tp.lr, betas=tuple(tp.betas))
        schedule = (
            torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tp.lr, total_steps=total_steps)
            if tp.lr_schedule == "onecycle"
            else None
        )
        average = WeightAverage(model, tp.ema_decay) if tp.ema_decay else None
        return _Run(model, objective, opt, schedule, average, bf16=tp.precision == "bf16")

    def fit_device(self) -> str:
        return self.train.device

    def _device(self) -> torch.device:
        if self.train.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"model.unet_ae.{TRAINING_SECTION}.device is cuda, but torch {torch.__version__} sees no "
                "CUDA GPU here; set it to cpu (or install a CUDA build of torch on a GPU machine)"
            )
        if self.train.device == "cuda" and distributed.world_size() > 1:
            return torch.device("cuda", torch.cuda.current_device())  # torchrun's LOCAL_RANK
        return torch.device(self.train.device)

    def _check_precision(self) -> None:
        """Warn when `training.precision: bf16` trains on a CPU without bfloat16 instructions: there
        autocast emulates it, and training may be slower than in float32 (not an error: it still works)."""
        if self.train.precision == "bf16" and self.train.device == "cpu" and native_bf16() is False:
            warnings.warn(
                f"model.unet_ae.{TRAINING_SECTION}.precision is bf16, but this CPU ({cpu_model()}) has no "
                "bfloat16 instructions, so training may run slower than in float32. Time both with "
                "`python -m anomaly_spotter.bench.unet_layout`, and set "
                f"`-S model.unet_ae.{TRAINING_SECTION}.precision=fp32` if float32 is faster.",
                stacklevel=3,
            )

    def _new_model(self, members: int = 1) -> nn.Module:
        if members > 1:
            return Ensemble([self._new_model() for _ in range(members)])
        if self.map_kind == "segmentation":
            return ReconstructAndSegment(self.config, self.segmenter)
        return UNetAutoencoder(self.config)

    def _crop_side(self, side: int) -> int:
        """The training crop: `training.crop_size` (0 = whole image), at most the image side, rounded
        down to a multiple of what both networks downsample by."""
        if not self.train.crop_size:
            return side
        step = max(self.config.downsampling, self.segmenter.downsampling if self.segmenter else 1)
        return max(step, min(side, self.train.crop_size) // step * step)

    def _loss(self, model: nn.Module, inputs: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor) -> Any:
        """Reconstruction loss (MSE + ssim_loss x (1 - SSIM)) against the clean images, plus, for the
        segmentation model, SEGMENTATION_WEIGHT x the focal loss of its logits on the defect masks."""
        segment = isinstance(model, ReconstructAndSegment)
        x_hat = model.reconstructor(inputs) if segment else model(inputs)
        logits = model.logits(inputs, x_hat) if segment else None
        with torch.autocast(inputs.device.type, enabled=False):  # in float32 under training.precision bf16
            x_hat = x_hat.float()
            loss = F.mse_loss(x_hat, clean)
            if self.train.ssim_loss:
                loss = loss + self.train.ssim_loss * dissimilarity(x_hat, clean).mean()
            if logits is not None:
                loss = loss + SEGMENTATION_WEIGHT * focal_loss(logits.float(), masks[:, None].float())
        return loss

    def _val_loss(self, model: nn.Module, clean: np.ndarray, inputs: np.ndarray, masks: np.ndarray) -> float:
        """Mean `_loss` over the (corrupted once, seeded) validation images, in eval mode (in a process
        group: each process scores its share with rank 0's BatchNorm statistics, and the sums are added)."""
        model.eval()
        distributed.sync_buffers(model)
        share = distributed.shard(len(clean))
        clean, inputs, masks = clean[share], inputs[share], masks[share]
        device = next(model.parameters()).device
        total = 0.0
        with torch.inference_mode():
            for start in range(0, len(clean), INFERENCE_BATCH):
                part = slice(start, start + INFERENCE_BATCH)
                loss = self._loss(
                    model,
                    torch.from_numpy(inputs[part]).to(device),
                    torch.from_numpy(clean[part]).to(device),
                    torch.from_numpy(masks[part]).to(device),
                )
                total += float(loss) * len(clean[part])
        total, count = distributed.all_sum(total, len(clean))
        return total / count

    def _reconstructor(self) -> nn.Module:
        if isinstance(self.model_, (ReconstructAndSegment, Ensemble)):
            return self.model_.reconstructor
        return self.model_

    def _run(self, images: np.ndarray, network: nn.Module) -> tuple[np.ndarray, np.ndarray]:
        """Normalised images `(N, 3, S, S)` and `network`'s output for them, in batches."""
        self._check_size(images)
        x = to_tensor_normalized(np.asarray(images))
        outs = []
        with torch.inference_mode():
            for start in range(0, len(x), INFERENCE_BATCH):
                outs.append(network(torch.from_numpy(x[start : start + INFERENCE_BATCH])).numpy())
        return x, np.concatenate(outs) if outs else np.empty((0, 3, *x.shape[2:]), np.float32)

    def anomaly_maps(self, images: np.ndarray) -> np.ndarray:
        """Raw maps `(N, S, S)`: Gaussian(sigma) of the channel-mean absolute residual in [-1, 1] units,
        of the channel-mean 1 - SSIM, or of the defect probability in [0, 1] (`map_kind`)."""
        return gaussian_smooth(self._unsmoothed(images), self.sigma)

    def maps_and_score_maps(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`anomaly_maps`, and the same network output smoothed with `score_sigma` for the image score."""
        raw = self._unsmoothed(images)
        maps = gaussian_smooth(raw, self.sigma)
        if self.score_sigma is None or self.score_sigma == self.sigma:
            return maps, maps
        return maps, gaussian_smooth(raw, self.score_sigma)

    def _unsmoothed(self, images: np.ndarray) -> np.ndarray:
        if self.map_kind == "segmentation":
            return self._run(images, self.model_)[1][:, 0]
        x, x_hat = self._run(images, self._reconstructor())
        return ssim_map(x, x_hat) if self.map_kind == "ssim" else residual_map(x, x_hat)

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        return denormalize(self._run(images, self._reconstructor())[1])

    def module(self) -> nn.Module:
        return self.model_

    def state(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": dataclasses.asdict(self.config),
            "sigma": self.sigma,
            "score_sigma": self.score_sigma,
            "map": self.map_kind,
            "segmenter": dataclasses.asdict(self.segmenter) if self.segmenter else None,
            "members": len(self.model_.members) if isinstance(self.model_, Ensemble) else 1,
            "state_dict": self.model_.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Self:
        map_kind = state.get("map", "residual")
        score_sigma = state.get("score_sigma")  # absent in files saved before it existed: one map
        det = cls(
            UNetConfig(**state["config"]),
            sigma=float(state["sigma"]),
            map_kind=map_kind,
            score_sigma=None if score_sigma is None else float(score_sigma),
        )
        if state.get("segmenter"):
            det.segmenter = UNetConfig(**state["segmenter"])
        det.model_ = _scoring_layout(det._new_model(int(state.get("members", 1))))  # 1 before ensembles
        det.model_.load_state_dict(state["state_dict"])
        det.model_.eval()
        return det


@dataclasses.dataclass
class _Run:
    """One training run in `fit`: a network, its optimiser, schedule and weight average, and its history
    (several while candidate initialisations compete, `training.candidates`)."""

    model: nn.Module
    objective: nn.Module
    opt: torch.optim.Optimizer
    schedule: Any
    average: WeightAverage | None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    total: float = 0.0
    bf16: bool = False  # training.precision: the forward pass under bfloat16 autocast

    @property
    def kept(self) -> nn.Module:
        """The weights validated and kept: the moving average if there is one, else the raw weights."""
        return self.average.model if self.average else self.model

    def step(self, inputs: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor) -> float:
        """One optimiser step on a batch; returns its loss."""
        self.opt.zero_grad()
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.objective(inputs, clean, masks)
        loss.backward()
        self.opt.step()
        if self.schedule is not None:
            self.schedule.step()
        if self.average is not None:
            self.average.update(self.model)
        return float(loss.item())


class WeightAverage:
    """An exponential moving average of a model's state (parameters and BatchNorm statistics, in a copy
    of the model), updated after each optimiser step. The decay warms up as (1 + t) / (10 + t) towards
    `decay`, so the first steps do not drag the initial weights along (as in TensorFlow's
    ExponentialMovingAverage with num_updates)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        current = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(current[name], 1 - decay)
            else:
                average.copy_(current[name])  # BatchNorm's step counter


class _Objective(nn.Module):
    """The training loss as a module's forward, so DistributedDataParallel sees the whole step."""

    def __init__(self, detector: UNetAEDetector, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.loss = detector._loss

    def forward(self, inputs: torch.Tensor, clean: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.loss(self.model, inputs, clean, masks)


def _scoring_layout(model: nn.Module) -> nn.Module:
    """`model` with its weights channels-last (NHWC) for scoring: oneDNN's convolutions score about twice
    as fast on them on a 2-core x86 CPU, for the same maps up to float rounding (benchmarks/unet_layout.md).
    Training has its own setting (`training.channels_last`): there the layout is another path through
    training for every seed, as another CPU is."""
    return model.to(memory_format=torch.channels_last)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """Mean binary focal loss (Lin et al. 2017) of per-pixel logits against 0/1 targets: the
    cross-entropy of each pixel scaled by (1 - p_true)^gamma, so the many easy background pixels
    weigh little."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p = torch.sigmoid(logits)
    p_true = p * target + (1 - p) * (1 - target)
    return ((1 - p_true) ** gamma * ce).mean()


def epoch_order(n: int, epoch_size: int, rng: np.random.Generator) -> np.ndarray:
    """The indices of one epoch of `epoch_size` draws from `n` images: shuffled passes over all of
    them, concatenated and cut to size (so a small set is seen several times an epoch, a large one
    partly, and every image equally often up to one)."""
    passes = -(-epoch_size // n)
    return np.concatenate([rng.permutation(n) for _ in range(passes)])[:epoch_size]
