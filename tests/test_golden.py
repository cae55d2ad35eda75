"""Every shipped config (bundled demos, checkpoints/compare) and a few tiny video models with
legacy config fields load and sample bit-identically to the outputs recorded before the
token-mixer refactor (tests/golden/make_golden.py wrote them, single-threaded)."""

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
def test_bit_identical(outputs, name):
    assert name in outputs
    got, want = outputs[name], EXPECTED[name]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want), f"{name}: max difference {(got - want).abs().max().item():.3g}"


def test_every_output_checked(outputs):
    assert set(outputs) == set(EXPECTED)
