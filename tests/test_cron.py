"""NCRONTAB schedules for ``corpus host``'s timer triggers: the next firing time, checked by brute force."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus.domain import cron
from corpus.domain.errors import ConfigError

SCHEDULES = ["0 */5 * * * *", "*/10 * * * * *", "30 15 2 * * 1-5", "0 0 0 1 * *", "5,35 0-10/5 * * 6,7 *", "0 0 12 * * 0"]


def matches(s: cron.Schedule, t: datetime) -> bool:
    return (
        t.second in s.seconds
        and t.minute in s.minutes
        and t.hour in s.hours
        and t.day in s.days
        and t.month in s.months
        and t.weekday() in s.weekdays
    )


@settings(max_examples=60, deadline=None)
@given(
    text=st.sampled_from(SCHEDULES),
    after=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)),
)
def test_next_firing_time_matches_and_nothing_matches_before_it(text: str, after: datetime) -> None:
    s = cron.parse(text)
    nxt = s.next_after(after)
    assert nxt > after and matches(s, nxt)
    # Nothing in between matches (checked second by second, over at most a day).
    t = after.replace(microsecond=0) + timedelta(seconds=1)
    end = min(nxt, t + timedelta(days=1))
    while t < end:
        assert not matches(s, t), t
        t += timedelta(seconds=1)


def test_day_of_week_is_sunday_zero_as_in_ncrontab() -> None:
    s = cron.parse("0 0 12 * * 0")
    assert s.next_after(datetime(2026, 11, 24, tzinfo=UTC)) == datetime(2026, 11, 29, 12, tzinfo=UTC)  # a Sunday


def test_the_default_reconcile_schedule_fires_every_five_minutes() -> None:
    s = cron.parse("0 */5 * * * *")
    assert s.next_after(datetime(2026, 11, 24, 3, 7, 12, tzinfo=UTC)) == datetime(2026, 11, 24, 3, 10, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["* * * * *", "0 */0 * * * *", "0 61 * * * *", "0 0 0 30 2 *", "0 0 0 * JAN *", "00:05:00"])
def test_bad_schedules_are_configuration_errors(bad: str) -> None:
    with pytest.raises(ConfigError):
        cron.parse(bad)
