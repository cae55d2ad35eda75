"""Objectives and samplers, checked against exact (analytic) models: nothing here trains."""

import math

import pytest
import torch

from polymixer.conditioning import ClassLabels

from polymixer.diffusion import (
    DDPM,
    FlowMatching,
    classifier_free_guidance,
    ddim,
    euler,
    flow_times,
    heun,
    make_objective,
    resolution_shift,
    sample,
    time_shift,
)


def test_time_shift_formula_and_endpoints():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    s = 3.0
    out = time_shift(t, s)
    assert torch.allclose(out, s * t / (1 + (s - 1) * t))
    assert out[0] == 0 and out[-1] == 1
    assert torch.all(out[1:-1] > t[1:-1])  # s > 1 moves every time towards noise
    assert torch.all(out[1:] > out[:-1])  # monotone
    assert torch.equal(time_shift(t, 1.0), t)
    assert time_shift(torch.tensor(0.5), 3.0).item() == pytest.approx(0.75)
    assert resolution_shift(64, 64, base=32 * 32) == pytest.approx(2.0)


def test_flow_times_grid():
    ts = flow_times(4)
    assert torch.allclose(ts, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    shifted = flow_times(4, shift=2.0)
    assert shifted[0] == 1 and shifted[-1] == 0 and shifted[2] == pytest.approx(2 * 0.5 / 1.5)


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_flow_time_sampling_range(sampling):
    fm = FlowMatching(time_sampling=sampling)
    t = fm.sample_time(20000, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() <= 1
    assert t.mean().item() == pytest.approx(0.5, abs=0.02)
    if sampling == "logit_normal":  # more mass in the middle than uniform
        assert ((t > 0.25) & (t < 0.75)).float().mean() > 0.6


def test_flow_matching_convention_with_exact_velocity():
    """For a one-point data set x0 = c, v = eps - c = (x_t - c) / t exactly: the loss must vanish."""
    c = torch.randn(1, 2, 4, 4)
    x0 = c.expand(8, -1, -1, -1).clone()
    seen = {}

    def exact(x_t, t, y):
        seen["t"], seen["y"] = t, y
        return (x_t - c) / t.view(-1, 1, 1, 1)

    y = torch.arange(8)
    loss = FlowMatching(time_sampling="uniform").loss(exact, x0, y)
    assert loss.item() < 1e-8
    assert seen["t"].shape == (8,) and torch.equal(seen["y"], y)
    # a wrong sign convention (predicting x0 - eps) is far from zero
    loss_wrong = FlowMatching().loss(lambda x, t, y: -exact(x, t, y), x0, y)
    assert loss_wrong.item() > 0.1


def test_flow_loss_at_given_time_and_noise():
    """loss_at is the loss's formula at given t and eps: loss() with a seeded generator equals
    loss_at() fed the draws of that generator; a float t is one level for every sample."""
    flow = FlowMatching(time_sampling="uniform")
    x0, y = torch.randn(6, 3, 2, 4, 4), torch.arange(6)
    lin = torch.randn(4 * 4, 4 * 4)

    def model(x_t, t, y):
        return (x_t.flatten(-2) @ lin).view_as(x_t) * (1 + t.view(*t.shape, *[1] * (x_t.dim() - t.dim())))

    g = torch.Generator().manual_seed(3)
    t = flow.sample_time((6,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    expected = flow.loss_at(model, x0, y, t, eps)
    assert flow.loss(model, x0, y, torch.Generator().manual_seed(3)).item() == pytest.approx(expected.item(), rel=1e-6)
    x_t = 0.7 * x0 + 0.3 * eps
    direct = ((model(x_t, torch.full((6,), 0.3), y) - (eps - x0)) ** 2).mean()
    assert flow.loss_at(model, x0, y, 0.3, eps).item() == pytest.approx(direct.item(), rel=1e-6)
    tf = torch.rand(6, 3)  # one level per frame
    x_tf = (1 - tf[..., None, None, None]) * x0 + tf[..., None, None, None] * eps
    direct = ((model(x_tf, tf, y) - (eps - x0)) ** 2).mean()
    assert flow.loss_at(model, x0, y, tf, eps).item() == pytest.approx(direct.item(), rel=1e-6)
    with pytest.raises(ValueError, match="eps"):
        flow.loss_at(model, x0, y, 0.3, eps[:, :2])
    with pytest.raises(ValueError, match="time_shape"):
        flow.loss_at(model, x0, y, torch.rand(5), eps)


def test_ddpm_convention_with_exact_noise():
    ddpm = DDPM(num_steps=1000)
    c = torch.randn(1, 1, 4, 4)
    x0 = c.expand(16, -1, -1, -1).clone()

    def exact(x_t, t, y):
        k = (t * ddpm.num_steps).round().long()
        abar = ddpm.alphas_cumprod[k].float().view(-1, 1, 1, 1)
        return (x_t - abar.sqrt() * c) / (1 - abar).sqrt()

    assert ddpm.loss(exact, x0, torch.zeros(16, dtype=torch.long)).item() < 1e-8


# ---------------------------------------------------------------- exact Gaussian models
MU, SIGMA = 1.5, 0.5  # data ~ N(MU, SIGMA^2) per pixel


def gaussian_velocity(x, t, y):
    """E[eps - x0 | x_t] for x0 ~ N(MU, SIGMA^2), x_t = (1-t) x0 + t eps."""
    t = t.view(-1, 1, 1, 1).double()
    x = x.double()
    var = (1 - t) ** 2 * SIGMA**2 + t**2
    resid = x - (1 - t) * MU
    e_eps = t / var * resid
    e_x0 = MU + (1 - t) * SIGMA**2 / var * resid
    return (e_eps - e_x0).float()


def gaussian_noise(ddpm):
    def eps(x, t, y):
        k = (t * ddpm.num_steps).round().long()
        a = ddpm.alphas_cumprod[k].view(-1, 1, 1, 1)
        var = a * SIGMA**2 + (1 - a)
        return ((1 - a).sqrt() / var * (x.double() - a.sqrt() * MU)).float()

    return eps


@pytest.mark.parametrize("method,steps,tol", [("euler", 100, 0.03), ("heun", 20, 0.01)])
def test_flow_samplers_reach_the_data_distribution(method, steps, tol):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, 1, 2, 2, generator=g)
    y = torch.zeros(4000, dtype=torch.long)
    fn = euler if method == "euler" else heun
    x = fn(gaussian_velocity, noise, y, steps)
    assert x.mean().item() == pytest.approx(MU, abs=tol + 0.02)
    assert x.std().item() == pytest.approx(SIGMA, abs=tol + 0.02)


def test_heun_is_more_accurate_than_euler_per_step():
    noise = torch.randn(256, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(256, dtype=torch.long)
    reference = heun(gaussian_velocity, noise, y, 400)
    err_euler = (euler(gaussian_velocity, noise, y, 8) - reference).abs().max()
    err_heun = (heun(gaussian_velocity, noise, y, 8) - reference).abs().max()
    assert err_heun < err_euler / 3


def test_ddim_reaches_the_data_distribution():
    ddpm = DDPM()
    noise = torch.randn(4000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    x = ddim(gaussian_noise(ddpm), noise, torch.zeros(4000, dtype=torch.long), 50, ddpm)
    assert x.mean().item() == pytest.approx(MU, abs=0.05)
    assert x.std().item() == pytest.approx(SIGMA, abs=0.05)


def test_classifier_free_guidance_combination():
    calls = []

    def model(x, t, y):
        calls.append(y.labels.clone())
        return x * 0 + y.labels.view(-1, 1, 1, 1).float()  # predicts its label

    x = torch.zeros(3, 1, 2, 2)
    t = torch.full((3,), 0.5)
    y = ClassLabels(torch.tensor([1, 2, 3]), n_classes=10)
    out = classifier_free_guidance(model, scale=4.0)(x, t, y)
    # u + w (c - u) with u = 10 (the null label), c = y
    assert torch.allclose(out[:, 0, 0, 0], 10 + 4.0 * (y.labels.float() - 10))
    assert len(calls) == 1 and torch.equal(calls[0], torch.tensor([1, 2, 3, 10, 10, 10]))  # one batched call
    assert classifier_free_guidance(model, 1.0) is model
    with pytest.raises(TypeError, match="conditioning object"):
        classifier_free_guidance(model, 2.0)(x, t, y.labels)


def test_class_labels_condition():
    y = ClassLabels(torch.tensor([0, 3, 9]), n_classes=10)
    assert y.batch_size == 3 and torch.equal(y.null().labels, torch.full((3,), 10))
    assert torch.equal(y.cat(y.null()).labels, torch.tensor([0, 3, 9, 10, 10, 10]))
    assert torch.equal(y.rows(slice(1, 3)).labels, torch.tensor([3, 9]))
    assert torch.equal(y.drop(torch.tensor([True, False, True])).labels, torch.tensor([10, 3, 10]))
    assert torch.equal(y.labels, torch.tensor([0, 3, 9]))  # a value: never changed in place
    for bad, error in ((torch.tensor([11]), ValueError), (torch.tensor([-1]), ValueError),
                       (torch.tensor([0.5]), TypeError), ([1], TypeError), (torch.zeros(2, 2, dtype=torch.long), ValueError)):
        with pytest.raises(error, match="y:"):
            ClassLabels(bad, n_classes=10)
    with pytest.raises(ValueError, match="other"):
        y.cat(ClassLabels(torch.tensor([1]), n_classes=5))


def test_sample_dispatch_and_errors():
    noise = torch.randn(2, 1, 2, 2)
    y = torch.zeros(2, dtype=torch.long)
    out = sample(gaussian_velocity, noise, y, objective=FlowMatching(), sampler="heun", steps=3)
    assert out.shape == noise.shape
    with pytest.raises(ValueError, match="sampler"):
        sample(gaussian_velocity, noise, y, objective=FlowMatching(), sampler="ddim")
    with pytest.raises(ValueError, match="sampler"):
        sample(gaussian_velocity, noise, y, objective=DDPM(), sampler="euler")
    with pytest.raises(TypeError, match="conditioning object"):
        sample(gaussian_velocity, noise, y, objective=FlowMatching(), cfg_scale=2.0)
    with pytest.raises(ValueError, match="one per sample"):
        sample(gaussian_velocity, noise, y[:1], objective=FlowMatching())
    with pytest.raises(ValueError, match="steps"):
        sample(gaussian_velocity, noise, y, objective=FlowMatching(), steps=0)
    with pytest.raises(ValueError, match="objective"):
        make_objective("edm")
    with pytest.raises(ValueError, match="time_sampling"):
        FlowMatching(time_sampling="beta")


def test_samplers_are_deterministic_and_only_call_the_model():
    seen = []

    def model(x, t, y):
        seen.append((tuple(x.shape), tuple(t.shape), tuple(y.labels.shape)))
        return -x

    noise = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    y = ClassLabels(torch.tensor([0, 1, 2]), n_classes=3)
    a = sample(model, noise, y, objective=FlowMatching(), steps=5, cfg_scale=2.0)
    b = sample(model, noise, y, objective=FlowMatching(), steps=5, cfg_scale=2.0)
    assert torch.equal(a, b)
    assert all(s == ((6, 2, 4, 4), (6,), (6,)) for s in seen)
    assert math.isfinite(a.abs().max().item())
