"""Where a measurement ran: the machine line that every benchmark and experiment result
records next to its numbers (processor, cores, threads, library versions, device)."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["cpu_name", "machine", "device_name", "versions"]


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return name


def machine() -> str:
    """CPU model, logical cores and torch version (the caller adds its thread count)."""
    return f"{cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__}"


def device_name(device: torch.device) -> str:
    """A CUDA device's name, memory and SM count; for the CPU its model and the threads in use."""
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2 ** 30:.0f} GiB, {p.multi_processor_count} SMs)"
    return f"{cpu_name()} CPU, {torch.get_num_threads()} threads"


def versions() -> str:
    """torch, CUDA and Triton versions."""
    parts = [f"torch {torch.__version__}"]
    if torch.version.cuda:
        parts.append(f"CUDA {torch.version.cuda}")
    try:
        import triton

        parts.append(f"triton {triton.__version__}")
    except Exception:  # noqa: BLE001 - any failure to import means no usable Triton
        parts.append("no triton")
    return ", ".join(parts)
