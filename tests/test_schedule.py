"""etl.schedule: cron and interval times in a zone, on the nights the clocks change, from a start date."""
import pendulum
import pytest

from etl.schedule import build, check_cron, check_zone, longest_gap, next_times, slots_between

MADRID, NEW_YORK = "Europe/Madrid", "America/New_York"  # 2027: Madrid 28 March / 31 October, New York 14 March / 7 November


def times(count, after, zone, cron=None, interval=None, start=None):
    """The next count times after `after` (a local time in zone), as ISO 8601 with their offsets."""
    after = pendulum.parse(after, tz=zone)
    schedule = build(interval, cron, pendulum.parse(start, tz=zone) if start else after.in_tz(zone).subtract(days=1))
    return [when.isoformat() for when in next_times(schedule, count, after)]


@pytest.mark.parametrize("zone, cron, after, expected", [
    # 02:30 does not exist on the spring-forward day: a job at a fixed time runs at the change, once.
    (MADRID, "30 2 * * *", "2027-03-27T12:00", ["2027-03-28T03:00:00+02:00", "2027-03-29T02:30:00+02:00"]),
    (NEW_YORK, "30 2 * * *", "2027-03-13T12:00", ["2027-03-14T03:00:00-04:00", "2027-03-15T02:30:00-04:00"]),
    (MADRID, "0,30 2 * * *", "2027-03-27T12:00", ["2027-03-28T03:00:00+02:00", "2027-03-29T02:00:00+02:00"]),
    # 02:30 happens twice on the fall-back day: a job at a fixed time runs at the first, once.
    (MADRID, "30 2 * * *", "2027-10-30T12:00", ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00"]),
    (NEW_YORK, "30 1 * * *", "2027-11-06T12:00", ["2027-11-07T01:30:00-04:00", "2027-11-08T01:30:00-05:00"]),
    # A job with * in its minute or hour follows the real time: every hour of both nights, once.
    (MADRID, "0 * * * *", "2027-03-28T00:30", ["2027-03-28T01:00:00+01:00", "2027-03-28T03:00:00+02:00",
                                               "2027-03-28T04:00:00+02:00"]),
    (MADRID, "0 * * * *", "2027-10-31T00:30", ["2027-10-31T01:00:00+02:00", "2027-10-31T02:00:00+02:00",
                                               "2027-10-31T02:00:00+01:00", "2027-10-31T03:00:00+01:00"]),
    (MADRID, "30 * * * *", "2027-03-28T01:00", ["2027-03-28T01:30:00+01:00", "2027-03-28T03:30:00+02:00"]),
    (MADRID, "*/30 * * * *", "2027-10-31T01:45", ["2027-10-31T02:00:00+02:00", "2027-10-31T02:30:00+02:00",
                                                  "2027-10-31T02:00:00+01:00", "2027-10-31T02:30:00+01:00",
                                                  "2027-10-31T03:00:00+01:00"]),
    # Where Prefect 1.4.1's own CronClock loops without end.
    (MADRID, "*/15 * * * *", "2027-10-31T02:40:00+02:00", ["2027-10-31T02:45:00+02:00", "2027-10-31T02:00:00+01:00",
                                                            "2027-10-31T02:15:00+01:00"]),
    (NEW_YORK, "* * * * *", "2027-11-07T01:58:00-04:00", ["2027-11-07T01:59:00-04:00", "2027-11-07T01:00:00-05:00",
                                                           "2027-11-07T01:01:00-05:00"]),
])
def test_cron_on_the_nights_the_clocks_change(zone, cron, after, expected):
    assert times(len(expected), after, zone, cron=cron) == expected


@pytest.mark.parametrize("after, expected", [
    ("2027-10-31T02:10:00+02:00", ["2027-10-31T02:00:00+01:00", "2027-10-31T03:00:00+01:00"]),  # in the first 02:xx
    ("2027-10-31T02:10:00+01:00", ["2027-10-31T03:00:00+01:00"]),  # in the second
])
def test_an_hourly_job_asked_from_inside_the_repeated_hour(after, expected):
    schedule = build(cron="0 * * * *", start_date=pendulum.datetime(2027, 10, 30, tz=MADRID))
    assert [t.isoformat() for t in next_times(schedule, len(expected), pendulum.parse(after))] == expected


@pytest.mark.parametrize("after", ["2027-10-31T02:40:00+02:00", "2027-10-31T02:20:00+01:00"])
def test_a_daily_0230_does_not_run_again_in_the_repeated_hour(after):
    schedule = build(cron="30 2 * * *", start_date=pendulum.datetime(2027, 10, 30, tz=MADRID))
    assert [t.isoformat() for t in next_times(schedule, 1, pendulum.parse(after))] == ["2027-11-01T02:30:00+01:00"]


def test_an_interval_shorter_than_a_day_is_real_time_across_the_change():
    got = times(6, "2027-10-31T01:00", MADRID, interval=1800, start="2027-10-30T00:15")
    assert got == ["2027-10-31T01:15:00+02:00", "2027-10-31T01:45:00+02:00", "2027-10-31T02:15:00+02:00",
                   "2027-10-31T02:45:00+02:00", "2027-10-31T02:15:00+01:00", "2027-10-31T02:45:00+01:00"]


@pytest.mark.parametrize("start, after, expected", [
    ("2027-10-01T08:00", "2027-10-30T09:00", ["2027-10-31T08:00:00+01:00", "2027-11-01T08:00:00+01:00"]),
    ("2027-10-01T08:00", "2027-11-05T07:30", ["2027-11-05T08:00:00+01:00"]),
    ("2027-03-26T02:30", "2027-03-27T12:00", ["2027-03-28T03:30:00+02:00", "2027-03-29T02:30:00+02:00"]),
    ("2027-10-29T02:30", "2027-10-30T12:00", ["2027-10-31T02:30:00+01:00", "2027-11-01T02:30:00+01:00"]),
])
def test_an_interval_of_whole_days_keeps_its_time_of_day(start, after, expected):
    assert times(len(expected), after, MADRID, interval=86400, start=start) == expected


def test_zones_follow_todays_rules():
    """pendulum's own zone data (2020) still has Mexico City on summer time, an hour off."""
    assert times(1, "2027-07-01T00:00", "America/Mexico_City", cron="0 12 * * *") == ["2027-07-01T12:00:00-06:00"]
    assert times(1, "2027-01-01T00:00", "America/Ciudad_Juarez", cron="0 12 * * *") == ["2027-01-01T12:00:00-07:00"]


def test_more_times_than_prefect_gives_at_once():
    got = next_times(build(cron="* * * * *", start_date=pendulum.datetime(2030, 1, 1)), 2500, pendulum.datetime(2030, 1, 1))
    assert len(got) == 2500 and all((b - a).total_seconds() == 60 for a, b in zip(got, got[1:]))


def test_slots_between_and_the_longest_gap():
    weekdays = build(cron="0 8 * * 1-5", start_date=pendulum.datetime(2030, 1, 1, tz=MADRID))
    monday = pendulum.datetime(2030, 1, 7, 8, tz=MADRID)
    assert slots_between(weekdays, monday, monday.add(weeks=2)) == 10
    assert longest_gap(weekdays, monday) == 3 * 86400
    every = build(interval=120, start_date=pendulum.datetime(2030, 1, 1))
    assert slots_between(every, pendulum.datetime(2030, 1, 1, 0, 2), pendulum.datetime(2030, 1, 1, 1, 2)) == 30


@pytest.mark.parametrize("text, message", [
    ("* * * * * *", "'* * * * * *' has 6 fields; a cron expression has 5: minute hour day-of-month month day-of-week"),
    ("@hourly", "'@hourly' has 1 field; a cron expression has 5: minute hour day-of-month month day-of-week"),
    ("", "'' has 0 fields; a cron expression has 5: minute hour day-of-month month day-of-week"),
    ("0\n0 * *\x1b[2J", "'0\\n0 * *\\x1b[2J' has 4 fields; a cron expression has 5: minute hour day-of-month month day-of-week"),
    ("61 * * * *", "'61 * * * *' is not a valid cron expression (minute hour day-of-month month day-of-week)"),
    ("*/0 * * * *", "'*/0 * * * *' is not a valid cron expression (minute hour day-of-month month day-of-week)"),
    ("0 0 31 2 *", "'0 0 31 2 *' never matches a date"),
])
def test_bad_cron_expressions(text, message):
    with pytest.raises(ValueError) as error:
        check_cron(text)
    assert str(error.value) == message


def test_a_cron_expression_comes_back_with_its_fields_one_space_apart():
    assert check_cron(" */5\t*  * * 1-5\n") == "*/5 * * * 1-5"


@pytest.mark.parametrize("name, message", [
    ("Mars/Olympus", "unknown time zone 'Mars/Olympus'; use an IANA name such as Europe/Madrid or UTC"),
    ("europe/madrid", "unknown time zone 'europe/madrid'; did you mean Europe/Madrid?"),
    ("../../etc/passwd", "unknown time zone '../../etc/passwd'; use an IANA name such as Europe/Madrid or UTC"),
    ("/etc/localtime", "unknown time zone '/etc/localtime'; use an IANA name such as Europe/Madrid or UTC"),
    ("", "unknown time zone ''; use an IANA name such as Europe/Madrid or UTC"),
])
def test_unknown_zones(name, message):
    with pytest.raises(ValueError) as error:
        check_zone(name)
    assert str(error.value) == message
    assert check_zone("Europe/Madrid") == "Europe/Madrid"
