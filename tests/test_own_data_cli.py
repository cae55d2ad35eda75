"""One spelling per flag, and hints that work (issue 22, items 8-18 and 19-21): --threads
everywhere (--num-threads hidden), switches, class names, output formats and paths,
one-line errors, the demo's help, continued clips, and the set-up the docs describe."""

import argparse
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from polymixer.cli import build_parser
from polymixer.cli import main as cli_main
from polymixer.train import TrainConfig, train

ROOT = Path(__file__).resolve().parent.parent


def write_images(root, n=4, side=8):
    rng = np.random.default_rng(0)
    for c in ("disc", "square"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (side, side), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """A tiny image model trained 2 steps on a folder with classes 'disc' and 'square'."""
    base = tmp_path_factory.mktemp("image_model")
    data = write_images(base / "images")
    train(TrainConfig(data=str(data), preset="DiT-T/2", depth=1, width=32, heads=2, steps=2, batch_size=4,
                      warmup_steps=0, out=str(base / "run"), sample_every=0, checkpoint_every=0, keep_last=0,
                      progress=False, tensorboard=False, num_threads=1))
    return base / "run" / "ema_model"


# ------------------------------------------------------------------ item 9: one spelling
@pytest.mark.parametrize("command", ["train", "sample", "sample-video", "demo", "eval"])
def test_threads_has_one_spelling_and_a_hidden_alias(command, capsys):
    required = {"sample": ["--checkpoint", "x"], "sample-video": ["--checkpoint", "x"], "eval": ["--checkpoint", "x"]}
    base = [command, *required.get(command, [])]
    dest = "num_threads" if command == "train" else "threads"
    for spelling in ("--threads", "--num-threads"):
        args = build_parser().parse_args(base + [spelling, "1"])
        assert getattr(args, dest) == 1, spelling
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    help_text = capsys.readouterr().out
    assert "--threads" in help_text and "--num-threads" not in help_text


def test_train_takes_threads_and_a_default_is_left_to_the_config():
    args = build_parser().parse_args(["train"])
    assert args.num_threads is None  # unset: the config file's or TrainConfig's value


# ------------------------------------------------------------------ item 10: switches
def test_boolean_flags_are_switches(tmp_path, capsys):
    parse = build_parser().parse_args
    assert parse(["train", "--skip-bad-files"]).skip_bad_files is True
    assert parse(["train", "--skip-bad-files", "false"]).skip_bad_files is False
    assert parse(["train", "--progress", "false", "--steps", "3"]).progress is False
    assert parse(["train", "--compile", "--steps", "3"]).compile is True
    # the hint of the corrupt-file error, typed as given, works
    data = write_images(tmp_path / "images")
    (data / "disc" / "broken.png").write_bytes(b"not a png")
    args = ["train", "--data", str(data), "--preset", "DiT-T/2", "--depth", "1", "--width", "32", "--heads", "2",
            "--steps", "1", "--batch-size", "4", "--sample-every", "0", "--tensorboard", "false", "--progress",
            "false", "--threads", "1", "--out", str(tmp_path / "run")]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    hint = re.search(r"\((--skip-bad-files)\)", err).group(1)
    assert cli_main(args + [hint]) == 0
    assert "skipped 1 unreadable image" in capsys.readouterr().out


# ------------------------------------------------------------------ item 11: class names
def test_classes_take_the_names_stored_with_the_model(image_model, tmp_path):
    from polymixer.sample import parse_classes

    assert parse_classes("square,disc", 2, ["disc", "square"]) == [1, 0]
    assert parse_classes("1,disc", 2, ["disc", "square"]) == [1, 0]
    assert parse_classes("3", 10, [str(i) for i in range(10)]) == [3]
    with pytest.raises(ValueError, match="class names: disc, square"):
        parse_classes("circle", 2, ["disc", "square"])
    common = ["sample", "--checkpoint", str(image_model), "--per-class", "1", "--steps", "1", "--threads", "1"]
    assert cli_main(common + ["--classes", "square", "--out", str(tmp_path / "a.png"), "--save-array",
                              str(tmp_path / "a.npz")]) == 0
    assert np.load(tmp_path / "a.npz")["labels"].tolist() == [1]


# ------------------------------------------------------------------ items 12, 13, 15: outputs and guidance
def test_sample_writes_the_format_of_the_suffix_or_refuses(image_model, tmp_path, capsys):
    common = ["sample", "--checkpoint", str(image_model), "--per-class", "1", "--steps", "1", "--threads", "1"]
    assert cli_main(common + ["--out", str(tmp_path / "g.jpg")]) == 0
    assert (tmp_path / "g.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
    assert cli_main(common + ["--out", str(tmp_path / "g.webp")]) == 0
    assert Image.open(tmp_path / "g.webp").format == "WEBP"
    capsys.readouterr()
    assert cli_main(common + ["--out", str(tmp_path / "g.txt")]) == 2
    assert "--out: " in capsys.readouterr().err and not (tmp_path / "g.txt").exists()


def test_an_unwritable_out_names_the_path_asked_for(image_model, tmp_path, capsys):
    from polymixer.io import write_json

    target = "/proc/x.png"
    common = ["sample", "--checkpoint", str(image_model), "--per-class", "1", "--steps", "1"]
    assert cli_main(common + ["--out", target]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write '{target}'" in err and ".tmp" not in err
    with pytest.raises(OSError, match=r"cannot write '/proc/y.json'") as info:
        write_json("/proc/y.json", {})
    assert ".tmp" not in str(info.value)
    (tmp_path / "folder.png").mkdir()
    assert cli_main(common + ["--out", str(tmp_path / "folder.png")]) == 2
    assert "is a folder" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["sample", "--checkpoint", "demo"], ["sample-video", "--checkpoint", "video_demo"],
                                     ["demo"], ["eval", "--checkpoint", "demo"]])
def test_negative_guidance_is_refused(command, tmp_path, capsys):
    assert cli_main(command + ["--cfg", "-1", "--out", str(tmp_path / "x.json" if "eval" in command else
                                                           tmp_path / ("x.gif" if "sample-video" in command
                                                                       else "x.png"))]) == 2
    assert "--cfg: expected a guidance scale >= 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="sample_cfg"):
        TrainConfig(sample_cfg=-1)


# ------------------------------------------------------------------ item 14: one level of message
def test_a_corrupt_gif_is_named_once(tmp_path, capsys):
    from polymixer.data import clip_folder

    (tmp_path / "clips" / "left").mkdir(parents=True)
    ims = [Image.fromarray(np.zeros((8, 8), np.uint8) + i) for i in range(4)]
    ims[0].save(tmp_path / "clips" / "left" / "good.gif", save_all=True, append_images=ims[1:])
    (tmp_path / "clips" / "left" / "bad.gif").write_bytes(b"GIF89a broken")
    with pytest.raises(ValueError) as info:
        clip_folder(tmp_path / "clips", 8, 4, channels=1, progress=False)
    message = str(info.value)
    assert message.count("cannot read") == 1 and message.count("bad.gif") == 1, message
    assert message.startswith("data: cannot read clip") and "--skip-bad-files" in message


# ------------------------------------------------------------------ item 17: the demo's help
def test_every_demo_option_has_help():
    parser = build_parser()
    demo = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "demo")[1]
    for action in demo._actions:
        if action.option_strings and action.help != argparse.SUPPRESS:
            assert action.help, action.option_strings


# ------------------------------------------------------------------ items 8, 18: video sampling
def test_more_frames_than_trained_warns(tmp_path, capsys):
    import torch

    from polymixer.models import VideoDiT, VideoDiTConfig
    from polymixer.pipeline import SamplingConfig

    # one noise level per clip and an absolute frame index: not made for clips past its 3 frames
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=4, width=32, depth=1, heads=2,
                                    frames=3, n_classes=2, noise_levels="clip"))
    folder = model.save_pretrained(tmp_path / "model")
    SamplingConfig(class_names=["a", "b"]).save(folder)
    common = ["sample-video", "--checkpoint", str(folder), "--steps", "1", "--num-clips", "1", "--threads", "1"]
    assert cli_main(common + ["--frames", "4", "--out", str(tmp_path / "c.npy")]) == 0
    err = capsys.readouterr().err
    assert "warning: --frames 4 is more than the 3 frames this model was trained on" in err
    assert cli_main(common + ["--frames", "3", "--out", str(tmp_path / "d.npy")]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_model_made_for_long_clips_does_not_warn(tmp_path, capsys):
    # the bundled video demo: one noise level per frame, no absolute frame index, frame by frame
    from polymixer import bundled_checkpoint
    from polymixer.sample import load_for_sampling

    model, _ = load_for_sampling(bundled_checkpoint("video_demo"), kind="video")
    cfg = model.config
    assert (cfg.noise_levels, cfg.frame_embedding) == ("frame", "none")
    frames = cfg.frames + 2
    assert cli_main(["sample-video", "--checkpoint", "video_demo", "--frames", str(frames), "--steps", "1",
                     "--num-clips", "1", "--threads", "1", "--out", str(tmp_path / "c.npy")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert np.load(tmp_path / "c.npy").shape[1] == frames
    # asked to denoise all the frames together it is past what it was trained for: warned
    assert cli_main(["sample-video", "--checkpoint", "video_demo", "--frames", str(frames), "--steps", "1",
                     "--num-clips", "1", "--threads", "1", "--mode", "joint", "--out", str(tmp_path / "d.npy")]) == 0
    assert f"warning: --frames {frames} is more than the {cfg.frames} frames" in capsys.readouterr().err


def test_context_without_classes_asks_for_them(tmp_path, capsys):
    from polymixer.models import VideoDiT, VideoDiTConfig
    from polymixer.pipeline import SamplingConfig

    model = VideoDiT(VideoDiTConfig(image_size=8, in_channels=1, patch_size=4, width=32, depth=1, heads=2,
                                    frames=3, n_classes=2, noise_levels="frame"))
    folder = model.save_pretrained(tmp_path / "model")
    SamplingConfig(class_names=["left", "right"]).save(folder)
    np.save(tmp_path / "ctx.npy", np.zeros((1, 1, 8, 8), np.float32))
    common = ["sample-video", "--checkpoint", str(folder), "--context", str(tmp_path / "ctx.npy"), "--frames", "3",
              "--steps", "1", "--threads", "1", "--out", str(tmp_path / "c.npy")]
    assert cli_main(common) == 2
    assert "--context: say which class each continued clip keeps with --classes" in capsys.readouterr().err
    assert not (tmp_path / "c.npy").exists()
    assert cli_main(common + ["--classes", "right"]) == 0
    assert "classes ['right']" in capsys.readouterr().out


# ------------------------------------------------------------------ items 19-21: set-up and docs
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_demo_installs_no_test_extras():
    def commands(target):
        return subprocess.run(["make", "-n", "-B", target, "PYTHON=python3"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout

    demo, test = commands("demo"), commands("test")
    demo_install = [line for line in demo.splitlines() if "pip install" in line and "constraints.txt" in line]
    assert demo_install and all("[test" not in line and "bench" not in line for line in demo_install), demo
    assert any("[test]" in line and "constraints.txt" in line for line in test.splitlines()), test
    assert "pytest" in test and "polymixer.cli demo" in demo


def test_docs_headings_have_content_and_name_the_right_extras():
    for path in (ROOT / "README.md", ROOT / "docs" / "training.md"):
        lines, fenced = [], False
        for line in path.read_text().splitlines():
            if line.startswith("```"):
                fenced = not fenced  # code blocks hold comments, not headings
            elif line.strip() and not fenced:
                lines.append(line)
        for a, b in zip(lines, lines[1:]):
            if a.startswith("#") and b.startswith("#"):
                assert b.count("#") > a.count("#"), f"{path.name}: heading {a!r} has nothing under it"
    training = (ROOT / "docs" / "training.md").read_text()
    assert "`eval` needs the `train` extra" not in training and "'polymixer[eval]'" in training
    readme = (ROOT / "README.md").read_text()
    assert "run.json" not in readme or "train_config.json" in readme
    for text in (readme, training):  # one spelling in the commands of the docs: --threads
        assert not re.search(r"^(polymixer|torchrun|  ).*--num-threads", text, re.MULTILINE)
