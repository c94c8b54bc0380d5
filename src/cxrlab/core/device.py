"""Pick the device and set the CPU switches that matter for speed."""

from __future__ import annotations

import torch

from cxrlab.errors import ConfigError


def setup_device(name: str = "auto", threads: int | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for, but torch sees no CUDA GPU here; use --device auto or cpu")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device mps was asked for, but it is not available here; use --device auto or cpu")
    if device.type == "cpu":
        # Denormal floats in small activations made CPU inference 10-300x slower on this project's machines.
        torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    return device


def native_bf16(device: torch.device) -> bool:
    """CUDA GPUs run bf16 natively from compute capability 8.0 (A100, RTX 30xx); T4 and V100 emulate it, slower than fp32."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 8


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bf16 where the GPU runs it natively, else fp16 with a gradient scaler; fp32 off CUDA. Refuses bf16 on a
    GPU without native bf16 and fp16 off CUDA, naming the device."""
    if precision == "auto":
        return ("bf16" if native_bf16(device) else "fp16") if device.type == "cuda" else "fp32"
    if precision == "bf16" and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise ConfigError(
            f"precision bf16 was asked of {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}), which has "
            "no native bf16 and runs it slower than fp32; use --precision fp16 (autocast with a gradient scaler) or auto"
        )
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"precision fp16 (autocast with a gradient scaler) is for CUDA GPUs, not {device}; use fp32, or bf16 on a CPU with AVX512-BF16"
        )
    return precision


def autocast(cfg, device: torch.device):
    """Autocast at the config's precision (an fp16 or 'auto' run read on another device: what that device runs);
    a no-op context for fp32."""
    precision = cfg.precision
    if precision == "auto" or (precision == "fp16" and device.type != "cuda"):
        precision = resolve_precision("auto", device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(cfg, device: torch.device) -> torch.amp.GradScaler:
    """fp16 training scales the loss so small gradients do not underflow; a disabled scaler otherwise."""
    return torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16" and device.type == "cuda")
