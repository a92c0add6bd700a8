"""Training on more than one process (torchrun): the process group from torchrun's environment and the
DistributedDataParallel wrapper, gloo on CPUs and NCCL on GPUs. One process without torchrun needs neither.

Example:
    >>> rank, world, device = process_group(cfg)          # doctest: +SKIP
    >>> generator = wrap(Generator(4), device)            # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import os
from typing import Tuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .config import TrainConfig


def process_group(cfg: TrainConfig) -> Tuple[int, int, torch.device]:
    """(rank, world, device) from torchrun's environment, the process group joined where world > 1; gloo on CPU,
    NCCL on GPU. ``cfg.threads`` (where set) are each process's CPU threads."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if world > 1 else 0
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def wrap(module: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` under DistributedDataParallel: its construction broadcasts rank 0's weights, its backward hooks
    average gradients bucket by bucket while the backward pass still runs."""
    ids = [device.index] if device.type == "cuda" else None
    # No buffer changes during training (instance norm keeps no running stats): no broadcast before every
    # forward (the keyword was renamed in PyTorch 2.13).
    quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
             inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters, **quiet)
