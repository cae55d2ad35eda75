"""Helpers shared by the benchmark scripts: the machine's description and peak-memory probes."""

from __future__ import annotations

import os
import platform

import torch

__all__ = ["machine", "status_kb", "reset_peak_rss", "pyplot", "finish_log_plot"]


def machine() -> str:
    """CPU model, logical cores and torch version (the threads are the caller's to add)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__}"


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the process's peak RSS (Linux clear_refs 5); returns the current RSS in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status_kb("VmRSS")


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a notice) when it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'polymixer[bench]')")
        return None
    return plt


def finish_log_plot(fig, axes, xlabel: str, path) -> None:
    """Log-log axes (base 2 on x) with grid and legend on every panel, then save ``fig`` to ``path``."""
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
