"""Training loop: exact resume, DDP replicas, checkpoints (atomic, pruned, corrupt), CLI,
sampling determinism and bad input. Tiny models on scikit-learn's 8x8 digits."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from polymixer.checkpoint import list_checkpoints, load_checkpoint
from polymixer.cli import main as cli_main
from polymixer.evaluate import evaluate_checkpoint
from polymixer.io import CheckpointError, load_tensors
from polymixer.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def tiny_config(out, **kw) -> TrainConfig:
    base = dict(data="digits", image_size=8, preset="DiT-T/2", depth=1, width=32, heads=2, steps=10,
                batch_size=16, warmup_steps=3, lr=1e-3, ema_decay=0.9, seed=0, out=str(out), log_every=1,
                sample_every=0, checkpoint_every=5, keep_last=0, progress=False, tensorboard=False,
                num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def assert_same_state(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bit_identical(tmp_path):
    straight = train(tiny_config(tmp_path / "a"))
    first = train(tiny_config(tmp_path / "b", steps=5))
    assert first["step"] == 5
    resumed = train(tiny_config(tmp_path / "b", steps=10), resume=True)
    assert resumed["step"] == 10
    assert_same_state(straight["model"].state_dict(), resumed["model"].state_dict())
    assert_same_state(straight["ema"].state_dict(), resumed["ema"].state_dict())
    ca, cb = load_checkpoint(tmp_path / "a" / "checkpoints" / "step_00000010"), \
        load_checkpoint(tmp_path / "b" / "checkpoints" / "step_00000010")
    assert ca["optimizer"]["state"].keys() == cb["optimizer"]["state"].keys()
    for i, st in ca["optimizer"]["state"].items():
        for name, v in st.items():
            assert torch.equal(v, cb["optimizer"]["state"][i][name])
    assert torch.equal(ca["rng"]["rank0"], cb["rng"]["rank0"])
    # the timing of each session: where it started, and the wall time of all sessions together
    first_state = load_checkpoint(tmp_path / "b" / "checkpoints" / "step_00000005")["state"]
    assert first_state["session_start_step"] == 0 and ca["state"]["session_start_step"] == 0
    assert cb["state"]["session_start_step"] == 5
    assert first_state["train_seconds"] == first_state["seconds_this_session"] > 0
    assert cb["state"]["train_seconds"] == pytest.approx(first_state["train_seconds"]
                                                         + cb["state"]["seconds_this_session"])
    # the weights moved: this is not the trivial equality of two untrained models
    init = train(tiny_config(tmp_path / "c", steps=1))
    assert not torch.equal(init["model"].blocks[0].mlp[0].weight, straight["model"].blocks[0].mlp[0].weight)


def test_training_lowers_the_loss_and_writes_logs(tmp_path):
    losses = []

    config = tiny_config(tmp_path / "run", steps=60, lr=2e-3, warmup_steps=5, sample_every=60,
                         sample_steps=4, tensorboard=True, checkpoint_every=20, keep_last=2)
    from polymixer.diffusion import FlowMatching
    from polymixer.models import DiT

    # measure the loss of the EMA-free model before and after on a fixed batch
    from polymixer.data import sklearn_digits

    data = sklearn_digits()
    x, y = data.images[:256], data.labels[:256]

    def fixed_loss(model):
        torch.manual_seed(123)
        with torch.no_grad():
            return FlowMatching().loss(model, x, y).item()

    result = train(config)
    torch.manual_seed(0)
    fresh = DiT(result["model"].config)
    losses = fixed_loss(fresh), fixed_loss(result["model"])
    assert losses[1] < 0.8 * losses[0], losses
    out = tmp_path / "run"
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [40, 60]  # keep_last=2
    assert (out / "samples" / "step_00000060.png").is_file()
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "ema_model" / "config.json").is_file() and (out / "ema_model" / "pipeline.json").is_file()
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary leftovers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_gloo_replicas_agree(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           f"--master_port={_free_port()}", str(ROOT / "tests" / "_ddp_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = load_tensors(out / "rank0_model.safetensors"), load_tensors(out / "rank1_model.safetensors")
    assert_same_state(r0, r1)
    assert_same_state(load_tensors(out / "rank0_ema.safetensors"), load_tensors(out / "rank1_ema.safetensors"))
    ckpt = load_checkpoint(out / "checkpoints" / "step_00000004")
    assert ckpt["state"]["world_size"] == 2 and set(ckpt["rng"]) == {"rank0", "rank1"}
    assert not torch.equal(ckpt["rng"]["rank0"], ckpt["rng"]["rank1"])  # different noise per process
    assert_same_state(ckpt["model"], r0)
    # the two processes saw different halves of each global batch, so the result differs
    # from one process training on the first half alone
    single = train(tiny_config(tmp_path / "single", steps=4, batch_size=8, warmup_steps=2, checkpoint_every=2))
    assert not torch.equal(single["model"].final.linear.weight, r0["final.linear.weight"])


def test_corrupt_or_truncated_checkpoint_is_a_clear_error(tmp_path):
    train(tiny_config(tmp_path / "r", steps=5))
    ckpt = tmp_path / "r" / "checkpoints" / "step_00000005"
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])  # truncated
    with pytest.raises(CheckpointError, match="model.safetensors.*(checksum|truncated|corrupt)"):
        train(tiny_config(tmp_path / "r", steps=10), resume=True)
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF  # same size, one byte changed
    weights.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(ckpt)
    weights.write_bytes(data)
    (ckpt / "state.json").write_text('{"format": "polymixer.checkpoint/1", "step": ')  # truncated JSON
    with pytest.raises(CheckpointError, match="state.json"):
        load_checkpoint(ckpt)


def test_checkpoint_every_zero_saves_at_the_end_only(tmp_path):
    train(tiny_config(tmp_path / "r", steps=3, checkpoint_every=0))
    assert [p.name for p in (tmp_path / "r" / "checkpoints").iterdir()] == ["step_00000003"]
    assert (tmp_path / "r" / "ema_model" / "config.json").is_file()


def test_resume_refuses_another_architecture_and_needs_a_checkpoint(tmp_path):
    train(tiny_config(tmp_path / "r", steps=5))
    with pytest.raises(CheckpointError, match="another architecture"):
        train(tiny_config(tmp_path / "r", steps=10, width=48), resume=True)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(tiny_config(tmp_path / "r", steps=10))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny_config(tmp_path / "empty", steps=10), resume=True)


def test_bad_training_input_fails_before_heavy_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(tiny_config(tmp_path / "r", data=str(tmp_path / "no_such_folder")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        train(tiny_config(tmp_path / "r", data=str(tmp_path / "empty")))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        train(tiny_config(tmp_path / "r", image_size=9))
    # the size check comes before any data is read (the folder here does not even exist)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        train(tiny_config(tmp_path / "r", image_size=9, data=str(tmp_path / "no_such_folder")))
    with pytest.raises(ValueError, match="unknown preset"):
        train(tiny_config(tmp_path / "r", preset="DiT-Q/2"))
    with pytest.raises(ValueError, match="objective"):
        tiny_config(tmp_path / "r", objective="edm")
    assert not (tmp_path / "r").exists()


def test_cli_train_sample_same_seed_same_images(tmp_path, capsys):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"data": "digits", "image_size": 8, "preset": "DiT-T/2", "depth": 1, "width": 32,
                               "heads": 2, "steps": 4, "batch_size": 8, "sample_every": 0,
                               "checkpoint_every": 4, "tensorboard": False, "progress": False}))
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(cfg), "--out", str(out), "--lr", "2e-3", "--num-threads", "1"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["lr"] == 2e-3 and saved["steps"] == 4  # flags override the file
    common = ["sample", "--checkpoint", str(out / "ema_model"), "--classes", "1,3,7", "--per-class", "2",
              "--steps", "3", "--cfg", "1.5", "--seed", "5"]
    assert cli_main(common + ["--out", str(tmp_path / "a.png"), "--save-array", str(tmp_path / "a.npz")]) == 0
    assert cli_main(common + ["--out", str(tmp_path / "b.png"), "--save-array", str(tmp_path / "b.npz")]) == 0
    assert "grid written to" in capsys.readouterr().out
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["samples"].shape == (6, 1, 8, 8) and a["samples"].dtype == np.float32
    assert a["labels"].tolist() == [1, 1, 3, 3, 7, 7]
    assert a["samples"].min() >= -1 and a["samples"].max() <= 1
    assert np.array_equal(a["samples"], b["samples"])
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    other = ["--out", str(tmp_path / "c.png"), "--save-array", str(tmp_path / "c.npz"), "--seed", "6"]
    assert cli_main(common[:-2] + other) == 0
    assert not np.array_equal(np.load(tmp_path / "c.npz")["samples"], a["samples"])
    # the training checkpoint folder works too (its EMA weights)
    assert cli_main(["sample", "--checkpoint", str(out / "checkpoints" / "step_00000004"), "--classes", "0-9",
                     "--per-class", "1", "--steps", "2", "--sampler", "heun", "--out", str(tmp_path / "d.png")]) == 0


def test_cli_train_help_describes_every_option(capsys, tmp_path):
    import dataclasses

    from polymixer.cli import _TRAIN_HELP, build_parser
    from polymixer.train import TrainConfig

    assert set(_TRAIN_HELP) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(text for text, _ in _TRAIN_HELP.values())
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    out = capsys.readouterr().out
    assert "--pom-variant {product,power}" in out and "[DiT-T/4]" in out
    # --mixer takes a per-block pattern: an unknown mixer is a one-line error before any data is read
    assert cli_main(["train", "--mixer", "mamba", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "mixer: bad entry 'mamba'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_cli_sample_bad_input(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(out, steps=2, checkpoint_every=2))
    base = ["sample", "--checkpoint", str(out / "ema_model"), "--steps", "2", "--out", str(tmp_path / "x.png")]
    assert cli_main(base + ["--classes", "3,12"]) == 2
    assert "unknown class index 12" in capsys.readouterr().err
    assert cli_main(base + ["--image-size", "9"]) == 2
    assert "not divisible by the model's patch size 2" in capsys.readouterr().err
    assert cli_main(base + ["--sampler", "ddim"]) == 2
    assert "sampler" in capsys.readouterr().err
    assert cli_main(["sample", "--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_latent_training_and_sampling_with_a_tiny_vae(tmp_path, tiny_vae):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    out = tmp_path / "run"
    result = train(tiny_config(out, data=str(tmp_path / "imgs"), image_size=16, vae=str(tmp_path / "vae"),
                               steps=2, batch_size=4, checkpoint_every=2))
    assert result["model"].config.in_channels == 4 and result["model"].config.image_size == 8  # latents
    assert result["model"].config.n_classes == 2
    pipeline = json.loads((out / "ema_model" / "pipeline.json").read_text())
    assert pipeline["latent"]["channels"] == 4 and pipeline["class_names"] == ["a", "b"]
    assert cli_main(["sample", "--checkpoint", str(out / "ema_model"), "--per-class", "2", "--steps", "2",
                     "--out", str(tmp_path / "g.png"), "--save-array", str(tmp_path / "s.npz")]) == 0
    s = np.load(tmp_path / "s.npz")
    assert s["samples"].shape == (4, 3, 16, 16)  # decoded back to RGB pixels
    assert s["labels"].tolist() == [0, 0, 1, 1]


def test_parse_classes():
    from polymixer.sample import parse_classes

    assert parse_classes("0-3,7", 10) == [0, 1, 2, 3, 7]
    assert parse_classes("all", 3) == [0, 1, 2]
    assert parse_classes([4, 2], 5) == [4, 2]
    with pytest.raises(ValueError, match="unknown class index 10"):
        parse_classes("10", 10)
    with pytest.raises(ValueError, match="unknown class index -1"):
        parse_classes("-1", 10)
    with pytest.raises(ValueError, match="cannot parse"):
        parse_classes("3-x", 10)
    with pytest.raises(ValueError, match="no class"):
        parse_classes(",", 10)


def test_ddpm_objective_trains_and_samples_with_ddim(tmp_path):
    out = tmp_path / "ddpm"
    result = train(tiny_config(out, objective="ddpm", steps=3, checkpoint_every=3))
    assert result["step"] == 3 and np.isfinite(result["loss"])
    assert json.loads((out / "ema_model" / "pipeline.json").read_text())["objective"] == "ddpm"
    args = ["sample", "--checkpoint", str(out / "ema_model"), "--per-class", "1", "--steps", "4",
            "--save-array", str(tmp_path / "s.npz")]
    assert cli_main(args + ["--out", str(tmp_path / "g.png")]) == 0  # default sampler: ddim
    assert np.load(tmp_path / "s.npz")["samples"].shape == (10, 1, 8, 8)
    assert cli_main(args + ["--out", str(tmp_path / "h.png"), "--sampler", "euler"]) == 2
    assert cli_main(args + ["--out", str(tmp_path / "h.png"), "--shift", "3"]) == 0


def test_export_float16_folder_samples_like_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    train(tiny_config(out, steps=3, checkpoint_every=3))
    ckpt = out / "checkpoints" / "step_00000003"
    assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "fp16"), "--dtype", "float16"]) == 0
    full = (out / "ema_model" / "model.safetensors").stat().st_size
    half = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert half < 0.6 * full
    assert (tmp_path / "fp16" / "pipeline.json").is_file()
    common = ["sample", "--per-class", "1", "--steps", "3", "--out", str(tmp_path / "g.png")]
    assert cli_main(common + ["--checkpoint", str(ckpt), "--save-array", str(tmp_path / "a.npz")]) == 0
    assert cli_main(common + ["--checkpoint", str(tmp_path / "fp16"), "--save-array", str(tmp_path / "b.npz")]) == 0
    a, b = np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"]
    assert np.abs(a - b).max() < 0.05
    from polymixer.models import DiT

    ema = load_checkpoint(ckpt)["ema"]
    loaded = DiT.from_pretrained(tmp_path / "fp16").state_dict()
    for k, v in ema.items():
        assert loaded[k].dtype == torch.float32
        assert torch.equal(loaded[k], v.half().float()), k  # exactly the float16 rounding


def test_a_model_carries_its_guidance_and_sampling_uses_it_without_cfg(tmp_path, capsys):
    """pipeline.json 'guidance': the run's --sample-cfg, changed by export --guidance; sample,
    eval and the library use it when no scale is given; older pipelines load with 2."""
    from polymixer.pipeline import SamplingConfig
    from polymixer.sample import generate, load_for_sampling

    out = tmp_path / "run"
    train(tiny_config(out, steps=2, checkpoint_every=2, sample_cfg=3.0))
    assert json.loads((out / "ema_model" / "pipeline.json").read_text())["guidance"] == 3.0
    assert cli_main(["export", "--checkpoint", str(out / "ema_model"), "--out", str(tmp_path / "g1"),
                     "--guidance", "1.5"]) == 0
    assert "sampling guidance 1.5" in capsys.readouterr().out
    model, pipeline = load_for_sampling(tmp_path / "g1")
    assert pipeline.guidance == 1.5
    kw = dict(per_class=1, steps=3, seed=4)
    default, _ = generate(model, pipeline, [0, 5], **kw)
    torch.testing.assert_close(default, generate(model, pipeline, [0, 5], cfg_scale=1.5, **kw)[0], rtol=0, atol=0)
    assert not torch.equal(default, generate(model, pipeline, [0, 5], cfg_scale=2.0, **kw)[0])
    common = ["sample", "--checkpoint", str(tmp_path / "g1"), "--per-class", "1", "--steps", "3", "--seed", "4",
              "--out", str(tmp_path / "s.png")]
    assert cli_main(common + ["--save-array", str(tmp_path / "a.npz")]) == 0
    assert "cfg 1.5" in capsys.readouterr().out
    assert cli_main(common + ["--save-array", str(tmp_path / "b.npz"), "--cfg", "1.5"]) == 0
    assert np.array_equal(np.load(tmp_path / "a.npz")["samples"], np.load(tmp_path / "b.npz")["samples"])
    # a pipeline.json written before the field existed samples with 2, as before
    old = {k: v for k, v in pipeline.to_dict().items() if k != "guidance"}
    assert SamplingConfig.from_dict(old).guidance == 2.0
    for bad in (-1.0, float("nan"), True):
        with pytest.raises(ValueError, match="guidance"):
            SamplingConfig(guidance=bad)
        with pytest.raises(ValueError, match="sample_cfg: expected a guidance scale"):
            tiny_config(tmp_path / "bad", sample_cfg=bad)
        with pytest.raises(ValueError, match="cfg_scale: expected a guidance scale"):
            pipeline.guidance_for(bad)
        with pytest.raises(ValueError, match="cfg_scale: expected a guidance scale"):  # before loading anything
            evaluate_checkpoint(tmp_path / "missing", num_samples=2, cfg_scale=bad)
    assert cli_main(["export", "--checkpoint", str(out / "ema_model"), "--out", str(tmp_path / "g2"),
                     "--guidance", "-1"]) == 2


def test_resume_accepts_an_older_config_and_another_pom_implementation(tmp_path):
    train(tiny_config(tmp_path / "r", steps=2, checkpoint_every=2))
    ckpt = tmp_path / "r" / "checkpoints" / "step_00000002"
    state = json.loads((ckpt / "state.json").read_text())
    state["model_config"].pop("pom_implementation")  # a checkpoint saved before the field existed
    (ckpt / "state.json").write_text(json.dumps(state))
    result = train(tiny_config(tmp_path / "r", steps=3, checkpoint_every=3, pom_implementation="autograd"),
                   resume=True)
    assert result["step"] == 3


def test_sample_takes_the_name_of_a_bundled_checkpoint(tmp_path, capsys):
    assert cli_main(["sample", "--checkpoint", "demo", "--per-class", "1", "--steps", "1", "--threads", "1",
                     "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file()
    assert cli_main(["sample", "--checkpoint", "no_such_model", "--out", str(tmp_path / "h.png")]) == 2
    assert "nor is it one of the bundled checkpoints" in capsys.readouterr().err


# ------------------------------------------------------------------ varied canvas sizes (image_sizes)
def test_image_size_draw_is_deterministic_by_seed_and_step_and_covers_every_size(tmp_path):
    from polymixer.train import clip_window, image_size_at

    config = tiny_config(tmp_path / "r", image_sizes=(8, 12, 16))
    draws = [image_size_at(config, step) for step in range(60)]
    assert draws == [image_size_at(tiny_config(tmp_path / "s", image_sizes=(8, 12, 16)), s) for s in range(60)]
    assert set(draws) == {8, 12, 16}
    assert draws != [image_size_at(tiny_config(tmp_path / "r", image_sizes=(8, 12, 16), seed=1), s)
                     for s in range(60)]
    assert image_size_at(tiny_config(tmp_path / "r"), 5) == 8  # without image_sizes: always image_size
    # its own stream: not clip_window's draw of the same step
    video = TrainConfig(data="moving-digits", frames=3, min_frames=1, image_sizes=(8, 12, 16))
    assert [clip_window(video, s, 3)[1] for s in range(60)] != [(8, 12, 16).index(image_size_at(video, s)) + 1
                                                                for s in range(60)]


def test_image_sizes_batches_have_the_drawn_side(tmp_path, capsys):
    from polymixer.train import build, image_size_at, prepare, restore, train_step

    config = tiny_config(tmp_path / "r", image_sizes=(8, 16), image_size=None, steps=6)
    run = prepare(config)
    assert run.config.image_size == 8 and run.model_config.image_size == 8  # the first entry
    assert run.data is run.datasets[8] and run.datasets[16].sample_shape == (1, 16, 16)
    build(run)
    restore(run)
    sides = []
    run.model.register_forward_pre_hook(lambda module, args: sides.append(args[0].shape[-2:]))
    for _ in range(6):
        train_step(run)
    expected = [image_size_at(run.config, s) for s in range(6)]
    assert set(expected) == {8, 16}
    assert [tuple(s) for s in sides] == [(e, e) for e in expected]
    # the startup line names the sides
    from polymixer.train import _announce

    _announce(run)
    assert "a side drawn per step from 8, 16" in capsys.readouterr().out


def test_image_sizes_resume_is_bit_identical(tmp_path):
    kw = dict(image_sizes=(8, 12), checkpoint_every=3)
    from polymixer.train import image_size_at

    assert {image_size_at(tiny_config(tmp_path, **kw), s) for s in range(6)} == {8, 12}
    straight = train(tiny_config(tmp_path / "a", steps=6, **kw))
    train(tiny_config(tmp_path / "b", steps=3, **kw))
    resumed = train(tiny_config(tmp_path / "b", steps=6, **kw), resume=True)
    assert resumed["step"] == 6
    assert_same_state(straight["model"].state_dict(), resumed["model"].state_dict())
    assert_same_state(straight["ema"].state_dict(), resumed["ema"].state_dict())


def test_image_sizes_bad_input(tmp_path):
    for bad in ([], (8, 0), (8, True), "8,16", (8, 8.0), 8):
        with pytest.raises(ValueError, match="image_sizes: expected a non-empty list of positive ints"):
            tiny_config(tmp_path / "r", image_sizes=bad)
    with pytest.raises(ValueError, match="image_sizes: expected each side once"):
        tiny_config(tmp_path / "r", image_sizes=(8, 16, 8))
    with pytest.raises(ValueError, match="image_sizes: the model's own image_size 8 must be one of"):
        tiny_config(tmp_path / "r", image_sizes=(12, 16))
    # before any data is read (the folder does not exist)
    with pytest.raises(ValueError, match="image_sizes: 9 is not divisible by patch_size=2"):
        train(tiny_config(tmp_path / "r", image_sizes=(8, 9), data=str(tmp_path / "no_such_folder")))
    with pytest.raises(ValueError, match=r"image_sizes: .*latent training \(vae\)"):
        train(tiny_config(tmp_path / "r", image_sizes=(8, 16), vae=str(tmp_path / "vae")))
    with pytest.raises(ValueError, match=r"image_sizes: \[8\] leave no room to move for the 8x8 digits"):
        train(tiny_config(tmp_path / "r", data="moving-digits", frames=2, image_size=16, image_sizes=(16, 8)))
    assert not (tmp_path / "r").exists()


def test_image_sizes_moving_digits_keep_their_digit_size(tmp_path):
    from polymixer.train import prepare

    run = prepare(tiny_config(tmp_path / "r", data="moving-digits", frames=2, image_size=16, image_sizes=(16, 24)))
    assert run.datasets[16] is run.data and run.data.digit_size == 8
    assert run.datasets[24].digit_size == 8 and run.datasets[24].sample_shape == (2, 1, 24, 24)
    small, large = run.datasets[16].batch(torch.arange(3))[0], run.datasets[24].batch(torch.arange(3))[0]
    assert large.shape == (3, 2, 1, 24, 24)
    # the same digits, whole and at the same size, on the larger canvas: the same ink per frame
    assert torch.allclose((small + 1).sum(dim=(2, 3, 4)), (large + 1).sum(dim=(2, 3, 4)))
    assert run.datasets[16].batch(torch.arange(3))[1].tolist() == run.datasets[24].batch(torch.arange(3))[1].tolist()


def test_image_sizes_config_round_trips_and_old_configs_load(tmp_path):
    config = tiny_config(tmp_path / "r", image_sizes=[8, 16])
    assert config.image_sizes == (8, 16)
    d = json.loads(json.dumps(config.to_dict()))
    assert d["image_sizes"] == [8, 16]
    assert TrainConfig.from_dict(d) == config
    d.pop("image_sizes")  # a config saved before the option existed
    assert TrainConfig.from_dict(d).image_sizes is None
    assert TrainConfig.from_dict(tiny_config(tmp_path / "r").to_dict()).image_sizes is None


def test_cli_parses_image_sizes(capsys):
    from polymixer.cli import build_parser

    assert build_parser().parse_args(["train", "--image-sizes", "32,48"]).image_sizes == (32, 48)
    assert build_parser().parse_args(["train"]).image_sizes is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--image-sizes", "32,x"])
    assert "expected comma-separated ints" in capsys.readouterr().err
