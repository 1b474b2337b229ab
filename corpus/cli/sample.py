"""Generated sample drops: small, varied, real images in tag directories, for demos and tests."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from azure.storage.blob import ContentSettings
from PIL import Image, ImageDraw

from corpus.domain.media import content_type_of_name
from corpus.store.settings import Settings
from corpus.store.storage import Clients

SAMPLE_DIRS = ("red/angry/robin", "blue/calm/jay", "green/sleepy/parrot", "")


def make_image(rng: random.Random, fmt: str = "JPEG", size: tuple[int, int] | None = None) -> bytes:
    """A small picture with shapes on it (so it compresses like a photo would, roughly)."""
    w, h = size or (rng.randint(48, 160), rng.randint(48, 160))
    img = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = rng.randint(0, w - 1), rng.randint(0, h - 1)
        draw.ellipse((x0, y0, x0 + rng.randint(4, w), y0 + rng.randint(4, h)), fill=tuple(rng.randint(0, 255) for _ in range(3)))
    out = io.BytesIO()
    img.save(out, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def sample_drop(count: int, seed: int = 1) -> Iterator[tuple[str, bytes]]:
    """``count`` (relative path, bytes) pairs spread over :data:`SAMPLE_DIRS`."""
    rng = random.Random(seed)  # noqa: S311 - sample pictures, not secrets
    for i in range(count):
        d = SAMPLE_DIRS[i % len(SAMPLE_DIRS)]
        fmt = "PNG" if i % 5 == 0 else "JPEG"
        name = f"img{i:04d}.{'png' if fmt == 'PNG' else 'jpg'}"
        yield (f"{d}/{name}" if d else name), make_image(rng, fmt)


def upload_sample(settings: Settings, domain: str, version: str, count: int, seed: int = 1) -> int:
    """Upload a sample drop with plain SDK calls, as Storage Explorer or any script would."""
    clients = Clients(settings.connection)
    clients.ensure(containers=(settings.staging_container,))
    staging = clients.container(settings.staging_container)

    def put(item: tuple[str, bytes]) -> None:
        rel, data = item
        staging.upload_blob(
            f"{domain}/{version}/{rel}",
            data,
            overwrite=True,
            content_settings=ContentSettings(content_type=content_type_of_name(rel)),
        )

    with ThreadPoolExecutor(16) as pool:
        return sum(1 for _ in pool.map(put, sample_drop(count, seed)))
