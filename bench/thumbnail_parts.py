"""Where a 256-px thumbnail of a 12 MP JPEG spends its CPU, and what the alternatives would save.

CPU time (``time.process_time``, so neighbours' load moves it less than wall time) per image of:
each step of ``transforms.render(data, "thumbnail", {"size": 256})`` as it runs, then the
candidates measured for issue 26 round 3 (docs/benchmarks.md, "Thumbnails, issue 26 round 3"):
handing libjpeg the whole file instead of Pillow's 64 KB chunks, simplejpeg's TurboJPEG decode
(when importable), the resize on two threads by halves (wall time: its point is the second core),
BICUBIC instead of LANCZOS. Variants run interleaved, ``--rounds`` times; medians are printed.

    .venv/bin/python bench/thumbnail_parts.py --images 12 --rounds 9
    PYTHONPATH=/path/to/simplejpeg .venv/bin/python bench/thumbnail_parts.py   # with simplejpeg
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SIZE = 256


def main() -> None:
    from PIL import Image, ImageOps
    from transform_bench import make_photo

    from corpus.domain import facts, images, transforms

    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    datas = [make_photo(i) for i in range(args.images)]
    spec = transforms.canonical("thumbnail", {"size": SIZE})

    def opened(data: bytes, block: int = 0) -> Image.Image:
        img = images.open_capped(data)
        img.draft("RGB", (SIZE, SIZE))
        if block:
            img.decodermaxblock = block
        return img

    def decoded(data: bytes, block: int = 0) -> Image.Image:
        img = opened(data, block)
        img.load()
        return img

    small = [decoded(d) for d in datas]
    thumbs = [transforms.thumbnail(s, SIZE) for s in small]
    encoded = []
    for t in thumbs:
        out = io.BytesIO()
        t.save(out, "JPEG", quality=85, optimize=False)
        encoded.append(out.getvalue())
    pool = ThreadPoolExecutor(1)

    def two_threads(img: Image.Image) -> Image.Image:
        target = transforms._thumbnail_box(img.size, SIZE)
        assert target is not None
        (w, h), top, sy = target, target[1] // 2, img.size[1] / target[1]
        lanczos = Image.Resampling.LANCZOS
        lower = pool.submit(img.resize, (w, h - top), lanczos, (0, top * sy, img.size[0], img.size[1]))
        out = Image.new(img.mode, (w, h))
        out.paste(img.resize((w, top), lanczos, (0, 0, img.size[0], top * sy)), (0, 0))
        out.paste(lower.result(), (0, top))
        return out

    cpu: dict[str, Callable[[int], object]] = {
        "render (all steps)": lambda i: transforms.render(datas[i], "thumbnail", spec),
        "  open + header": lambda i: opened(datas[i]),
        "  decode at 1/8 (64 KB chunks, as now)": lambda i: decoded(datas[i]),
        "  EXIF orientation": lambda i: ImageOps.exif_transpose(small[i].copy(), in_place=True),
        "  resize LANCZOS 500x375 -> 256x192": lambda i: transforms.thumbnail(small[i], SIZE),
        "  JPEG encode q85": lambda i: thumbs[i].save(io.BytesIO(), "JPEG", quality=85, optimize=False),
        "  facts of the output": lambda i: facts.facts_of(thumbs[i], encoded[i]),
        "decode, whole file in one buffer": lambda i: decoded(datas[i], len(datas[i]) + 1),
        "resize BICUBIC (changes the output)": lambda i: small[i].resize(thumbs[i].size, Image.Resampling.BICUBIC),
    }
    try:
        import simplejpeg  # type: ignore[import-not-found]

        cpu["decode, simplejpeg 1/8 (TurboJPEG API)"] = lambda i: simplejpeg.decode_jpeg(
            datas[i], colorspace="RGB", min_width=SIZE, min_height=SIZE, fastdct=True, fastupsample=True
        )
    except ImportError:
        pass
    wall: dict[str, Callable[[int], object]] = {
        "resize LANCZOS, one thread (wall)": lambda i: transforms.thumbnail(small[i], SIZE),
        "resize LANCZOS, two threads by halves (wall)": lambda i: two_threads(small[i]),
    }
    same = all(
        two_threads(s).tobytes() == t.tobytes() for s, t in zip(small, thumbs, strict=True)
    )  # holds for these sizes; not guaranteed for every size (the halves' float boxes)
    times: dict[str, list[float]] = {k: [] for k in [*cpu, *wall]}
    for _ in range(args.rounds):
        for table, clock in ((cpu, time.process_time), (wall, time.perf_counter)):
            for name, fn in table.items():
                t0 = clock()
                for i in range(len(datas)):
                    fn(i)
                times[name].append((clock() - t0) / len(datas) * 1000)
    for name, values in times.items():
        print(f"{name:48s} {statistics.median(values):7.2f} ms  (min {min(values):.2f})")
    print(f"two-thread resize pixel-identical to one thread on these images: {same}")


if __name__ == "__main__":
    main()
