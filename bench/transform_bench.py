"""Thumbnail (256 px) of generated 12-megapixel JPEGs: corpus in process vs pyvips vs forked ImageMagick.

Each contender runs in its own child process over the same files, one image at a time, so its peak
resident memory is its own (reported as the growth over the process's baseline after imports;
for ImageMagick, the peak of the forked `convert` processes). Then jobs/s end to end: a transform
request fanned out and run through `corpus host` on a private Azurite.

    .venv/bin/python bench/transform_bench.py --images 12 --e2e-images 24

``--rounds N`` runs the three contenders N times, interleaved (corpus, pyvips, ImageMagick, corpus,
…), and reports each one's median rate and CPU time per image as well as every round's ratios: on a
shared machine one round's ratio moves by tens of per cent with the neighbours' load, and the CPU
time (user + system over all threads; for ImageMagick, of the forked processes) moves much less.
``--profile N`` prints the cProfile of N corpus renders (one child, after a warm-up), top entries by
own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZE = 256


def make_photo(seed: int, size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A 12 MP JPEG with gradients, shapes and sensor-like noise, so it compresses like a photo."""
    from PIL import Image, ImageDraw, ImageFilter

    w, h = size
    base = Image.linear_gradient("L").resize((w, h)).convert("RGB")
    draw = ImageDraw.Draw(base)
    for i in range(40):
        x, y = (seed * 7919 + i * 104729) % w, (seed * 6007 + i * 7727) % h
        draw.ellipse((x, y, x + 300 + i * 11, y + 200 + i * 7), fill=((i * 53 + seed) % 256, (i * 97) % 256, (i * 31 + 80) % 256))
    noise = Image.effect_noise((w, h), 24).convert("RGB")
    img = Image.blend(base.filter(ImageFilter.GaussianBlur(2)), noise, 0.15)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=92)
    return out.getvalue()


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> float:
    """Reset the kernel's resident-memory high-water mark; return the current RSS in MB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


def _cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_child(method: str, files: list[str]) -> dict:
    """Runs inside the child: time every image, report time and memory growth."""
    datas = [Path(f).read_bytes() for f in files]
    if method in ("corpus", "profile"):
        from corpus.domain import transforms

        args = transforms.canonical("thumbnail", {"size": SIZE})

        def one(data: bytes, path: str) -> tuple[int, int]:
            out = transforms.render(data, "thumbnail", args)
            return out.width, out.height
    elif method == "pyvips":
        import pyvips

        def one(data: bytes, path: str) -> tuple[int, int]:
            img = pyvips.Image.thumbnail_buffer(data, SIZE)
            img.write_to_buffer(".jpg[Q=85]")
            return img.width, img.height
    else:
        outdir = tempfile.mkdtemp()

        def one(data: bytes, path: str) -> tuple[int, int]:
            out = os.path.join(outdir, "t.jpg")
            subprocess.run(["/usr/bin/convert", path, "-thumbnail", f"{SIZE}x{SIZE}", "-quality", "85", out], check=True)
            from PIL import Image

            with Image.open(out) as im:
                return im.size

    one(datas[0], files[0])  # warm up: codec initialisation
    if method == "profile":
        profile = cProfile.Profile()
        profile.runcall(lambda: [one(d, f) for d, f in zip(datas, files, strict=True)])
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
        return {"method": method, "images": len(files), "profile": text.getvalue()}
    who = resource.RUSAGE_CHILDREN if method == "imagemagick" else resource.RUSAGE_SELF
    base = reset_peak()  # after imports, inputs and warm-up: what follows is per-image working memory
    cpu0 = _cpu_seconds(who)
    t0 = time.perf_counter()
    sizes = [one(d, f) for d, f in zip(datas, files, strict=True)]
    elapsed = time.perf_counter() - t0
    cpu = _cpu_seconds(who) - cpu0
    peak = peak_mb()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "method": method,
        "images": len(files),
        "seconds": elapsed,
        "images_per_s": len(files) / elapsed,
        "cpu_ms_per_image": round(cpu / len(files) * 1000, 2),
        "peak_working_set_mb": round(peak - base, 1) if method != "imagemagick" else None,
        "peak_child_rss_mb": round(children, 1) if method == "imagemagick" else None,
        "output": sizes[0],
    }


def e2e(n: int, tmp: Path) -> dict:
    from azure.storage.blob import ContentSettings

    from corpus.store.settings import Connection
    from corpus.store.storage import Clients
    from tests.support import Azurite, prepare_app_dir, run_host

    az = Azurite(tmp).start()
    try:
        env = {**os.environ, "CorpusStorage": az.connection_string, "AzureWebJobsStorage": az.connection_string}
        clients = Clients(Connection(connection_string=az.connection_string))
        clients.ensure(containers=("staging",))
        st = clients.container("staging")
        photos = [make_photo(1000 + i) for i in range(min(n, 6))]
        for i in range(n):
            data = photos[i % len(photos)] + i.to_bytes(4, "big")  # unique bytes, same decode cost
            st.upload_blob(f"bench/v1/cam/img{i:04d}.jpg", data, content_settings=ContentSettings(content_type="image/jpeg"))
        app = prepare_app_dir(tmp)
        run_host(env, app, timeout=1800)
        clients.queue_client("transform-requests").send_message(
            json.dumps(
                {
                    "domain": "bench",
                    "source": {"path": "cam", "version": "v1"},
                    "transform": {"name": "thumbnail", "version": "1", "args": {"size": SIZE}},
                }
            )
        )
        trace = tmp / "trace.jsonl"
        summary = run_host(env, app, "--trace", str(trace), timeout=1800)
        events = [json.loads(x) for x in trace.read_text().splitlines() if json.loads(x)["fn"] == "transform_job"]
        busy = max(e["end"] for e in events) - min(e["start"] for e in events)
        assert summary["ok"]["transform_job"] == n, summary
        return {"jobs": n, "jobs_per_s": round(n / busy, 2), "max_in_flight": summary["max_in_flight"]["transform_job"]}
    finally:
        az.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--e2e-images", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=1, help="run the contenders this many times, interleaved (0: only --profile)")
    ap.add_argument("--profile", type=int, default=0, help="print the cProfile of this many corpus renders")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args.files)))
        return

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = []
        for i in range(args.images):
            path = tmp / f"photo{i:02d}.jpg"
            path.write_bytes(make_photo(i))
            files.append(str(path))
        mean_mb = sum(os.path.getsize(f) for f in files) / len(files) / 1e6

        def child(method: str, paths: list[str]) -> dict:
            out = subprocess.run(
                [sys.executable, __file__, "--child", method, *paths], capture_output=True, text=True, check=True
            )
            return json.loads(out.stdout.strip().splitlines()[-1])

        if args.profile:
            profiled = [files[i % len(files)] for i in range(args.profile)]
            print(child("profile", profiled)["profile"])
            if args.rounds == 0:
                return
        methods = ("corpus", "pyvips", "imagemagick")
        rounds = [{m: child(m, files) for m in methods} for _ in range(max(1, args.rounds))]
        results = {m: dict(rounds[len(rounds) // 2][m]) for m in methods}
        for m in methods:
            results[m]["images_per_s"] = statistics.median(r[m]["images_per_s"] for r in rounds)
            results[m]["cpu_ms_per_image"] = statistics.median(r[m]["cpu_ms_per_image"] for r in rounds)
        report: dict = {
            "images": args.images,
            "source": f"4000x3000 JPEG q92, mean {mean_mb:.1f} MB",
            "results": results,
            "ratio_corpus_vs_pyvips": round(results["corpus"]["images_per_s"] / results["pyvips"]["images_per_s"], 2),
            "ratio_corpus_vs_imagemagick": round(results["corpus"]["images_per_s"] / results["imagemagick"]["images_per_s"], 2),
            "cpu_ratio_corpus_vs_pyvips": round(results["pyvips"]["cpu_ms_per_image"] / results["corpus"]["cpu_ms_per_image"], 2),
        }
        if len(rounds) > 1:
            report["rounds"] = [
                {
                    "images_per_s": {m: round(r[m]["images_per_s"], 2) for m in methods},
                    "cpu_ms_per_image": {m: r[m]["cpu_ms_per_image"] for m in methods},
                    "ratio_corpus_vs_pyvips": round(r["corpus"]["images_per_s"] / r["pyvips"]["images_per_s"], 2),
                }
                for r in rounds
            ]
        if args.e2e_images:
            e2e_dir = tmp / "e2e"
            e2e_dir.mkdir()
            report["e2e"] = e2e(args.e2e_images, e2e_dir)
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
