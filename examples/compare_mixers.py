"""Train the same tiny DiT with PoM and with attention on scikit-learn's 8x8 digits and
compare loss and speed (same data order, same noise, same everything but the mixer)."""

import time

from polymixer.train import TrainConfig, train

for mixer in ("pom", "attention"):
    config = TrainConfig(data="digits", image_size=8, preset="DiT-T/2", mixer=mixer, steps=300,
                         batch_size=64, lr=1e-3, warmup_steps=50, out=f"runs/compare_{mixer}",
                         sample_every=300, checkpoint_every=300, progress=False, log_every=100)
    t0 = time.time()
    result = train(config)
    print(f"{mixer:>9}: {result['model'].num_parameters() / 1e3:.0f}k parameters, final loss "
          f"{result['loss']:.4f}, {time.time() - t0:.0f} s; samples in runs/compare_{mixer}/samples/")
