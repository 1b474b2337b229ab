"""Small helpers shared by the table homes: retry back-off and the ETag condition."""

from __future__ import annotations

import random
import time
from typing import Any

from azure.core import MatchConditions
from azure.data.tables import UpdateMode

MAX_ATTEMPTS = 200


def backoff(attempt: int) -> None:
    """Jittered, capped exponential back-off between optimistic-concurrency attempts."""
    time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** min(attempt, 6))))  # noqa: S311 - jitter


def if_unchanged(entity: Any) -> dict[str, Any]:
    """Transaction options: replace ``entity`` only if nobody changed it since we read it."""
    return {"mode": UpdateMode.REPLACE, "etag": entity.metadata["etag"], "match_condition": MatchConditions.IfNotModified}
