"""The schedule: every --interval seconds, or at the times of a --cron expression, in a --timezone;
cron's rules for the nights the clocks change; the next start times (--next)."""
import datetime
import heapq
import itertools
import math
import os
from typing import Iterator, List, Optional

import pendulum
import pytz
import pytzdata
from croniter import CroniterError, croniter
from prefect.schedules import Schedule
from prefect.schedules import clocks

# Prefect's CronClock finds the times with croniter, which reads pytz's zone data, and pendulum
# places them on the clock with its own copy (pytzdata 2020.1): dozens of zones have changed their
# rules since (America/Mexico_City, America/Vancouver, Africa/Cairo, ...). One copy for both:
# pytz's, which the lock keeps up to date.
pytzdata.set_directory(os.path.join(os.path.dirname(pytz.__file__), "zoneinfo"))

FIELDS = "minute hour day-of-month month day-of-week"
COUNTED = 10_000  # most slots counted one by one when a long run or a clock jump skips them
YEARS = 50  # how far ahead a cron expression's next time is looked for, as croniter does


def check_zone(name: str) -> str:
    """name, if it is an IANA time zone; ValueError naming it otherwise."""
    if name in pytz.all_timezones_set:
        return name
    fold = {zone.lower(): zone for zone in pytz.all_timezones}.get(name.lower())
    hint = f"; did you mean {fold}?" if fold else "; use an IANA name such as Europe/Madrid or UTC"
    raise ValueError(f"unknown time zone {name!r}{hint}")


def check_cron(expression: str) -> str:
    """The expression with its fields one space apart, if it is a 5-field cron expression that has
    a next time; ValueError naming it otherwise."""
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"{expression!r} has {len(fields)} field{'s' * (len(fields) != 1)}; "
                         f"a cron expression has 5: {FIELDS}")
    cron = " ".join(fields)
    if not croniter.is_valid(cron):
        raise ValueError(f"{expression!r} is not a valid cron expression ({FIELDS})")
    try:
        next_times(build(cron=cron), 1, pendulum.now("utc"))
    except CroniterError:  # CroniterBadDateError: none in the next 50 years
        raise ValueError(f"{expression!r} never matches a date") from None
    return cron


def build(interval: Optional[float] = None, cron: Optional[str] = None,
          start_date: Optional[datetime.datetime] = None) -> Schedule:
    """The flow's schedule: every interval seconds from start_date, or at cron's times after it
    (without one: from 2019-01-01 UTC, as Prefect's, or from now).
    start_date's zone is the schedule's: cron's times are read on its clocks, and an interval of
    whole days keeps its time of day there; the times come out with that zone's UTC offset."""
    if cron:
        return Schedule(clocks=[CronClock(cron, start_date=start_date or pendulum.now("utc"))])
    # Without a start date, Prefect's grid: from 2019-01-01 00:00 UTC.
    start = pendulum.instance(start_date or pendulum.datetime(2019, 1, 1))
    return Schedule(clocks=[IntervalClock(datetime.timedelta(seconds=interval), start_date=start)])


def _on_the_clock(instant: pendulum.DateTime, zone: datetime.tzinfo) -> pendulum.DateTime:
    """instant as the clocks in zone read it, with their UTC offset as a fixed zone. Python compares
    two times of one zone by their clock readings alone (the two 02:30 of the night the clocks go
    back would be equal); times of fixed zones compare as instants, and still show their offset."""
    offset = int((instant.in_tz(zone).naive() - instant.in_tz("utc").naive()).total_seconds())
    return instant.in_tz(pendulum.tz.fixed_timezone(offset))


def _event(clock: clocks.Clock, instant: pendulum.DateTime, zone: datetime.tzinfo) -> clocks.ClockEvent:
    return clocks.ClockEvent(start_time=_on_the_clock(instant, zone), parameter_defaults=clock.parameter_defaults,
                             labels=clock.labels)


class IntervalClock(clocks.IntervalClock):
    """Prefect's IntervalClock, counted right in a zone that changes its clocks: an interval of
    whole days is that many days on the calendar (its time of day stays), any other is that many
    seconds of real time. (Prefect's own counts the days of the time elapsed on the calendar, so
    that a half-hourly clock in Europe/Madrid leaves an hour out on the night the clocks go back.)"""

    def events(self, after: Optional[datetime.datetime] = None) -> Iterator[clocks.ClockEvent]:
        start = self.start_date
        after = _utc(after or pendulum.now("utc"))
        seconds = self.interval.total_seconds()
        days = self.interval.days if seconds % 86400 == 0 else 0
        # Real time and calendar days differ by an hour or so: start a slot early, skip what is not after.
        count = max(0, math.floor((after - _utc(start)).total_seconds() / seconds) - 1)
        while True:
            when = start.add(days=count * days) if days else _utc(start).add(seconds=count * seconds)
            count += 1
            if _utc(when) <= after:
                continue
            if self.end_date and when > self.end_date:
                return
            yield _event(self, _utc(when), start.tz)


class CronClock(clocks.CronClock):
    """Prefect's CronClock, with cron(8)'s rules for the hour a change of the clocks skips or repeats.

    A job with a fixed time (neither its minute nor its hour starts with *) runs once a day all
    the same: at the change when its time is skipped (02:30 runs at 03:00), at the first of the two
    when it is repeated. A job with * there follows the real time: it does not run at the times
    skipped, and runs at both of the times repeated (an hourly job runs every hour of that night).
    The times are croniter's, as Prefect's are, read on the zone's clocks. (Prefect's own
    CronClock runs those nights through croniter's DST handling, which loops without end on
    `*/15 * * * *` in Europe/Madrid on the night the clocks go back.)
    """

    def __init__(self, cron: str, start_date: datetime.datetime):
        super().__init__(cron, start_date=pendulum.instance(start_date))
        minute, hour = cron.split()[:2]
        self.wildcard = minute.startswith("*") or hour.startswith("*")

    def events(self, after: Optional[datetime.datetime] = None) -> Iterator[clocks.ClockEvent]:
        zone = self.start_date.tz
        after = max(_utc(after or pendulum.now("utc")), _utc(self.start_date).subtract(seconds=1))
        # The earliest clock reading still to come: an hour back if `after` is the first of two.
        wall = after.in_tz(zone).naive()
        same = _instants(zone, wall)
        times = croniter(self.cron, wall - (same[-1] - same[0] if same else datetime.timedelta()),
                         day_or=self.day_or)
        pending: List[pendulum.DateTime] = []  # in UTC, soonest first
        last, horizon = after, wall + datetime.timedelta(days=366 * YEARS)
        while True:
            wall = times.get_next(datetime.datetime)
            if wall > horizon:  # an expression that matches only times the clocks skip
                return
            found = _instants(zone, wall)
            if not found:  # the clocks jumped over it
                jump = _jump(zone, wall)
                runs, earliest = ([] if self.wildcard else [jump]), jump
            else:
                runs, earliest = (found if self.wildcard else found[:1]), found[0]
            for when in runs:
                heapq.heappush(pending, when)
            # Every time still to come reads later on the clock: none is before `earliest`.
            while pending and pending[0] <= earliest:
                when = heapq.heappop(pending)
                if when > last:
                    last = when
                    if self.end_date and when > self.end_date:
                        return
                    yield _event(self, when, zone)


def _instants(zone: datetime.tzinfo, wall: datetime.datetime) -> List[pendulum.DateTime]:
    """The instants at which the clocks in zone read wall, in UTC: none in an hour skipped, two in
    one repeated."""
    found = []
    for rule in (pendulum.PRE_TRANSITION, pendulum.POST_TRANSITION):
        instant = _utc(zone.convert(wall, dst_rule=rule))
        if instant.in_tz(zone).naive() == wall and instant not in found:
            found.append(instant)
    return sorted(found)


def _utc(when: datetime.datetime) -> pendulum.DateTime:
    """when in UTC: pendulum's own times by pendulum, others (zone.convert's, which know which of two
    equal clock readings they are, where pendulum.instance would read the clock again) by astimezone."""
    if isinstance(when, pendulum.DateTime):
        return when.in_tz("utc")
    utc = when.astimezone(datetime.timezone.utc)
    return pendulum.datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond)


def _jump(zone: datetime.tzinfo, wall: datetime.datetime) -> pendulum.DateTime:
    """The instant the clocks in zone jumped over wall (a time they skipped), in UTC."""
    low, high = sorted(_utc(zone.convert(wall, dst_rule=rule))
                       for rule in (pendulum.PRE_TRANSITION, pendulum.POST_TRANSITION))
    while (high - low).total_seconds() > 1:  # low reads before wall, high after it
        middle = low.add(seconds=(high - low).total_seconds() // 2)
        if middle.in_tz(zone).naive() < wall:
            low = middle
        else:
            high = middle
    return high


def upcoming(schedule: Schedule, after: datetime.datetime) -> Iterator[pendulum.DateTime]:
    """The schedule's times after `after`, without end: asked a few at first, then more at a time."""
    chunk = 10
    while True:
        times = schedule.next(chunk, after=after)
        if not times:
            return
        yield from times
        after, chunk = times[-1], min(chunk * 10, 1000)


def next_times(schedule: Schedule, count: int, after: datetime.datetime) -> List[pendulum.DateTime]:
    return list(itertools.islice(upcoming(schedule, after), count))


def slots_between(schedule: Schedule, first: pendulum.DateTime, end: pendulum.DateTime) -> int:
    """How many slots there are from first (one of them) to end (excluded); at most COUNTED."""
    clock = schedule.clocks[0]
    if isinstance(clock, clocks.IntervalClock):  # evenly spaced: no need to count them
        return round((end - first).total_seconds() / clock.interval.total_seconds())
    times = itertools.takewhile(lambda when: when < end, upcoming(schedule, first.subtract(microseconds=1)))
    return sum(1 for _ in itertools.islice(times, COUNTED))


def longest_gap(schedule: Schedule, after: datetime.datetime, count: int = 20) -> float:
    """The longest time between two of the schedule's next `count` times, in seconds; ValueError if
    it has fewer than two in the next YEARS years."""
    times = next_times(schedule, count, after)
    if len(times) < 2:
        raise ValueError(f"it runs {'once' if times else 'never'} in the next {YEARS} years")
    return max((b - a).total_seconds() for a, b in zip(times, times[1:]))
