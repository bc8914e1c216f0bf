"""Data-parallel training with `torch.distributed`, launched by `torchrun` (`train.world_size` > 1).

The `train` stage relaunches itself under `torchrun --standalone --nproc-per-node=<world_size>` (one
machine; `launch_command`); each process joins the group from the environment torchrun sets (`join`),
fits the same model on its share of every batch with gradients averaged (the detector's `fit`), and only
rank 0 calibrates, saves and logs (`is_main`). On a multi-GPU machine or several machines, run the same
stage script under your own `torchrun` command (docs/scaling-out.md): the stage then does not relaunch.
Gloo on CPU, NCCL with CUDA.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

# torchrun sets these in every process it starts
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
PR_SET_PDEATHSIG = 1  # Linux prctl option: the signal a process gets when its parent dies


def launched() -> bool:
    """True in a process started by torchrun."""
    return all(k in os.environ for k in ENV_KEYS)


def launch_command(script: Path, args: list[str], world_size: int) -> list[str]:
    """`python -m torch.distributed.run` (torchrun) starting `world_size` copies of `script` on this
    machine, with a free rendezvous port on loopback."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={world_size}",
        str(script),
        *args,
    ]


def join(device: str) -> None:
    """Join the process group torchrun set up (gloo for `cpu`, nccl for `cuda`), left at exit; no-op if
    joined."""
    if dist.is_initialized():
        return
    _die_with_launcher()
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    atexit.register(leave)


def _die_with_launcher() -> None:
    """torchrun starts each process in a session of its own, so killing the stage's process group (a
    `kill -9` of `dvc repro`) would leave them training and writing outputs: on Linux, have the kernel
    send SIGKILL when torchrun dies, and stop now if it already has."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # orphaned before the line above: adopted by init
        os._exit(1)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """The process that saves and logs: rank 0, or the only one."""
    return rank() == 0


def shard(n: int) -> slice:
    """This process's share of `n` items (of a batch whose every process drew the same indices):
    contiguous, as even as can be, possibly empty."""
    r, w = rank(), world_size()
    return slice(r * n // w, (r + 1) * n // w)


def all_sum(*values: float) -> list[float]:
    """`values` summed over all processes (float64; returned as is when not distributed)."""
    if not dist.is_initialized():
        return list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def sync_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, updated by each process on its own share)
    to every process, so all score validation with the same network."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)
