"""Work that is never lost: Ctrl-C / SIGTERM save a checkpoint and say how to resume, a resume
from an older step starts a new line of work (the later checkpoints are moved aside, never
deleted, and "latest" is the new line's), retention keeps the checkpoint a session started
from, and a damaged newest checkpoint names the newest intact one (issue 22, items 1-4)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from polymixer.checkpoint import list_checkpoints, load_checkpoint
from polymixer.cli import main as cli_main
from polymixer.io import CheckpointError
from polymixer.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def make_images(root: Path, size: int = 8, per_class: int = 8) -> Path:
    """A folder of grey size x size PNGs in two classes (no optional dependency needed)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("disc", "square"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def tiny(out, data, **kw) -> TrainConfig:
    base = dict(data=str(data), preset="DiT-T/2", depth=1, width=32, heads=2, steps=10, batch_size=8,
                warmup_steps=2, lr=1e-3, ema_decay=0.9, seed=0, out=str(out), log_every=1, sample_every=0,
                checkpoint_every=2, keep_last=3, progress=False, tensorboard=False, num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def steps_of(folder: Path) -> list[int]:
    return [s for s, _ in list_checkpoints(folder)]


# ------------------------------------------------------------------ item 2: branches and retention
def test_resume_from_an_older_step_starts_a_new_line_and_loses_nothing(tmp_path, capsys):
    data = make_images(tmp_path / "images")
    straight = train(tiny(tmp_path / "straight", data, steps=14))
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    train(tiny(run, data, steps=10))
    assert steps_of(ckpts) == [6, 8, 10]
    old = {s: (p / "model.safetensors").read_bytes() for s, p in list_checkpoints(ckpts)}
    capsys.readouterr()

    train(tiny(run, data, steps=12), resume=str(ckpts / "step_00000006"))
    out = capsys.readouterr().out
    assert "resuming from step 6 of" in out
    assert "moved to" in out and "step_00000008, step_00000010" in out and "new line of work" in out
    # the abandoned line is kept whole, aside; retention kept the checkpoint this session started from
    (aside,) = [p for p in ckpts.iterdir() if p.name.startswith("abandoned_after_step_00000006")]
    assert steps_of(aside) == [8, 10]
    assert {s: (aside / f"step_{s:08d}" / "model.safetensors").read_bytes() for s in (8, 10)} == \
        {s: old[s] for s in (8, 10)}
    assert steps_of(ckpts) == [6, 8, 10, 12]  # keep_last 3, plus the start (6)

    # a plain --resume continues the new line (step 12), not the abandoned step 10
    result = train(tiny(run, data, steps=14), resume=True)
    assert "resuming from step 12 of" in capsys.readouterr().out
    assert result["step"] == 14 and result["start_step"] == 12
    assert same_weights(straight["model"].state_dict(), result["model"].state_dict())
    assert same_weights(straight["ema"].state_dict(), result["ema"].state_dict())
    assert steps_of(ckpts) == [10, 12, 14] and steps_of(aside) == [8, 10]  # 6 no longer the start


def test_resume_from_the_newest_moves_nothing(tmp_path, capsys):
    data = make_images(tmp_path / "images")
    run = tmp_path / "run"
    train(tiny(run, data, steps=4))
    train(tiny(run, data, steps=6), resume=str(run / "checkpoints" / "step_00000004"))
    assert "moved" not in capsys.readouterr().out
    assert not [p for p in (run / "checkpoints").iterdir() if not p.name.startswith("step_")]


def test_a_failed_resume_moves_nothing(tmp_path):
    data = make_images(tmp_path / "images")
    run = tmp_path / "run"
    train(tiny(run, data, steps=6))
    with pytest.raises(CheckpointError, match="another architecture"):
        train(tiny(run, data, steps=8, width=48), resume=str(run / "checkpoints" / "step_00000002"))
    assert steps_of(run / "checkpoints") == [2, 4, 6]


def test_prune_keeps_the_checkpoint_given(tmp_path):
    from polymixer.checkpoint import prune_checkpoints

    for s in range(1, 6):
        (tmp_path / f"step_{s:08d}").mkdir()
    prune_checkpoints(tmp_path, 2, keep=tmp_path / "step_00000001")
    assert steps_of(tmp_path) == [1, 4, 5]


# ------------------------------------------------------------------ item 3: a damaged newest checkpoint
def test_a_damaged_newest_checkpoint_names_the_newest_intact_one(tmp_path):
    data = make_images(tmp_path / "images")
    run = tmp_path / "run"
    train(tiny(run, data, steps=6))
    for step in (6, 4):  # the two newest are damaged
        weights = run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-50])
    good = run / "checkpoints" / "step_00000002"
    with pytest.raises(CheckpointError, match="checksum") as info:
        train(tiny(run, data, steps=8), resume=True)
    assert f"the newest intact checkpoint is {good}: continue from it with --resume {good}" in str(info.value)
    result = train(tiny(run, data, steps=8), resume=str(good))  # the damaged ones are moved aside
    assert result["start_step"] == 2 and steps_of(run / "checkpoints")[-1] == 8


# ------------------------------------------------------------------ item 4: what resume says
def test_cli_resume_says_where_it_starts_and_counts_steps_from_there(tmp_path, capsys):
    data = make_images(tmp_path / "images")
    args = ["train", "--data", str(data), "--preset", "DiT-T/2", "--depth", "1", "--width", "32", "--heads", "2",
            "--batch-size", "8", "--warmup-steps", "1", "--sample-every", "0", "--tensorboard", "false",
            "--progress", "false", "--threads", "1", "--out", str(tmp_path / "run")]
    assert cli_main(args + ["--steps", "3"]) == 0
    assert "trained 3 steps in" in capsys.readouterr().out
    assert cli_main(["train", "--config", str(tmp_path / "run" / "train_config.json"), "--steps", "5", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"resuming from step 3 of {tmp_path / 'run'}" in out
    assert "trained steps 3 to 5 (2 steps) in" in out and "this session" not in out
    # resuming a finished run trains nothing and says so (no 'final loss nan')
    assert cli_main(["train", "--config", str(tmp_path / "run" / "train_config.json"), "--steps", "5", "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"nothing to train: {tmp_path / 'run'} is already at step 5 of 5" in out and "nan" not in out


# ------------------------------------------------------------------ item 1: signals
def _start(args, cwd, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env_extra or {})}
    out, err = open(cwd / "stdout.txt", "w"), open(cwd / "stderr.txt", "w")
    # SIGINT as in a terminal: a shell's background job (a CI script run with `&`) starts with SIGINT
    # ignored, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen([sys.executable, "-m", "polymixer.cli", *args], cwd=cwd, env=env, stdout=out, stderr=err,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    return proc


def _wait_for(proc, path: Path, marker: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if marker in path.read_text():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{marker!r} never appeared in {path}: {path.read_text()[-2000:]}")


def _train_args(data, **kw):
    flags = dict(preset="DiT-T/2", depth=1, width=32, heads=2, steps=1_000_000, batch_size=8, warmup_steps=2,
                 checkpoint_every=0, log_every=1, progress="false", tensorboard="false", sample_every=0, threads=1,
                 out="run")
    flags.update(kw)
    args = ["train", "--data", str(data)]
    for k, v in flags.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    return args


@pytest.mark.timeout(300)
def test_ctrl_c_saves_a_checkpoint_and_resuming_gives_the_uninterrupted_weights(tmp_path):
    data = make_images(tmp_path / "images")
    proc = _start(_train_args(data), tmp_path)
    _wait_for(proc, tmp_path / "stdout.txt", "step 3 ")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    out, err = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err + out
    (stop,) = [line for line in out.splitlines() if line.startswith("train: stopped")]
    (step,) = steps_of(tmp_path / "run" / "checkpoints")
    assert stop == (f"train: stopped by SIGINT after step {step}; checkpoint run/checkpoints/step_{step:08d}; "
                    "continue with: polymixer train --config run/train_config.json --resume")
    assert not [p for p in (tmp_path / "run").rglob("*") if p.name.startswith(".")]  # no temporary leftovers

    target = step + 3
    assert cli_main(["train", "--config", str(tmp_path / "run" / "train_config.json"), "--out",
                     str(tmp_path / "run"), "--steps", str(target), "--resume"]) == 0
    resumed = load_checkpoint(tmp_path / "run" / "checkpoints" / f"step_{target:08d}")
    config = TrainConfig.from_json(tmp_path / "run" / "train_config.json")
    straight = train(TrainConfig(**{**config.to_dict(), "out": str(tmp_path / "straight"), "steps": target}))
    assert same_weights(straight["model"].state_dict(), resumed["model"])
    assert same_weights(straight["ema"].state_dict(), resumed["ema"])


@pytest.mark.timeout(300)
def test_sigterm_saves_and_exits_143_and_a_second_signal_stops_at_once(tmp_path):
    data = make_images(tmp_path / "images")
    proc = _start(_train_args(data), tmp_path)
    _wait_for(proc, tmp_path / "stdout.txt", "step 3 ")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    out, err = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err and "train: stopped by SIGTERM" in out
    assert len(steps_of(tmp_path / "run" / "checkpoints")) == 1

    # two Ctrl-C in a row: out at once, one line, no traceback; what was saved stays intact
    proc = _start(_train_args(data, out="run2", checkpoint_every=1), tmp_path)
    _wait_for(proc, tmp_path / "stdout.txt", "step 3 ")
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err
    assert "interrupted (SIGINT)" in err or "train: stopped by SIGINT" in (tmp_path / "stdout.txt").read_text()
    from polymixer.checkpoint import verify_checkpoint

    for _, path in list_checkpoints(tmp_path / "run2" / "checkpoints"):
        verify_checkpoint(path)


@pytest.mark.timeout(300)
def test_ctrl_c_while_sampling_is_one_line_and_leaves_no_file(tmp_path):
    proc = _start(["sample-video", "--checkpoint", "video_demo", "--frames", "8", "--steps", "100000", "--threads",
                   "1", "--num-clips", "1", "--out", "clip.gif"], tmp_path)
    _wait_for(proc, tmp_path / "stderr.txt", "frames")  # the progress bar: sampling has started
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    err = (tmp_path / "stderr.txt").read_text()
    assert "Traceback" not in err
    assert err.rstrip().splitlines()[-1].startswith("polymixer sample-video: interrupted (SIGINT)")
    assert not (tmp_path / "clip.gif").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
