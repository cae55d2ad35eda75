"""experiments/universal_approximation.py: task targets, equal model sizes, a --quick run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "experiments" / "universal_approximation.py"


@pytest.fixture(scope="module")
def ua():
    spec = importlib.util.spec_from_file_location("universal_approximation", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # @dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_rank_targets_by_hand(ua):
    x = torch.tensor([[0.3, -1.0, 2.0, 0.5], [5.0, 4.0, 3.0, 2.0]])
    expected = torch.tensor([[1, 0, 3, 2], [3, 2, 1, 0]]) / 3
    torch.testing.assert_close(ua.rank_targets(x), expected)


def test_median_targets_by_hand(ua):
    odd = torch.tensor([[3.0, -1.0, 10.0, 0.0, 1.0]])  # median 1
    torch.testing.assert_close(ua.median_targets(odd), torch.tensor([[2.0, -2.0, 9.0, -1.0, 0.0]]))
    even = torch.tensor([[4.0, 0.0, 1.0, 2.0]])  # median (1 + 2) / 2
    torch.testing.assert_close(ua.median_targets(even), torch.tensor([[2.5, -1.5, -0.5, 0.5]]))


def test_mean_targets_by_hand(ua):
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0]])  # mean 4
    torch.testing.assert_close(ua.mean_targets(x), torch.tensor([[0.0, 0.0, 0.0, 1.0]]))


def test_make_batch_is_seeded_and_consistent(ua):
    x1, y1 = ua.make_batch("rank", 3, 16, torch.Generator().manual_seed(0))
    x2, y2 = ua.make_batch("rank", 3, 16, torch.Generator().manual_seed(0))
    assert x1.shape == (3, 16, 1) and y1.shape == (3, 16)
    torch.testing.assert_close(x1, x2)
    torch.testing.assert_close(y1, ua.rank_targets(x1.squeeze(-1)))
    with pytest.raises(ValueError, match="task"):
        ua.make_batch("sort", 1, 4, torch.Generator())


def test_models_have_equal_sizes_and_are_permutation_equivariant(ua):
    torch.manual_seed(0)
    models = {m: ua.build_model(m) for m in ua.MIXERS}
    counts = {m: ua.count_parameters(model) for m, model in models.items()}
    ref = counts["pom"]
    for m, c in counts.items():
        assert abs(c - ref) <= 0.10 * ref, counts
    x = torch.randn(2, 12, 1)
    perm = torch.randperm(12)
    for m, model in models.items():
        with torch.no_grad():
            torch.testing.assert_close(model(x)[:, perm], model(x[:, perm]), atol=1e-5, rtol=1e-4, msg=m)


def test_quick_run_writes_outputs(ua, tmp_path):
    result = ua.main(["--quick", "--out", str(tmp_path), "--tasks", "rank,median", "--mixers", "pom,attention,none"])
    md = (tmp_path / "universal_approximation.md").read_text()
    data = json.loads((tmp_path / "universal_approximation.json").read_text())
    assert "| N | model |" in md and "rank" in md and "median" in md
    assert len(data["runs"]) == 2 * 3 and len(data["summary"]) == 2 * 3
    assert data["total_seconds"] > 0 and data["config"]["steps"] == 30
    assert result["summary"] == data["summary"]
    for run in data["runs"]:
        assert run["loss"] == run["loss"]  # not NaN
