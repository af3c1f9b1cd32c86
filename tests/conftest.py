"""Shared fixtures (the fake provider over a real socket, the anyio backend) and the slow list."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgi_attribution.testing import FakeProvider, Faults, serve_in_thread

from .support.asgi import KEY

# Helpers and the apps uvicorn imports in subprocesses: no tests, no doctests to collect there.
collect_ignore = ["support"]

# Tests that take more than a few seconds (or drive a real browser), marked `slow` here rather
# than in their files: `scripts/test --fast` runs `pytest -m "not slow"` (under two minutes on 2
# cores), CI runs everything. An entry is a directory ("tests/browser/"), a file, or a test
# (every parametrization of it). To keep it current: `pytest -m "not slow" --durations=30` and
# add what takes over about 1.5 s; an entry that matches nothing fails the run (see below).
SLOW = (
    "tests/browser/",  # headless Chromium, about 1.6 s a journey
    "tests/test_docs.py",  # mkdocs build, then Chromium
    "tests/cli/test_wheel.py",  # builds and installs the wheel
    "tests/cli/test_outbox_postgres.py",  # a PostgreSQL connection and a CLI process per test
    "tests/cli/test_bad_input.py",  # a CLI process per case (about 40)
    "tests/test_sync_attacks.py",  # 8 threads against each tracker state (about 90 s)
    "tests/frameworks/test_gunicorn.py",  # gunicorn -w 2 per test; a killed worker's leases
    "tests/cli/test_outbox_redis.py",  # a redis-server and a CLI process per test
    "tests/cli/test_help.py::test_the_outbox_help_says_what_each_code_means",
    "tests/cli/test_outbox_cli.py::test_console_entry_points_in_a_real_process",
    "tests/cli/test_outbox_outcomes.py::test_deliver_with_a_wrong_key_stops_paused_and_keeps_the_events",
    "tests/cli/test_outbox_outcomes.py::test_list_not_recorded_shows_the_outcome_and_its_reason",
    "tests/cli/test_outbox_outcomes.py::test_purge_vacuum_shrinks_the_file",
    "tests/cli/test_outbox_outcomes.py::test_retry_of_a_click_not_found_dead_letter_is_refused_unless_forced",
    "tests/cli/test_outbox_outcomes.py::test_status_shows_a_damaged_file_and_exits_1",
    "tests/cli/test_outbox_redis.py::test_allow_eviction_opens_it_and_status_names_the_risk",
    "tests/cli/test_outbox_redis.py::test_status_names_a_redis_without_persistence_and_exits_1",
    "tests/frameworks/test_django.py::test_under_uvicorn_with_sigterm",
    "tests/frameworks/test_fastapi.py::test_under_uvicorn_with_sigterm",
    "tests/frameworks/test_litestar.py::test_under_uvicorn_with_sigterm",
    "tests/frameworks/test_quart.py::test_under_uvicorn_with_sigterm",
    "tests/frameworks/test_raw_asgi.py::test_under_uvicorn_with_sigterm",
    "tests/frameworks/test_starlette.py::test_under_uvicorn_with_sigterm",
    "tests/outbox/test_postgres.py::test_a_database_restart_mid_delivery_loses_nothing",
    "tests/outbox/test_postgres.py::test_a_killed_workers_claims_are_delivered_by_another_after_the_lease",
    "tests/outbox/test_postgres.py::test_four_workers_deliver_2000_events_each_exactly_once",
    "tests/outbox/test_postgres.py::test_dead_letters_retry_status_list_and_purge",
    "tests/outbox/test_postgres_within.py::test_a_sqlalchemy_session_and_connection_commit_the_lead_with_their_rows",
    "tests/outbox/test_postgres_within.py::test_fifty_concurrent_signups_each_deliver_once",
    "tests/outbox/test_postgres_attacks.py::test_a_hung_postgresql_delivers_each_timed_out_append_once_and_recovers",
    "tests/outbox/test_redis.py::test_a_killed_workers_pending_entries_are_claimed_by_the_other",
    "tests/outbox/test_redis.py::test_an_append_only_tracker_works_across_event_loops",
    "tests/outbox/test_redis_attacks.py",  # redis-server SIGSTOPped or SIGKILLed, 3-10 s each
    "tests/outbox/test_redis_faults.py::test_a_full_redis_still_drains_its_backlog",
    "tests/outbox/test_redis_faults.py::test_restarted_without_its_data_the_worker_recovers",
    "tests/outbox/test_sqlite.py::test_processes_appending_at_once_lose_and_duplicate_nothing",
    "tests/outbox/test_sqlite.py::test_sigkill_mid_delivery_then_restart_delivers_every_event",
    "tests/outbox/test_sqlite_attacks.py",  # processes SIGKILLed mid-commit, 6-30 s each
    "tests/outbox/test_sqlite_faults.py::test_a_write_lock_held_35s_never_holds_a_signup",
    "tests/test_fuzz.py::test_hostile_requests_never_change_the_apps_answer",
    "tests/outbox/test_order.py::test_a_dead_sale_releases_its_refund_and_a_held_chain_holds_no_other_invoice",
    "tests/test_causal_order.py::test_each_refund_waits_for_its_sale_in_the_memory_queue",
    "tests/test_job_loops.py::test_a_job_process_exits_with_every_event_delivered",
    "tests/test_pace_processes.py",  # two CLI processes drain three rate-limit windows
    "tests/testing/test_fake_rate_limit.py",  # waits for the fake's 2 s windows to turn
    "tests/transports/test_pace.py::test_remaining_zero_holds_the_next_attempt_until_the_reset",
    "tests/transports/test_pace.py::test_a_429_does_not_consume_an_attempt",
    "tests/transports/test_pace.py::test_the_first_burst_waits_for_the_first_answer",
    "tests/transports/test_pace.py::test_two_trackers_on_one_key_share_one_budget",
    "tests/transports/test_pace.py::test_the_share_is_honoured",
    "tests/transports/test_pace.py::test_a_reset_in_the_past_or_far_ahead_is_clamped_and_logged_once",
    "tests/transports/test_pace.py::test_holding_back_is_logged_once_when_it_starts_and_once_when_it_stops",
    "tests/test_lifecycle.py::test_every_lead_is_delivered_whatever_passes_lifespan",
    "tests/test_partner_clicks.py::test_requests_that_are_no_navigation_make_no_click",
    "tests/test_refunds.py::test_no_commission_comes_before_the_retry_step_gives_up",
    "tests/test_security.py::test_the_api_key_never_appears_in_logs_errors_or_reprs",
    "tests/transports/test_delivery.py::test_defaults_deliver_1000_events_through_a_bad_spell",
    "tests/transports/test_delivery.py::test_retry_after_of_each_form_is_honoured",
    "tests/transports/test_multiworker.py",  # two uvicorn workers in processes
    "tests/transports/test_shutdown_kill.py::test_sigkill_mid_drain_leaves_every_undelivered_id_in_the_log",
)


def _matches(entry: str, nodeid: str) -> bool:
    if entry.endswith("/") or "::" not in entry:
        return nodeid.startswith(entry)
    return nodeid == entry or nodeid.startswith((entry + "[", entry + "::"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Runs before -m and -k deselect: ``items`` is everything the paths given collected.
    matched = set()
    for item in items:
        for entry in SLOW:
            if _matches(entry, item.nodeid):
                item.add_marker(pytest.mark.slow)
                matched.add(entry)
    # A renamed or deleted test must not stay in the list unnoticed.
    files = {item.nodeid.split("::")[0] for item in items}
    picked = any("::" in str(arg) for arg in config.args)  # a run of chosen tests only
    stale = [
        entry
        for entry in SLOW
        if not (config.rootpath / entry.split("::")[0]).exists()
        or (entry not in matched and entry.split("::")[0] in files and not picked)
    ]
    if stale:
        raise pytest.UsageError(f"tests/conftest.py: SLOW names tests that do not exist: {stale}")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# The fault-injecting Dub API under uvicorn on 127.0.0.1, one per test module; each test gets it
# with no faults and nothing recorded.
@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[FakeProvider, str]]:
    provider = FakeProvider("dub", api_key=KEY)
    with serve_in_thread(provider) as url:
        yield provider, url


@pytest.fixture
def provider(fake: tuple[FakeProvider, str]) -> FakeProvider:
    fake[0].faults = Faults()
    fake[0].reset()
    return fake[0]


@pytest.fixture
def url(fake: tuple[FakeProvider, str]) -> str:
    return fake[1]
