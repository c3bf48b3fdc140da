"""What an operator watches: Prometheus metrics (library and `mcsync serve/subscribe
--metrics`, parsed with the reference Prometheus client's OpenMetrics parser) and log
records reaching Python's `logging`."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Callable

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

import mcsync
from conftest import CONVERGE, open_publisher, unique_group


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an OpenMetrics text, parsed strictly."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_library_metrics_parse_and_count(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    db = publisher.database("watched")
    s = make_subscriber()
    sub = s.subscribe("watched")
    for i in range(25):
        db.put(f"k{i}", "v")
    sub.wait_for_version(db.version, CONVERGE)
    db_label = (("database", "watched"),)
    p = samples(publisher.metrics())
    assert p[("mcsync_publisher_updates_committed_total", ())] == 25
    assert p[("mcsync_database_version", db_label)] == 25
    m = samples(s.metrics())
    assert m[("mcsync_subscription_version", db_label)] == 25
    assert m[("mcsync_subscription_updates_applied_total", db_label)] == 25
    assert m[("mcsync_subscription_latency_seconds_count", db_label)] == 25
    inf = (("database", "watched"), ("le", "+Inf"))
    assert m[("mcsync_subscription_latency_seconds_bucket", inf)] == 25
    # The publisher sees the subscriber once it has reported (every second).
    deadline = time.monotonic() + CONVERGE
    while True:
        p = samples(publisher.metrics())
        lag = [v for (n, _), v in p.items() if n == "mcsync_subscriber_applied_version"]
        if lag == [25.0]:
            break
        assert time.monotonic() < deadline, p
        time.sleep(0.2)
    assert [v for (n, _), v in p.items() if n == "mcsync_subscriber_lag_versions"] == [0.0]


def mcsync_bin() -> str:
    path = os.environ.get("MCSYNC_BIN")
    if not path:
        pytest.skip("MCSYNC_BIN not set (scripts/test-python.sh sets it)")
    return path


def metrics_address(proc: subprocess.Popen[str]) -> str:
    """The address a command prints in its `metrics on http://ADDR/metrics` line."""
    assert proc.stderr is not None
    for line in proc.stderr:
        m = re.search(r"metrics on http://(\S+)/metrics", line)
        if m:
            return m.group(1)
    raise AssertionError(f"no metrics address; exit {proc.wait()}")


def scrape(addr: str) -> tuple[str, str]:
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.headers["Content-Type"], r.read().decode()


def test_cli_serve_and_subscribe_expose_metrics(tmp_path: Path) -> None:
    binary = mcsync_bin()
    users = tmp_path / "users"
    mcsync.add_user(users, "ops", "ops-pw")
    group, port = unique_group()
    serve = subprocess.Popen(  # noqa: SIM115 (closed in finally)
        [binary, "serve", "--data-dir", str(tmp_path / "pub"), "--users", str(users),
         "--listen", "127.0.0.1:0", "--groups", f"{group}/32",
         "--ports", f"{port}-{port}", "--metrics", "127.0.0.1:0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    procs = [serve]
    try:
        assert serve.stdout is not None and serve.stdin is not None
        banner = serve.stdout.readline()
        control = re.search(r" on (127\.0\.0\.1:\d+) ", banner)
        fingerprint = re.search(r"fingerprint ([0-9a-f]{64})", banner)
        assert control and fingerprint, banner
        pub_metrics = metrics_address(serve)
        for i in range(10):
            serve.stdin.write(f"put k{i} v{i}\n")
        serve.stdin.flush()
        sub = subprocess.Popen(
            [binary, "subscribe", "--data-dir", str(tmp_path / "sub"),
             "--server", control.group(1), "--user", "ops",
             "--fingerprint", fingerprint.group(1), "--metrics", "127.0.0.1:0"],
            env={**os.environ, "MCSYNC_PASSWORD": "ops-pw"},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        procs.append(sub)
        sub_metrics = metrics_address(sub)
        version = (("database", "default"),)
        deadline = time.monotonic() + CONVERGE
        while True:
            ctype, text = scrape(sub_metrics)
            got = samples(text).get(("mcsync_subscription_version", version))
            if got == 10:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        assert ctype.startswith("application/openmetrics-text")
        ctype, text = scrape(pub_metrics)
        p = samples(text)
        assert p[("mcsync_publisher_updates_committed_total", ())] == 10
        assert p[("mcsync_database_version", version)] == 10
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


def test_log_records_reach_python_logging(tmp_path: Path) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("mcsync")
    handler = Keep(level=logging.INFO)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    mcsync.refresh_log_levels()
    try:
        with open_publisher(tmp_path / "pub") as p:
            fingerprint = p.fingerprint
        assert fingerprint
        started = [r for r in records if fingerprint in r.getMessage()]
        assert started, [r.getMessage() for r in records]
        assert started[0].name.startswith("mcsync.")
        assert started[0].levelno == logging.INFO
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        mcsync.refresh_log_levels()


def test_grafana_dashboard_names_only_metrics_that_exist(
    publisher: mcsync.Publisher, make_subscriber: Callable[..., mcsync.Subscriber]
) -> None:
    import json

    dashboard = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "mcsync-dashboard.json"
    exprs = [
        t["expr"]
        for panel in json.loads(dashboard.read_text())["panels"]
        for t in panel["targets"]
    ]
    used = {m for e in exprs for m in re.findall(r"\bmcsync_[a-z0-9_]+", e)}
    db = publisher.database("dash")
    s = make_subscriber()
    sub = s.subscribe("dash")
    sub.wait_for_version(db.put("k", "v"), CONVERGE)
    deadline = time.monotonic() + CONVERGE
    while "mcsync_subscriber_lag_versions" not in publisher.metrics():
        assert time.monotonic() < deadline
        time.sleep(0.2)
    names = {name for (name, _) in {**samples(publisher.metrics()), **samples(s.metrics())}}
    assert used and used <= names, used - names
