"""Multi-process training with torchrun: which process this is, and the few collective steps training needs.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process loads the data, takes its shard of each epoch's
shuffled training order, and DistributedDataParallel averages the gradients: gloo on CPU, nccl on CUDA.
Validation runs on the full val set in every process on identical weights, so every process takes the same
decisions (best epoch, learning rate, early stop) without further messages. Only rank 0 writes the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


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


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process(device_name: str) -> Process:
    """Join the process group when started by torchrun; a single process otherwise."""
    if not launched_by_torchrun():
        return Process()
    if not dist.is_initialized():
        use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


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
    from cxrlab.errors import CxrlabError

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


def all_finite(process: Process, value: float, device) -> bool:
    """True when every process's loss is finite: all ranks stop together instead of one hanging the others."""
    finite = 1.0 if torch.isfinite(torch.tensor(value)) else 0.0
    if process.distributed:
        flag = torch.tensor([finite], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        finite = flag.item()
    return finite == 1.0


def barrier(process: Process) -> None:
    if process.distributed:
        dist.barrier()


def shutdown(process: Process) -> None:
    if process.distributed and dist.is_initialized():
        dist.destroy_process_group()
