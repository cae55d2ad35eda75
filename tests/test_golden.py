"""Every shipped config (bundled demos, checkpoints/compare) and a few tiny video models with
legacy config fields load and sample bit-identically to the outputs recorded before the
token-mixer refactor (tests/golden/make_golden.py wrote them, single-threaded).

Bit-identical on the machine that wrote them; another CPU's BLAS kernels round differently
(measured on a second Xeon: up to 4.5e-6 on float32 samples of scale 1, 1.6e-7 on the
float64 forwards, whose inputs pass through float32 weights). So the check allows 2e-5 of
each output's scale: a change of behaviour moves outputs by 1e-3 or more."""

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent / "golden"


def _maker():
    spec = importlib.util.spec_from_file_location("make_golden", HERE / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def outputs():
    threads = torch.get_num_threads()
    try:
        return _maker().outputs()
    finally:
        torch.set_num_threads(threads)


EXPECTED = load_file(str(HERE / "outputs.safetensors"))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_outputs(outputs, name):
    assert name in outputs
    got, want = outputs[name], EXPECTED[name]
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = max(1.0, want.abs().max().item())
    torch.testing.assert_close(got, want, rtol=0, atol=2e-5 * scale, msg=lambda m: f"{name}: {m}")


def test_every_output_checked(outputs):
    assert set(outputs) == set(EXPECTED)
