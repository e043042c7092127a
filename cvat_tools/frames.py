"""Frames a serving endpoint must not refuse: decode over the pixel limit by downscaling.

CVAT aborts automatic annotation of a whole task on the first non-2xx answer of a function,
so a frame over :data:`cvat_tools.imaging.MAX_PIXELS` is decoded at a reduced size (bounded
memory) and processed, and the masks are scaled back to the frame's own pixel grid. Only
frames that cannot be decoded within the memory budget are refused.
"""
from __future__ import annotations

import contextlib
import io
import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import imaging
from .errors import ImageError
from .formats.annotations import Instance, Mask

# Decoded bytes allowed before reduction (PNG/TIFF/... decode at full size; JPEG decodes
# already reduced by up to 8x through Image.draft, so only its reduced size counts).
MAX_DECODE_BYTES = 384 * 1024 * 1024
# No header may claim more than this (a few kB of PNG can claim gigapixels).
MAX_HEADER_PIXELS = 1_000_000_000

_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


@dataclass
class Frame:
    """The decoded frame (``image``, at most MAX_PIXELS) and the size CVAT knows it by."""

    image: np.ndarray
    width: int  # the frame's own size (after EXIF rotation)
    height: int

    @property
    def downscaled(self) -> bool:
        return self.image.shape[1] != self.width or self.image.shape[0] != self.height


@contextlib.contextmanager
def _open_unbounded(data: bytes):
    """Open ``data`` with Pillow's own pixel cap lifted: our callers bound the work themselves
    (header-only reads, draft decoding, an explicit decode budget)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as img:
                yield img
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _header(data: bytes, name: str) -> tuple[int, int]:
    try:
        with _open_unbounded(data) as img:
            return img.size
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not a readable image (JPEG, PNG, TIFF, BMP or WebP expected)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None


def decode_frame(data: bytes, name: str = "request image", max_pixels: int | None = None) -> Frame:
    """Decode ``data``; a frame over ``max_pixels`` comes back downscaled to fit it."""
    max_pixels = int(max_pixels or imaging.MAX_PIXELS)
    if not data:
        raise ImageError(f"{name}: empty file; it is not an image")
    w, h = _header(data, name)
    if w * h <= max_pixels:
        image = imaging.decode_image(data, name=name)
        return Frame(image, image.shape[1], image.shape[0])
    if len(data) > imaging.MAX_FILE_BYTES:
        imaging.decode_image(data, name=name)  # raises its size error
    if w * h > MAX_HEADER_PIXELS:
        raise ImageError(f"{name}: {w}x{h} pixels is over the {MAX_HEADER_PIXELS // 10**6} MP "
                         "that can be downscaled safely (possible decompression bomb)")
    factor = math.sqrt(max_pixels / (w * h))
    target = (max(1, math.floor(w * factor)), max(1, math.floor(h * factor)))
    try:
        with _open_unbounded(data) as img:
            orientation = img.getexif().get(0x0112, 1)
            if img.format == "JPEG":
                img.draft("RGB", target)  # the decoder itself reduces (1/2 .. 1/8)
            bands = len(img.getbands())
            if img.size[0] * img.size[1] * bands > MAX_DECODE_BYTES:
                raise ImageError(
                    f"{name}: {w}x{h} pixels is too large to decode within "
                    f"{MAX_DECODE_BYTES >> 20} MiB; downscale it first")
            img.load()
            resample = Image.NEAREST if img.mode in ("1", "P", "PA") else Image.BILINEAR
            small = img.resize(target, resample, reducing_gap=3.0)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, MemoryError) as exc:
        raise ImageError(f"{name}: corrupt or truncated image ({exc})") from None
    if orientation in _TRANSPOSE:
        small = small.transpose(_TRANSPOSE[orientation])
        if orientation in (5, 6, 7, 8):
            w, h = h, w
    small.info.pop("exif", None)
    return Frame(imaging._to_rgb(small), w, h)


def upscale_mask(mask: Mask, sx: float, sy: float, width: int, height: int) -> Mask | None:
    """``mask`` of a downscaled image on the full frame's pixel grid (nearest neighbour)."""
    x0, y0 = math.floor(mask.left * sx), math.floor(mask.top * sy)
    x1 = min(width, math.ceil((mask.left + mask.width) * sx))
    y1 = min(height, math.ceil((mask.top + mask.height) * sy))
    if x1 <= x0 or y1 <= y0:
        return None
    import cv2

    bitmap = cv2.resize(np.asarray(mask.bitmap, dtype=np.uint8), (x1 - x0, y1 - y0),
                        interpolation=cv2.INTER_NEAREST).astype(bool)
    return Mask(bitmap, x0, y0) if bitmap.any() else None


def to_frame(instances: list[Instance], frame: Frame) -> list[Instance]:
    """Instances found on ``frame.image`` placed on the frame's own pixel grid."""
    if not frame.downscaled:
        return instances
    sx = frame.width / frame.image.shape[1]
    sy = frame.height / frame.image.shape[0]
    out = []
    for inst in instances:
        mask = upscale_mask(inst.geometry, sx, sy, frame.width, frame.height)
        if mask is not None:
            out.append(replace(inst, geometry=mask))
    return out



BLANK_STD = 3.0  # grey levels; a stained smear varies by tens


def is_blank(image: np.ndarray) -> bool:
    """True for a frame with no structure (black, white, one colour): there is no cell to find,
    and segmenters answer such frames with one frame-sized "cell" (measured: a 4382x4349 mask
    called lymphocyte at 0.57 on a black 64 MP frame). Reads at most ~1 MP of samples."""
    h, w = image.shape[:2]
    step = max(1, int(math.sqrt(h * w / 1_000_000)))
    sample = np.asarray(image[::step, ::step], dtype=np.float32).reshape(-1, image.shape[2])
    return bool(sample.size == 0 or float(sample.std(axis=0).max()) < BLANK_STD)


def frame_from_pil(img: Image.Image, max_pixels: int | None = None) -> Frame:
    """An already-open PIL frame (how cvat-sdk hands them over) as a :class:`Frame`: over the
    pixel limit it is downscaled for inference instead of refused, as in :func:`decode_frame`."""
    from PIL import ImageOps

    max_pixels = int(max_pixels or imaging.MAX_PIXELS)
    w, h = img.size
    if w * h <= max_pixels:
        image = imaging.pil_to_rgb(img)
        return Frame(image, image.shape[1], image.shape[0])
    if w * h > MAX_HEADER_PIXELS:
        raise ImageError(f"{w}x{h} pixels is over the {MAX_HEADER_PIXELS // 10**6} MP that can "
                         "be downscaled safely")
    img = ImageOps.exif_transpose(img)
    w, h = img.size
    factor = math.sqrt(max_pixels / (w * h))
    target = (max(1, math.floor(w * factor)), max(1, math.floor(h * factor)))
    resample = Image.NEAREST if img.mode in ("1", "P", "PA") else Image.BILINEAR
    small = img.resize(target, resample, reducing_gap=3.0)
    small.info.pop("exif", None)
    return Frame(imaging._to_rgb(small), w, h)
