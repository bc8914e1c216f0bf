"""Data-parallel training (train.world_size > 1): two real processes under torchrun, gloo on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from anomaly_spotter.detectors import distributed
from tests.conftest import REPO

WORKER = textwrap.dedent(
    """
    import hashlib, json, sys
    import numpy as np, torch
    from anomaly_spotter.detectors import distributed
    from anomaly_spotter.detectors.unet_ae.options import UNetTraining
    from anomaly_spotter.detectors.unet_ae.detector import UNetAEDetector
    from anomaly_spotter.detectors.unet_ae.network import UNetConfig

    torch.set_num_threads(1)
    distributed.join("cpu")
    rng = np.random.default_rng(0)
    base = np.tile(np.linspace(60, 180, 32, dtype=np.float32), (32, 1))[..., None].repeat(3, axis=2)
    images = np.clip(base + rng.normal(0, 3, (14, 32, 32, 3)), 0, 255).astype(np.uint8)
    train = UNetTraining(batch_size=4, lr=5e-3, max_epochs=6, patience=6, synthetic_defects=0.5, crop_size=16,
                        lr_schedule="onecycle", ssim_loss=1.0, candidates=2, candidate_epochs=2)
    config = UNetConfig(encoder_channels=(4, 8), bottleneck_channels=8, batch_norm=True)
    det = UNetAEDetector(config, train=train, seed=0, progress=False, map_kind="segmentation",
                         segmenter_channels=(4, 8))
    det.fit(images[:10], images[10:])
    weights = b"".join(t.numpy().tobytes() for t in det.module().state_dict().values())
    out = {"rank": distributed.rank(), "world_size": distributed.world_size(),
           "images_trained": det.images_trained_, "history": det.history_.to_dict("list"),
           "candidate_losses": det.candidate_losses_,
           "weights": hashlib.md5(weights).hexdigest()}
    (__import__("pathlib").Path(sys.argv[1]) / f"rank{distributed.rank()}.json").write_text(json.dumps(out))
    distributed.leave()
    """
)


def _torchrun(tmp_path: Path, run: str) -> list[dict]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / run
    out.mkdir()
    command = distributed.launch_command(script, [str(out)], world_size=2)
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_processes_share_every_batch_and_end_with_the_same_weights(tmp_path) -> None:
    """Both ranks train (half of each batch each), the loss falls, validation agrees (the same candidate
    chosen, the same early-stopping decision, the same kept weights on both ranks), and a second run with
    the same world size is identical."""
    first = _torchrun(tmp_path, "a")
    assert [r["rank"] for r in first] == [0, 1] and all(r["world_size"] == 2 for r in first)
    # 6 epochs of 10 images in batches of 4, 4, 2: each rank gets 2, 2, 1 of each, for two candidates
    # in the first 2 epochs
    assert [r["images_trained"] for r in first] == [2 * 2 * 5 + 4 * 5] * 2
    candidates = [r["candidate_losses"] for r in first]
    assert len(candidates[0]) == 2 and candidates[0] == candidates[1]
    assert first[0]["history"] == first[1]["history"] and first[0]["weights"] == first[1]["weights"]
    losses = first[0]["history"]["train_loss"]
    assert losses[-1] < losses[0]
    again = _torchrun(tmp_path, "b")
    assert again[0]["weights"] == first[0]["weights"] and again[0]["history"] == first[0]["history"]


def test_launch_command_and_shards_outside_a_group() -> None:
    command = distributed.launch_command(Path("stages/train.py"), ["fabric"], world_size=3)
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--nproc-per-node=3" in command and command[-2:] == ["stages/train.py", "fabric"]
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.shard(5) == slice(0, 5) and distributed.all_sum(1.5, 2) == [1.5, 2]
