"""Safe image loading: every entry point (CLI, Nuclio, cvat-sdk function) reads images here.

Returns RGB uint8 arrays (H x W x 3) whatever came in: grayscale, palette, RGBA, 16-bit,
CMYK, EXIF-rotated. Refuses decompression bombs and oversized files before decoding pixels.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

# A 4032x3024 photograph is 12.2 MP; allow generous headroom but not a bomb.
MAX_PIXELS = 64_000_000
MAX_FILE_BYTES = 100_000_000  # "100 MB" in every message and in the README: decimal megabytes
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 1.0
        scale = 255.0 / (65535.0 if hi > 255 else max(hi, 1.0) if mode == "F" else 255.0)
        arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        # Composite on white: slide background, not black holes in the cells.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        img = canvas
    return np.ascontiguousarray(np.asarray(img.convert("RGB"), dtype=np.uint8))


def _too_many_pixels(name: str, w: int, h: int) -> ImageError:
    return ImageError(f"{name}: {w}x{h} pixels is over the {MAX_PIXELS // 1_000_000} MP limit "
                      "(possible decompression bomb); downscale it first")


def _bomb(name: str, exc: Exception) -> ImageError:
    """Pillow's own bomb refusal (its 89/179 MP limits) restated as ours (64 MP)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "the image"
    return ImageError(f"{name}: {size} is over the {MAX_PIXELS // 1_000_000} MP limit "
                      "(possible decompression bomb); downscale it first")


def _open_quiet(source) -> Image.Image:
    """Image.open without Pillow's 89 MP warning, so our 64 MP check speaks first (callers
    check ``img.size`` before decoding). Over 2x its limit Pillow raises; callers map that."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(source)


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to RGB uint8, with the same checks as :func:`load_image`."""
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(
            f"{name}: {len(data) / 1e6:.1f} MB is over the {MAX_FILE_BYTES / 1e6:.0f} MB limit; "
            "downscale or re-encode the image (JPEG) first"
        )
    if not data:
        raise ImageError(f"{name}: empty file; it is not an image")
    try:
        with _open_quiet(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise _too_many_pixels(name, w, h)
            if w == 0 or h == 0:
                raise ImageError(f"{name}: image has no pixels")
            with warnings.catch_warnings():
                # a frame or tile larger than the header said: still a bomb
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = ImageOps.exif_transpose(img)
                img.load()
            return _to_rgb(img)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb(name, exc) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG, TIFF, BMP or WebP expected)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 of an already-open PIL image (how cvat-sdk hands frames over), converted
    exactly as :func:`decode_image` converts bytes (EXIF rotation, modes, size limit)."""
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise _too_many_pixels("image", w, h)
    if w == 0 or h == 0:
        raise ImageError("image has no pixels")
    return _to_rgb(ImageOps.exif_transpose(img))


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8 (H x W x 3), raising ImageError naming the file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    if size > MAX_FILE_BYTES:
        raise ImageError(
            f"{path}: {size / 1e6:.1f} MB is over the {MAX_FILE_BYTES / 1e6:.0f} MB limit; "
            "downscale or re-encode the image (JPEG) first"
        )
    return decode_image(path.read_bytes(), str(path))


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) after EXIF rotation, reading only the header; ImageError over the
    pixel limit (nothing downstream could load it)."""
    try:
        with _open_quiet(path) as img:
            w, h = img.size
            if w * h > MAX_PIXELS:  # before getexif, which decodes a PNG to reach its eXIf
                raise _too_many_pixels(str(path), w, h)
            orientation = img.getexif().get(0x0112, 1)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _bomb(str(path), exc) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{path}: not a readable image ({exc})") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` by suffix, sorted for reproducibility."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(
        p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
