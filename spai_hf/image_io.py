"""Safe image opening shared by data loading, CSV creation and the CLI.

`load_image` returns what the original SPAI feeds its processor -- ``Image.open(path).convert("RGB")``, with no
EXIF transpose and alpha dropped without compositing -- but fails with one clear exception type
(`ImageLoadError`) for missing, corrupt, truncated, unsupported or oversized files.

One deliberate difference: 16-bit grey images (PIL modes ``I;16*`` and ``I``, e.g. 16-bit PNGs) are scaled to
8 bits by dividing by 257 (65535 -> 255). The original's ``.convert("RGB")`` clips those values to 255, which
turns almost every pixel of a 16-bit image white.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "check_image",
    "find_images",
    "load_image",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)
"""Lower-case file suffixes treated as images when scanning folders."""

DEFAULT_MAX_IMAGE_PIXELS = 256 * 1024 * 1024
"""Images with more pixels than this are refused as possible decompression bombs (16k x 16k)."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageLoadError(OSError):
    """An image could not be opened or decoded; carries the path and a human-readable reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot load image {self.path!r}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.reason))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB as the original does, except 16-bit grey which is rescaled (see module doc)."""
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


def _open_guarded(path: str | os.PathLike, max_pixels: int | None, decode: bool) -> Image.Image | None:
    """Open ``path`` with size limit and error mapping; return the RGB image if ``decode`` else only verify it."""
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(path, "no such file" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings():
            # PIL warns (DecompressionBombWarning) between its limit and twice it; we enforce our own limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageLoadError(
                        path,
                        f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels} "
                        "(possible decompression bomb; raise max_pixels if the image is trusted)",
                    )
                if not decode:
                    image.verify()
                    return None
                image.load()
                return _to_rgb(image)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(path, "unrecognised or unsupported image format") from None
    except Image.DecompressionBombError as error:
        raise ImageLoadError(path, f"refused as a possible decompression bomb: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(path, f"corrupt or truncated image data ({type(error).__name__}: {error})") from None


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Open ``path`` fully decoded as an 8-bit RGB image, or raise `ImageLoadError`.

    ``max_pixels`` bounds width x height (``None`` disables the check); larger images are refused before decoding.
    The pixels are decoded inside the guarded block, so truncated files fail here rather than later.
    """
    return _open_guarded(path, max_pixels, decode=True)


def check_image(
    path: str | os.PathLike, decode: bool = False, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> None:
    """Raise `ImageLoadError` if ``path`` is not a loadable image.

    By default only the header and the file structure are checked (PIL's ``verify``: fast, catches non-images and
    most corruption, e.g. PNG checksum errors); ``decode=True`` decodes every pixel, which also catches truncated
    JPEGs, at the cost of a full decode.
    """
    _open_guarded(path, max_pixels, decode=decode)


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def find_images(dirs: str | os.PathLike | Iterable[str | os.PathLike], recursive: bool = True) -> list[Path]:
    """List image files (by `IMAGE_EXTENSIONS`) under one or more folders, sorted, without duplicates.

    Raises `FileNotFoundError` / `NotADirectoryError` for a folder that does not exist or is a file.
    Hidden files and folders (names starting with ".") are skipped.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    found: set[Path] = set()
    for directory in map(Path, dirs):
        if not directory.exists():
            raise FileNotFoundError(f"image folder {str(directory)!r} does not exist")
        if not directory.is_dir():
            raise NotADirectoryError(f"{str(directory)!r} is not a folder")
        found.update(path for path in _walk(directory, recursive) if _is_image_file(path))
    return sorted(found)


def _walk(directory: Path, recursive: bool) -> Iterator[Path]:
    for entry in directory.iterdir():
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if recursive:
                yield from _walk(entry, recursive)
        else:
            yield entry
