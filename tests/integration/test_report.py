"""The HTML report renders offline in headless Chromium, charts included."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from replay import api
from replay.report import write_report
from tests.lakes import FIXTURE

CHROMIUM = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def report(lake, tmp_path):
    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    api.run(lake, "2026-01", reason="a")
    b = api.run(lake, "2026-02", reason="b")
    rid = b.plan.replay_id
    out = tmp_path / "report.html"
    summ = api.summary(lake, f"{rid}:before", rid)
    write_report(out, f"Replay {rid}", summ, {"tenant_usage_1min": {"changed": 1}})
    return out


def chromium():
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is missing: `make test` installs Debian's chromium (make browser)")
    return exe


def test_report_is_self_contained(report):
    text = report.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("<svg") == 7  # 3 plans x (over-limit, alerts) + the distribution


def test_report_renders_in_headless_chromium(report, tmp_path):
    exe = chromium()
    dom = subprocess.run([exe, *CHROMIUM, f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom",
                          report.as_uri()], capture_output=True, text=True, timeout=120).stdout
    charts = re.findall(r'data-chart="([^"]+)"', dom)
    assert {"over-limit-free", "alerts-free", "tenant-change"} <= set(charts)
    assert dom.count("<rect") > 10 and "Per plan, before vs after" in dom
    png = tmp_path / "shot.png"
    subprocess.run([exe, *CHROMIUM, f"--user-data-dir={tmp_path / 'p2'}", f"--screenshot={png}",
                    "--window-size=1200,1600", report.as_uri()], capture_output=True, timeout=120)
    assert png.exists() and png.stat().st_size > 10_000
