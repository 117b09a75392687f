"""The web console in a real browser (headless Chromium, driven by Playwright) against real
servers: signing in, each page's figures against what the API says, live training curves, a
role that may read less, and markup in the data staying text. Every test also fails on any
error the page logged (a script error, a refused fetch, a Content-Security-Policy violation).

Needs Debian's Chromium at ``/usr/bin/chromium``: ``make test`` installs it."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.integration._serving import infer_body, register, scale_model
from tests.support.live import LiveServer, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
#: flags that keep Chromium off the network it cannot reach here (../shared/MACHINE-NOTES.md)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
MARKUP = '<img src=x onerror="window.__injected = 1">'
SLIPS = re.compile(r"\[object \w+\]|^(null|undefined|NaN)+$|\bNaN\b", re.MULTILINE)
REFUSED = re.compile(r"Failed to load resource: the server responded with a status of (40[13]|422)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


def stop(live: LiveServer) -> None:
    """Stop ``live`` from another thread: Playwright's sync API keeps an event loop on this one."""
    thread = threading.Thread(target=live.stop)
    thread.start()
    thread.join()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The digits demo model; jobs run (one at a time)."""
    live = LiveServer.build(tmp_path_factory.mktemp("console"), demo_model=True, builtin_models=False,
                            grpc_enabled=False, usage_flush_s=0.2).start()
    yield live
    stop(live)


@pytest.fixture(scope="module")
def idle_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """No job worker: a submitted job stays queued, and the test writes its progress itself."""
    live = LiveServer.build(tmp_path_factory.mktemp("console-idle"), builtin_models=False, grpc_enabled=False,
                            job_workers=0).start()
    yield live
    stop(live)


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab (its own session storage); in the time zone a test names (``indirect``)."""
    context = browser.new_context(timezone_id=getattr(request, "param", None))
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    opened.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    opened.set_default_timeout(15_000)
    yield opened
    shown = "\n".join(opened.locator("main").all_inner_texts())  # (none if the test failed before any page)
    context.close()
    # Nothing the script meant to build shows as a stringified value.
    assert not SLIPS.search(shown), SLIPS.search(shown)
    # Chromium logs a call the server refused (a wrong key's 401, a role's 403, a bad form's 422)
    # as a failed load: those are the tests' own doing. Anything else (a missing file, a CSP
    # violation) is not.
    unexpected = [p for p in problems if not REFUSED.search(p)]
    assert not unexpected, unexpected


def sign_in(page: Page, server: LiveServer, key: str | None = None, where: str = "") -> None:
    page.goto(f"{server.url}/console/{where}")
    page.fill("#key", key or server.admin_key)
    page.click("form.sign-in button")
    expect(page.locator("#sign-out")).to_be_visible()


def infer(server: LiveServer, name: str, times: int) -> None:
    x = np.random.default_rng(0).integers(0, 16, (1, 64)).astype(float).tolist()
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": x}]}
    with server.client() as http:
        for _ in range(times):
            http.post(f"/v2/models/{name}/infer", json=body).raise_for_status()


def polyline_points(page: Page, series: str) -> int:
    points = page.locator(f'polyline[data-series="{series}"]').get_attribute("points") or ""
    return len(points.split())


def test_a_wrong_key_is_refused_and_the_right_one_shows_the_overview(page: Page, server: LiveServer) -> None:
    page.goto(server.url)  # the server's root leads to the console
    assert page.url == f"{server.url}/console/"
    expect(page.locator("form.sign-in")).to_be_visible()
    page.fill("#key", "my_000000000000_not-a-key-of-this-server-at-all")
    page.click("form.sign-in button")
    expect(page.get_by_role("alert")).to_contain_text("That key was refused")
    assert page.evaluate("sessionStorage.length") == 0

    sign_in(page, server)
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("#who")).to_contain_text("admin")
    expect(page.locator(".card", has_text="models").locator(".value")).to_have_text("1")  # the demo model
    expect(page.locator("section", has_text="In memory")).to_be_visible()

    page.click("#sign-out")
    expect(page.locator("form.sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


@pytest.mark.parametrize("page", ["UTC", "Asia/Kolkata"], indirect=True)  # a whole-hour zone and a half-hour one
def test_the_hourly_chart_counts_what_the_usage_api_counts(page: Page, server: LiveServer) -> None:
    infer(server, "digits", 7)
    with server.client() as http:
        def total() -> int:
            return int(http.get("/api/v1/usage").json()["totals"]["requests"])
        wait_until(lambda: total() >= 7, timeout=20)
        expected = total()
    sign_in(page, server)
    bars = page.locator('section:has-text("Requests per hour") rect[data-requests]')
    expect(bars).to_have_count(24)
    shown = sum(int(bars.nth(i).get_attribute("data-requests") or 0) for i in range(24))
    assert shown == expected
    expect(page.locator("section", has_text="Requests per hour")).to_contain_text(f"{expected:,} requests")
    # the server's hours (UTC), each labelled in the browser's time: 05:30 in India
    minutes = "30" if page.evaluate("new Date().getTimezoneOffset()") % 60 else "00"
    assert all((bars.nth(i).get_attribute("data-hour") or "").endswith(f":{minutes}") for i in range(24))


def test_models_show_as_text_whatever_their_description_holds(page: Page, server: LiveServer) -> None:
    with server.client() as http:
        http.patch("/api/v1/models/digits", json={"description": MARKUP}).raise_for_status()
        version = http.get("/api/v1/models/digits/versions").json()["items"][0]
    sign_in(page, server, where="#/models")
    row = page.locator("tr", has_text="digits")
    expect(row).to_contain_text(MARKUP)  # shown as the characters it is
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__injected") is None

    row.get_by_role("link", name="digits").click()
    expect(page.locator("h1")).to_have_text("Model digits")
    about = page.locator("section", has_text="About")
    expect(about).to_contain_text(f"{server.url}/v2/models/digits/infer")  # the line that calls it
    expect(about.locator("dt", has_text="Production version").locator("xpath=following-sibling::dd[1]")).to_have_text("1")
    versions = page.locator('section:has-text("Versions") tbody tr')
    expect(versions).to_have_count(1)
    expect(versions.first.locator(".badge")).to_have_text(version["stage"])
    signature = page.locator("section", has_text="Signature")
    for tensor in version["inputs"] + version["outputs"]:
        expect(signature).to_contain_text(tensor["name"])


def test_a_deployment_made_from_the_form_opens_and_a_refused_one_makes_nothing(page: Page, server: LiveServer) -> None:
    sign_in(page, server, where="#/deployments")
    create = page.get_by_role("button", name="Create deployment")

    def made() -> list[str]:
        with server.client() as http:
            return [d["name"] for d in http.get("/api/v1/deployments").json()["items"]]

    before = made()
    page.fill("#deployment-name", "formed")
    page.fill("#deployment-routes", "digits")  # no version: read in the page, nothing sent
    create.click()
    expect(page.get_by_role("alert")).to_contain_text('"digits" is not MODEL:VERSION')
    page.fill("#deployment-routes", "digits:1=0")  # no route with traffic: the server says so
    create.click()
    expect(page.get_by_role("alert")).to_contain_text("HTTP 422")
    assert made() == before
    page.fill("#deployment-routes", "digits:1")
    page.fill("#deployment-error-rate", "20")
    page.fill("#deployment-p99", "250")
    create.click()
    expect(page.locator("h1")).to_have_text("Deployment formed")
    expect(page.locator("section", has_text="Automatic rollback")).to_contain_text(
        "passes 20% or the 99th percentile of its latency passes 250 ms")
    with server.client() as http:
        dep = http.get("/api/v1/deployments/formed").json()
    assert dep["routes"] == [{"model": "digits", "version": 1, "weight": 100.0}]
    assert dep["rollback"]["max_error_rate"] == 0.2 and dep["rollback"]["max_p99_ms"] == 250.0


def test_a_deployment_shows_its_traffic_as_the_server_counts_it(page: Page, server: LiveServer) -> None:
    with server.client() as http:
        http.post("/api/v1/deployments", json={
            "name": "web", "description": MARKUP, "routes": [{"model": "digits", "version": 1}],
        }).raise_for_status()
    infer(server, "web", 5)
    sign_in(page, server, where="#/deployments")
    expect(page.locator("tr", has_text="web")).to_contain_text("digits:1")
    page.get_by_role("link", name="web").click()
    expect(page.locator("h1")).to_have_text("Deployment web")
    route = page.locator('section:has-text("Traffic") tbody tr')
    expect(route).to_have_count(1)
    with server.client() as http:
        counted = http.get("/api/v1/deployments/web").json()["stats"]["routes"][0]["requests"]
    assert counted == 5
    expect(route.locator("td").nth(2)).to_have_text("5")
    expect(page.locator('section:has-text("Traffic")')).to_contain_text(
        "Counted by 1 server of the cluster, since each started routing it or the deployment last changed.")
    expect(page.locator("section", has_text="Events")).to_contain_text("created")
    assert page.evaluate("window.__injected") is None


def test_the_rate_chart_has_no_point_where_a_server_joined_or_left_the_sum(page: Page, server: LiveServer) -> None:
    """The figures are summed over the servers that counted them: when a third server's counts
    join the sum, the totals jump by its counts, which are no rate of that interval."""
    sign_in(page, server)
    points = page.evaluate("""async () => {
        const { Rates } = await import("/console/pages.js");
        const rates = new Rates(), pause = () => new Promise((done) => setTimeout(done, 50));
        for (const [count, servers] of [[10, 2], [20, 2], [5000, 3], [5010, 3], [6000, 2]]) {
            rates.add({ "m:1": count }, servers);
            await pause();
        }
        return rates.series(["m:1"])[0].points.map(([, perSecond]) => perSecond);
    }""")
    # 10 -> 20 and 5000 -> 5010 over about 50 ms each; the joins (20 -> 5000) and leaves (5010 -> 6000) are left out
    assert len(points) == 2 and all(50 < rate < 400 for rate in points), points


def canary(server: LiveServer, folder: Path, name: str) -> tuple[str, str]:
    """Deployment ``name``: two new versions of the model ``double``, 70/30; their route labels."""
    one = register(server, "double", scale_model(folder / "one.onnx", 1.0)).version
    two = register(server, "double", scale_model(folder / "two.onnx", 2.0)).version
    with server.client() as http:
        http.post("/api/v1/deployments", json={"name": name, "routes": [
            {"model": "double", "version": one, "weight": 70}, {"model": "double", "version": two, "weight": 30}],
        }).raise_for_status()
    return f"double:{one}", f"double:{two}"


def test_a_canary_deployment_draws_its_rates_and_rolls_back_on_a_click(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    primary, second = canary(server, tmp_path, "canary")
    calling = threading.Event()

    def traffic() -> None:  # a steady caller while the page watches
        with server.client() as http:
            while not calling.is_set():
                http.post("/v2/models/canary/infer", json=infer_body(np.ones((1, 4), np.float32))).raise_for_status()
                time.sleep(0.005)

    caller = threading.Thread(target=traffic)
    caller.start()
    try:
        sign_in(page, server, where="#/deployments/canary")
        for series in (primary, second):  # a line per route, growing at each refresh
            wait_until(lambda s=series: page.locator(f'polyline[data-series="{s}"]').count() == 1
                       and polyline_points(page, s) >= 2, timeout=20)
        rows = page.locator('section:has-text("Traffic") tbody tr')
        now = [float((rows.nth(i).locator("td").nth(3).text_content() or "0").replace(",", "")) for i in range(2)]
        assert now[0] > 0 and now[1] > 0, now
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name=f"Roll back to {primary}").click()
        expect(page.locator("main")).to_contain_text(f"Roll back to {primary}: done")
    finally:
        calling.set()
        caller.join()
    with server.client() as http:
        after = http.get("/api/v1/deployments/canary").json()
    assert [f"{r['model']}:{r['version']}" for r in after["routes"]] == [primary]
    expect(page.locator("section", has_text="Events")).to_contain_text("rolled_back")
    expect(rows).to_have_count(2)  # the page shows the deployment as it is now, and what the canary did
    expect(rows.nth(0)).to_contain_text(primary)
    expect(rows.nth(1)).to_contain_text(f"{second} (retired)")
    retired = after["stats"]["retired"]  # (the caller stopped before this was read)
    assert len(retired) == 1 and retired[0]["requests"] > 0
    expect(rows.nth(1).locator("td").nth(2)).to_have_text(f"{retired[0]['requests']:,}")
    assert page.get_by_role("button", name=f"Promote {second}").count() == 0


def test_a_rollout_shows_its_step_the_canary_answers_it_waits_for_and_its_latency_limit(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    one = register(server, "halves", scale_model(tmp_path / "one.onnx", 1.0)).version
    two = register(server, "halves", scale_model(tmp_path / "two.onnx", 2.0)).version
    with server.client() as http:
        http.post("/api/v1/deployments", json={
            "name": "stepped", "routes": [{"model": "halves", "version": one}, {"model": "halves", "version": two, "weight": 0}],
            "rollout": {"steps": [30, 100], "interval_s": 3600, "min_requests": 50},
            "rollback": {"max_error_rate": 0.1, "window_s": 120, "min_requests": 20, "max_p99_ms": 250, "max_p99_ratio": 1.5},
        }).raise_for_status()
        for _ in range(20):
            http.post("/v2/models/stepped/infer", json=infer_body(np.ones((1, 4), np.float32))).raise_for_status()
        answered = http.get("/api/v1/deployments/stepped").json()["stats"]["rollout"]["canary_answered"]
    assert 0 < answered < 20, answered
    sign_in(page, server, where="#/deployments/stepped")
    panel = page.locator("section", has=page.get_by_role("heading", name="Rollout", exact=True))
    expect(panel).to_contain_text("30% → 100%")
    expect(panel).to_contain_text("step 1 of 2: the canary gets 30%")
    expect(panel).to_contain_text(f"50 canary answers without error at this step ({answered} so far; counted by 1 server)")
    policy = page.locator("section", has=page.get_by_role("heading", name="Automatic rollback", exact=True))
    expect(policy).to_contain_text("error rate over 120 s passes 10% or the 99th percentile of its latency passes "
                                   "250 ms or 1.5 times the primary's, with at least 20 requests")
    # each route's window shows its errors and its p99 latency
    expect(page.locator('section:has-text("Traffic") tbody tr').first).to_contain_text(re.compile(r"errors of \d+ in 120 s, p99 [\d.]+ ms"))


def test_a_viewer_sees_no_buttons_it_could_not_use(page: Page, server: LiveServer, tmp_path: Path) -> None:
    primary, second = canary(server, tmp_path, "watched")
    with server.client() as http:
        key = http.post("/api/v1/keys", json={"name": "watcher", "role": "viewer"}).json()["secret"]
    sign_in(page, server, key=key, where="#/deployments/watched")
    expect(page.locator('section:has-text("Traffic") tbody tr')).to_have_count(2)
    expect(page.locator("section", has_text="Traffic")).to_contain_text(second)
    assert page.locator("button.action").count() == 0
    page.click("#sign-out")  # the same page for an admin: the buttons are there
    sign_in(page, server, where="#/deployments/watched")
    expect(page.get_by_role("button", name=f"Roll back to {primary}")).to_be_visible()
    expect(page.get_by_role("button", name=f"Promote {second}")).to_be_visible()


def test_a_running_job_draws_its_curves_as_its_epochs_end(page: Page, idle_server: LiveServer) -> None:
    with idle_server.client() as http:
        job = http.post("/api/v1/jobs", json={
            "type": "train", "model_name": "curves", "dataset": "builtin:digits", "recipe": "mlp", "epochs": 3,
        }).json()
    sign_in(page, idle_server, where=f"#/jobs/{job['id']}")
    expect(page.locator("section", has_text="About").locator(".badge")).to_have_text("queued")
    expect(page.locator("section", has_text="Training curves")).to_contain_text("The curves appear with the first epoch")
    assert idle_server.platform is not None
    for epoch in (1, 2, 3):  # what a training run reports as each epoch ends
        idle_server.platform.jobs.record(job["id"], "progress", {
            "epoch": epoch, "epochs": 3, "step": 10 * epoch, "train_loss": 2.0 / epoch, "val_loss": 2.2 / epoch,
            "metrics": {"accuracy": 0.3 * epoch}, "samples_per_s": 1000.0, "eta_s": 3 - epoch,
        })
        wait_until(lambda: page.locator('polyline[data-series="train loss"]').count() == 1
                   and polyline_points(page, "train loss") == epoch, timeout=15)
    assert polyline_points(page, "validation loss") == 3
    assert polyline_points(page, "validation accuracy") == 3
    expect(page.locator("section", has_text="About")).to_contain_text("epoch 3 of 3")
    # Cancelled from the page: the end of the job ends the stream, and the page shows the job as it ended.
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel the job").click()
    expect(page.locator("section", has_text="About").locator(".badge")).to_have_text("cancelled")
    assert page.get_by_role("button", name="Cancel the job").count() == 0
    with idle_server.client() as http:
        assert http.get(f"/api/v1/jobs/{job['id']}").json()["state"] == "cancelled"


def test_a_finished_training_run_shows_its_curves_and_its_model(page: Page, server: LiveServer) -> None:
    with server.client() as http:
        job = http.post("/api/v1/jobs", json={
            "type": "train", "model_name": "trained", "dataset": "builtin:digits", "recipe": "mlp", "epochs": 3,
        }).json()

        def finished() -> dict[str, Any]:
            return http.get(f"/api/v1/jobs/{job['id']}").json()
        deadline = time.monotonic() + 120
        while finished()["state"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, "the training job did not finish"
            time.sleep(0.2)
        done = finished()
    assert done["state"] == "succeeded", done["error"]
    sign_in(page, server, where="#/jobs")
    page.get_by_role("link", name=job["id"][:8]).click()
    expect(page.locator("section", has_text="About").locator(".badge")).to_have_text("succeeded")
    assert polyline_points(page, "train loss") == len(done["result"]["curves"]) == 3
    page.get_by_role("link", name=f"trained version {done['result']['version']}").click()
    expect(page.locator("h1")).to_have_text("Model trained")
    expect(page.locator('section:has-text("Versions") tbody tr').first).to_contain_text("training")


def test_a_key_whose_role_reads_less_sees_what_it_may(page: Page, server: LiveServer) -> None:
    with server.client() as http:
        created = http.post("/api/v1/keys", json={"name": "caller", "role": "inference"})
        created.raise_for_status()
        key = created.json()["secret"]
    sign_in(page, server, key=key)
    expect(page.locator("#who")).to_contain_text("inference")
    expect(page.locator(".card", has_text="models").locator(".value")).not_to_have_text("—")
    expect(page.locator(".card", has_text="deployments")).to_contain_text("not for this key's role")
    expect(page.locator("section", has_text="Requests per hour").get_by_role("alert")).to_contain_text("HTTP 403")
    page.click('#nav a[href="#/jobs"]')
    expect(page.get_by_role("alert")).to_contain_text("Your key's role may not read this")


def test_a_key_revoked_while_signed_in_sends_the_page_back_to_sign_in(page: Page, server: LiveServer) -> None:
    with server.client() as http:
        created = http.post("/api/v1/keys", json={"name": "short-lived", "role": "viewer"}).json()
    sign_in(page, server, key=created["secret"], where="#/deployments")
    expect(page.locator("h1")).to_have_text("Deployments")
    expect(page.locator("#deployment-name")).to_have_count(0)  # a viewer makes no deployment
    with server.client() as http:
        http.delete(f"/api/v1/keys/{created['id']}").raise_for_status()
    # The page refreshes every 2 s: its next call meets the revoked key.
    expect(page.get_by_role("alert")).to_contain_text("no longer accepts this key", timeout=20_000)
    expect(page.locator("form.sign-in")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0
    assert httpx.get(f"{server.url}/api/v1/whoami", headers={"Authorization": f"Bearer {created['secret']}"}).status_code == 401


def test_an_owner_makes_a_key_sees_its_secret_once_and_revokes_it(page: Page, server: LiveServer) -> None:
    sign_in(page, server, where="#/keys")
    expect(page.locator("h1")).to_have_text("API keys")
    page.fill("#key-name", "ci-deploys")
    page.select_option("#key-role", "viewer")
    page.fill("#key-scopes", "digits, web")
    page.fill("#key-days", "1")
    page.click("form.key-form button")
    secret = page.locator("#new-secret").text_content() or ""
    made = httpx.get(f"{server.url}/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"})
    assert made.status_code == 200 and made.json()["role"] == "viewer"
    row = page.locator("tr", has_text="ci-deploys")
    expect(row).to_contain_text("digits, web")
    expect(row).to_contain_text("active")
    assert secret not in page.locator("table").inner_text()  # the list shows prefixes only
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row.locator(".badge")).to_have_text("revoked")
    assert httpx.get(f"{server.url}/api/v1/whoami", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_a_bad_key_request_is_refused_with_the_servers_words_and_makes_nothing(page: Page, server: LiveServer) -> None:
    with server.client() as http:
        before = http.get("/api/v1/keys", params={"include_revoked": True}).json()["total"]
    sign_in(page, server, where="#/keys")
    page.fill("#key-name", "bad-scopes")
    page.fill("#key-scopes", "no spaces allowed!")
    page.click("form.key-form button")
    expect(page.locator("section", has_text="A new key").get_by_role("alert")).to_contain_text("HTTP 422")
    assert page.locator("#new-secret").count() == 0
    with server.client() as http:
        assert http.get("/api/v1/keys", params={"include_revoked": True}).json()["total"] == before


def test_the_keys_audit_and_tenants_pages_are_offered_only_to_roles_that_manage_them(page: Page, server: LiveServer) -> None:
    with server.client() as http:
        key = http.post("/api/v1/keys", json={"name": "dev", "role": "developer"}).json()["secret"]
    sign_in(page, server, key=key)
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator('#nav a[href="#/keys"]')).to_be_hidden()
    expect(page.locator('#nav a[href="#/audit"]')).to_be_hidden()
    expect(page.locator('#nav a[href="#/tenants"]')).to_be_hidden()
    page.goto(f"{server.url}/console/#/keys")  # typed in by hand: the server's refusal, said plainly
    expect(page.get_by_role("alert")).to_contain_text("Your key's role may not read this")


def test_an_admin_sees_every_tenant_creates_one_and_disables_it(page: Page, server: LiveServer) -> None:
    infer(server, "digits", 5)
    with server.client() as http:
        http.post("/api/v1/tenants", json={"name": "quoted", "quotas": {"requests_per_day": 1000, "stored_bytes": 2048}}
                  ).raise_for_status()
        me = http.get("/api/v1/whoami").json()["tenant"]

        def today() -> int:
            start = time.strftime("%Y-%m-%dT00:00:00Z", time.gmtime())
            return sum(r["requests"] for r in http.get("/api/v1/usage", params={"start": start}).json()["items"]
                       if r["tenant"] == me)
        wait_until(lambda: today() >= 5, timeout=20)
        served = today()
    sign_in(page, server)
    page.click('#nav a[href="#/tenants"]')
    expect(page.locator("h1")).to_have_text("Tenants")
    rows = page.locator("main tbody tr")
    quoted = rows.filter(has_text="quoted")
    expect(quoted).to_contain_text("1,000")
    expect(quoted).to_contain_text("2 KB")
    expect(quoted).to_contain_text("unlimited")  # the quotas it was not given
    own = rows.filter(has=page.get_by_role("cell", name=me, exact=True))
    expect(own).to_contain_text("this page's tenant")
    expect(own).to_contain_text(f"{served:,}")
    assert own.get_by_role("button").count() == 0  # disabling it would lock this page out

    page.select_option("#quota-tenant", "quoted")
    page.fill("#quota-requests_per_day", "lots")  # read in the page: nothing sent
    page.get_by_role("button", name="Change quotas").click()
    expect(page.get_by_role("alert")).to_contain_text('Requests a day: a number, or "unlimited"')
    page.fill("#quota-requests_per_day", "5000")
    page.fill("#quota-requests_per_second", "2.5")
    page.fill("#quota-concurrent_jobs", "3")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Change quotas").click()
    expect(quoted).to_contain_text("5,000")
    expect(quoted).to_contain_text("2.5")
    page.fill("#quota-stored_bytes", "unlimited")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Change quotas").click()
    expect(quoted).not_to_contain_text("2 KB")
    with server.client() as http:
        quotas = http.get("/api/v1/tenants/quoted").json()["quotas"]
    assert quotas == {"requests_per_second": 2.5, "requests_per_day": 5000, "tokens_per_day": None, "stored_bytes": None,
                      "concurrent_jobs": 3, "training_hours_per_month": None}  # what the form left empty kept its value

    page.fill("#tenant-name", "bad name!")  # refused by the server: shown, nothing made
    page.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_role("alert")).to_contain_text("HTTP 422")
    page.fill("#tenant-name", "made-here")
    page.get_by_role("button", name="Create tenant").click()
    expect(rows.filter(has_text="made-here")).to_contain_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    rows.filter(has_text="made-here").get_by_role("button", name="Disable").click()
    expect(rows.filter(has_text="made-here")).to_contain_text("disabled")
    with server.client() as http:
        assert http.get("/api/v1/tenants/made-here").json()["disabled"] is True
        assert http.get("/api/v1/tenants/bad name!").status_code == 404
    page.once("dialog", lambda dialog: dialog.accept())
    rows.filter(has_text="made-here").get_by_role("button", name="Enable").click()
    expect(rows.filter(has_text="made-here").get_by_role("button", name="Disable")).to_be_visible()
    with server.client() as http:
        assert http.get("/api/v1/tenants/made-here").json()["disabled"] is False


def test_weights_change_from_the_page_and_a_change_the_server_refuses_changes_nothing(
    page: Page, server: LiveServer, tmp_path: Path
) -> None:
    primary, second = canary(server, tmp_path, "weighed")
    sign_in(page, server, where="#/deployments/weighed")

    def apply(weights: dict[str, str]) -> None:
        for route, weight in weights.items():
            page.fill(f'form.weights input[data-route="{route}"]', weight)
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Apply weights").click()

    def weights_now() -> list[float]:
        with server.client() as http:
            return [r["weight"] for r in http.get("/api/v1/deployments/weighed").json()["routes"]]

    apply({primary: "50", second: "50"})
    expect(page.locator("main")).to_contain_text(f"Weights {primary} 50, {second} 50: done")
    assert weights_now() == [50.0, 50.0]
    expect(page.locator("section", has_text="Traffic")).to_contain_text(f"{second} 50%")
    expect(page.locator(f'form.weights input[data-route="{second}"]')).to_have_value("50")

    apply({primary: "0", second: "0"})  # no route left with traffic: the server says no
    expect(page.get_by_role("alert")).to_contain_text("HTTP 422")
    assert weights_now() == [50.0, 50.0]


def test_the_audit_log_shows_what_the_server_filters(page: Page, server: LiveServer) -> None:
    prefix = "/api/v1/deployments/audited"
    with server.client() as http:
        http.post("/api/v1/deployments", json={"name": "audited", "routes": [{"model": "digits", "version": 1}]}).raise_for_status()
        http.patch(prefix, json={"description": "seen"}).raise_for_status()
        http.delete(prefix).raise_for_status()

        def entries(**query: str) -> int:
            return int(http.get("/api/v1/audit", params={"object": prefix, **query}).json()["total"])
        wait_until(lambda: entries(action="DELETE") == 1, timeout=10)  # written in batches
        expected = entries()
    sign_in(page, server, where="#/audit")
    expect(page.locator("h1")).to_have_text("Audit log")
    page.fill("#audit-object", prefix)
    page.press("#audit-object", "Tab")
    rows = page.locator('section:has-text("entries") tbody tr')
    expect(rows).to_have_count(expected)
    page.select_option("#audit-action", "DELETE")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("DELETE")
    expect(rows.first).to_contain_text(prefix)
    expect(rows.first.locator(".badge")).to_have_text("204")


def test_datasets_show_their_columns_and_first_rows_as_the_api_describes_them(page: Page, server: LiveServer) -> None:
    csv = "width,height#,label\n1.5,2,a\n3,4.25,b\n,6,<b>c</b>\n"
    with server.client() as http:
        made = http.post("/api/v1/datasets", params={"name": "shapes", "format": "csv"}, content=csv.encode(),
                         headers={"content-type": "application/octet-stream"})
        assert made.status_code in (200, 201), made.text
        described = made.json()
    sign_in(page, server, where="#/datasets")
    expect(page.locator("tr", has_text="shapes")).to_contain_text("3")  # rows
    expect(page.get_by_role("link", name="builtin:digits")).to_be_visible()
    page.get_by_role("link", name="shapes").click()
    expect(page.locator("h1")).to_have_text("Dataset shapes")
    columns = page.locator('section:has-text("Columns") tbody tr')
    expect(columns).to_have_count(len(described["columns"]))
    for i, column in enumerate(described["columns"]):
        expect(columns.nth(i)).to_contain_text(column["name"])
        expect(columns.nth(i).locator("td").nth(3)).to_have_text(str(column["missing"]))
    expect(page.locator('section:has-text("rows") thead')).to_contain_text("height#")  # a name, shown as it is
    rows = page.locator('section:has-text("rows") tbody tr')
    expect(rows).to_have_count(len(described["preview"]))
    expect(rows.nth(2)).to_contain_text("<b>c</b>")  # a value with markup stays text
    assert page.locator("main b").count() == 0
    page.goto(f"{server.url}/console/#/datasets/builtin:iris")
    expect(page.locator("h1")).to_have_text("Dataset builtin:iris")
    expect(page.locator("section", has_text="Train on it")).to_contain_text("--dataset builtin:iris")
