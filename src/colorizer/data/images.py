"""Decoding photos safely: the one place Pillow opens an image.

Every candidate is decoded fully, oriented by its EXIF tag and normalised to 8-bit sRGB, or
rejected with a reason a person can read. Nothing here knows where the bytes came from.
"""

from __future__ import annotations

import hashlib
import io
import os
import typing
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from struct import error as struct_error

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from colorizer.config import FORMATS
from colorizer.data.lab import mean_chroma
from colorizer.files import atomic_write_bytes

_SRGB_PROFILE = ImageCms.createProfile("sRGB")


class RejectedImage(ValueError):
    """A candidate we skip; `reason` is short and stable (it is counted in the summary)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedImage:
    rgb: np.ndarray  # (H, W, 3) uint8, sRGB, EXIF orientation applied
    mode: str  # Pillow mode of the file as stored, e.g. "CMYK", "I;16", "P"
    format: str
    alpha: np.ndarray | None = None  # (H, W) uint8 when the file had transparency
    icc_profile: bytes | None = None
    exif: bytes | None = None
    display_size: tuple[int, int] = (0, 0)  # (width, height) of the full image, EXIF orientation applied
    # (H, W) uint8 for photos stored grey; `rgb` is then a read-only view of it with R = G = B, so a
    # greyscale scan costs one plane of memory and no conversion (colorize reads this plane).
    grey: np.ndarray | None = None

    @property
    def is_grey(self) -> bool:
        return self.grey is not None

    @property
    def nbytes(self) -> int:
        """The memory its pixels hold (the grey plane alone where rgb is its view)."""
        planes = self.grey if self.grey is not None else self.rgb
        return planes.nbytes + (self.alpha.nbytes if self.alpha is not None else 0)

    def __getstate__(self) -> dict:
        """Pickled (to another process) as the grey plane alone when there is one: rgb is its view."""
        return {**self.__dict__, "rgb": None} if self.grey is not None else dict(self.__dict__)

    def __setstate__(self, state: dict) -> None:
        if state["rgb"] is None:
            state["rgb"] = np.broadcast_to(state["grey"][..., None], (*state["grey"].shape, 3))
        self.__dict__.update(state)  # frozen: set the fields directly


def open_image(data: bytes, max_pixels: int, formats: tuple[str, ...] = FORMATS) -> Image.Image:
    """Open (lazily) with the format allow-list and a pixel cap checked before any decoding."""
    if not data:
        raise RejectedImage("empty file")
    # Our cap replaces Pillow's own bomb check (it warns at 89.5 MP and refuses at 179 MP, below the
    # caps we document): the size is checked below, from the header, before any decoding. Turned
    # off, never lowered, so that threads decoding with other caps can't race on Pillow's global.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        raise RejectedImage("not an image") from None  # Pillow names only its BytesIO here
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RejectedImage("decompression bomb", str(e)) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise RejectedImage("corrupt", str(e)) from None
    except (TypeError, KeyError, AttributeError, ArithmeticError, RuntimeError) as e:  # see decode
        raise RejectedImage("corrupt", f"{type(e).__name__}: {e}") from None
    width, height = img.size
    if width * height > max_pixels:
        raise RejectedImage("decompression bomb", f"{width}x{height} is over the {max_pixels}-pixel cap")
    return img


GREY_MODES = frozenset({"1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


def decode(
    data: bytes,
    max_pixels: int,
    formats: tuple[str, ...] = FORMATS,
    at_least: int | None = None,
    full_size_up_to: int = 0,
) -> DecodedImage:
    """Bytes -> DecodedImage (8-bit sRGB), or RejectedImage with the reason.

    `at_least`: a JPEG may be decoded at a reduced scale (DCT scaling: several times faster on large
    photos) as long as both sides stay >= at_least; for callers that only need a small version.
    JPEGs whose pixels take at most `full_size_up_to` bytes (one per pixel for grey, three for colour)
    are decoded at full size all the same (colorize hands those on instead of decoding them twice).
    """
    img = open_image(data, max_pixels, formats)
    fmt, icc, exif = img.format or "", img.info.get("icc_profile"), img.info.get("exif")
    try:
        full_size = upright_size(img)  # before any reduced-scale decoding
        keep_full_size = pixel_bytes(img.mode, img.width, img.height) <= full_size_up_to
        if at_least and fmt in ("JPEG", "MPO") and not keep_full_size:
            img.draft(img.mode, (at_least, at_least))
        img.seek(0)  # first frame of GIF/TIFF/MPO
        img.load()
        stored_mode = img.mode
        img = ImageOps.exif_transpose(img)
        rgb, alpha, grey = to_rgb(img, icc)
    except RejectedImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RejectedImage("decompression bomb", str(e)) from None
    except OSError as e:
        reason = "truncated" if "truncated" in str(e) or "broken" in str(e) else "corrupt"
        raise RejectedImage(reason, str(e)) from None
    except (SyntaxError, ValueError, EOFError, IndexError, struct_error) as e:
        raise RejectedImage("corrupt", str(e)) from None
    except (TypeError, KeyError, AttributeError, ArithmeticError, RuntimeError) as e:
        # what Pillow's plugins raise on some malformed files (a TIFF tag of the wrong type: TypeError):
        # the file can't be read, a row like any other, not a crash of the run
        raise RejectedImage("corrupt", f"{type(e).__name__}: {e}") from None
    return DecodedImage(rgb, stored_mode, fmt, alpha, icc, exif, full_size, grey)


def pixel_bytes(mode: str, width: int, height: int) -> int:
    """The bytes of a decoded photo's pixels: one plane for grey, three for colour (alpha aside)."""
    return width * height * (1 if mode in GREY_MODES else 3)


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 swap the sides."""
    width, height = img.size
    orientation = img.getexif().get(0x0112, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def _full_scale(img: Image.Image) -> float:
    """The value that means white in a deep grey image: 65535 for 16-bit samples (also 16-bit data in
    a 32-bit container, which is how Pillow opens some 16-bit PNGs), 1.0 for floats (the convention
    of float TIFFs). Other ranges (negative, above 65535, floats above 1, NaN) have no known meaning:
    refused rather than guessed (a float image read as 16-bit would come out black)."""
    low, high = img.getextrema()
    if img.mode == "F":
        if not (0.0 <= low and high <= 1.0):  # NaN fails both comparisons
            raise RejectedImage("unsupported values", f"float samples from {low:g} to {high:g}, not 0..1")
        return 1.0
    if low < 0 or high > 65535:
        raise RejectedImage("unsupported values", f"32-bit samples from {low} to {high}, not 0..65535")
    return 65535.0


def to_rgb(
    img: Image.Image, icc_profile: bytes | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Any Pillow mode -> ((H, W, 3) uint8 sRGB composited on white, alpha or None, grey plane or None).

    Grey modes give their (H, W) plane too, and rgb is a read-only view of it (no copy)."""
    mode = img.mode
    if mode in GREY_MODES:
        alpha = None
        if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            # Pillow's convert("L") clips values above 255 to white: scale ourselves, from the range
            # the mode's values are known to mean, and refuse what has no known range
            grey = np.round(np.asarray(img, dtype=np.float64) * (255.0 / _full_scale(img))).astype(np.uint8)
        elif mode == "LA":
            la = np.asarray(img, dtype=np.float32)
            grey = np.round(la[..., 0] * (la[..., 1] / 255.0) + 255.0 * (1.0 - la[..., 1] / 255.0)).astype(np.uint8)
            alpha = la[..., 1].astype(np.uint8)  # composited on white, as colour images are below
        else:  # "L", or "1" read as 0/255
            grey = np.asarray(img.convert("L") if mode == "1" else img, dtype=np.uint8)
        return np.broadcast_to(grey[..., None], (*grey.shape, 3)), alpha, grey
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "CMYK" or (mode == "RGB" and icc_profile):
        img = _to_srgb_via_icc(img, icc_profile)
    elif mode not in ("RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in mode else "RGB")
    if img.mode == "RGBA":
        rgba = np.asarray(img, dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)  # composite on white
        return np.round(rgb).astype(np.uint8), rgba[..., 3].astype(np.uint8), None
    return np.asarray(img.convert("RGB"), dtype=np.uint8), None, None


def _to_srgb_via_icc(img: Image.Image, icc_profile: bytes | None) -> Image.Image:
    if icc_profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            return ImageCms.profileToProfile(img, source, _SRGB_PROFILE, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to Pillow's naive conversion below
    return img.convert("RGB")


CUTOUT_TRANSPARENT_SHARE = 0.05  # a photo with at least this share of (partly) transparent pixels is a cut-out


def reject_reason(decoded: DecodedImage, min_side: int, min_chroma: float) -> str | None:
    """Why a decoded photo teaches us nothing (too small, greyscale), or None to keep it."""
    height, width = decoded.rgb.shape[:2]
    if min(height, width) < min_side:
        return "too small"
    if chroma_of(decoded.rgb, decoded.alpha) < min_chroma:
        return "near-greyscale"
    return None


def kind_of(decoded: DecodedImage) -> str:
    """ "cutout" for a subject cut out on transparency (composited on white), else "photo"."""
    if decoded.alpha is None:
        return "photo"
    return "cutout" if float((decoded.alpha < 255).mean()) >= CUTOUT_TRANSPARENT_SHARE else "photo"


def chroma_of(rgb: np.ndarray, alpha: np.ndarray | None = None) -> float:
    """Mean Lab chroma of the opaque pixels (a cut-out's white background would dilute it)."""
    step = max(1, max(rgb.shape[:2]) // 256)  # a 256-px preview is enough for a mean
    preview = rgb[::step, ::step]
    if alpha is not None:
        opaque = alpha[::step, ::step] >= 128
        if not opaque.any():
            return 0.0
        preview = preview[opaque][None]  # (1, n, 3): mean_chroma takes any (..., 3)
    return mean_chroma(preview)


def content_id(rgb: np.ndarray) -> str:
    """Hash of the decoded pixels (and shape): equal photos in any container get the same id."""
    digest = hashlib.sha256()
    digest.update(f"{rgb.shape}".encode())
    digest.update(np.ascontiguousarray(rgb).tobytes())
    return digest.hexdigest()[:32]


def encode_png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_rgb(path: Path) -> np.ndarray:
    """One of our own normalised PNGs (written by fetch) -> (H, W, 3) uint8."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


def save_png(path: Path, rgb: np.ndarray) -> None:
    atomic_write_bytes(path, encode_png(rgb))


# Output formats we write, and the suffix each gets when --format changes it.
FORMAT_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}
SUFFIX_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".gif": "GIF",
}
_ALPHA_FORMATS = {"PNG", "WEBP", "TIFF"}
_EXIF_ORIENTATION, _EXIF_DESCRIPTION, _EXIF_SOFTWARE = 0x0112, 0x010E, 0x0131


def encode_colorized(rgb: np.ndarray, fmt: str, quality: int, source: DecodedImage, description: str) -> bytes:
    """A colorized photo's file, keeping the source's alpha, EXIF and (RGB) ICC profile and recording
    where the colours came from in EXIF Software/ImageDescription (and PNG text)."""
    image = Image.fromarray(rgb)
    if source.alpha is not None and fmt in _ALPHA_FORMATS:
        image.putalpha(Image.fromarray(source.alpha))
    options: dict = {}
    if source.icc_profile and source.icc_profile[16:20] == b"RGB ":  # a grey profile can't describe RGB output
        options["icc_profile"] = source.icc_profile
    if fmt == "PNG":
        text = PngInfo()
        text.add_text("Software", "colorizer")
        text.add_text("Description", description)
        options |= {"pnginfo": text, "compress_level": 6}
    elif fmt in ("JPEG", "WEBP"):
        options["quality"] = quality
    elif fmt == "TIFF":
        options["compression"] = "tiff_deflate"
    elif fmt == "GIF":
        image, options = image.convert("RGB").quantize(256), {}
    elif fmt == "BMP":
        options = {}
    if fmt in ("GIF", "BMP"):  # no EXIF
        return _encoded(image, fmt, options)
    failure: Exception | None = None
    for candidate in _exif_candidates(source.exif, description, sub_ifds=fmt != "TIFF"):
        try:
            return _encoded(image, fmt, options | {"exif": candidate.tobytes()})
        except (RuntimeError, ValueError, OSError, struct_error) as e:  # as the encoder words it
            failure = e
    raise failure


def _exif_candidates(source: bytes | None, description: str, sub_ifds: bool = True) -> Iterator[Image.Exif]:
    """The EXIF to write, fullest first: the source's with our provenance (Software, ImageDescription);
    then without its sub-IFDs (Exif, GPS, interoperability: Pillow's TIFF writer refuses them, 'Error
    setting from dictionary', so for TIFF `sub_ifds=False` starts here); then the source's without
    ours, where our description pushes a legal EXIF over JPEG's 64 KB; then ours alone. Orientation
    is 1 in each: the pixels are upright."""

    def loaded(provenance: bool, sub_ifds: bool = True) -> Image.Exif:
        exif = Image.Exif()
        if source:
            try:
                exif.load(source)
            except (SyntaxError, ValueError, OSError, struct_error):
                pass  # unreadable EXIF is not worth losing the photo over
        for pointer in () if sub_ifds else _SUB_IFD_POINTERS:
            exif.pop(pointer, None)
        exif[_EXIF_ORIENTATION] = 1
        if provenance:
            exif[_EXIF_SOFTWARE] = "colorizer"
            exif[_EXIF_DESCRIPTION] = description
        return exif

    if sub_ifds:
        yield loaded(provenance=True)
    yield loaded(provenance=True, sub_ifds=False)
    yield loaded(provenance=False, sub_ifds=sub_ifds)
    minimal = Image.Exif()
    minimal.update({_EXIF_ORIENTATION: 1, _EXIF_SOFTWARE: "colorizer", _EXIF_DESCRIPTION: description})
    yield minimal


_SUB_IFD_POINTERS = {0x8769, 0x8825, 0xA005}  # Exif, GPS and interoperability IFDs


def _encoded(image: Image.Image, fmt: str, options: dict) -> bytes:
    with _encoding_buffer() as buffer:
        image.save(buffer, format=fmt, **options)
        buffer.seek(0)
        return buffer.read()


def _encoding_buffer() -> typing.IO[bytes]:
    """Where an encoder writes a photo in memory. Into a BytesIO, Pillow's encoders hand back each
    64 KB through Python and hold the GIL while they encode it, which stalls everything else in the
    process: a JPEG encode in a worker thread slowed another thread's Python to 0.74 of its speed
    (colorize's model waits on it between every op). Into a file descriptor they encode with the GIL
    released (0.95; both from `python -m bench.photo_costs`), so on Linux the buffer is an anonymous
    in-memory file (memfd: no disk, so no short write on a full one, which Pillow's file writer would
    not notice); elsewhere a BytesIO."""
    if hasattr(os, "memfd_create"):
        return open(os.memfd_create("encoded", os.MFD_CLOEXEC), "w+b")
    return io.BytesIO()
