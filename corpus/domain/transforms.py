"""Image transforms: pure functions on Pillow images, registered by name, with strict arguments.

A transform is ``(name, version, args)``. Arguments are validated against the transform's own
schema and put in a *canonical* form (defaults filled in, keys sorted), so "the same transform"
means the same canonical JSON, whatever order or defaults a request spelled them in.

Adding a transform is registering one function::

    @register("sepia", Arg("strength", float, default=1.0, low=0, high=1))
    def sepia(img: Image.Image, strength: float) -> Image.Image: ...

No transform shells out or accepts a command line: everything runs in process on decoded pixels,
after the decompression-bomb cap of :func:`corpus.domain.images.open_capped`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageCms, ImageOps

from corpus.domain.errors import ImageError, TransformError
from corpus.domain.facts import facts_of
from corpus.domain.imagefacts import ImageFacts
from corpus.domain.images import decoded_bytes, open_capped
from corpus.domain.limits import DEFAULT_MAX_PIXELS, MAX_PIPELINE_STEPS, MAX_TRANSFORM_DEFINITION_CHARS
from corpus.domain.media import CONTENT_TYPES, EXTENSIONS

OUTPUT_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
MAX_OUTPUT_SIDE = 16384


@dataclass(frozen=True)
class Arg:
    name: str
    type: type | tuple[type, ...]
    required: bool = False
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None

    def check(self, where: str, value: Any) -> Any:
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if isinstance(value, bool) and bool not in types:
            raise TransformError(f"{where}: argument {self.name!r} must not be a boolean")
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, types):
            names = " or ".join(t.__name__ for t in types)
            raise TransformError(f"{where}: argument {self.name!r} must be {names}, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            raise TransformError(f"{where}: argument {self.name!r} must be one of {', '.join(map(str, self.choices))}")
        if isinstance(value, (int, float)) and (
            (self.low is not None and value < self.low) or (self.high is not None and value > self.high)
        ):
            raise TransformError(f"{where}: argument {self.name!r}={value} is outside [{self.low}, {self.high}]")
        return value


Size = tuple[int, int]


@dataclass(frozen=True)
class Transform:
    """A registered transform. ``size`` estimates the output size from the input size and the
    arguments *before* the transform runs (an upper bound), so no step ever allocates beyond
    the pixel cap; a transform registered without one is assumed not to grow the image."""

    name: str
    func: Callable[..., Image.Image]
    args: tuple[Arg, ...]
    check: Callable[[dict[str, Any]], None] | None = None
    size: Callable[..., Size] | None = None

    def canonical_args(self, raw: Any) -> dict[str, Any]:
        where = f"transform {self.name!r}"
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise TransformError(f"{where}: args must be a JSON object")
        known = {a.name for a in self.args}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise TransformError(
                f"{where}: unknown argument(s) {', '.join(map(repr, unknown))}; known: {sorted(known) or 'none'}"
            )
        out: dict[str, Any] = {}
        for a in self.args:
            if a.name in raw and raw[a.name] is not None:
                out[a.name] = a.check(where, raw[a.name])
            elif a.required:
                raise TransformError(f"{where}: missing argument {a.name!r}")
            elif a.default is not None:
                out[a.name] = a.default
        if self.check:
            self.check(out)
        return dict(sorted(out.items()))


REGISTRY: dict[str, Transform] = {}


def register(
    name: str,
    *args: Arg,
    check: Callable[[dict[str, Any]], None] | None = None,
    size: Callable[..., Size] | None = None,
) -> Callable[..., Any]:
    def wrap(func: Callable[..., Image.Image]) -> Callable[..., Image.Image]:
        REGISTRY[name] = Transform(name, func, args, check, size)
        return func

    return wrap


def get(name: Any) -> Transform:
    if not isinstance(name, str) or name not in REGISTRY:
        raise TransformError(f"unknown transform {name!r}; available: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def canonical(name: str, args: Any) -> dict[str, Any]:
    """Validate ``args`` for transform ``name`` and return their canonical form."""
    return get(name).canonical_args(args)


def canonical_json(name: str, args: dict[str, Any]) -> str:
    return json.dumps({"name": name, "args": args}, sort_keys=True, separators=(",", ":"))


def args_json(args: dict[str, Any]) -> str:
    """The canonical arguments as stored in ``ImageTransforms.Args``."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"))


def check_request(name: str, args: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """Refuse at request time what could never run or would be unreasonably large: a definition
    above :data:`MAX_TRANSFORM_DEFINITION_CHARS`, a step whose output exceeds the pixel cap
    whatever the source (``resize`` to a fixed size above it). Steps whose output depends on the
    source are checked per image, before each step runs (:func:`render`)."""
    size = len(args_json(args))
    if size > MAX_TRANSFORM_DEFINITION_CHARS:
        raise TransformError(
            f"transform {name!r}: definition is {size} characters; at most {MAX_TRANSFORM_DEFINITION_CHARS} are allowed"
        )
    for i, step in enumerate(steps_of(name, args)):
        if step["name"] == "resize" and step["args"]["fit"] in ("stretch", "cover"):
            w, h = step["args"]["width"], step["args"]["height"]
            if w * h > max_pixels:
                raise TransformError(
                    f"transform {name!r}: step {i} ({step['name']}) outputs {w}x{h} = {w * h} pixels, above the cap {max_pixels}"
                )


def estimate(name: str, args: dict[str, Any], size: Size) -> Size:
    """Upper bound of one step's output size for an input of ``size`` (see :class:`Transform`)."""
    t = REGISTRY[name]
    return t.size(size[0], size[1], **args) if t.size else size


# -- the built-ins ------------------------------------------------------------------------------


def _rgb_like(img: Image.Image) -> Image.Image:
    """Bring exotic modes to one transforms can work on, keeping alpha where there is some."""
    if img.mode in ("RGB", "RGBA", "L", "LA"):
        return img
    if img.mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        return img.point(lambda v: v / 256).convert("L") if img.mode != "I" else img.convert("L")
    return img.convert("RGB")


def _fit(w: int, h: int, bw: int, bh: int, enlarge: bool) -> Size:
    scale = min(bw / w, bh / h)
    if not enlarge:
        scale = min(scale, 1.0)
    return min(max(1, math.ceil(w * scale)), max(bw, w)), min(max(1, math.ceil(h * scale)), max(bh, h))


def _thumbnail_size(w: int, h: int, size: int) -> Size:
    return _fit(w, h, size, size, enlarge=False)


def _resize_size(w: int, h: int, width: int, height: int, fit: str) -> Size:
    return (width, height) if fit in ("stretch", "cover") else _fit(w, h, width, height, enlarge=True)


@register("thumbnail", Arg("size", int, required=True, low=1, high=MAX_OUTPUT_SIDE), size=_thumbnail_size)
def thumbnail(img: Image.Image, size: int) -> Image.Image:
    """Fit within ``size`` x ``size``, keeping the aspect ratio; never enlarges."""
    out = img.copy()
    out.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return out


@register(
    "resize",
    Arg("width", int, required=True, low=1, high=MAX_OUTPUT_SIDE),
    Arg("height", int, required=True, low=1, high=MAX_OUTPUT_SIDE),
    Arg("fit", str, default="contain", choices=("contain", "cover", "stretch")),
    size=_resize_size,
)
def resize(img: Image.Image, width: int, height: int, fit: str) -> Image.Image:
    """``contain``: fit inside, aspect kept; ``cover``: fill and centre-crop; ``stretch``: exact size."""
    if fit == "stretch":
        return img.resize((width, height), Image.Resampling.LANCZOS)
    if fit == "cover":
        return ImageOps.fit(img, (width, height), Image.Resampling.LANCZOS)
    return ImageOps.contain(img, (width, height), Image.Resampling.LANCZOS)


def _parse_aspect(value: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in value.split(":"))
    except ValueError:
        raise TransformError(f"transform 'crop': aspect must look like '4:3', got {value!r}") from None
    if w <= 0 or h <= 0:
        raise TransformError("transform 'crop': aspect terms must be positive")
    return w, h


def _crop_check(args: dict[str, Any]) -> None:
    if ("box" in args) == ("aspect" in args):
        raise TransformError("transform 'crop': give exactly one of 'box' [left, top, right, bottom] or 'aspect' 'W:H'")
    if "box" in args:
        box = args["box"]
        if len(box) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in box):
            raise TransformError("transform 'crop': box must be 4 non-negative integers [left, top, right, bottom]")
        if box[2] <= box[0] or box[3] <= box[1]:
            raise TransformError("transform 'crop': box must have right > left and bottom > top")
    else:
        _parse_aspect(args["aspect"])


def _crop_size(w: int, h: int, box: list[int] | None = None, aspect: str | None = None) -> Size:
    return (box[2] - box[0], box[3] - box[1]) if box is not None else (w, h)


@register("crop", Arg("box", list), Arg("aspect", str), check=_crop_check, size=_crop_size)
def crop(img: Image.Image, box: list[int] | None = None, aspect: str | None = None) -> Image.Image:
    """A pixel box, or the largest centred crop with the given aspect ratio."""
    if box is not None:
        if box[2] > img.size[0] or box[3] > img.size[1]:
            raise ImageError(f"crop box {box} exceeds the image ({img.size[0]}x{img.size[1]})")
        return img.crop((box[0], box[1], box[2], box[3]))
    aw, ah = _parse_aspect(aspect or "")
    w, h = img.size
    if w * ah > h * aw:
        cw, ch = h * aw // ah, h
    else:
        cw, ch = w, w * ah // aw
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + max(cw, 1), top + max(ch, 1)))


@register("grayscale")
def grayscale(img: Image.Image) -> Image.Image:
    return img.convert("LA" if img.mode in ("RGBA", "LA") else "L")


def _rotate_size(w: int, h: int, degrees: float) -> Size:
    if degrees % 180 == 0:
        return w, h
    if degrees % 90 == 0:
        return h, w
    rad = math.radians(degrees)
    c, s = abs(math.cos(rad)), abs(math.sin(rad))
    return math.ceil(w * c + h * s) + 2, math.ceil(w * s + h * c) + 2


@register("rotate", Arg("degrees", float, required=True, low=-360, high=360), size=_rotate_size)
def rotate(img: Image.Image, degrees: float) -> Image.Image:
    """Counter-clockwise; the canvas grows to hold the result. Multiples of 90 are lossless."""
    if degrees % 90 == 0:
        turns = int(degrees // 90) % 4
        return (
            img.transpose([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270][turns - 1])
            if turns
            else img
        )
    return img.rotate(degrees, Image.Resampling.BICUBIC, expand=True)


@register("flip", Arg("direction", str, required=True, choices=("horizontal", "vertical")))
def flip(img: Image.Image, direction: str) -> Image.Image:
    return ImageOps.mirror(img) if direction == "horizontal" else ImageOps.flip(img)


@register("autocontrast", Arg("cutoff", float, default=0.0, low=0, high=49))
def autocontrast(img: Image.Image, cutoff: float) -> Image.Image:
    if img.mode in ("RGBA", "LA"):
        alpha = img.getchannel("A")
        out = ImageOps.autocontrast(img.convert(img.mode[:-1]), cutoff=cutoff)
        out.putalpha(alpha)
        return out
    return ImageOps.autocontrast(img, cutoff=cutoff)


@register("format", Arg("format", str, required=True, choices=tuple(OUTPUT_FORMATS)), Arg("quality", int, low=1, high=100))
def format_(img: Image.Image, format: str, quality: int | None = None) -> Image.Image:
    """Choose the output encoding; pixels are untouched (see :func:`render`)."""
    return img


def _pipeline_check(args: dict[str, Any]) -> None:
    steps = args["steps"]
    if not steps:
        raise TransformError("transform 'pipeline': steps must not be empty")
    if len(steps) > MAX_PIPELINE_STEPS:
        raise TransformError(f"transform 'pipeline': {len(steps)} steps; at most {MAX_PIPELINE_STEPS} are allowed")
    canon = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or set(step) - {"name", "args"} or "name" not in step:
            raise TransformError(f"transform 'pipeline': step {i} must be {{'name': …, 'args': {{…}}}}")
        if step["name"] == "pipeline":
            raise TransformError("transform 'pipeline': steps cannot nest pipelines")
        canon.append({"name": step["name"], "args": canonical(step["name"], step.get("args"))})
    args["steps"] = canon


@register("pipeline", Arg("steps", list, required=True), check=_pipeline_check)
def pipeline(img: Image.Image, steps: list[dict[str, Any]]) -> Image.Image:
    for step in steps:
        img = _apply_one(img, step["name"], step["args"])
    return img


def _apply_one(img: Image.Image, name: str, args: dict[str, Any]) -> Image.Image:
    return REGISTRY[name].func(img, **args)


# -- decoding and encoding ----------------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    data: bytes
    format: str
    width: int
    height: int
    content_type: str = field(default="")
    extension: str = field(default="")
    facts: ImageFacts | None = None


def steps_of(name: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """A transform as its steps: a pipeline's steps, or itself as the one step."""
    return list(args["steps"]) if name == "pipeline" else [{"name": name, "args": args}]


def _output_choice(name: str, args: dict[str, Any], source_format: str) -> tuple[str, int | None]:
    fmt, quality = None, None
    for step in steps_of(name, args):
        if step["name"] == "format":
            fmt, quality = OUTPUT_FORMATS[step["args"]["format"]], step["args"].get("quality")
    if fmt is None:
        fmt = source_format if source_format in ("JPEG", "PNG", "WEBP") else "PNG"
        if source_format == "MPO":
            fmt = "JPEG"
    return fmt, quality


def _draft_size(name: str, args: dict[str, Any]) -> int | None:
    """For a thumbnail as the first step, the size JPEG may be decoded at (DCT scaling)."""
    first = steps_of(name, args)[0]
    return first["args"]["size"] if first["name"] == "thumbnail" else None


def render(
    data: bytes,
    name: str,
    args: dict[str, Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    admit: Callable[[int], AbstractContextManager[None]] | None = None,
) -> Output:
    """Decode ``data`` (capped), honour EXIF orientation, apply the transform, encode.

    ``admit(n)`` (:mod:`corpus.app.admission`) is entered before any pixel is decoded with twice
    the decoded size the header declares (the source and one working copy: each step replaces the
    image it was given) and held until the output is encoded, as ingest's decode is.
    """
    img = open_capped(data, max_pixels)
    with admit(2 * decoded_bytes(img)) if admit else nullcontext():
        return _render(img, name, args, max_pixels)


def _render(img: Image.Image, name: str, args: dict[str, Any], max_pixels: int) -> Output:
    source_format = img.format or "PNG"
    icc = img.info.get("icc_profile")
    fmt, quality = _output_choice(name, args, source_format)
    try:
        draft = _draft_size(name, args)
        if draft and source_format in ("JPEG", "MPO"):
            # Let libjpeg decode at the smallest power-of-two scale still >= the target (DCT
            # scaling, as pyvips' shrink-on-load does): most of a thumbnail's cost vanishes, and
            # the final LANCZOS pass keeps the quality.
            img.draft("RGB", (draft, draft))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        if img.mode == "CMYK":
            img = _cmyk_to_rgb(img, icc)
            icc = None
        img = _rgb_like(img)
        for i, step in enumerate(steps_of(name, args)):
            w, h = estimate(step["name"], step["args"], img.size)
            if w * h > max_pixels:
                raise ImageError(
                    f"step {i} ({step['name']}) would output {w}x{h} from {img.size[0]}x{img.size[1]}, "
                    f"above the pixel cap {max_pixels}; not run"
                )
            img = _apply_one(img, step["name"], step["args"])
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"cannot transform this image: {exc}") from exc
    if img.size[0] * img.size[1] > max_pixels:
        raise ImageError(f"transform output {img.size[0]}x{img.size[1]} exceeds the pixel cap {max_pixels}")
    return _encode(img, fmt, quality, icc)


def _cmyk_to_rgb(img: Image.Image, icc: bytes | None) -> Image.Image:
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
            if converted is not None:
                return converted
        except (ImageCms.PyCMSError, OSError):
            pass
    return img.convert("RGB")


def _encode(img: Image.Image, fmt: str, quality: int | None, icc: bytes | None) -> Output:
    if fmt == "JPEG" and img.mode not in ("RGB", "L"):
        if img.mode in ("RGBA", "LA"):
            background = Image.new("RGB", img.size, (255, 255, 255))
            background.paste(img.convert("RGBA"), mask=img.getchannel("A"))
            img = background
        else:
            img = img.convert("RGB")
    options: dict[str, Any] = {}
    if icc and img.mode in ("RGB", "RGBA"):
        options["icc_profile"] = icc  # keep the colours the camera meant
    if fmt == "JPEG":
        options.update(quality=quality or 85, optimize=False)
    elif fmt == "WEBP":
        options.update(quality=quality or 80, method=4)
    elif fmt == "PNG":
        options.update(compress_level=6)
    out = io.BytesIO()
    img.save(out, fmt, **options)
    data = out.getvalue()
    # The facts of the output, from the pixels in hand (no second decode): transformed images
    # carry the same facts as originals (corpus.domain.facts).
    return Output(data, fmt, img.size[0], img.size[1], CONTENT_TYPES[fmt], EXTENSIONS[fmt], facts_of(img, data))


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".mpo")
"""Extensions that mark a name as already naming an image (fixed: :func:`output_name` depends on it)."""

_SAME = {".jpg": (".jpg", ".jpeg"), ".png": (".png",), ".webp": (".webp",)}


def output_name(file: str, extension: str) -> str:
    """The transformed file's name for an output encoded as ``extension``: injective per extension.

    1. ``file`` already ends with an extension of the output format, and what precedes it neither
       ends with an image extension nor with ``~``: unchanged (``a.jpg`` → ``a.jpg``);
    2. else, ``file`` ends with an image extension: the new one appended (``a.png`` → ``a.png.jpg``,
       and ``a.png.jpg`` → ``a.png.jpg.jpg``, so the two never meet);
    3. else (no image extension): ``~`` and the extension appended (``a`` → ``a~.jpg``).

    The three cases produce disjoint sets of names: before the final extension, (1)'s stem has no
    image extension and no trailing ``~``, (2)'s stem ends with an image extension, (3)'s with
    ``~``; and each case is injective. Names unique under the earlier rule stay as they were,
    except files without an image extension (case 3) and names of the form ``x.png.jpg``.
    """
    lowered = file.lower()
    for ext in _SAME[extension]:
        if lowered.endswith(ext):
            stem = lowered[: -len(ext)]
            if not stem.endswith(IMAGE_EXTENSIONS) and not stem.endswith("~"):
                return file
            break
    if lowered.endswith(IMAGE_EXTENSIONS):
        return file + extension
    return file + "~" + extension


def output_extension(name: str, args: dict[str, Any], content_type: str) -> str:
    """The extension of the output for a source recorded with ``content_type`` (as :func:`render`
    chooses it), so a job can name its output before decoding anything."""
    fmt, _ = _output_choice(name, args, _FORMAT_OF_TYPE.get(content_type, "PNG"))
    return EXTENSIONS[fmt]


_FORMAT_OF_TYPE = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
