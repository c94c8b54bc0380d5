"""Multi-process training with torchrun: which process this is, and the few collective steps training needs.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process loads the data, takes its shard of each epoch's
shuffled training order, and DistributedDataParallel averages the gradients: gloo on CPU, nccl on CUDA, each
process pinned to its own GPU before the first collective. After each epoch rank 0's BatchNorm statistics go to
every rank and rank 0 validates; its val row reaches all ranks, so every decision it drives (schedule, best
epoch, early stop) is the same everywhere by construction. Only rank 0 writes the run. Collectives wait up to
``CXRLAB_COLLECTIVE_TIMEOUT_MIN`` minutes (default 120), long enough for rank 0's longest lone work: a large
download, or finishing a run (test scoring, plots, the out-of-distribution check) before the final barrier.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from cxrlab.errors import ConfigError, CxrlabError


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets beside WORLD_SIZE


def launched_by_torchrun() -> bool:
    return _count("WORLD_SIZE", "1") > 1


def _count(variable: str, default: str) -> int:
    value = os.environ.get(variable, default)
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"{variable}={value!r} is not a whole number; torchrun sets it (torchrun --nproc_per_node N -m cxrlab train ...)"
        ) from None


def check_launch(device_name: str) -> None:
    """Refuse, before any collective, a launch that could only hang or fail later: torchrun's variables missing
    beside WORLD_SIZE, or more processes on this machine than visible GPUs when training on CUDA."""
    world = _count("WORLD_SIZE", "1")
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE is {world} but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: start distributed "
            "training with torchrun (torchrun --nproc_per_node N -m cxrlab train ...), or unset WORLD_SIZE for one process"
        )
    local = _count("LOCAL_WORLD_SIZE", str(world))
    if device_name in ("auto", "cuda") and torch.cuda.is_available() and local > torch.cuda.device_count():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError(
            f"torchrun started {local} processes on this machine but {torch.cuda.device_count()} GPU(s) are visible"
            + (f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else "")
            + f": use --nproc_per_node {torch.cuda.device_count()}, or --device cpu to train on the CPU with gloo"
        )


def init_process(device_name: str) -> Process:
    """Join the process group when started by torchrun; a single process otherwise."""
    if not launched_by_torchrun():
        return Process()
    check_launch(device_name)
    local_rank = _count("LOCAL_RANK", "0")
    if not dist.is_initialized():
        timeout = timedelta(minutes=float(os.environ.get("CXRLAB_COLLECTIVE_TIMEOUT_MIN", "120")))
        if device_name in ("auto", "cuda") and torch.cuda.is_available():
            # without this every rank's collectives (broadcast_object_list too) would use cuda:0
            torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl", timeout=timeout, device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
    return Process(dist.get_rank(), dist.get_world_size(), local_rank)


def backend_name() -> str:
    return dist.get_backend() if dist.is_initialized() else "none"


def process_device(device_name: str, process: Process) -> str:
    """Each process on one machine gets its own GPU."""
    if process.distributed and device_name in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{process.local_rank}"
    return device_name


def from_main(process: Process, value):
    """Rank 0's value, on every rank (pickled through the process group; only our own objects travel)."""
    if not process.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(process: Process, step) -> None:
    """Run ``step`` on rank 0 only (a download, a check); if it raises a CxrlabError, every rank raises it,
    rather than the other ranks waiting at the next collective until its timeout."""
    failure = None
    if process.is_main:
        try:
            step()
        except CxrlabError as exc:
            failure = exc
    failure = from_main(process, failure)
    if failure is not None:
        raise failure


def sum_across(process: Process, values: list[float], device) -> list[float]:
    if not process.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def first_batch_not_finite(process: Process, first_bad: torch.Tensor) -> int | None:
    """The first batch index (a device scalar, -1 for none) at which any rank's loss was not finite, or None: all
    ranks read the same answer and stop together instead of one hanging the others."""
    if process.distributed:
        worst = torch.where(first_bad < 0, torch.iinfo(torch.int64).max, first_bad)
        dist.all_reduce(worst, op=dist.ReduceOp.MIN)
        value = int(worst.item())
        return None if value == torch.iinfo(torch.int64).max else value
    value = int(first_bad.item())
    return None if value < 0 else value


def sync_buffers(process: Process, model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) to every rank."""
    if process.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def barrier(process: Process) -> None:
    if process.distributed:
        dist.barrier()


def shutdown(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()
