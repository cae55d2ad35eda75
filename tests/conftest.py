import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

# Test tensors are small: one thread avoids oversubscribing a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def tiny_vae(tmp_path):
    """A tiny randomly initialised diffusers AutoencoderKL, also saved to ``tmp_path / "vae"``."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16,
    )
    vae.save_pretrained(tmp_path / "vae")
    return vae
