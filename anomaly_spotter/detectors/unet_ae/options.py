"""The autoencoder's options: params.yaml `model.unet_ae` (`UNetAEOptions`) with its training loop in
`model.unet_ae.training` (`UNetTraining`). No torch here: params are checked without building a network."""

from __future__ import annotations

from dataclasses import dataclass, field

from anomaly_spotter.core.errors import ConfigError

TRAINING_SECTION = "training"
LR_SCHEDULES = ("constant", "onecycle")
CHECKPOINTS = ("best", "last")  # the epoch of the lowest validation loss (early stopping) | the last epoch
PRECISIONS = ("fp32", "bf16")  # what the networks compute in while training
MEMBER_SEED_STEP = 1000  # member m of an ensemble (training.members) trains from seed + m x this
# |x - x_hat| (the original's), 1 - local SSIM, or the probability a segmentation network gives (DRAEM)
MAP_KINDS = ("residual", "ssim", "segmentation")
DEFAULT_SIGMA = 1.0
DEFAULT_SEGMENTER = (16, 32, 64)


@dataclass(frozen=True)
class UNetTraining:
    """The training loop (params.yaml `model.unet_ae.training.*`): Adam; the weights kept are the best
    validation epoch's (early stopping) or the last epoch's (`checkpoint`), optionally averaged."""

    batch_size: int = 32
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    max_epochs: int = 100
    epoch_size: int = 0  # images per epoch, drawn cycling through the shuffled set (0 = the set)
    patience: int = 10
    synthetic_defects: float = 0.0  # share of training images given a synthetic defect to remove
    synthetic_scars: float = 0.0  # share of those defects drawn as thin curved scars rather than blobs
    crop_size: int = 0  # train on one random crop of this side per batch (0 = whole images)
    lr_schedule: str = "constant"  # constant | onecycle (warm-up to lr, cosine annealing to ~0)
    ssim_loss: float = 0.0  # weight of the mean 1 - SSIM added to the MSE
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (per step), kept and
    # validated instead of the raw weights
    checkpoint: str = "best"  # best (lowest validation loss, early stopping after `patience`) | last
    val_every: int = 1  # validate every this many epochs (and after the last); the others' val_loss is NaN
    device: str = "cpu"  # cpu | cuda: where the autoencoder trains (scoring runs on the CPU)
    candidates: int = 1  # initialisations trained side by side on the same batches for the first
    # `candidate_epochs` epochs (at most max_epochs); the one with the lowest validation loss then goes on
    candidate_epochs: int = 5
    members: int = 1  # > 1: that many trainings, each from its own seed (seed, seed + MEMBER_SEED_STEP, ...)
    # with its own contest, and the map is the mean of their maps (an ensemble; M times the cost of one)
    precision: str = "fp32"  # fp32 | bf16: the networks compute in bfloat16 while training (autocast;
    # weights, losses and scoring stay float32): faster on CPUs with bfloat16 instructions (bench.unet_layout)
    channels_last: bool = False  # train with the weights channels-last (NHWC), where oneDNN is faster

    def __post_init__(self) -> None:
        where = f"model.unet_ae.{TRAINING_SECTION}"
        for name in ("synthetic_defects", "synthetic_scars"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{where}.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"{where}.lr_schedule is {self.lr_schedule!r}; use one of {', '.join(LR_SCHEDULES)}"
            )
        if self.checkpoint not in CHECKPOINTS:
            kinds = ", ".join(CHECKPOINTS)
            raise ConfigError(f"{where}.checkpoint is {self.checkpoint!r}; use one of {kinds}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"{where}.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"{where}.device is {self.device!r}; use cpu or cuda")
        if self.crop_size < 0 or self.ssim_loss < 0 or self.epoch_size < 0:
            raise ConfigError(
                f"{where}: crop_size, ssim_loss and epoch_size must be >= 0, "
                f"got {self.crop_size}, {self.ssim_loss}, {self.epoch_size}"
            )
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ConfigError(
                f"{where}: batch_size, max_epochs and patience must be >= 1, got "
                f"{self.batch_size}, {self.max_epochs}, {self.patience}"
            )
        if self.candidates < 1 or self.candidate_epochs < 1:
            raise ConfigError(
                f"{where}: candidates and candidate_epochs must be >= 1, got {self.candidates} and "
                f"{self.candidate_epochs}"
            )
        if self.members < 1:
            raise ConfigError(f"{where}.members must be >= 1, got {self.members}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"{where}.precision is {self.precision!r}; use one of {', '.join(PRECISIONS)}")
        if self.val_every < 1 or (self.checkpoint == "best" and self.val_every > self.patience):
            raise ConfigError(
                f"{where}.val_every must be >= 1, and at most patience ({self.patience}) with checkpoint: "
                f"best, got {self.val_every}"
            )


@dataclass(frozen=True)
class UNetAEOptions:
    """params.yaml `model.unet_ae`: the network (`UNetConfig`'s fields), the map, its smoothing, training."""

    encoder_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    bottleneck_channels: int = 128
    convs_per_block: int = 1
    batch_norm: bool = False
    skip_connections: bool = True
    sigma: float = DEFAULT_SIGMA  # Gaussian smoothing of the map
    score_sigma: float | None = None  # ... and of the copy the image score is the max of (None: the map)
    map_kind: str = "residual"
    segmenter_channels: list[int] = field(default_factory=lambda: list(DEFAULT_SEGMENTER))
    training: UNetTraining = field(default_factory=UNetTraining)

    def __post_init__(self) -> None:
        if self.map_kind not in MAP_KINDS:
            kinds = ", ".join(MAP_KINDS)
            raise ConfigError(f"model.unet_ae.map_kind is {self.map_kind!r}; use one of {kinds}")
        if self.sigma < 0 or (self.score_sigma is not None and self.score_sigma < 0):
            raise ConfigError(
                f"model.unet_ae: sigma and score_sigma must be >= 0, got {self.sigma}, {self.score_sigma}"
            )
