import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from colorizer.data.images import RejectedImage, content_id, decode, encode_colorized, reject_reason
from colorizer.data.lab import rgb_to_lab
from tests.helpers import colourful, encode

BIG = 10_000_000


def reason_of(data: bytes, max_pixels: int = BIG, **kwargs) -> str:
    with pytest.raises(RejectedImage) as caught:
        decode(data, max_pixels, **kwargs)
    return caught.value.reason


# ---- bad inputs: each has its own reason -------------------------------------------------------------


def test_zero_bytes():
    assert reason_of(b"") == "empty file"


def test_not_an_image():
    assert reason_of(b"this is a text file, not a photo\n" * 10) == "not an image"


def test_truncated_jpeg(photo):
    data = encode(photo, "JPEG")
    assert reason_of(data[: len(data) // 2]) == "truncated"


def test_truncated_png(photo):
    data = encode(photo, "PNG")
    assert reason_of(data[: len(data) - 200]) in ("truncated", "corrupt")


def test_decompression_bomb_is_refused_before_decoding():
    data = encode(np.zeros((400, 500, 3), np.uint8), "PNG")
    assert reason_of(data, max_pixels=100_000) == "decompression bomb"


def test_format_outside_the_allow_list(photo):
    assert reason_of(encode(photo, "PPM")) == "not an image"
    assert reason_of(encode(photo, "PNG"), formats=("JPEG",)) == "not an image"


def test_too_small_and_near_greyscale(photo):
    small = decode(encode(colourful(40, 30)), BIG)
    assert reject_reason(small, min_side=64, min_chroma=3.0) == "too small"
    grey = np.repeat(photo.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert reject_reason(decode(encode(grey), BIG), min_side=16, min_chroma=3.0) == "near-greyscale"
    assert reject_reason(decode(encode(photo), BIG), min_side=16, min_chroma=3.0) is None


# ---- mode conversions ---------------------------------------------------------------------------------


def test_rgb_png_is_lossless(photo):
    decoded = decode(encode(photo), BIG)
    assert decoded.mode == "RGB" and decoded.format == "PNG"
    np.testing.assert_array_equal(decoded.rgb, photo)


def test_sixteen_bit_greyscale_is_scaled_not_clipped():
    ramp = (np.linspace(0, 65535, 256, dtype=np.float64)[None, :].repeat(8, 0)).astype(np.uint16)
    image = Image.fromarray(ramp)  # mode I;16
    decoded = decode(encode(image), BIG)
    assert decoded.mode.startswith("I")
    expected = np.round(ramp / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(decoded.rgb[..., 0], expected)
    assert decoded.rgb[..., 0].min() == 0 and decoded.rgb[..., 0].max() == 255
    assert (decoded.rgb[..., 0] < 255).mean() > 0.9  # Pillow's convert("L") would make most of it white


def test_palette_with_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    image.info["transparency"] = 1
    decoded = decode(encode(image, transparency=1), BIG)
    assert decoded.mode == "P"
    assert tuple(decoded.rgb[0, 0]) == (255, 255, 255)  # the transparent half is white
    assert tuple(decoded.rgb[0, 7]) == (255, 0, 0)
    assert decoded.alpha is not None and decoded.alpha[0, 0] == 0


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    rgba[:, 3:, 3] = 255
    image = Image.fromarray(rgba, "RGBA").convert(mode)
    decoded = decode(encode(image), BIG)
    assert decoded.rgb[0, 0].tolist() == [255, 255, 255]
    assert decoded.rgb[0, 5].min() < 255


def test_greyscale_becomes_three_equal_channels():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    decoded = decode(encode(grey), BIG)
    assert decoded.rgb.shape == (8, 8, 3)
    assert (decoded.rgb == grey[..., None]).all()
    assert decoded.is_grey and (decoded.grey == grey).all()  # and the single plane, for colorize


def test_grey_with_alpha_keeps_one_plane_composited_like_colour():
    la = np.zeros((6, 6, 2), np.uint8)
    la[..., 0], la[..., 1] = 40, 128
    from_la = decode(encode(Image.fromarray(la, "LA")), BIG)
    from_rgba = decode(encode(Image.fromarray(la, "LA").convert("RGBA")), BIG)
    assert from_la.is_grey and not from_rgba.is_grey
    np.testing.assert_array_equal(from_la.rgb, from_rgba.rgb)
    np.testing.assert_array_equal(from_la.grey, from_rgba.rgb[..., 0])
    np.testing.assert_array_equal(from_la.alpha, from_rgba.alpha)


def test_colour_photos_have_no_grey_plane(photo):
    assert decode(encode(photo), BIG).grey is None


def test_cmyk_without_profile_converts():
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure cyan-less red in CMYK terms
    decoded = decode(encode(image, "JPEG"), BIG)
    assert decoded.mode == "CMYK"
    r, g, b = decoded.rgb[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_cmyk_with_an_unusable_profile_falls_back_instead_of_failing():
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # wrong colour space for CMYK
    image = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    decoded = decode(encode(image, "JPEG", icc_profile=srgb), BIG)
    assert decoded.rgb[4, 4, 0] > 200


def test_rgb_with_srgb_profile_goes_through_the_profile(photo):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode(encode(photo, "PNG", icc_profile=srgb), BIG)
    assert decoded.icc_profile == srgb
    assert np.abs(decoded.rgb.astype(int) - photo.astype(int)).max() <= 3


def test_exif_orientation_is_applied():
    image = Image.fromarray(colourful(60, 30))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode(encode(image, "JPEG", exif=exif.tobytes()), BIG)
    assert decoded.rgb.shape[:2] == (60, 30)


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("RGB", (16, 16), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode(buffer.getvalue(), BIG)
    r, g, b = decoded.rgb[8, 8].astype(int)
    assert r > 200 and b < 60


def test_same_pixels_same_id_whatever_the_container(photo):
    png, tiff = decode(encode(photo, "PNG"), BIG), decode(encode(photo, "TIFF"), BIG)
    assert content_id(png.rgb) == content_id(tiff.rgb)
    other = photo.copy()
    other[0, 0, 0] ^= 1
    assert content_id(other) != content_id(photo)


def test_chroma_threshold_uses_lab_units(photo):
    assert np.hypot(*rgb_to_lab(photo)[..., 1:].transpose(2, 0, 1)).mean() > 10


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF"])
def test_a_colorized_photo_is_encoded_whole_and_the_same_without_memfd(fmt, photo, monkeypatch):
    source = decode(encode(photo, "PNG"), 10**7)
    encoded = encode_colorized(photo, fmt, 95, source, "colorized by a test")
    with Image.open(io.BytesIO(encoded)) as written:
        assert written.format == fmt and written.size == photo.shape[1::-1]
        pixels = np.asarray(written.convert("RGB"), dtype=int)
    if fmt in ("PNG", "TIFF", "BMP"):
        np.testing.assert_array_equal(pixels, photo)
    else:
        assert np.abs(pixels - photo).mean() < 12  # lossy or a 256-colour palette, and all of it there
    monkeypatch.delattr("os.memfd_create")  # not Linux: a BytesIO takes the encoder's output instead
    assert encode_colorized(photo, fmt, 95, source, "colorized by a test") == encoded


@pytest.mark.filterwarnings("ignore")
def test_decode_of_mutated_files_is_a_rejection_or_an_image_never_a_crash():
    """Seeded mutation fuzzing of real files of every format we read: flipped bytes, truncation,
    spliced chunks. Each case decodes or is a RejectedImage with its reason; nothing else escapes."""
    import random

    from colorizer.data.images import RejectedImage, decode

    rng = random.Random(20261207)
    picture = Image.fromarray(colourful(48, 32))
    seeds = []
    for fmt, extra in (
        ("JPEG", {}),
        ("PNG", {}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("WEBP", {}),
        ("BMP", {}),
        ("GIF", {}),
    ):
        seeds.append(encode(picture.convert("P") if fmt == "GIF" else picture, fmt, **extra))
    cases = 0
    for _ in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            kind = rng.random()
            if kind < 0.6:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind < 0.8:
                del data[rng.randrange(len(data)) :]
            else:
                start = rng.randrange(len(data))
                data[start:start] = data[rng.randrange(len(data)) :][:64]
            if not data:
                data = bytearray(b"\0")
        try:
            decode(bytes(data), 10_000_000)
        except RejectedImage:
            pass
        cases += 1
    assert cases == 3000


def test_a_tiff_whose_strip_offsets_are_typed_undefined_is_a_rejection():
    """Found by mutation fuzzing: Pillow raises TypeError on it, which must be a row, not a crash."""
    import struct

    data = bytearray(encode(Image.fromarray(colourful(8, 8)), "TIFF"))
    assert data[:2] == b"II"
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, at)[0] == 273:  # StripOffsets
            struct.pack_into("<H", data, at + 2, 7)  # type UNDEFINED
    with pytest.raises(RejectedImage, match="corrupt: TypeError"):
        decode(bytes(data), 10_000_000)


def test_pillows_bomb_check_follows_our_cap():
    """A photo over Pillow's default 89.5 MP warning but under our cap opens (its header alone is read)."""
    from colorizer.data.images import open_image

    big = encode(Image.new("L", (10_000, 9_000)), "PNG")  # 90 MP
    assert open_image(big, 250_000_000).size == (10_000, 9_000)
    with pytest.raises(RejectedImage, match="decompression bomb"):
        open_image(big, 80_000_000)


def _camera_jpeg(extra_tags: dict | None = None) -> bytes:
    """A JPEG with a camera's EXIF: IFD0 tags, an Exif sub-IFD and a GPS sub-IFD."""
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif.get_ifd(0x8769)[0x9003] = "2020:01:01 10:00:00"  # DateTimeOriginal
    exif.get_ifd(0x8825)[1] = "N"  # GPSLatitudeRef
    exif.update(extra_tags or {})
    return encode(Image.fromarray(colourful(40, 30)), "JPEG", exif=exif.tobytes())


def test_a_camera_jpeg_written_as_tiff_keeps_its_exif_but_the_sub_ifds():
    """Pillow's TIFF writer refuses EXIF sub-IFDs ('Error setting from dictionary'): written without
    them rather than failed; other formats keep them."""
    decoded = decode(_camera_jpeg(), 10_000_000)
    for fmt, keeps_sub_ifds in (("TIFF", False), ("JPEG", True), ("PNG", True)):
        written = Image.open(io.BytesIO(encode_colorized(decoded.rgb.copy(), fmt, 90, decoded, "by colorizer")))
        exif = written.getexif()
        assert exif[0x010F] == "Camera maker" and exif[0x010E] == "by colorizer", fmt
        assert (exif.get_ifd(0x8769).get(0x9003) == "2020:01:01 10:00:00") == keeps_sub_ifds, fmt


def test_a_legal_exif_near_64_kb_is_kept_over_our_description():
    """JPEG holds 64 KB of EXIF: where our provenance pushes a legal EXIF over, the photo's own is kept."""
    comment = ("x" * 32_690).encode("utf-16le")  # XPComment: 65,380 bytes, the whole EXIF just under 64 KB
    data = _camera_jpeg({0x9C9C: comment})
    decoded = decode(data, 10_000_000)
    written = Image.open(io.BytesIO(encode_colorized(decoded.rgb.copy(), "JPEG", 90, decoded, "by colorizer " * 40)))
    assert written.getexif()[0x9C9C] == comment and written.getexif()[0x010F] == "Camera maker"
