"""Transforms as a trust boundary: injective names, per-step size estimates, request-time bounds,
job messages validated like ingest (issue 13 findings 2, 3, 5; issue 16 finding 4)."""

from __future__ import annotations

import io
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from corpus.domain import transforms as t
from corpus.domain.errors import ImageError, MessageError, TransformError
from corpus.domain.limits import MAX_MESSAGE_BYTES, MAX_PIPELINE_STEPS
from corpus.domain.messages import TransformJob, TransformPage

EXTS = (".jpg", ".png", ".webp")
names = st.text(alphabet=st.sampled_from("ab.~-_JPGjpgnw"), min_size=1, max_size=12) | st.sampled_from(
    ["x.png", "x.png.jpg", "x", "x~.jpg", "x.jpg", "x.JPG", "x.jpeg", "x.png~.jpg", "x.jpg.jpg", "x.webp.png"]
)


@given(st.lists(names, min_size=2, max_size=8, unique=True), st.sampled_from(EXTS))
def test_output_names_are_injective(files, ext):
    outs = [t.output_name(f, ext) for f in files]
    assert len(set(outs)) == len(outs), dict(zip(files, outs, strict=True))
    assert all(o.lower().endswith((ext, ".jpeg") if ext == ".jpg" else ext) for o in outs)


def test_output_names_keep_the_old_unique_names():
    assert t.output_name("a.jpg", ".jpg") == "a.jpg"
    assert t.output_name("a.JPEG", ".jpg") == "a.JPEG"
    assert t.output_name("a.png", ".jpg") == "a.png.jpg"
    # The old rule mapped both of these to x.png.jpg (one output silently missing):
    assert {t.output_name("x.png", ".jpg"), t.output_name("x.png.jpg", ".jpg")} == {"x.png.jpg", "x.png.jpg.jpg"}
    assert t.output_name("noext", ".png") == "noext~.png"


def _apply(name: str, args: dict, size: tuple[int, int]) -> tuple[int, int]:
    img = Image.new("RGB", size)
    return t.REGISTRY[name].func(img, **t.canonical(name, args)).size


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 300),
    st.integers(1, 300),
    st.sampled_from(
        [
            ("thumbnail", {"size": 50}),
            ("resize", {"width": 120, "height": 40}),
            ("resize", {"width": 7, "height": 90, "fit": "cover"}),
            ("rotate", {"degrees": 33}),
            ("rotate", {"degrees": 90}),
            ("crop", {"aspect": "16:9"}),
            ("grayscale", {}),
        ]
    ),
)
def test_size_estimates_bound_the_real_output(w, h, step):
    name, args = step
    ew, eh = t.estimate(name, t.canonical(name, args), (w, h))
    rw, rh = _apply(name, args, (w, h))
    assert rw <= ew and rh <= eh


def jpeg(size=(64, 48)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(out, "JPEG")
    return out.getvalue()


def test_a_pipeline_bomb_is_refused_before_the_step_that_would_allocate():
    """resize 16384² → rotate 45° → thumbnail 8 on a 64x48 image peaked at 8.3 GB before."""
    steps = [
        {"name": "resize", "args": {"width": 16384, "height": 16384}},
        {"name": "rotate", "args": {"degrees": 45}},
        {"name": "thumbnail", "args": {"size": 8}},
    ]
    args = t.canonical("pipeline", {"steps": steps})
    t.check_request("pipeline", args)  # contain: the size depends on the source, so checked per image
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"step 0 \(resize\) would output 16384x12288 from 64x48.*not run"):
        t.render(jpeg(), "pipeline", args)
    assert time.monotonic() - started < 5  # nothing was allocated


def test_request_time_bounds():
    with pytest.raises(TransformError, match="at most 32"):
        t.canonical("pipeline", {"steps": [{"name": "grayscale"}] * (MAX_PIPELINE_STEPS + 1)})
    with pytest.raises(TransformError, match=r"step 0 \(resize\) outputs 16384x16384 = 268435456 pixels, above the cap"):
        t.check_request("resize", t.canonical("resize", {"width": 16384, "height": 16384, "fit": "stretch"}))
    long_step = {"name": "crop", "args": {"box": [10**300, 10**300, 10**300 + 1, 10**300 + 1]}}
    with pytest.raises(TransformError, match="characters; at most 8192"):
        t.check_request("pipeline", t.canonical("pipeline", {"steps": [long_step] * MAX_PIPELINE_STEPS}))


def test_job_messages_carry_no_args_and_stay_small():
    job = TransformJob("birds", ("a",) * 40, "v1", "f" * 200 + ".jpg", "pipeline", "1")
    body = job.to_json()
    assert "args" not in json.loads(body) and len(body.encode()) < MAX_MESSAGE_BYTES // 16
    assert TransformJob.parse(body) == job


JOB = {
    "kind": "transform-job",
    "v": 2,
    "domain": "birds",
    "dirs": ["red"],
    "version": "v1",
    "file": "a.jpg",
    "name": "thumbnail",
    "tversion": "1",
}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"tversion": "1/red"}, "transform version"),
        ({"dirs": [".."]}, r"'\.' or '\.\.' segment"),
        ({"dirs": ["a/../b"]}, "path separator"),
        ({"file": "../../x.jpg"}, "path separator"),
        ({"domain": "Other_Domain"}, "invalid domain"),
        ({"version": ".."}, r"'\.' or '\.\.' segment"),
        ({"name": "x/y"}, "transform name"),
        ({"args": {"size": 1}}, "unknown field"),
    ],
)
def test_crafted_job_messages_are_refused(change, reason):
    with pytest.raises(MessageError, match=reason):
        TransformJob.parse(json.dumps(JOB | change))


def test_schema_1_jobs_are_read_and_their_args_ignored():
    job = TransformJob.parse(json.dumps(JOB | {"v": 1, "args": {"size": 1}}))
    assert job == TransformJob("birds", ("red",), "v1", "a.jpg", "thumbnail", "1")


def test_page_messages_round_trip_and_are_validated():
    from corpus.domain.messages import SourceSelector

    page = TransformPage("req-1", 3, "birds", SourceSelector(None, "v1", ("red",)), "crop", "2", ("o!red!v1", "a.jpg"))
    assert TransformPage.parse(page.to_json()) == page
    for bad in ({"page": 0}, {"request": "a/b"}, {"cursor": ["x"]}, {"domain": "NO"}):
        with pytest.raises(MessageError):
            TransformPage.parse(json.dumps(json.loads(page.to_json()) | bad))
