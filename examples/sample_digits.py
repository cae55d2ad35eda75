"""Sample digits from the bundled PoM-DiT with the Python API (what `polymixer demo` does)."""

import torch

from polymixer import bundled_checkpoint
from polymixer.sample import generate, load_for_sampling, save_array, save_samples_grid

torch.set_num_threads(2)
model, pipeline = load_for_sampling(bundled_checkpoint("demo"))
print(f"{model.config.mixer} DiT, {model.num_parameters() / 1e6:.2f}M parameters")

# four 7s and four 3s, 30 Euler steps, guidance 2
samples, labels = generate(model, pipeline, classes=[7, 3], per_class=4, steps=30, cfg_scale=2.0, seed=1)
print(samples.shape, samples.min().item(), samples.max().item())  # (8, 1, 32, 32) in [-1, 1]
save_samples_grid(samples, pipeline, "sevens_and_threes.png", per_class=4)
save_array(samples, labels, "sevens_and_threes.npz")

# Heun: a second-order sampler, fewer steps for the same accuracy
samples, _ = generate(model, pipeline, classes=list(range(10)), per_class=1, steps=12, sampler="heun", seed=0)
save_samples_grid(samples, pipeline, "digits_heun.png", per_class=1)
