"""Helpers shared by the benchmark scripts: peak-memory probes, plots, the GEMM floor; the
machine line comes from the package (:mod:`polymixer.environment`)."""

from __future__ import annotations

import os
import platform

import torch
from torch import nn

from polymixer import PolynomialMixer
from polymixer.environment import device_name, machine, versions

__all__ = ["machine", "device_name", "versions", "status_kb", "reset_peak_rss", "pyplot", "finish_log_plot", "GemmFloor"]


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


class GemmFloor(nn.Module):
    """The projections of a mixer and nothing else: the cost no PoM implementation can beat."""

    def __init__(self, mixer: PolynomialMixer):
        super().__init__()
        self.mixer = mixer

    def forward(self, x, **_):
        m = self.mixer
        u = m.feature_proj(x)
        s = m.gate_proj(x)
        if s.shape[-1] != u.shape[-1]:
            s = s.repeat_interleave(u.shape[-1] // s.shape[-1], dim=-1)
        return m.out_proj(u + s)
