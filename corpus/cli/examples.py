"""The examples at the end of each ``corpus <command> --help``, and the transform catalogue that
``corpus transform --help`` prints (computed from the registry, so it cannot drift from it)."""

from __future__ import annotations

EXAMPLES: dict[str, str] = {
    "host": """
corpus host                          # serve until Ctrl-C: triggers, timers, API and gallery on :7071
corpus host --until-idle --timeout 300   # process what is waiting, then exit
""",
    "status": """
corpus status                        # queues, staged blobs, rejections, unacknowledged failures
corpus status --all                  # acknowledged failures too
corpus status --ack --all            # acknowledge every failure listed
corpus status --ack 'transform-requests/1a2b…'   # acknowledge one (the ID status prints)
""",
    "sets": """
corpus sets --domain birds
corpus sets --domain birds --tag robin --tag red
corpus sets --domain birds --transform thumbnail:v1     # transformed sets are listed only this way
corpus sets --json | jq -r '.[].path'
""",
    "count": """
corpus count --domain birds --tag robin
corpus count --domain birds --tag robin --op crop      # robins with a crop: images, sets, originals
""",
    "transform": """
corpus transform --domain birds --tag robin --name thumbnail --tversion v1 --args '{"size": 128}' --wait
corpus transform --domain birds --path red/robin --version v1 --name crop --tversion sq --args '{"aspect": "1:1"}'
corpus transform ... --force         # queue without the checks (scripted pipelines)
""",
    "upload": """
corpus upload ./drop --domain birds --version v2
corpus upload ./drop --domain birds --version v2 --dry-run
corpus upload --retry-from failures.json
""",
    "sample": """
corpus sample --domain birds --version v1 --count 50
""",
    "reindex": """
corpus reindex --domain birds
""",
    "migrate": """
corpus migrate
corpus migrate source-markers
corpus migrate source-markers --resume TOKEN
""",
    "trainset create": """
corpus trainset create --name birds-cls --version 1 --domain birds --tag robin --tag jay \\
    --classes robin,jay --split 80/10/10 --wait
corpus trainset create --name robins-thumbs --version 1 --domain birds --tag robin --transform thumbnail:v1 --wait
""",
    "trainset show": "corpus trainset show birds-cls:1",
    "trainset manifest": "corpus trainset manifest birds-cls:1 --split val | head",
    "trainset verify": "corpus trainset verify birds-cls:1",
    "model register": """
corpus model register --name robin-net --version 3 --trainset birds-cls:1 --metrics '{"top1": 0.91}'
""",
    "lineage": """
corpus lineage --model robin-net:3 | head                 # every image that trained the model
corpus lineage --blob birds/original/red/robin/v1/0001.jpg   # training sets and models that used it
""",
    "export": """
corpus export birds-cls:1 --format webdataset --shard-size 200MB --wait
corpus export birds-cls:1 --format parquet
corpus export list birds-cls:1
""",
    "pull": """
corpus pull birds-cls:1 ./data
""",
    "gallery": "corpus gallery",
}


def transform_catalogue() -> str:
    """Every registered transform with its arguments: type, default, bounds, choices."""
    from corpus.domain.transforms import REGISTRY

    lines = ["transforms (--name) and their arguments (--args, a JSON object):"]
    for name in sorted(REGISTRY):
        t = REGISTRY[name]
        parts = []
        for a in t.args:
            types = a.type if isinstance(a.type, tuple) else (a.type,)
            text = f"{a.name}: {'|'.join(x.__name__ for x in types)}"
            if a.choices:
                text += " in " + "/".join(map(str, a.choices))
            if a.low is not None or a.high is not None:
                text += f" [{a.low:g}..{a.high:g}]" if a.low is not None and a.high is not None else ""
            text += " (required)" if a.required else (f" = {a.default!r}" if a.default is not None else " (optional)")
            parts.append(text)
        lines.append(f"  {name:<13} " + ("; ".join(parts) if parts else "no arguments"))
    lines.append('  pipeline steps are {"name": ..., "args": {...}} objects of the transforms above.')
    return "\n".join(lines)
