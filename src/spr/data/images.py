"""The one image loader every stage uses, with one error policy.

An image that is missing, not an image, truncated, larger than the pixel limit (a decompression bomb) or not the
size its record says raises :class:`ImageProblem` with a short ``kind`` (counted in summaries) and a ``detail``
naming the file; the caller decides whether that skips a record or stops the stage. Files are fully decoded, so
a truncated PNG or JPEG is caught here and not in the middle of a batch.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own warning limit (about 9459 x 9459)


class ImageProblem(Exception):
    """An image that cannot be used: ``kind`` (e.g. "image missing") and ``detail`` (the file and why)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(kind, detail)
        self.kind, self.detail = kind, detail

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


def _open(path: Path, max_pixels: int):
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ImageProblem("image missing", str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # our own limit below, checked before any pixel is decoded
        try:
            im = Image.open(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            raise ImageProblem("image unreadable", f"{path}: {e}") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if max_pixels and w * h > max_pixels:
        im.close()
        raise ImageProblem(
            "image too large",
            f"{path} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} (max_image_pixels)",
        )
    return im


def image_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(W, H) from the file's header (nothing decoded); ImageProblem when it cannot be used."""
    with _open(Path(path), max_pixels) as im:
        return im.size


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, expected_size=None):
    """The image as RGB, fully decoded; ImageProblem when it is missing, unreadable, truncated, too large or
    (with ``expected_size``) not that (W, H)."""
    path = Path(path)
    im = _open(path, max_pixels)
    try:
        with im:
            im.load()
            image = im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageProblem("image unreadable", f"{path}: {e}") from None
    if expected_size is not None and list(image.size) != [int(v) for v in expected_size]:
        raise ImageProblem(
            "image size differs from the record",
            f"{path} is {image.size[0]}x{image.size[1]}, the record says {int(expected_size[0])}x{int(expected_size[1])}",
        )
    return image


class ImageCache:
    """Loads images with :func:`load_image`, keeping the last few (several records share an image) and
    remembering the ones that failed."""

    def __init__(self, size: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.size, self.max_pixels = size, max_pixels
        self._cache: OrderedDict[str, object] = OrderedDict()
        self.errors: dict[str, ImageProblem] = {}

    def load(self, path: str, expected_size=None):
        """The image, or ImageProblem (raised again for a file that failed before)."""
        key = str(path)
        if key in self.errors:
            raise self.errors[key]
        if key in self._cache:
            self._cache.move_to_end(key)
            image = self._cache[key]
        else:
            try:
                image = load_image(key, self.max_pixels)
            except ImageProblem as e:
                self.errors[key] = e
                raise
            self._cache[key] = image
            if len(self._cache) > self.size:
                self._cache.popitem(last=False)
        if expected_size is not None and list(image.size) != [int(v) for v in expected_size]:
            raise ImageProblem(
                "image size differs from the record",
                f"{key} is {image.size[0]}x{image.size[1]}, the record says {int(expected_size[0])}x{int(expected_size[1])}",
            )
        return image

    def get(self, path: str):
        """``(image, None)`` or ``(None, reason)``; never raises."""
        try:
            return self.load(path), None
        except ImageProblem as e:
            return None, str(e)
