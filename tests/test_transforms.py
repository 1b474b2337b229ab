from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from corpus.domain import transforms as t
from corpus.domain.errors import ImageError


def encode(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def decode(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def gradient(size=(400, 300), mode="RGB") -> Image.Image:
    img = Image.linear_gradient("L").resize(size)
    return img.convert(mode) if mode != "L" else img


def render(img_or_bytes, name, args, **kw):
    data = img_or_bytes if isinstance(img_or_bytes, bytes) else encode(img_or_bytes)
    return t.render(data, name, t.canonical(name, args), **kw)


def test_thumbnail_fits_and_keeps_aspect():
    out = render(gradient((4000, 3000)), "thumbnail", {"size": 256})
    assert (out.width, out.height, out.format) == (256, 192, "JPEG")
    assert decode(out.data).size == (256, 192)


def test_thumbnail_never_enlarges():
    out = render(gradient((100, 50)), "thumbnail", {"size": 256})
    assert (out.width, out.height) == (100, 50)


@pytest.mark.parametrize(("fit", "size"), [("contain", (200, 150)), ("cover", (200, 200)), ("stretch", (200, 200))])
def test_resize_fits(fit, size):
    out = render(gradient((400, 300)), "resize", {"width": 200, "height": 200, "fit": fit})
    assert (out.width, out.height) == size


def test_resize_default_fit_is_contain():
    assert t.canonical("resize", {"width": 1, "height": 2}) == {"fit": "contain", "height": 2, "width": 1}


def test_crop_box_and_aspect():
    box = render(gradient(), "crop", {"box": [10, 20, 110, 70]})
    assert (box.width, box.height) == (100, 50)
    out = render(gradient((400, 300)), "crop", {"aspect": "1:1"})
    assert (out.width, out.height) == (300, 300)
    out = render(gradient((400, 300)), "crop", {"aspect": "16:9"})
    assert (out.width, out.height) == (400, 225)


def test_crop_box_outside_the_image_fails_that_image():
    with pytest.raises(ImageError, match="exceeds"):
        render(gradient((100, 100)), "crop", {"box": [0, 0, 200, 50]})


def test_grayscale_mode_and_alpha():
    assert decode(render(gradient(), "grayscale", {}).data).mode == "L"
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 128))
    out = render(encode(rgba, "PNG"), "grayscale", {})
    assert out.format == "PNG" and decode(out.data).mode == "LA"


def test_rotate_lossless_quarter_turns_and_arbitrary_angles():
    quarter = render(gradient((400, 300)), "rotate", {"degrees": 90})
    assert (quarter.width, quarter.height) == (300, 400)
    assert render(gradient((400, 300)), "rotate", {"degrees": 180}).width == 400
    out = render(gradient((400, 300)), "rotate", {"degrees": 45})
    assert out.width > 400 and out.height > 300  # the canvas grew to hold the corners


def test_flip():
    img = Image.new("L", (2, 1))
    img.putpixel((0, 0), 255)
    out = decode(render(encode(img, "PNG"), "flip", {"direction": "horizontal"}).data)
    assert out.getpixel((1, 0)) == 255 and out.getpixel((0, 0)) == 0
    img = Image.new("L", (1, 2))
    img.putpixel((0, 0), 255)
    out = decode(render(encode(img, "PNG"), "flip", {"direction": "vertical"}).data)
    assert out.getpixel((0, 1)) == 255


def test_autocontrast_stretches_the_range():
    flat = Image.new("L", (10, 10), 100)
    flat.putpixel((0, 0), 120)
    out = decode(render(encode(flat, "PNG"), "autocontrast", {}).data)
    assert out.getextrema() == (0, 255)


@pytest.mark.parametrize(("fmt", "ext"), [("jpeg", ".jpg"), ("png", ".png"), ("webp", ".webp")])
def test_format_sets_encoding(fmt, ext):
    out = render(gradient(), "format", {"format": fmt, "quality": 70})
    assert out.extension == ext and decode(out.data).format == fmt.upper()


def test_png_with_alpha_to_jpeg_is_flattened_on_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = render(encode(rgba, "PNG"), "format", {"format": "jpeg"})
    assert decode(out.data).mode == "RGB" and decode(out.data).getpixel((0, 0)) == (255, 255, 255)


def test_pipeline_applies_steps_in_order_and_is_canonical():
    args = {
        "steps": [{"name": "crop", "args": {"aspect": "1:1"}}, {"name": "thumbnail", "args": {"size": 64}}, {"name": "grayscale"}]
    }
    out = render(gradient((400, 300)), "pipeline", args)
    assert (out.width, out.height) == (64, 64) and decode(out.data).mode == "L"
    canon = t.canonical("pipeline", args)
    assert canon["steps"][2] == {"name": "grayscale", "args": {}}


def test_exif_orientation_is_honoured():
    img = gradient((400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out = render(encode(img, exif=exif), "thumbnail", {"size": 100})
    assert (out.width, out.height) == (50, 100)


def test_cmyk_with_icc_becomes_rgb():
    cmyk = Image.new("CMYK", (20, 20), (0, 255, 255, 0))
    out = decode(render(encode(cmyk), "thumbnail", {"size": 10}).data)
    assert out.mode == "RGB"
    r, g, b = out.getpixel((5, 5))
    assert r > 200 and g < 80 and b < 80


def test_icc_profile_is_kept():
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = decode(render(encode(gradient(), icc_profile=icc), "thumbnail", {"size": 50}).data)
    assert out.info.get("icc_profile") == icc


def test_palette_and_16_bit_sources_are_handled():
    p = gradient((50, 50)).convert("P")
    assert render(encode(p, "PNG"), "rotate", {"degrees": 10}).format == "PNG"
    i16 = Image.new("I;16", (20, 20), 40000)
    out = decode(render(encode(i16, "PNG"), "thumbnail", {"size": 10}).data)
    assert out.mode == "L"


def test_gif_and_tiff_sources_become_png():
    assert render(encode(gradient(), "GIF"), "grayscale", {}).format == "PNG"
    assert render(encode(gradient(), "TIFF"), "grayscale", {}).format == "PNG"


def test_pixel_cap_applies_to_sources_and_outputs():
    with pytest.raises(ImageError, match="above the cap"):
        render(gradient((400, 300)), "thumbnail", {"size": 10}, max_pixels=1000)
    # Refused before the step runs (issue 13 finding 3), no longer after the whole transform.
    with pytest.raises(ImageError, match=r"step 0 \(resize\) would output 1000x1000 .* above the pixel cap 5000; not run"):
        render(gradient((40, 30)), "resize", {"width": 1000, "height": 1000, "fit": "stretch"}, max_pixels=5000)


def test_corrupt_source():
    data = encode(gradient((400, 300)))
    with pytest.raises(ImageError):
        render(data[: len(data) // 3], "grayscale", {})


@pytest.mark.parametrize(
    ("name", "args", "reason"),
    [
        ("nope", {}, "unknown transform"),
        ("thumbnail", {}, "missing argument 'size'"),
        ("thumbnail", {"size": 0}, "outside"),
        ("thumbnail", {"size": 100000}, "outside"),
        ("thumbnail", {"size": "256"}, "must be int"),
        ("thumbnail", {"size": True}, "boolean"),
        ("thumbnail", {"size": 10, "extra": 1}, "unknown argument"),
        ("resize", {"width": 10, "height": 10, "fit": "fill"}, "one of"),
        ("crop", {}, "exactly one"),
        ("crop", {"box": [0, 0, 10]}, "4 non-negative"),
        ("crop", {"box": [5, 5, 1, 1]}, "right > left"),
        ("crop", {"aspect": "wide"}, "4:3"),
        ("crop", {"aspect": "0:1"}, "positive"),
        ("rotate", {"degrees": 400}, "outside"),
        ("flip", {"direction": "diagonal"}, "one of"),
        ("format", {"format": "gif"}, "one of"),
        ("format", {"format": "jpeg", "quality": 0}, "outside"),
        ("pipeline", {"steps": []}, "must not be empty"),
        ("pipeline", {"steps": [{"name": "pipeline", "args": {"steps": []}}]}, "cannot nest"),
        ("pipeline", {"steps": [{"name": "thumbnail"}]}, "missing argument 'size'"),
        ("grayscale", [], "JSON object"),
    ],
)
def test_argument_validation(name, args, reason):
    with pytest.raises(t.TransformError, match=reason):
        t.canonical(name, args)


@given(st.integers(1, 600), st.integers(1, 600), st.integers(1, 300))
@settings(max_examples=40, deadline=None)
def test_thumbnail_property(w, h, size):
    out = render(encode(Image.new("RGB", (w, h)), "PNG"), "thumbnail", {"size": size})
    assert out.width <= size and out.height <= size
    if w <= size and h <= size:
        assert (out.width, out.height) == (w, h)
    else:
        assert max(out.width, out.height) == size
        assert abs(out.width / out.height - w / h) <= max(w / h, h / w) * 2 / min(out.width, out.height) + 1e-9


def test_output_names_never_collide_across_formats():
    assert t.output_name("a.jpg", ".jpg") == "a.jpg"
    assert t.output_name("a.JPEG", ".jpg") == "a.JPEG"
    assert t.output_name("a.png", ".jpg") == "a.png.jpg"
    assert t.output_name("a.png", ".png") == "a.png"
    assert len({t.output_name(n, ".jpg") for n in ("a.png", "a.jpg", "a.webp")}) == 3


def test_registering_a_new_transform_is_one_function():
    @t.register("invert_test")
    def invert_test(img):
        from PIL import ImageOps

        return ImageOps.invert(img.convert("RGB"))

    try:
        out = decode(render(encode(Image.new("RGB", (2, 2), (0, 0, 0)), "PNG"), "invert_test", {}).data)
        assert out.getpixel((0, 0)) == (255, 255, 255)
    finally:
        del t.REGISTRY["invert_test"]
