"""NCRONTAB schedules, as Azure Functions' timer trigger reads them: six fields,
``{second} {minute} {hour} {day} {month} {day-of-week}``.

Only what ``corpus host`` needs to run timer triggers on their schedule: numbers, ``*``, ranges
``a-b``, steps ``*/n`` and ``a-b/n``, and lists ``a,b``. Day-of-week is 0-6 with Sunday = 0 (7 is
Sunday too). Names (``MON``, ``JAN``) and TimeSpan schedules (``00:05:00``) are refused with a
:class:`~corpus.domain.errors.ConfigError`. When both day fields are restricted, a time must match
both (as NCrontab, the library the Functions host uses, does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from corpus.domain.errors import ConfigError

_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("day-of-week", 0, 7))
_SEARCH_DAYS = 366 * 5
"""A schedule that never fires within five years (``0 0 0 30 2 *``) is refused."""


@dataclass(frozen=True, slots=True)
class Schedule:
    text: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # Python's: Monday = 0

    def next_after(self, after: datetime) -> datetime:
        """The first firing time strictly after ``after`` (same tzinfo as ``after``)."""
        start = after.replace(microsecond=0) + timedelta(seconds=1)
        day = start.replace(hour=0, minute=0, second=0)
        for offset in range(_SEARCH_DAYS):
            d = day + timedelta(days=offset)
            if d.month not in self.months or d.day not in self.days or d.weekday() not in self.weekdays:
                continue
            for h in self.hours:
                for m in self.minutes:
                    for s in self.seconds:
                        t = d.replace(hour=h, minute=m, second=s)
                        if t >= start:
                            return t
        raise ConfigError(f"schedule {self.text!r} does not fire within {_SEARCH_DAYS} days")


def parse(text: str) -> Schedule:
    """Parse a six-field NCRONTAB expression; see the module docstring."""
    parts = text.split()
    if len(parts) != 6:
        raise ConfigError(f"timer schedule {text!r}: expected 6 fields (second minute hour day month day-of-week)")
    values = [_field(part, name, lo, hi, text) for part, (name, lo, hi) in zip(parts, _FIELDS, strict=True)]
    seconds, minutes, hours, days, months, cron_weekdays = values
    weekdays = frozenset((d - 1) % 7 for d in cron_weekdays)  # cron Sunday=0 (or 7) → Python Sunday=6
    schedule = Schedule(
        text, tuple(sorted(seconds)), tuple(sorted(minutes)), tuple(sorted(hours)), frozenset(days), frozenset(months), weekdays
    )
    schedule.next_after(datetime(2000, 1, 1))  # refuse a schedule that never fires
    return schedule


def _field(part: str, name: str, lo: int, hi: int, text: str) -> set[int]:
    out: set[int] = set()
    for item in part.split(","):
        body, _, step_text = item.partition("/")
        try:
            step = int(step_text) if step_text else 1
            if body == "*":
                first, last = lo, hi
            elif "-" in body:
                a, b = body.split("-", 1)
                first, last = int(a), int(b)
            else:
                first = last = int(body)
                if step_text:
                    last = hi
        except ValueError:
            raise ConfigError(f"timer schedule {text!r}: {name} field {item!r} is not a number, range or step") from None
        if step < 1 or not lo <= first <= last <= hi:
            raise ConfigError(f"timer schedule {text!r}: {name} field {item!r} is outside {lo}-{hi}")
        out.update(range(first, last + 1, step))
    return out
