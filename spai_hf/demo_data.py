"""An offline real-vs-generated dataset built from photographs that ship inside pip packages.

Real images are crops (with random horizontal flips) of public-domain / CC0 photographs bundled with scikit-image
and matplotlib, so the demo and the quality benchmark run on a fresh machine without a network. Each synthetic
"generator" turns the photo around a crop (the crop plus a context margin) into an aligned fake with its own
spectral fingerprint:

- ``bilinear``: downscale by 2 (antialiased), then bilinear re-upsampling -- the interpolation fingerprint;
- ``deconv``: a small decoder whose first layer is a stride-2 transposed convolution (kernel 3, so kernels overlap
  unevenly: the checkerboard of GAN decoders), briefly fitted to rebuild the photo from its half-size version;
- ``autoencoder``: reconstructions by a small convolutional autoencoder (4x bottleneck, nearest-neighbour
  upsampling + convolutions) trained for a short time on real crops of the training photographs, the way "aligned
  dataset" work makes realistic fakes.

A blend dial sets the difficulty: ``fake = w * generated + (1 - w) * source``. Fakes are cut at the same positions
as the real crops, so the two classes differ only by the generator's trace. Splits are by source photograph, never
by crop; real images are never resized (resizing is itself a fingerprint), and JPEG sources keep their artefacts in
the real class.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

__all__ = [
    "CSV_COLUMNS",
    "GENERATORS",
    "REAL",
    "PHOTO_SOURCES",
    "DemoData",
    "DemoDataConfig",
    "PhotoSource",
    "add_arguments",
    "build_demo_data",
    "dataset_digest",
    "generate_demo_data",
    "load_source_photos",
    "main",
]

CSV_COLUMNS = ("image", "split", "class", "generator", "pair")
"""Columns of the training CSV (class 0 = real, 1 = AI-generated; ``pair`` names the source crop, shared by a real
crop and the fakes made from it, for aligned-pair training)."""

REAL = "real"
"""`generator` value of real rows."""

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class PhotoSource:
    """One bundled photograph: where it ships, its licence, and the split all its crops go to."""

    name: str
    package: str
    filename: str
    licence: str
    split: str

    def path(self) -> Path:
        if self.package == "skimage":
            import skimage

            return Path(skimage.__file__).parent / "data" / self.filename
        if self.package == "matplotlib":
            import matplotlib

            return Path(matplotlib.get_data_path()) / "sample_data" / self.filename
        raise ValueError(f"unknown package {self.package!r} for photo {self.name!r}")


# Only real photographs with a stated licence and no documented resampling. Each split mixes colour and grey,
# PNG and JPEG sources, so no split is told apart by format alone.
PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "skimage", "astronaut.png", "public domain (NASA)", "train"),
    PhotoSource("coffee", "skimage", "coffee.png", "CC0 (Rachel Michetti)", "train"),
    PhotoSource("hubble_deep_field", "skimage", "hubble_deep_field.jpg", "public domain (NASA)", "train"),
    PhotoSource("retina", "skimage", "retina.jpg", "CC0 (Mikael Häggström)", "train"),
    PhotoSource("immunohistochemistry", "skimage", "ihc.png", "no known copyright restrictions (CMMI)", "train"),
    PhotoSource("coins", "skimage", "coins.png", "no known copyright restrictions (Brooklyn Museum)", "train"),
    PhotoSource("clock_motion", "skimage", "clock_motion.png", "public domain (Stefan van der Walt)", "train"),
    PhotoSource("grace_hopper", "matplotlib", "grace_hopper.jpg", "public domain (U.S. Navy)", "val"),
    PhotoSource("grass", "skimage", "grass.png", "CC0 (linolafett, DeviantArt)", "val"),
    PhotoSource("chelsea", "skimage", "chelsea.png", "CC0 (Stefan van der Walt)", "test"),
    PhotoSource("rocket", "skimage", "rocket.jpg", "public domain (SpaceX)", "test"),
    PhotoSource("camera", "skimage", "camera.png", "CC0 (Lav Varshney)", "test"),
)

GENERATORS = ("bilinear", "deconv", "autoencoder")


@dataclass
class DemoDataConfig:
    """Size, difficulty and seed of the demo dataset; the same config and seed give the same bytes."""

    crop_size: int = 64
    crops_per_source: int = 48
    generators: tuple[str, ...] = GENERATORS
    blend: Mapping[str, float] | float = 1.0
    """Weight w of the generated image in ``w * generated + (1 - w) * source``; one value or one per generator."""
    seed: int = 0
    min_crop_std: float = 4.0
    """Crops whose pixel standard deviation (0-255 scale) is below this are redrawn (black borders, sky)."""
    context_margin: int = 16
    """Pixels of context on each side of a crop that the generators see (their receptive field is smaller)."""
    deconv_steps: int = 100
    autoencoder_steps: int = 200
    fit_batch: int = 16
    fit_crop: int = 48

    def __post_init__(self) -> None:
        self.generators = tuple(self.generators)
        unknown = [name for name in self.generators if name not in GENERATORS]
        if unknown or not self.generators:
            raise ValueError(f"unknown generator(s) {unknown}; choose from {list(GENERATORS)}")
        if len(set(self.generators)) != len(self.generators):
            raise ValueError(f"generators listed twice: {list(self.generators)}")
        if self.crop_size < 8 or self.crops_per_source < 1:
            raise ValueError("crop_size must be >= 8 and crops_per_source >= 1")
        for name in self.generators:
            weight = self.blend_for(name)
            if not 0.0 < weight <= 1.0:
                raise ValueError(f"blend weight for {name!r} must be in (0, 1], got {weight}")
        if isinstance(self.blend, Mapping):
            extra = set(self.blend) - set(self.generators)
            if extra:
                raise ValueError(f"blend given for generator(s) not built: {sorted(extra)}")

    def blend_for(self, generator: str) -> float:
        if isinstance(self.blend, Mapping):
            return float(self.blend.get(generator, 1.0))
        return float(self.blend)


@dataclass
class DemoData:
    """The dataset in memory: ``images[i]`` (S x S x 3 uint8) with its label, generator, split and source photo."""

    images: np.ndarray
    labels: np.ndarray
    generators: list[str]
    splits: list[str]
    sources: list[str]
    crop_ids: list[int] = field(default_factory=list)
    positions: list[tuple[int, int, bool]] = field(default_factory=list)
    """(top, left, flipped) of each crop in its source photograph."""

    def select(self, mask: np.ndarray) -> DemoData:
        index = np.flatnonzero(mask)
        pick = lambda values: [values[i] for i in index]  # noqa: E731
        return DemoData(
            self.images[index], self.labels[index], pick(self.generators), pick(self.splits), pick(self.sources),
            pick(self.crop_ids), pick(self.positions),
        )

    def subset(self, split: str | None = None, generator: str | None = None) -> DemoData:
        """Rows of one split; with ``generator``, its fakes plus all real rows (a balanced binary task)."""
        mask = np.ones(len(self.labels), dtype=bool)
        if split is not None:
            mask &= np.array([s == split for s in self.splits])
        if generator is not None:
            mask &= np.array([g in (generator, REAL) for g in self.generators])
        return self.select(mask)


# --- source photographs ---------------------------------------------------------------------------------------


def load_source_photos(sources: Sequence[PhotoSource] = PHOTO_SOURCES) -> dict[str, np.ndarray]:
    """Read each bundled photograph as H x W x 3 uint8 (grey photos repeated over the three channels)."""
    photos = {}
    for source in sources:
        path = source.path()
        if not path.is_file():
            raise FileNotFoundError(
                f"bundled photo {source.name!r} not found at {path}; is {source.package} installed completely?"
            )
        with Image.open(path) as image:
            photos[source.name] = np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    return photos


def _to_tensor(photo: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(photo).permute(2, 0, 1).float().div(255.0).unsqueeze(0)


def _is_grey(photo: np.ndarray) -> bool:
    return bool((photo[..., 0] == photo[..., 1]).all() and (photo[..., 1] == photo[..., 2]).all())


# --- generators ---------------------------------------------------------------------------------------------------


def _half_size(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True, align_corners=False)


def _bilinear_generator(x: torch.Tensor) -> torch.Tensor:
    """Antialiased 2x downscale then bilinear upsampling back to the exact input size."""
    return F.interpolate(_half_size(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class _DeconvDecoder(nn.Module):
    """Stride-2 conv encoder to an over-complete half-size code, decoded by a stride-2, kernel-3 transposed conv.

    The code (``width`` channels per 2x2 block of 12 values) can carry the full detail, so the trace left is the
    decoder's uneven kernel overlap -- a checkerboard -- rather than blur.
    """

    def __init__(self, width: int = 24):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, width, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.up = nn.ConvTranspose2d(width, 3, kernel_size=3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        padded = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        return self.up(self.down(padded))[..., :height, :width]


class _ConvAutoencoder(nn.Module):
    """4x-downsampling encoder; decoder of nearest-neighbour upsampling and 3x3 convolutions."""

    def __init__(self, width: int = 24):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, 3, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 4, -width % 4
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.decoder(self.encoder(padded))[..., :height, :width]


def _random_crops(tensors: Sequence[torch.Tensor], size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    crops = []
    for _ in range(count):
        image = tensors[int(torch.randint(len(tensors), (1,), generator=generator))]
        top = int(torch.randint(image.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(image.shape[2] - size + 1, (1,), generator=generator))
        crops.append(image[:, top : top + size, left : left + size])
    return torch.stack(crops)


def _fit(model: nn.Module, photos: Sequence[np.ndarray], config: DemoDataConfig, steps: int, seed: int) -> nn.Module:
    """Fit ``model`` to reproduce real crops (L1 loss, Adam), seeded; returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    tensors = [_to_tensor(photo)[0] for photo in photos]
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = _random_crops(tensors, config.fit_crop, config.fit_batch, generator)
        loss = F.l1_loss(model(batch), batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def _make_generators(
    photos: Mapping[str, np.ndarray], config: DemoDataConfig
) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """Build (and fit, on training photographs only) each requested generator."""
    train_photos = [photos[s.name] for s in PHOTO_SOURCES if s.split == "train" and s.name in photos]
    built: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    for index, name in enumerate(config.generators):
        seed = config.seed * 1000 + index
        if name == "bilinear":
            built[name] = _bilinear_generator
            continue
        torch.manual_seed(seed)
        if name == "deconv":
            built[name] = _fit(_DeconvDecoder(), train_photos, config, config.deconv_steps, seed)
        else:
            built[name] = _fit(_ConvAutoencoder(), train_photos, config, config.autoencoder_steps, seed)
    return built


def _generate(
    model: Callable[[torch.Tensor], torch.Tensor], windows: np.ndarray, weight: float, grey: bool
) -> np.ndarray:
    """Run a generator on (N, H, W, 3) uint8 windows, blend with the source, keep grey sources grey, quantise."""
    source = torch.from_numpy(windows).permute(0, 3, 1, 2).float().div(255.0)
    with torch.no_grad():
        generated = model(source)
    if grey:
        generated = generated.mean(dim=1, keepdim=True).expand_as(generated)
    blended = weight * generated + (1.0 - weight) * source
    return blended.permute(0, 2, 3, 1).mul(255.0).round().clamp(0, 255).to(torch.uint8).numpy()


# --- crops ----------------------------------------------------------------------------------------------------------


def _crop_positions(photo: np.ndarray, config: DemoDataConfig, rng: np.random.Generator) -> list[tuple[int, int, bool]]:
    """Random (top, left, flip) crops, redrawing near-flat ones; at most 50 tries per crop."""
    height, width = photo.shape[:2]
    size = config.crop_size
    if height < size or width < size:
        raise ValueError(f"photo of {width}x{height} is smaller than the crop size {size}")
    positions = []
    for _ in range(config.crops_per_source):
        for _attempt in range(50):
            top, left = int(rng.integers(height - size + 1)), int(rng.integers(width - size + 1))
            if photo[top : top + size, left : left + size].std() >= config.min_crop_std:
                break
        positions.append((top, left, bool(rng.integers(2))))
    return positions


def _window(photo: np.ndarray, top: int, left: int, size: int, margin: int) -> tuple[np.ndarray, int, int]:
    """The context window (side ``size + 2 * margin``, shifted to stay inside the photo) around a crop, and the
    crop's offset in it. Generators run on windows, not whole photos: the cost follows the number of crops, and
    crop borders carry the generator's response to real context rather than to padding."""
    height, width = photo.shape[:2]
    side_h, side_w = min(size + 2 * margin, height), min(size + 2 * margin, width)
    y = min(max(top - margin, 0), height - side_h)
    x = min(max(left - margin, 0), width - side_w)
    return photo[y : y + side_h, x : x + side_w], top - y, left - x


def _cut(image: np.ndarray, top: int, left: int, flip: bool, size: int) -> np.ndarray:
    crop = image[top : top + size, left : left + size]
    return np.ascontiguousarray(crop[:, ::-1] if flip else crop)


def generate_demo_data(
    config: DemoDataConfig | None = None,
    sources: Sequence[PhotoSource] = PHOTO_SOURCES,
    progress: Callable[[str], None] | None = None,
) -> DemoData:
    """Build the whole dataset in memory: one real crop per position and, per generator, the aligned fake crop."""
    config = config or DemoDataConfig()
    say = progress or (lambda message: None)
    photos = load_source_photos(sources)
    say(f"fitting generators {', '.join(config.generators)}")
    models = _make_generators(photos, config)
    rng = np.random.default_rng(config.seed)
    size = config.crop_size
    images, labels, generators, splits, names, crop_ids, where = [], [], [], [], [], [], []
    for source in sources:
        say(f"cropping {source.name}")
        photo = photos[source.name]
        positions = _crop_positions(photo, config, rng)
        cut = [_window(photo, top, left, size, config.context_margin) for top, left, _ in positions]
        # Windows of one photo share a shape unless the photo is smaller than a window in some dimension.
        windows = np.stack([window for window, _, _ in cut])
        fakes = {
            name: _generate(models[name], windows, config.blend_for(name), _is_grey(photo))
            for name in config.generators
        }
        for crop_id, ((_, dy, dx), (top, left, flip)) in enumerate(zip(cut, positions)):
            members = [(_cut(photo, top, left, flip, size), 0, REAL)]
            members += [(_cut(fakes[name][crop_id], dy, dx, flip, size), 1, name) for name in config.generators]
            for image, label, generator in members:
                images.append(image)
                labels.append(label)
                generators.append(generator)
                splits.append(source.split)
                names.append(source.name)
                crop_ids.append(crop_id)
                where.append((top, left, flip))
    return DemoData(np.stack(images), np.array(labels, dtype=np.int64), generators, splits, names, crop_ids, where)


# --- writing --------------------------------------------------------------------------------------------------------


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def build_demo_data(
    out_dir: str | os.PathLike,
    config: DemoDataConfig | None = None,
    sources: Sequence[PhotoSource] = PHOTO_SOURCES,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the dataset under ``out_dir`` (PNG files, ``demo.csv``, ``sources.json``) and return the CSV path.

    Real crops go to ``real/``, fakes to ``<generator>/``; CSV rows are grouped by generator, then split. Image paths in the CSV are relative to ``out_dir``; ``sources.json`` records each photo's licence and split
    and the config used. Every file is written atomically, the CSV last, so a CSV on disk always lists complete
    images.
    """
    config = config or DemoDataConfig()
    out = Path(out_dir)
    data = generate_demo_data(config, sources, progress)
    rows = []
    for index in range(len(data.labels)):
        relative = f"{data.generators[index]}/{data.sources[index]}_{data.crop_ids[index]:04d}.png"
        _atomic_write_bytes(out / relative, _png_bytes(data.images[index]))
        label, split = int(data.labels[index]), data.splits[index]
        # The generator column names the balanced real-vs-generator set a row belongs to (the training CSV's
        # convention), so each real crop is listed once per generator.
        names = config.generators if label == 0 else (data.generators[index],)
        pair = f"{data.sources[index]}_{data.crop_ids[index]:04d}"
        rows.extend((relative, split, label, name, pair) for name in names)
    rows.sort(key=lambda row: (config.generators.index(row[3]), SPLITS.index(row[1]), row[2], row[0]))
    manifest = {
        "config": {**asdict(config), "blend": {g: config.blend_for(g) for g in config.generators}},
        "sources": [{**asdict(s), "path": str(s.path())} for s in sources],
    }
    _atomic_write_bytes(out / "sources.json", (json.dumps(manifest, indent=2) + "\n").encode())
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)
    csv_path = out / "demo.csv"
    _atomic_write_bytes(csv_path, text.getvalue().encode())
    return csv_path


def dataset_digest(out_dir: str | os.PathLike) -> str:
    """SHA-256 over the CSV and every image it lists, in CSV order (for reproducibility checks)."""
    out = Path(out_dir)
    digest = hashlib.sha256((out / "demo.csv").read_bytes())
    with open(out / "demo.csv", newline="") as file:
        images = dict.fromkeys(row["image"] for row in csv.DictReader(file))
    for image in images:
        digest.update((out / image).read_bytes())
    return digest.hexdigest()


# --- command line ---------------------------------------------------------------------------------------------------


def _parse_blend(text: str) -> Mapping[str, float] | float:
    """``0.5`` for every generator, or ``bilinear=0.25,deconv=1`` per generator."""
    if "=" not in text:
        return float(text)
    blend = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        blend[name.strip()] = float(value)
    return blend


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the dataset builder's options to ``parser`` (shared by ``make-demo-data`` and ``demo``)."""
    defaults = DemoDataConfig()
    parser.add_argument("--crop-size", type=int, default=defaults.crop_size, help="crop side in pixels")
    parser.add_argument(
        "--crops-per-source", type=int, default=defaults.crops_per_source, help="crops per source photograph"
    )
    parser.add_argument(
        "--generators", default=",".join(defaults.generators),
        help=f"comma-separated generators to build, from {','.join(GENERATORS)}",
    )
    parser.add_argument(
        "--blend", type=_parse_blend, default=defaults.blend,
        help="weight w of the generated image in w*generated+(1-w)*source: one value or NAME=W,NAME=W",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    return parser


def config_from_args(args: argparse.Namespace) -> DemoDataConfig:
    generators = tuple(name.strip() for name in args.generators.split(",") if name.strip())
    return DemoDataConfig(
        crop_size=args.crop_size, crops_per_source=args.crops_per_source, generators=generators, blend=args.blend,
        seed=args.seed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``spai-svd make-demo-data OUT``: write the offline demo dataset and print a summary."""
    parser = argparse.ArgumentParser(
        prog="spai-svd make-demo-data", description=main.__doc__ and __doc__.splitlines()[0]
    )
    parser.add_argument("out", help="output folder (created; files inside are overwritten)")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    csv_path = build_demo_data(args.out, config, progress=lambda message: print(f"[make-demo-data] {message}"))
    with open(csv_path, newline="") as file:
        rows = list(csv.DictReader(file))
    print(f"wrote {len({row['image'] for row in rows})} images and {csv_path} ({len(rows)} rows)")
    for split in SPLITS:
        counts = {
            (name, label): sum(r["split"] == split and r["generator"] == name and r["class"] == label for r in rows)
            for name in config.generators
            for label in "01"
        }
        print(f"  {split:5s} " + "  ".join(
            f"{name}: {counts[name, '0']} real + {counts[name, '1']} fake" for name in config.generators
        ))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
