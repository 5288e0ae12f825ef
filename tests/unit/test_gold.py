"""docs/semantics.md §4: minute and hourly usage, plan limits, burst allowance, alerts."""

from __future__ import annotations

from datetime import timedelta

from tests.helpers import T0, event, fold


def burst(n: int, minute: int, tenant: str = "acme", plan: str = "free", start: int = 0):
    ts = T0 + timedelta(minutes=minute)
    return [event(event_id=f"{tenant}-{minute}-{start + i}", tenant_id=tenant, subscription_plan=plan,
                  event_timestamp=(ts + timedelta(milliseconds=i)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            for i in range(n)]


def ingest_after(events, hours: int = 2):
    return [T0 + timedelta(hours=hours, microseconds=i) for i in range(len(events))]


def minutes(out):
    return {r["window_start"].minute: r for r in out["minute"].to_pylist()}


def test_minute_counts_errors_and_window_bounds():
    evs = burst(3, 0)
    evs[1]["status_code"] = 500
    evs[2]["status_code"] = 499
    out = fold(evs, ingestion=ingest_after(evs))
    row = out["minute"].to_pylist()[0]
    assert (row["total_requests"], row["error_requests"]) == (3, 1)
    assert row["window_end"] - row["window_start"] == timedelta(minutes=1)
    assert row["window_start"] == T0


def test_plan_of_a_minute_is_the_latest_events_plan():
    evs = burst(2, 0)
    evs[0]["subscription_plan"] = "starter"  # later timestamp wins, not ingestion order
    evs[0]["event_timestamp"] = "2026-03-02T12:00:59Z"
    out = fold(evs, ingestion=ingest_after(evs))
    assert out["minute"].column("subscription_plan").to_pylist() == ["starter"]
    assert out["minute"].column("plan_limit").to_pylist() == [300]


def test_latest_event_tie_on_timestamp_broken_by_event_id_code_point():
    a = event(event_id="a", subscription_plan="starter")
    b = event(event_id="B", subscription_plan="professional")  # "a" > "B" by code point
    out = fold([b, a], ingestion=ingest_after([a, b]))
    assert out["minute"].column("subscription_plan").to_pylist() == ["starter"]


def test_over_limit_without_burst_rule():
    evs = burst(61, 0) + burst(60, 1)
    out = fold(evs, "2026-01", ingestion=ingest_after(evs))
    m = minutes(out)
    assert (m[0]["over_limit_count"], m[1]["over_limit_count"]) == (1, 0)
    assert m[0]["burst_allowance_used"] == 0
    assert [a["alert_type"] for a in out["alerts"].to_pylist()] == ["over_limit"]


def test_scenario1_free_tenant_between_61_and_100_is_compliant_under_plan_limits_2():
    evs = burst(100, 0)
    assert minutes(fold(evs, "2026-01", ingestion=ingest_after(evs)))[0]["over_limit_count"] == 40
    out = fold(evs, "2026-02", ingestion=ingest_after(evs))
    assert minutes(out)[0]["over_limit_count"] == 0 and out["alerts"].num_rows == 0


def test_burst_arithmetic_across_a_whole_five_minute_window():
    # free under plan_limits@2 (100/min), allowance 30 per 5 minutes
    counts = [110, 95, 120, 105, 130]  # raw_over: 10, 0, 20, 5, 30
    evs = [e for m, n in enumerate(counts) for e in burst(n, m)]
    m = minutes(fold(evs, "2026-02", ingestion=ingest_after(evs)))
    raw = [10, 0, 20, 5, 30]
    c = 0
    for i in range(5):
        c += raw[i]
        over = max(0, c - 30) - max(0, c - raw[i] - 30)
        assert m[i]["over_limit_count"] == over, i
        assert m[i]["burst_allowance_used"] == raw[i] - over
    assert [m[i]["over_limit_count"] for i in range(5)] == [0, 0, 0, 5, 30]
    assert [m[i]["burst_allowance_used"] for i in range(5)] == [10, 0, 20, 0, 0]


def test_burst_window_is_epoch_aligned_and_resets():
    # T0 = 12:00, aligned; minute 5 starts a new window with a fresh allowance
    evs = burst(140, 4) + burst(140, 5)
    m = minutes(fold(evs, "2026-02", ingestion=ingest_after(evs)))
    assert (m[4]["over_limit_count"], m[4]["burst_allowance_used"]) == (10, 30)
    assert (m[5]["over_limit_count"], m[5]["burst_allowance_used"]) == (10, 30)


def test_burst_allowance_follows_the_plan_of_the_windows_latest_event():
    # minute 0 on free (over by 20), minute 3's events on starter: B = 150 for the whole window
    evs = burst(120, 0) + burst(10, 3, plan="starter")
    m = minutes(fold(evs, "2026-02", ingestion=ingest_after(evs)))
    assert (m[0]["over_limit_count"], m[0]["burst_allowance_used"]) == (0, 20)


def test_abuse_threshold_is_inclusive():
    evs = burst(600, 0) + burst(599, 1)  # free, limit 60, abuse@1 multiplier 10
    out = fold(evs, "2026-01", ingestion=ingest_after(evs))
    abuse = [a for a in out["alerts"].to_pylist() if a["alert_type"] == "abuse"]
    assert [a["window_start"].minute for a in abuse] == [0]
    assert abuse[0]["total_requests"] == 600 and abuse[0]["plan_limit"] == 60


def test_hourly_rolls_up_minutes():
    evs = burst(70, 0) + burst(65, 59) + burst(10, 60)
    out = fold(evs, "2026-01", ingestion=ingest_after(evs))
    hours = {r["window_start"].hour: r for r in out["hourly"].to_pylist()}
    assert hours[12]["total_requests"] == 135 and hours[12]["over_limit_count"] == 15
    assert hours[12]["over_limit_minutes"] == 2 and hours[13]["total_requests"] == 10


def test_hourly_plan_is_the_hours_latest_event():
    evs = burst(5, 0) + burst(5, 30, plan="enterprise")
    out = fold(evs, "2026-01", ingestion=ingest_after(evs))
    assert out["hourly"].column("subscription_plan").to_pylist() == ["enterprise"]


def test_alert_columns():
    evs = burst(61, 0)
    a = fold(evs, "2026-01", ingestion=ingest_after(evs))["alerts"].to_pylist()[0]
    assert a["alert_time"] == a["window_start"] == T0 and a["over_limit_count"] == 1
    assert a["subscription_plan"] == "free" and a["total_requests"] == 61


def test_windows_before_1970_and_at_year_1_are_floored():
    """Minutes and hours are grouped as microseconds since the epoch: instants before it must
    still fall into the window that starts at or before them."""
    stamps = ["1969-12-31T23:59:59.5Z", "1969-12-31T23:00:00Z", "0001-01-01T00:00:30Z",
              "1970-01-01T00:00:00Z"]
    evs = [event(event_id=f"e{i}", event_timestamp=ts) for i, ts in enumerate(stamps)]
    out = fold(evs, ingestion=ingest_after(evs))
    got = sorted((r["window_start"].isoformat(), r["window_end"].isoformat(), r["total_requests"])
                 for r in out["minute"].to_pylist())
    assert got == [("0001-01-01T00:00:00+00:00", "0001-01-01T00:01:00+00:00", 1),
                   ("1969-12-31T23:00:00+00:00", "1969-12-31T23:01:00+00:00", 1),
                   ("1969-12-31T23:59:00+00:00", "1970-01-01T00:00:00+00:00", 1),
                   ("1970-01-01T00:00:00+00:00", "1970-01-01T00:01:00+00:00", 1)]
    hours = sorted((r["window_start"].isoformat(), r["total_requests"]) for r in out["hourly"].to_pylist())
    assert hours == [("0001-01-01T00:00:00+00:00", 1), ("1969-12-31T23:00:00+00:00", 2),
                     ("1970-01-01T00:00:00+00:00", 1)]
