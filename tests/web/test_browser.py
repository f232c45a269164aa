"""The web UI in a real browser (Debian's chromium, driven by playwright) on a real network.

Each flow signs in the way the API allows: with accounts (the schema has `signUp`) it
signs up through the UI; before accounts exist, on the development sign-in page that
names a client (X-Gpgpu-Client). Tests that need accounts skip, saying so, until the
schema has `signUp`. Screenshots of each main page go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.application import Network as DomainNetwork
from tests.e2e.network import ADMIN, Network, network
from tests.e2e.network import PASSWORD as ADMIN_PASSWORD
from tests.web.conftest import FAILED

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
DIST = ROOT / "web" / "dist"
SHOTS = ROOT / "test-artifacts" / "screenshots"
AXE = ROOT / "web" / "node_modules" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
CHROMIUM = Path("/usr/bin/chromium")
HELLO = ROOT / "examples" / "hello"
PASSWORD = "correct horse battery staple"
TIMEOUT_MS = 20_000

# The cheapest provider, started by the provider test (with the user's API key when the
# network has accounts), so the jobs placed during that test go to it.
OWN_PROVIDER = "web-own"


def _unavailable(reason: str) -> None:
    """Skip where a developer lacks the browser tools; in CI (`make test` installs them) fail."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs it: make test runs system-deps and web)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed: uv pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        _unavailable("chromium is missing: bash scripts/system-deps.sh as root "
                     "(apt-get install chromium)")
    if shutil.which("npm") and shutil.which("make"):  # a no-op when web/dist is up to date
        subprocess.run(["make", "--no-print-directory", "web"], cwd=ROOT, check=True)
    if not (DIST / "index.html").exists():
        _unavailable("the web UI is not built: make web (needs Node.js and npm)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def net(
    browser: Any, tmp_path_factory: pytest.TempPathFactory, temporal_server: str
) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("web")
    with network(home, temporal_server, [
        ("web-h100", "1xH100:80", "2.0", []),
        ("web-a100", "1xA100:40", "3.0", []),
    ], {"GPGPU_STARTING_BALANCE_MICRO": "100000000"}) as n:  # UI sign-ups: 100 credits
        yield n


@pytest.fixture(scope="module")
def has_accounts(net: Network) -> bool:
    fields = net.gql('{ __type(name: "Mutation") { fields { name } } }')["__type"]["fields"]
    return "signUp" in {f["name"] for f in fields}


@pytest.fixture
def needs_accounts(has_accounts: bool) -> None:
    if not has_accounts:
        pytest.skip("the API has no accounts yet: its schema lacks the mutation signUp "
                    "(issue 6's auth contract); these flows sign up and sign in")


@pytest.fixture
def page(browser: Any, net: Network, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(base_url=net.url, accept_downloads=True,
                                  viewport=DESKTOP)
    context.set_default_timeout(TIMEOUT_MS)
    p = context.new_page()
    errors: list[str] = []
    p.on("pageerror", lambda err: errors.append(str(err)))
    yield p
    if request.node.stash.get(FAILED, False):
        shot(p, f"failed-{request.node.name}")
    context.close()
    assert not errors, f"the page threw: {errors}"


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def shots(page: Any, name: str | None, axe: bool = False) -> None:
    """The page at a laptop's size and a phone's (NAME.png, NAME-phone.png; none without a
    name); on the phone it must not scroll sideways. With axe, axe-core scans it at both."""
    if axe:
        assert_accessible(page)
    if name:
        shot(page, name)
    page.set_viewport_size(PHONE)
    try:
        page.wait_for_timeout(150)
        assert_fits(page)
        if axe:
            assert_accessible(page)
        if name:
            shot(page, f"{name}-phone")
    finally:
        page.set_viewport_size(DESKTOP)


def assert_reachable(page: Any, *selectors: str) -> None:
    """On a phone, each of these (a button, a link, a table's cell) lies within the window's
    width as the page is, with nothing scrolled sideways (no column off to the right of a
    table that scrolls), and takes a click there (a trial click: nothing is pressed)."""
    page.set_viewport_size(PHONE)
    try:
        page.wait_for_timeout(150)
        assert_fits(page)
        for sel in selectors:
            target = page.locator(sel).first
            target.wait_for(state="visible")
            box = target.bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (
                f"{sel} is off-screen on a phone: {box}")
            target.click(trial=True)
    finally:
        page.set_viewport_size(DESKTOP)


def assert_title(page: Any, title: str) -> None:
    """The route sets its title once it has rendered: a moment after its URL (a redirect
    shows the page it left for that moment). Wait for it, then compare."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with contextlib.suppress(PlaywrightTimeout):  # the comparison below says what it was
        page.wait_for_function("t => document.title === t", arg=title, timeout=TIMEOUT_MS)
    assert page.title() == title, (page.url, page.title())


def assert_fits(page: Any) -> None:
    """Nothing makes the document wider than the window (no sideways scrolling)."""
    width, inner = page.evaluate(
        "[document.documentElement.scrollWidth, window.innerWidth]")
    if width > inner:  # name the elements that stick out, innermost first
        wide = page.evaluate("""inner => [...document.querySelectorAll("body *")]
            .filter(e => e.getBoundingClientRect().right > inner + 0.5)
            .reverse().slice(0, 5)
            .map(e => `${e.tagName.toLowerCase()}.${e.className} `
                      + `${Math.round(e.getBoundingClientRect().right)}px`)""",
                             inner)
        pytest.fail(f"{page.url} is {width} px wide in a {inner} px window: {wide}")


def axe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical findings on the page as it is now."""
    if not AXE.exists():
        _unavailable("axe-core is not installed: cd web && npm ci")
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    return list(page.evaluate("""async () => {
        const r = await axe.run(document, { resultTypes: ["violations"] });
        return r.violations.filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => `${v.id} (${v.impact}): ${v.help} at ` +
                      v.nodes.slice(0, 3).map(n => n.target.join(" ")).join(" | "));
    }"""))


def assert_accessible(page: Any) -> None:
    found = axe_violations(page)
    assert not found, f"{page.url}: " + "\n".join(found)


def enter(page: Any, has_accounts: bool, name: str, roles: list[str]) -> None:
    """Sign up (with accounts) or name a client (without); lands on the role's start page."""
    page.goto("/")
    page.wait_for_url("**/signin")
    if has_accounts:
        page.click("text=Create an account")
        page.wait_for_url("**/signup")
        page.fill("input[name=email]", f"{name}@example.test")
        page.fill("input[name=password]", PASSWORD)
    else:
        page.fill("input[name=client]", name)
    for role in ("client", "provider", "operator"):
        page.set_checked(f"input[name=role-{role}]", role in roles)
    page.click("button[type=submit]")
    page.wait_for_selector("header.top")


def session_of(page: Any) -> dict[str, Any]:
    raw = page.evaluate("localStorage.getItem('gpgpu.session')")
    assert raw, "no session in localStorage"
    return json.loads(raw)


def gql_as(net: Network, page: Any, query: str, **variables: Any) -> dict[str, Any]:
    """A GraphQL call as the browser's signed-in user (bearer token or client header)."""
    s = session_of(page)
    headers = ({"Authorization": f"Bearer {s['token']}"} if s["mode"] == "auth"
               else {"X-Gpgpu-Client": s["user"]["clientId"]})
    r = net.http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    r.raise_for_status()
    body = r.json()
    assert "errors" not in body, body["errors"]
    return body["data"]


def nav(page: Any, label: str, url: str) -> None:
    page.click(f"header.top nav >> text={label}")
    page.wait_for_url(f"**{url}")


def switch_role(page: Any, role: str) -> None:
    page.select_option("[data-testid=role-switch]", role)


def test_the_api_serves_the_ui_and_its_routes(net: Network) -> None:
    index = net.http.get("/")
    assert index.status_code == 200 and '<div id="app">' in index.text
    # A client-side route (a reload on a job page) gets the same page; a missing asset a 404.
    deep = net.http.get("/client/jobs/3f2a")
    assert deep.status_code == 200 and deep.text == index.text
    assert net.http.get("/assets/nothing-here.js").status_code == 404
    asset = re.search(r'src="(/assets/[^"]+\.js)"', index.text)
    assert asset and net.http.get(asset.group(1)).status_code == 200
    assert net.http.get("/healthz").json()["status"] == "ok"


def test_client_uploads_runs_a_job_watches_it_and_downloads_the_output(
    page: Any, net: Network, has_accounts: bool, tmp_path: Path
) -> None:
    enter(page, has_accounts, "web-alice", ["client"])
    if not has_accounts:
        shot(page, "jobs-empty")

    # Storage: upload two files, each with a progress bar that ends at "uploaded".
    nav(page, "My files", "/client/storage")
    page.fill("input[name=folder]", "inputs/")
    page.set_input_files("[data-testid=upload-input]", [HELLO / "hello.py", HELLO / "input.txt"])
    for key in ("inputs/hello.py", "inputs/input.txt"):
        page.wait_for_selector(f'[data-testid=uploads] li[data-key="{key}"][data-done=yes]')
        page.wait_for_selector(f'[data-testid=objects] tr[data-key="{key}"]')
    assert "uploaded" in page.inner_text('[data-testid=uploads] li[data-key="inputs/hello.py"]')
    assert page.get_attribute("[data-testid=uploads] [role=progressbar]", "aria-valuenow") == "100"
    shots(page, "client-storage")

    # The job form: the live explanation follows the fields, refusals as the API words them.
    nav(page, "New job", "/client/jobs/new")
    page.fill("input[name=name]", "hello")
    page.fill("input[name=command]", "python3 hello.py")
    page.check('input[name=input][value="inputs/hello.py"]')
    page.check('input[name=input][value="inputs/input.txt"]')
    page.fill("textarea[name=outputs]", "out/result.txt")
    page.fill("input[name=gpus]", "0")
    page.wait_for_selector(
        "[data-testid=explain] >> text=GPUs (resources.gpus): must be at least 1")
    page.fill("input[name=gpus]", "1")
    page.fill("input[name=minMemoryGb]", "60")
    page.select_option("select[name=isolation]", "full")  # the web's providers are bwrap
    page.fill("input[name=maxPrice]", "4")
    page.fill("input[name=timeout]", "2m")
    # The explanation of the fields as they are now (an earlier one, for the form's first
    # price and time limit, may still be shown a moment: CI read 0.416667 from it).
    page.wait_for_selector("[data-testid=held] >> text=0.133334")
    # web-a100 has 40 GB: the explanation names it among the rejected, with its reason.
    page.wait_for_selector("[data-testid=rejections] >> text=web-a100")
    # What the quote says is held is what escrow holds: the most per GPU-hour for the
    # whole time limit (4 credits x 1 GPU x 2 min = 0.133333 per run), not the cheapest offer.
    held = page.inner_text("[data-testid=held]")
    assert float(held) >= 0.133333 and float(held) > float(page.inner_text("[data-testid=quote]"))
    assert_accessible(page)
    shots(page, "client-new-job")
    page.click("button:has-text('Submit job')")

    # The job page follows the job live (subscription jobEvents) to its end.
    page.wait_for_url(re.compile(r".*/client/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("[data-testid=job-state] >> text=SUCCEEDED", timeout=120_000)
    page.wait_for_selector("[data-testid=job-events] >> text=JobSucceeded")
    # The form asked for full isolation, and the job as recorded has it.
    recorded = DomainNetwork(env=net.stack.settings.eventsourcing_env()).job(job_id)
    assert recorded.spec["resources"]["isolation"] == "full", recorded.spec
    assert "wrote out/result.txt" in page.inner_text("[data-testid=job-log]")
    assert "credits" in page.inner_text("[data-testid=job-cost]")
    assert page.get_attribute("[data-testid=job-progress] [role=progressbar]",
                              "aria-valuenow") == "100"
    assert_accessible(page)  # the progress label's contrast among the rest
    shots(page, "client-job")
    assert_reachable(page, '[data-testid="download-out/result.txt"]')

    with page.expect_download() as download:
        page.click('[data-testid="download-out/result.txt"]')
    saved = tmp_path / "result.txt"
    download.value.save_as(saved)
    lines = (HELLO / "input.txt").read_text().splitlines()
    expected = "\n".join(line.upper() for line in lines) + "\nlines: 3\nCUDA_VISIBLE_DEVICES: 0\n"
    assert saved.read_text() == expected

    nav(page, "My jobs", "/client/jobs")
    page.wait_for_selector(f'[data-testid=jobs] tr[data-job="{job_id}"] >> text=succeeded')
    shots(page, "client-jobs")
    assert_reachable(page, f'[data-testid=jobs] tr[data-job="{job_id}"] td:last-child')  # cost
    nav(page, "Balance", "/client/account")
    page.wait_for_selector("[data-testid=ledger] >> text=held for a job")
    page.wait_for_selector("[data-testid=ledger] >> text=returned from a job")
    balance = page.inner_text("[data-testid=balance]")
    assert balance.startswith("99.9"), balance  # 100 credits, less the job's cost
    ledger = page.inner_text("[data-testid=ledger]")
    assert f"-{held}" in ledger, (held, ledger)  # held as the quote said
    assert "escrow:" not in ledger and f"job {job_id[:8]}" in ledger  # in words, a link
    assert re.fullmatch(r"[\d,]+\.\d{6} credits", balance), balance  # one precision
    shots(page, "client-balance")
    assert_reachable(page, "[data-testid=ledger] tbody tr:first-child td:last-child")

    nav(page, "My files", "/client/storage")  # a delete asks first
    row = '[data-testid=objects] tr[data-key="inputs/input.txt"]'
    page.click(f"{row} button:has-text('Delete')")
    page.click(f"{row} button:has-text('Yes, delete')")
    page.wait_for_selector(row, state="detached")
    assert page.is_visible('[data-testid=objects] tr[data-key="inputs/hello.py"]')


def test_the_job_page_shows_the_output_live_while_the_job_runs(
    page: Any, net: Network, has_accounts: bool
) -> None:
    enter(page, has_accounts, "web-logger", ["client"])
    spec = {"name": "ticking", "max_price_per_gpu_hour": "4", "timeout": "2m",
            "command": "for i in 1 2 3 4 5 6; do echo tick $i; sleep 1; done"}
    submitted = gql_as(net, page, """mutation($s: JSON!) { submitJob(spec: $s) {
        ... on JobSubmitted { job { id } } } }""", s=spec)
    job_id = submitted["submitJob"]["job"]["id"]
    page.goto(f"/client/jobs/{job_id}")
    log = "[data-testid=job-log]"
    assert page.get_attribute(log, "role") == "log"
    assert page.get_attribute(log, "aria-label") == "Job output"
    box = page.locator(log).bounding_box()
    page.wait_for_selector(f"{log} >> text=tick 1", timeout=60_000)
    # The first line is on the page while the job still runs, and the box kept its size.
    assert page.inner_text("[data-testid=job-state]") == "RUNNING"
    assert "Live" in page.inner_text("[data-testid=job-log-status]")
    assert page.locator(log).bounding_box()["height"] == box["height"]
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(150)
    assert_fits(page)
    assert_accessible(page)
    page.set_viewport_size(DESKTOP)
    page.wait_for_selector("[data-testid=job-state] >> text=SUCCEEDED", timeout=60_000)
    text = page.inner_text(log)
    assert text.strip() == "\n".join(f"tick {i}" for i in range(1, 7)), text
    assert "has ended" in page.inner_text("[data-testid=job-log-status]")
    shots(page, "client-job-live-log")


def test_a_pasted_spec_is_explained_and_refused_field_by_field(
    page: Any, has_accounts: bool
) -> None:
    enter(page, has_accounts, "web-paste", ["client"])
    nav(page, "New job", "/client/jobs/new")
    # The form: a refusal shows once, under its field, which is marked invalid and focused.
    page.fill("input[name=gpus]", "0")
    page.click("button:has-text('Submit job')")
    page.wait_for_selector("[data-testid=refused] >> text=see the fields marked above")
    gpus = "input[name=gpus]"
    assert page.get_attribute(gpus, "aria-invalid") == "true"
    page.wait_for_function("document.activeElement && document.activeElement.name === 'gpus'")
    form = page.inner_text("[data-testid=job-form]")
    assert form.count("must be at least 1") == 1 and "Input should be" not in form, form
    assert page.inner_text("[id='err-resources.gpus']") == "must be at least 1"
    # The sample spec runs as it is: the live check finds no fault in it.
    page.click("text=Paste a job spec (YAML/JSON)")
    assert not page.is_visible("[data-testid=refused]")  # the form's refusal stays there
    page.wait_for_selector("[data-testid=explain] >> text=It can start now")
    assert "Fix these first" not in page.inner_text("[data-testid=explain]")
    page.fill("textarea[name=spec]", "name: x\ncommand: [true]\nmax_price_per_gpu_hour: '2'\n"
                                     "resources: {gpus: 1, colour: red}\n")
    page.wait_for_selector("[data-testid=explain] >> text=resources.colour: is not a known field")
    page.fill("textarea[name=spec]", "name: [unclosed\n")
    page.wait_for_selector("[data-testid=explain] >> text=not valid YAML or JSON")
    caret = page.eval_on_selector("[data-testid=explain] pre.error",
                                  "e => getComputedStyle(e).fontFamily")
    assert "mono" in caret.lower(), caret  # the ^ under the fault lines up
    page.fill("textarea[name=spec]", '{"name": "x", "command": ["true"], '
                                     '"max_price_per_gpu_hour": "2", "timeout": "9d"}')
    page.wait_for_selector("[data-testid=explain] >> text=Time limit (timeout):")
    page.click("button:has-text('Submit job')")
    page.wait_for_selector("[data-testid=refused] >> text=Time limit (timeout):")
    assert page.url.endswith("/client/jobs/new")  # nothing was recorded


def test_provider_sees_its_gpu_go_busy_and_its_earnings_rise(
    page: Any, net: Network, has_accounts: bool
) -> None:
    enter(page, has_accounts, "web-prov", ["client"] if has_accounts else ["client", "provider"])
    env = dict(net.stack.env)
    if has_accounts:  # the agent joins the account whose API key it holds
        # A client who starts offering GPUs takes on the provider role, then makes the key.
        page.click("header.top nav >> text=Settings")
        page.click("[data-testid=add-role-provider]")
        page.wait_for_selector("text=You can act as GPU provider now")
        assert page.inner_text("[data-testid=roles-held]") == "You act as Client, GPU provider."
        page.click("header.top nav >> text=API keys")
        page.fill("input[name=key-name]", "gpu-box")
        page.check("input[name=scope-provider]")
        page.click("button:has-text('Create key')")
        env["GPGPU_API_KEY"] = page.inner_text("[data-testid=new-key]").strip()
    own, gpus, price = OWN_PROVIDER, "1xH100:80", "1.0"
    if has_accounts:
        # The page's copy-paste block, filled in: install, this API's URL, the key, an id
        # of the user's own, the price asked for, --simulate; the agent starts as it says.
        page.fill("input[name=start-price]", "1.0")
        shots(page, "api-keys", axe=True)  # the new key, with the block that starts an agent
        block = page.inner_text("[data-testid=provider-start-block]")
        assert "pip install" in block, block
        assert f"export GPGPU_API_URL={net.url}\n" in block, block
        assert f"export GPGPU_API_KEY={env['GPGPU_API_KEY']}\n" in block, block
        started = re.search(r"^gpgpu provider start --provider-id (web-prov-gpus-[0-9a-f]{4}) "
                            r"--price (\S+) --simulate (\S+)$", block, re.M)
        assert started, block
        own, price, gpus = started[1], started[2], started[3]
        assert (price, gpus) == ("1.0", "1xH100:80")
        env["GPGPU_API_URL"] = block.split("GPGPU_API_URL=")[1].split("\n")[0]
    saved, net.stack.env = net.stack.env, env
    try:
        net.stack.start_provider(own, gpus, price)
    finally:
        net.stack.env = saved
    net.wait_providers_online([own])

    switch_role(page, "provider")
    page.wait_for_url("**/provider")
    card = f"[data-provider={own}]"
    page.wait_for_selector(card, timeout=60_000)
    page.goto(f"/provider/{own}")  # its own page: a deep link the API serves
    page.wait_for_selector(f"{card} [data-testid=gpus] tr[data-gpu='0'] [data-status=online]",
                           timeout=60_000)
    assert page.inner_text(f"{card} [data-testid=earned]") == "0.000000 credits"
    page.wait_for_selector(f"{card} [data-testid=chart-util] canvas")
    shots(page, None, axe=True)  # filled in: its GPU online, its charts, its earnings

    # A job of this user's client role goes to the cheapest GPU: this provider's.
    job = gql_as(net, page, """mutation($s: JSON!) { submitJob(spec: $s) { __typename
        ... on JobSubmitted { job { id } } ... on SpecRejected { errors { field message } } } }""",
                 s={"name": "busy", "command": "sleep 6; echo done", "timeout": "2m",
                    "max_price_per_gpu_hour": "1.5"})["submitJob"]
    assert job["__typename"] == "JobSubmitted", job
    page.wait_for_selector(f"{card} [data-testid=gpus] tr[data-gpu='0'] [data-status=busy]",
                           timeout=60_000)
    assert job["job"]["id"][:8] in page.inner_text(f"{card} [data-testid=gpus]")
    shot(page, "provider-busy")
    page.wait_for_selector(f"{card} [data-testid=gpus] tr[data-gpu='0'] [data-status=online]",
                           timeout=90_000)
    page.wait_for_function(
        """sel => { const el = document.querySelector(sel);
                    return el && el.textContent !== '0.000000 credits'; }""",
        arg=f"{card} [data-testid=earned]", timeout=60_000,
    )
    earned = page.inner_text(f"{card} [data-testid=earned]")
    assert float(earned.split()[0]) > 0, earned
    page.wait_for_selector(f"{card} [data-testid=ledger] >> text=paid for GPU time")
    page.wait_for_selector(f"{card} [data-testid=reputation] [data-outcome=success] >> text=1")
    assert page.inner_text(f"{card} [data-testid=earned-verified]") == earned  # it was verified

    # A job cancelled while it runs pays for the time it used, but that is no verified work.
    job = gql_as(net, page, """mutation($s: JSON!) { submitJob(spec: $s) {
        ... on JobSubmitted { job { id } } } }""",
                 s={"name": "cancelled", "command": "sleep 60", "timeout": "2m",
                    "max_price_per_gpu_hour": "1.5"})["submitJob"]["job"]
    page.wait_for_selector(f"{card} [data-testid=gpus] tr[data-gpu='0'] [data-status=busy]",
                           timeout=60_000)
    page.wait_for_timeout(2000)
    gql_as(net, page, "mutation($id: ID!) { cancelJob(id: $id) { ... on Job { id } } }",
           id=job["id"])
    page.wait_for_function(
        """([sel, before]) => { const el = document.querySelector(sel);
                                return el && el.textContent !== before; }""",
        arg=[f"{card} [data-testid=earned]", earned], timeout=60_000,
    )
    assert page.inner_text(f"{card} [data-testid=earned-verified]") == earned
    assert float(page.inner_text(f"{card} [data-testid=earned]").split()[0]) > float(
        earned.split()[0])

    # Its controls: suspend and resume a GPU; a price the API refuses, then one it takes.
    assert_reachable(page, f"{card} [data-testid=suspend-0]")
    page.click(f"{card} [data-testid=suspend-0]")
    page.wait_for_selector(f"{card} tr[data-gpu='0'] [data-status=suspended]")
    shots(page, "provider")
    assert_reachable(page, f"{card} [data-testid=resume-0]")
    page.click(f"{card} [data-testid=resume-0]")
    page.wait_for_selector(f"{card} tr[data-gpu='0'] [data-status=online]")
    page.fill(f"{card} input[name=price]", "cheap")
    page.click(f"{card} button:has-text('Set price')")
    page.wait_for_selector(f"{card} .price-form .error >> text=pricePerGpuHour:")
    page.fill(f"{card} input[name=price]", "1.25")
    page.click(f"{card} button:has-text('Set price')")
    page.wait_for_selector(f"{card} >> text=1.25 credits / GPU-hour")


def test_the_provider_block_run_as_shown_brings_a_provider_online(
    page: Any, net: Network, needs_accounts: None, tmp_path: Path
) -> None:
    """The API keys page's block, copied as shown and run in a fresh virtualenv (a machine
    with Python and no checkout): it installs the agent from this network's
    wheel (/downloads/gpgpu-<version>-py3-none-any.whl), starts it with --simulate, and My
    GPUs shows it online."""
    enter(page, True, "web-paster", ["client", "provider"])
    nav(page, "API keys", "/keys")
    page.fill("input[name=key-name]", "the-gpu-box")
    page.set_checked("input[name=scope-client]", False)
    page.set_checked("input[name=scope-provider]", True)
    page.click("button:has-text('Create key')")
    page.wait_for_selector("[data-testid=provider-start-block][data-package=wheel]")
    block = page.inner_text("[data-testid=provider-start-block]")
    wheel = f"/downloads/gpgpu-{VERSION}-py3-none-any.whl"  # no build step on the machine
    assert block.startswith("# 1.") and f"\npip install {net.url}{wheel}\n" in block
    own = re.search(r"--provider-id (\S+)", block)
    assert own and "--simulate" in block, block

    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GPGPU_") and k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep)
                                  if not d.startswith(str(ROOT)))
    env["HOME"] = str(tmp_path)  # no checkout, nothing of this one's settings
    log = tmp_path / "block.log"
    with log.open("w") as out:
        agent = subprocess.Popen(
            ["bash", "-ec", f". {tmp_path / 'venv' / 'bin' / 'activate'}\n{block}"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        card = f"[data-provider={own[1]}]"
        deadline, online = time.monotonic() + 420, False  # pip fetches its dependencies
        while not online and agent.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
            gpus = gql_as(net, page, "{ providers { providerId status } }")["providers"]
            online = any(g["providerId"] == own[1] and g["status"] == "online" for g in gpus)
        assert online and agent.poll() is None, (
            f"not online (the block's exit: {agent.returncode}):\n{log.read_text()[-3000:]}")
        switch_role(page, "provider")
        page.wait_for_url("**/provider")
        page.wait_for_selector(f"{card} [data-testid=gpus] tr[data-gpu='0'] [data-status=online]",
                               timeout=60_000)
        installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages"
        assert (installed / "worker_gpu" / "__main__.py").is_file()  # from the archive
        # A provider's machine gets the agent and nothing of the control plane.
        assert not [m for m in ("temporalio", "eventsourcing", "strawberry", "psycopg")
                    if (installed / m).exists()], sorted(p.name for p in installed.iterdir())
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGINT)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait(timeout=10)


def test_operator_sees_queues_waiting_jobs_and_gpus(
    page: Any, net: Network, has_accounts: bool
) -> None:
    enter(page, has_accounts, "web-op", ["client", "operator"])
    switch_role(page, "operator")
    page.wait_for_url("**/operator")
    form = "[data-testid=register-node]"
    page.fill(f"{form} input[name=node-id]", "web-node")
    page.fill(f"{form} input[name=region]", "eu-west")
    page.click(f"{form} button[type=submit]")
    node = "[data-node=web-node]"
    page.wait_for_selector(f"{node} [data-testid=queues-web-node] tr[data-queue=default]")
    page.click(f"{node} summary:has-text('Add a queue')")
    page.fill(f"{node} details input[name=queue-name]", "b200")
    page.fill(f"{node} details input[name=models]", "B200")
    page.fill(f"{node} details input[name=levels]", "3")
    page.click(f"{node} details button:has-text('Add queue')")
    page.wait_for_selector(f"{node} tr[data-queue=b200] >> text=B200")

    # A client's job for a GPU class nobody offers waits in that queue, first in line.
    switch_role(page, "client")
    page.wait_for_url("**/client/jobs")
    nav(page, "New job", "/client/jobs/new")
    page.fill("input[name=name]", "waits")
    page.fill("input[name=command]", "true")
    page.select_option("select[name=queue]", "web-node/b200")
    page.fill("input[name=priority]", "2")
    page.wait_for_selector("[data-testid=explain] >> text=No provider can run it right now")
    page.click("button:has-text('Submit job')")
    page.wait_for_url(re.compile(r".*/client/jobs/[0-9a-f-]{36}$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("[data-testid=queue-position] >> text=1")
    # What it waits for, in words: nobody offers a GPU on that node.
    page.wait_for_selector("[data-testid=waiting-for] >> text=no provider has joined node "
                           "web-node yet")
    # A job priced below every offer says so, provider by provider.
    cheap = gql_as(net, page, """mutation($s: JSON!) { submitJob(spec: $s) { __typename
        ... on JobSubmitted { job { id } } } }""", s={
        "name": "cheap", "command": "true", "timeout": "1m",
        "max_price_per_gpu_hour": "0.1"})["submitJob"]["job"]["id"]
    page.goto(f"/client/jobs/{cheap}")
    page.wait_for_selector("[data-testid=waiting-for] >> text=no provider can take it now")
    said = page.inner_text("[data-testid=waiting-for]")
    assert "web-h100: price above the job's maximum" in said, said
    gql_as(net, page, "mutation($id: ID!) { cancelJob(id: $id) { ... on Job { id } } }",
           id=cheap)

    switch_role(page, "operator")
    page.wait_for_url("**/operator")
    waiting = f"{node} [data-testid='waiting-web-node/b200']"
    page.wait_for_selector(f"{waiting} tr[data-job='{job_id}']")
    cells = page.eval_on_selector_all(f"{waiting} tr[data-job='{job_id}'] td",
                                      "tds => tds.map(td => td.textContent.trim())")
    assert cells[0] == "1" and cells[1] == "waits" and cells[4] == "2", cells  # position, priority
    assert cells[6] == "not enough usable GPUs", cells  # nobody offers a B200
    # Why, in words: none joined, and what one must have for the job to start.
    assert cells[7].startswith("no provider has joined node web-node yet: the job waits until "
                               "one that has 1 GPU"), cells
    if not has_accounts:  # the development network shows every node: the default one too
        local = "[data-node=local]"
        page.wait_for_selector(f"{local} [data-testid=node-gpus-local] >> text=web-h100")
        page.wait_for_selector(f"{local} [data-testid=providers-local] >> text=web-a100")
    shots(page, "operator", axe=True)

    # The client cancels it from the job page.
    page.goto(f"/client/jobs/{job_id}")
    page.click("button:has-text('Cancel job')")  # it asks first; "no" keeps the job
    page.click("button:has-text('No, let it run')")
    page.click("button:has-text('Cancel job')")
    page.click("button:has-text('Yes, cancel it')")
    page.wait_for_selector("[data-testid=job-state] >> text=CANCELLED", timeout=60_000)


def test_sign_up_sign_in_roles_and_api_keys(page: Any, needs_accounts: None) -> None:
    page.goto("/")
    page.wait_for_url("**/signin")
    shots(page, "sign-in")
    page.click("text=Create an account")
    page.fill("input[name=email]", "web-everyone@example.test")
    page.fill("input[name=password]", PASSWORD)
    for role in ("client", "provider", "operator"):
        page.set_checked(f"input[name=role-{role}]", True)
    shots(page, "sign-up")
    page.click("button[type=submit]")
    page.wait_for_selector("header.top")
    assert page.inner_text("[data-testid=who]") == "web-everyone@example.test"
    s = session_of(page)
    assert s["mode"] == "auth" and s["token"]
    assert sorted(s["user"]["roles"]) == ["client", "operator", "provider"]
    assert s["user"]["clientId"]
    options = page.eval_on_selector_all("[data-testid=role-switch] option",
                                        "os => os.map(o => o.value)")
    assert options == ["client", "provider", "operator"]
    switch_role(page, "provider")
    page.wait_for_url("**/provider")
    switch_role(page, "operator")
    page.wait_for_url("**/operator")

    # The same email again is refused, in the API's words, under the field it is about.
    page.click("button:has-text('Sign out')")
    page.wait_for_url("**/signin")
    assert page.evaluate("localStorage.getItem('gpgpu.session')") is None
    page.click("text=Create an account")
    page.fill("input[name=email]", "web-everyone@example.test")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=err-email] >> text=already registered")
    assert page.get_attribute("input[name=email]", "aria-invalid") == "true"

    # A wrong password is refused; the right one signs in; a reload keeps the session.
    page.click("text=Sign in")
    page.wait_for_url("**/signin")
    page.fill("input[name=email]", "web-everyone@example.test")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=err-password] >> text=do not match an account")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("header.top")
    page.reload()
    page.wait_for_selector("[data-testid=who] >> text=web-everyone@example.test")

    # API keys: the key is shown once, listed without it, and revoked.
    page.click("header.top nav >> text=API keys")
    page.wait_for_url("**/keys")
    page.fill("input[name=key-name]", "laptop")
    page.click("button:has-text('Create key')")
    key = page.inner_text("[data-testid=new-key]").strip()
    assert len(key) >= 16
    page.wait_for_selector("[data-testid=api-keys] tr[data-key-name=laptop]")
    assert key not in page.inner_text("[data-testid=api-keys]")
    page.click("[data-testid=api-keys] tr[data-key-name=laptop] button:has-text('Revoke')")
    page.wait_for_selector("[data-testid=api-keys] tr[data-key-name=laptop]", state="detached")

    # A new password: the wrong current one is refused by name; then this session goes on
    # (with the token the change answered) and the old password no longer signs in.
    old_token = session_of(page)["token"]
    nav(page, "Settings", "/settings")
    page.fill("input[name=current-password]", "not the password")
    page.fill("input[name=new-password]", "a new password 2")
    page.click("button:has-text('Change password')")
    page.wait_for_selector(".error >> text=currentPassword")
    page.fill("input[name=current-password]", PASSWORD)
    page.fill("input[name=new-password]", "a new password 2")
    page.click("button:has-text('Change password')")
    page.wait_for_selector("text=Your other sessions have been signed out")
    assert session_of(page)["token"] not in (None, old_token)
    page.reload()
    page.wait_for_selector("[data-testid=who] >> text=web-everyone@example.test")
    page.click("button:has-text('Sign out')")
    page.wait_for_url("**/signin")
    page.fill("input[name=email]", "web-everyone@example.test")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("[data-testid=err-password] >> text=do not match an account")
    page.fill("input[name=password]", "a new password 2")
    page.click("button[type=submit]")
    page.wait_for_selector("header.top")


# The main pages a user with every role reaches, with the title each has of its own.
MAIN_PAGES = [
    ("/client/jobs", "My jobs · GPGPU", "client-jobs"),
    ("/client/jobs/new", "New job · GPGPU", "client-new-job"),
    ("/client/storage", "My files · GPGPU", "client-storage"),
    ("/client/account", "Balance · GPGPU", "client-balance"),
    ("/client/jobs/00000000-0000-4000-8000-000000000000", "Job 00000000 · GPGPU",
     "client-job-not-found"),
    ("/provider", "My GPUs · GPGPU", "provider-empty"),
    ("/operator", "My node · GPGPU", "operator-empty"),
    ("/keys", "API keys · GPGPU", "api-keys"),
    ("/settings", "Settings · GPGPU", "settings"),
    ("/market", "Market · GPGPU", "market"),
]


# Main pages shown as a new account sees them, under their own name (docs/screenshots).
OWN_SHOTS = {"client-job-not-found", "provider-empty", "settings"}


def test_every_main_page_fits_a_phone_has_its_title_and_passes_axe(
    browser: Any, net: Network, needs_accounts: None
) -> None:
    """At 390x844 and 1280x900: no page scrolls sideways, each route has its own title,
    axe-core finds nothing serious or critical; keyboard users get a skip link, focus on
    the new page's heading, and arrow keys on the job form's tabs."""
    context = browser.new_context(base_url=net.url, viewport=PHONE)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        # Signed out: a deep link goes to sign-in, and from there back to where it pointed.
        page.goto("/client/account")
        page.wait_for_url("**/signin")
        assert_title(page, "Sign in · GPGPU")
        assert_fits(page)
        assert_accessible(page)
        page.click("text=Create an account")
        page.wait_for_url("**/signup")
        assert_title(page, "Create an account · GPGPU")
        assert_accessible(page)
        page.fill("input[name=email]", "web-a11y@example.test")
        page.fill("input[name=password]", PASSWORD)
        for role in ("client", "provider", "operator"):
            page.set_checked(f"input[name=role-{role}]", True)
        page.click("button[type=submit]")
        page.wait_for_url("**/client/account")
        page.wait_for_selector("[data-testid=balance]")

        # The header on a phone: compact, Sign out and the role switch on screen.
        header = page.eval_on_selector("header.top", "h => h.getBoundingClientRect().height")
        assert header <= 110, f"the header takes {header} px of 844"
        for sel in ("button:has-text('Sign out')", "[data-testid=role-switch]"):
            box = page.locator(sel).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (sel, box)
        # Every link of the nav is on screen (it wraps; it does not scroll sideways).
        links = page.eval_on_selector_all("header.top nav a", "as => as.map(a => a.textContent)")
        assert {"Market", "API keys", "Settings"} <= set(links), links
        assert_reachable(page, *[f"header.top nav a:text-is('{label}')" for label in links])
        page.set_viewport_size(PHONE)

        titles = set()
        for size, viewport in (("phone", PHONE), ("", DESKTOP)):
            page.set_viewport_size(viewport)
            for url, title, name in MAIN_PAGES:
                page.goto(url)
                page.wait_for_selector("main h1")
                page.wait_for_load_state("networkidle")
                assert_title(page, title)
                titles.add(page.title())
                assert_fits(page)
                assert_accessible(page)
                # A new account's pages; those no other test shows under their own name.
                shown = name if name in OWN_SHOTS else f"fresh-{name}"
                shot(page, f"{shown}-phone" if size else shown)
                if name == "client-job-not-found":  # a page of its own, with ways on
                    assert page.is_visible("[data-testid=job-not-found] >> text=See all my jobs")
        assert len(titles) == len(MAIN_PAGES)

        # The keyboard: the first Tab reaches the skip link, which lands in the page.
        page.goto("/client/jobs")
        page.wait_for_selector("main h1")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to the page"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "main"
        # After a navigation the new page's heading has focus, not the link clicked.
        page.click("header.top nav >> text=New job")
        page.wait_for_function("document.activeElement && document.activeElement.tagName === 'H1'")
        assert page.evaluate("document.activeElement.textContent") == "New job"
        # The tabs: arrow keys move between them and show their panel.
        page.focus("#tab-form")
        page.keyboard.press("ArrowRight")
        page.wait_for_selector("textarea[name=spec]")
        assert page.evaluate("document.activeElement.id") == "tab-paste"
        assert page.get_attribute("#tab-paste", "aria-selected") == "true"
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector("input[name=command]")
        assert page.evaluate("document.activeElement.id") == "tab-form"
    finally:
        context.close()
    assert not errors, f"the page threw: {errors}"


def test_an_admin_sees_every_node_and_anyone_the_market(
    page: Any, net: Network, needs_accounts: None
) -> None:
    """The network's admin, acting as node operator, sees the `local` node (its queues, its
    GPUs, its providers) that no operator account registered; the market lists every
    provider's GPUs, the cheapest first, filtered by model."""
    page.goto("/signin")
    page.fill("input[name=email]", f"{ADMIN}@e2e.test")
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("header.top")
    switch_role(page, "operator")
    page.wait_for_url("**/operator")
    local = "[data-node=local]"
    page.wait_for_selector(f"{local} [data-testid=queues-local] tr[data-queue=default]")
    page.wait_for_selector(f"{local} [data-testid=node-gpus-local] >> text=web-h100")
    page.wait_for_selector(f"{local} [data-testid=providers-local] >> text=web-a100")
    page.wait_for_selector(f"{local} [data-testid='waiting-local/default'], {local} .waiting")
    assert page.inner_text("main h1") == "Nodes"
    shots(page, "admin-nodes", axe=True)

    nav(page, "Market", "/market")
    page.wait_for_selector("[data-testid=offers] tr[data-offer=web-a100]")
    order = page.eval_on_selector_all("[data-testid=offers] tbody tr",
                                      "rows => rows.map(r => r.dataset.offer)")
    prices = [float(page.inner_text(f"[data-testid=offer-price-{p}]")) for p in order]
    assert prices == sorted(prices) and {"web-h100", "web-a100"} <= set(order), order
    assert "1 \u00d7 A100 40 GiB" in page.inner_text("tr[data-offer=web-a100]")
    assert_accessible(page)
    shots(page, "market")
    page.select_option("select[name=market-model]", label="A100")
    page.wait_for_selector("tr[data-offer=web-h100]", state="detached")
    assert page.is_visible("tr[data-offer=web-a100]")

    # An admin adds funds (here to their own client account); the ledger shows the grant.
    nav(page, "Settings", "/settings")
    form = "[data-testid=grant-credits]"
    page.fill(f"{form} input[name=grant-email]", f"{ADMIN}@e2e.test")
    page.fill(f"{form} input[name=grant-amount]", "none")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector(".error >> text=amount:")
    page.fill(f"{form} input[name=grant-amount]", "25")
    page.fill(f"{form} input[name=grant-memo]", "a welcome bonus")
    page.click(f"{form} button[type=submit]")
    page.wait_for_selector("text=Granted 25 credits")
    switch_role(page, "client")
    page.wait_for_url("**/client/jobs")
    nav(page, "Balance", "/client/account")
    page.wait_for_selector("[data-testid=ledger] >> text=credits granted")
    row = page.inner_text("[data-testid=ledger] tbody tr:first-child")
    assert "granted by admin@e2e.test: a welcome bonus" in row and "25.000000" in row, row
    assert "from outside the network" in row, row
