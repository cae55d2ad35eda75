"""Run under torchrun by tests/test_train.py: a few DDP steps, then each rank saves its weights."""

import os
import sys

import torch

from polymixer.io import save_tensors
from polymixer.train import TrainConfig, train


def main(out: str) -> None:
    config = TrainConfig(
        data="digits", image_size=8, preset="DiT-T/2", depth=1, width=32, heads=2,
        steps=4, batch_size=8, warmup_steps=2, lr=1e-3, ema_decay=0.9, seed=0,
        out=out, log_every=1, sample_every=0, checkpoint_every=2, keep_last=0,
        progress=False, tensorboard=False, num_threads=1, device="cpu",
    )
    result = train(config, resume=len(sys.argv) > 2 and sys.argv[2] == "resume")
    rank = int(os.environ["RANK"])
    save_tensors(os.path.join(out, f"rank{rank}_model.safetensors"), result["model"].state_dict())
    save_tensors(os.path.join(out, f"rank{rank}_ema.safetensors"), result["ema"].state_dict())
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
