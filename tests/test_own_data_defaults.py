"""Defaults that follow the data (issue 22, items 5-7 and 16): a folder's channels and size
come from its files unless the flags say otherwise, the warm-up fits a short run, and a run
starts by saying how big its model and samples are and how long a step takes."""

import numpy as np
import pytest
from PIL import Image

from polymixer.train import TrainConfig, lr_at, resolve_defaults, train, warmup_steps_for


def write_images(root, shape, classes=("a", "b"), n=4, colour=False):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, shape if not colour else (*shape, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.png")
    return root


def write_gifs(root, frames=4, side=16, n=2):
    rng = np.random.default_rng(0)
    for c in ("left", "right"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            ims = [Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)) for _ in range(frames)]
            ims[0].save(root / c / f"{i}.gif", save_all=True, append_images=ims[1:], duration=100, loop=0)
    return root


def tiny(out, data, **kw) -> TrainConfig:
    base = dict(data=str(data), preset="DiT-T/4", depth=1, width=32, heads=2, steps=2, batch_size=4,
                warmup_steps=0, seed=0, out=str(out), sample_every=0, checkpoint_every=0, keep_last=0,
                progress=False, tensorboard=False, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_grey_16px_images_train_as_grey_16px(tmp_path, capsys):
    data = write_images(tmp_path / "grey", (16, 16))
    result = train(tiny(tmp_path / "run", data))
    cfg = result["model"].config
    assert (cfg.in_channels, cfg.image_size) == (1, 16)
    out = capsys.readouterr().out
    assert "grey images, smallest side 16 px: --channels 1, --image-size 16 (from the data" in out
    saved = TrainConfig.from_json(tmp_path / "run" / "train_config.json")
    assert (saved.channels, saved.image_size) == (1, 16)  # what was chosen is recorded


def test_the_flags_still_decide(tmp_path, capsys):
    data = write_images(tmp_path / "grey", (16, 16))
    result = train(tiny(tmp_path / "run", data, channels=3, image_size=8))
    cfg = result["model"].config
    assert (cfg.in_channels, cfg.image_size) == (3, 8)
    assert "from the data" not in capsys.readouterr().out


def test_colour_large_and_odd_sizes(tmp_path):
    colour = write_images(tmp_path / "colour", (20, 20), colour=True)
    config, notes = resolve_defaults(TrainConfig(data=str(colour), preset="DiT-T/4"))
    assert (config.channels, config.image_size) == (3, 20)  # 20 is a multiple of the patch 4
    odd = write_images(tmp_path / "odd", (30, 34))
    config, _ = resolve_defaults(TrainConfig(data=str(odd), preset="DiT-T/4"))
    assert (config.channels, config.image_size) == (1, 28)  # smallest side 30, down to a multiple of 4
    large = write_images(tmp_path / "large", (300, 200), n=1)
    config, notes = resolve_defaults(TrainConfig(data=str(large), preset="DiT-T/4"))
    assert config.image_size == 64 and "at most 64" in notes[0]
    config, _ = resolve_defaults(TrainConfig(data="mnist"))
    assert (config.channels, config.image_size) == (1, 32)


def test_grey_gif_clips_take_their_size_and_channels(tmp_path):
    clips = write_gifs(tmp_path / "clips")
    result = train(tiny(tmp_path / "run", clips, frames=4))
    cfg = result["model"].config
    assert (cfg.in_channels, cfg.image_size, cfg.frames) == (1, 16, 4)


def test_resume_keeps_the_values_chosen_at_the_start(tmp_path):
    data = write_images(tmp_path / "grey", (16, 16))
    train(tiny(tmp_path / "run", data, steps=2, warmup_steps=None))  # warm-up: 0 steps of 2
    config, _ = resolve_defaults(TrainConfig(data=str(data), steps=1000),
                                 saved=TrainConfig.from_json(tmp_path / "run" / "train_config.json").to_dict())
    assert config.warmup_steps == 0  # a longer --steps on resume does not move the warm-up
    assert (config.channels, config.image_size) == (1, 16)


def test_warmup_fits_a_short_run(capsys):
    assert warmup_steps_for(TrainConfig(steps=150)) == 30
    assert warmup_steps_for(TrainConfig(steps=5000)) == 200
    assert warmup_steps_for(TrainConfig(steps=150, warmup_steps=100)) == 100
    short = TrainConfig(steps=150)
    assert max(lr_at(short, s) for s in range(150)) == short.lr
    _, notes = resolve_defaults(TrainConfig(data="mnist", steps=150, warmup_steps=200))
    assert any("never reaches --lr" in n for n in notes)
    _, notes = resolve_defaults(TrainConfig(data="mnist", steps=150))
    assert any("warm-up: 30 steps" in n for n in notes)
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainConfig(warmup_steps=-1)


def test_start_of_run_says_tokens_parameters_and_time_per_step(tmp_path, capsys):
    data = write_images(tmp_path / "grey", (16, 16))
    train(tiny(tmp_path / "run", data, steps=6))
    out = capsys.readouterr().out
    assert "16 tokens per sample (4x4)" in out and "M parameters" in out
    assert "s/step here, about" in out and "for the 2 steps left" in out


def test_progress_false_hides_the_loading_bar(tmp_path, capsys):
    data = write_images(tmp_path / "grey", (8, 8))
    train(tiny(tmp_path / "quiet", data, image_size=8, progress=False))
    assert "loading" not in capsys.readouterr().err
    train(tiny(tmp_path / "bars", data, image_size=8, progress=True))
    assert "loading" in capsys.readouterr().err
