"""The Dagster UI in a real browser: the asset graph, the Materialize dialog of `datalog_parquet`
(one run, then a backfill of two partitions) and the asset's Checks tab, as a person would use them.

`datalog ingest` first fills the lake (two devices in two regions, 26 hours: two local dates, four
date x region partitions; DATALOG_PARTITIONS_START_DATE is the first of them). Then
`dagster-webserver` and `dagster-daemon` run on that DAGSTER_HOME and headless Chromium, driven by
Playwright, clicks through the UI:

1. the asset graph, all groups expanded: every asset of the code location is drawn inside its group;
2. `/assets/datalog_parquet`, Materialize…, whatever confirmation Dagster asks, one date x region,
   `Launch 1 run`: the run succeeds (its status read from the webserver's GraphQL API);
3. the same dialog, one date x both regions, `Launch backfill`: the backfill's two runs succeed;
4. the lake holds every generated record exactly once, and the three partitions launched from the UI
   were rebuilt (none of their old files is left);
5. the Checks tab: `Execute` on one check, then `Execute all`; each run succeeds and the page shows
   the checks it ran as passed.

Every step leaves a screenshot under tmp_path/screenshots; their paths are printed.

Real parts only: both Dagster services in their own process groups, Debian's /usr/bin/chromium
through Playwright, HTTP to the webserver, the `datalog` command in child processes, a local raw
store and lake, the SQLite ledger and DuckDB reading the Parquet files. Nothing is mocked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from datalog_platform.definitions import defs
from datalog_platform_tests.support.cli_helpers import TWO_DAYS, IngestedLake, ingest_two_days
from datalog_platform_tests.support.daemon_helpers import BIN, WORKSPACE, Daemon, graphql, poll, webserver_and_daemon
from datalog_platform_tests.support.lake import partition_dir, partition_row_ids
from datalog_platform_tests.support.net import free_port
from datalog_platform_tests.support.raw_data import raw_records

CHROMIUM = Path("/usr/bin/chromium")
# Headless as root on a closed network: no sandbox, no GPU, and none of Chromium's own outbound
# connections (refused here, and slow to fail).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 60_000
RUN_TIMEOUT_S = 300
ASSET = "datalog_parquet"
# Asset -> group the UI must show, at least; every other asset of the code location is checked too.
KNOWN_GROUPS = {
    "raw_datalog_logs": "raw",
    "device_registry": "registry",
    "claimed_key_batches": "ingest",
    "datalog_parquet": "ingest",
}
CHECKS = ["freshness", "no_duplicate_records", "no_orphan_files", "quarantine_rate", "reconciliation"]
ONE_CHECK = "no_duplicate_records"

RUN = """
query Run($id: ID!) {
  runOrError(runId: $id) {
    __typename
    ... on Run { status tags { key value } }
    ... on Error { message }
  }
}"""
RUN_ERRORS = """
query RunErrors($id: ID!) {
  logsForRun(runId: $id, limit: 5000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on ExecutionStepFailureEvent { stepKey error { message } }
        ... on RunFailureEvent { message }
      }
    }
  }
}"""
BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status partitionNames runs(limit: 20) { runId status tags { key value } } }
    ... on Error { message }
  }
}"""
UNFINISHED_BACKFILL = ("REQUESTED", "CANCELING", "FAILING")
FINISHED_RUN = ("SUCCESS", "FAILURE", "CANCELED")


@dataclass
class Dagster:
    """The running webserver (UI and GraphQL API on 127.0.0.1:port) and daemon."""

    port: int
    daemon: Daemon

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def query(self, text: str, variables: dict[str, Any]) -> dict[str, Any]:
        return graphql(self.port, text, variables)


@dataclass
class Screenshots:
    """Numbered PNGs of the page, one per step, in `directory`; each path is printed."""

    directory: Path
    paths: list[Path] = field(default_factory=list)

    def take(self, page: Page, name: str) -> None:
        path = self.directory / f"{len(self.paths) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), animations="disabled")  # dialogs as they end up, not mid-fade
        self.paths.append(path)
        print(f"screenshot: {path}")


@pytest.fixture
def ingested(tmp_path: Path) -> IngestedLake:
    return ingest_two_days(tmp_path, DATALOG_PARTITIONS_START_DATE=TWO_DAYS[0])


@pytest.fixture
def dagster(ingested: IngestedLake, tmp_path: Path) -> Iterator[Dagster]:
    port = free_port()
    with webserver_and_daemon(BIN, WORKSPACE, ingested.env, tmp_path, port) as (_, daemon):
        yield Dagster(port, daemon)


@pytest.fixture
def screenshots(tmp_path: Path) -> Screenshots:
    directory = tmp_path / "screenshots"
    directory.mkdir()
    return Screenshots(directory)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium, started before anything else so that a missing one fails at once."""
    assert CHROMIUM.is_file(), (
        f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, as .ci/run does); "
        "Playwright's own browser downloads are not used"
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, dagster: Dagster, screenshots: Screenshots) -> Iterator[Page]:
    """A page of the browser; its last state is saved as a screenshot however the test ends."""
    expect.set_options(timeout=UI_TIMEOUT_MS)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    try:
        page.set_default_timeout(UI_TIMEOUT_MS)
        # Dagster's community pop-up opens a second after the first page a new DAGSTER_HOME serves,
        # and closes whatever menu is open then. The UI keeps it dismissed under this storage key;
        # the handler is the net should a Dagster release rename the key.
        page.add_init_script("try { localStorage.setItem('communityNux', JSON.stringify('1')); } catch (e) {}")
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
        yield page
        screenshots.take(page, "last-page")
    finally:
        page.close()


def test_dagster_ui_in_a_browser(
    page: Page, ingested: IngestedLake, dagster: Dagster, screenshots: Screenshots
) -> None:
    lake = ingested.lake
    before = {p: sorted(partition_row_ids(lake, *p)) for p in ingested.partitions}
    old_files = {p: set(partition_dir(lake, *p).glob("*.parquet")) for p in ingested.partitions}
    assert all(before.values()) and all(old_files.values())

    # 1. The asset graph: every asset inside its group.
    groups = {spec.key.to_user_string(): spec.group_name for spec in defs.resolve_all_asset_specs()}
    assert KNOWN_GROUPS.items() <= groups.items(), groups
    page.goto(dagster.url("/asset-groups"))
    expect(page.get_by_role("button", name=re.compile("Materialize all"))).to_be_visible()
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name=re.compile("Expand all groups")).click()
    page.get_by_role("button", name="zoom_in", exact=True).click()  # past the zoom that abbreviates names
    for asset, group in sorted(groups.items()):
        label = page.locator("foreignObject").get_by_text(asset, exact=True)
        box = page.locator("foreignObject").filter(has=page.get_by_text(group, exact=True))
        expect(label).to_be_visible()
        expect(box).to_be_visible()
        assert inside(label, box), f"{asset} is not drawn inside its group {group}"
    screenshots.take(page, "asset-graph")

    # 2. One partition from the asset page's Materialize dialog.
    one = (TWO_DAYS[0], ingested.regions[0])
    dialog = open_materialize_dialog(page, dagster, screenshots)
    select_partitions(page, dialog, one[0], [one[1]])
    screenshots.take(page, "materialize-one-partition")
    dialog.get_by_role("button", name="Launch 1 run").click()
    run_id = toast_target(page, "Launched run")
    run = wait_for_run(dagster, run_id)
    assert tag(run, "dagster/partition") == f"{one[0]}|{one[1]}", run
    page.goto(dagster.url(f"/runs/{run_id}"))
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    screenshots.take(page, "one-partition-run")

    # 3. A backfill of two partitions from the same dialog.
    two = [(TWO_DAYS[1], region) for region in ingested.regions]
    dialog = open_materialize_dialog(page, dagster, screenshots)
    select_partitions(page, dialog, TWO_DAYS[1], ingested.regions)
    screenshots.take(page, "materialize-backfill")
    dialog.get_by_role("button", name="Launch backfill").click()
    backfill_id = toast_target(page, "Created backfill")
    backfill = wait_for_backfill(dagster, backfill_id)
    assert sorted(backfill["partitionNames"]) == sorted(f"{d}|{r}" for d, r in two), backfill
    runs = backfill["runs"]
    assert sorted(tag(r, "dagster/partition") for r in runs) == sorted(f"{d}|{r}" for d, r in two), runs
    for backfill_run in runs:
        wait_for_run(dagster, backfill_run["runId"])
    page.goto(dagster.url(f"/runs/b/{backfill_id}"))
    expect(page.get_by_text(backfill_id).first).to_be_visible()
    # the backfill's status tag (a column of its table is a link of the same text)
    expect(page.get_by_text("Succeeded", exact=True).and_(page.locator("span"))).to_be_visible()
    screenshots.take(page, "backfill")

    # 4. The lake: every record exactly once; the partitions launched from the UI were rebuilt.
    after = {p: sorted(partition_row_ids(lake, *p)) for p in ingested.partitions}
    assert after == before
    assert sorted(row for rows in after.values() for row in rows) == sorted(raw_records(ingested.raw))
    for partition in [one, *two]:
        files = set(partition_dir(lake, *partition).glob("*.parquet"))
        assert files and files.isdisjoint(old_files[partition]), (partition, files, old_files[partition])

    # 5. The Checks tab: one check alone, then all of them.
    open_checks_tab(page, dagster, ONE_CHECK)
    screenshots.take(page, "checks-tab")
    click_enabled(page, page.get_by_role("button", name=re.compile(r"Execute$")), f"Execute ({ONE_CHECK})")
    run_id = toast_target(page, "Launched run")
    wait_for_run(dagster, run_id)
    open_checks_tab(page, dagster, ONE_CHECK)
    expect_passed_by(page, run_id)
    screenshots.take(page, "one-check-passed")

    click_enabled(page, page.get_by_role("button", name=re.compile(r"Execute all$")), "Execute all")
    run_id = toast_target(page, "Launched run")
    wait_for_run(dagster, run_id)
    for check in CHECKS:
        open_checks_tab(page, dagster, check)
        expect_passed_by(page, run_id)
    screenshots.take(page, "all-checks-passed")


def inside(inner: Locator, outer: Locator) -> bool:
    """Whether `inner` is drawn within `outer`'s rectangle."""
    a, b = inner.bounding_box(), outer.bounding_box()
    assert a is not None and b is not None
    return (
        b["x"] <= a["x"]
        and a["x"] + a["width"] <= b["x"] + b["width"]
        and b["y"] <= a["y"]
        and a["y"] + a["height"] <= b["y"] + b["height"]
    )


def open_materialize_dialog(page: Page, dagster: Dagster, screenshots: Screenshots) -> Locator:
    """Materialize… on the asset page; confirms what Dagster asks first (other assets of the same
    step, upstream assets never materialized) and returns the launch dialog."""
    page.goto(dagster.url(f"/assets/{ASSET}"))
    page.get_by_role("button", name="Materialize…").click()
    launch = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    confirmation = page.get_by_role("dialog").filter(has=page.get_by_role("button", name="Confirm"))
    for asked in range(1, 4):
        expect(launch.or_(confirmation).first).to_be_visible()
        if not confirmation.is_visible():
            return launch
        text = confirmation.inner_text()
        print(f"Dagster asked before materializing: {text!r}")
        screenshots.take(page, f"materialize-confirmation-{asked}")
        confirmation.get_by_role("button", name="Confirm").click()
        expect(page.get_by_role("dialog").filter(has_text=text.splitlines()[0])).to_be_hidden()
    raise AssertionError("the launch dialog did not open after three confirmations")


def select_partitions(page: Page, dialog: Locator, date: str, regions: list[str]) -> None:
    date_box = dialog.get_by_placeholder(f"ex: {TWO_DAYS[0]}")
    date_box.fill(date)
    date_box.press("Enter")
    dialog.get_by_text("Select a partition or create one").click()
    # the region picker's popover (rendered inside the launch dialog, which holds its items too)
    menu = page.get_by_role("dialog").filter(has=page.get_by_role("menuitem"), has_not_text="Launch runs")
    for region in regions:
        menu.get_by_role("menuitem").filter(has_text=region).click()
    dialog.get_by_text("Launch runs to materialize").click()  # closes the region menu
    expect(menu).to_be_hidden()
    count = len(regions)
    expect(dialog.get_by_text(f"{count} partition{'s' if count > 1 else ''}", exact=True)).to_be_visible()


def toast_target(page: Page, text: str) -> str:
    """The id at the end of the View link of the notification that says `text` (a run or a backfill)."""
    notifications = page.get_by_role("region", name=re.compile("^Notifications"))
    view = notifications.get_by_role("listitem").filter(has_text=text).get_by_role("link", name="View")
    expect(view).to_be_visible()
    href = view.get_attribute("href")
    assert href, f"the notification {text!r} links nowhere"
    return href.rstrip("/").rsplit("/", 1)[-1]


def wait_for_run(dagster: Dagster, run_id: str) -> dict[str, Any]:
    """Poll the run through GraphQL until it ends; require SUCCESS (else: its step errors)."""

    def ended() -> dict[str, Any] | None:
        run = dagster.query(RUN, {"id": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run if run["status"] in FINISHED_RUN else None

    run = poll(ended, timeout=RUN_TIMEOUT_S, what=f"run {run_id} to end", interval=2, daemon=dagster.daemon)
    assert run["status"] == "SUCCESS", f"run {run_id} ended {run['status']}:\n{run_errors(dagster, run_id)}"
    return run


def run_errors(dagster: Dagster, run_id: str) -> str:
    logs = dagster.query(RUN_ERRORS, {"id": run_id})["logsForRun"]
    lines = [
        f"{event.get('stepKey', 'run')}: {event['error']['message'] if 'error' in event else event['message']}"
        for event in logs.get("events", [])
        if event["__typename"] in ("ExecutionStepFailureEvent", "RunFailureEvent")
    ]
    return "\n".join(lines) or str(logs)


def wait_for_backfill(dagster: Dagster, backfill_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        backfill = dagster.query(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert backfill["__typename"] == "PartitionBackfill", backfill
        return backfill if backfill["status"] not in UNFINISHED_BACKFILL else None

    backfill = poll(
        ended, timeout=RUN_TIMEOUT_S, what=f"backfill {backfill_id} to end", interval=2, daemon=dagster.daemon
    )
    failed = {r["runId"]: r["status"] for r in backfill["runs"] if r["status"] != "SUCCESS"}
    details = "\n".join(f"{run_id} {status}:\n{run_errors(dagster, run_id)}" for run_id, status in failed.items())
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), f"backfill {backfill}\n{details}"
    return backfill


def tag(run: dict[str, Any], key: str) -> str | None:
    return next((t["value"] for t in run["tags"] if t["key"] == key), None)


def open_checks_tab(page: Page, dagster: Dagster, check: str) -> None:
    """The asset page's Checks tab with `check` chosen in its list (the tab's own link for it)."""
    page.goto(dagster.url(f"/assets/{ASSET}?view=checks&checkDetail={check}"))
    expect(page.get_by_role("tab", name="Checks", selected=True)).to_be_visible()
    expect(page.get_by_role("button", name=re.compile(r"Execute$"))).to_be_visible()


def click_enabled(page: Page, button: Locator, what: str) -> None:
    """Click `button`; if the UI keeps it disabled, fail with the reason its tooltip gives."""
    try:
        expect(button).to_be_enabled(timeout=20_000)
    except AssertionError:
        button.hover(force=True)
        tooltip = page.get_by_role("tooltip").first
        expect(tooltip, f"{what} stays disabled in the Checks tab, with no tooltip").to_be_visible(timeout=10_000)
        reason = tooltip.inner_text()
        raise AssertionError(f"{what} stays disabled in the Checks tab; the UI says: {reason!r}") from None
    button.click()


def expect_passed_by(page: Page, run_id: str) -> None:
    """The chosen check's latest execution passed, in run `run_id` (its timestamp links to the run)."""
    expect(page.locator(f'a[href^="/runs/{run_id}"]').first).to_be_visible()
    expect(page.get_by_text("Passed", exact=True)).to_be_visible()
