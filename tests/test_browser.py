"""The landing page (/) and /docs in a real headless Chromium (selenium, Debian's chromium and chromedriver).

- ``/`` renders without JavaScript; a model whose first version is published into the repository while
  the server runs appears (the server polls the repository), and a version whose model file is corrupt
  shows END with its error; a hostile model name and a hostile error text are shown as text, never run;
- ``/docs`` renders Swagger UI's list of operations from ``/openapi.json`` with every request going to the
  server itself: the browser resolves no other host, and its resource timing lists only this origin.

Needs ``/usr/bin/chromium`` and ``/usr/bin/chromedriver`` (``make test`` installs them when run as root);
skipped with an install hint without them.
"""

import os
import shutil
import sys
import time

import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import tiny_repo  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL_HINT = (
    "Chromium and its driver are not installed; install Debian's packages with `apt-get install chromium "
    "chromium-driver` (as root; `make test` does this when run as root)"
)
HAVE_BROWSER = os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)
pytestmark = pytest.mark.skipif(not HAVE_BROWSER, reason=INSTALL_HINT)

HOSTILE_NAME = "<script>window.pwned=1</script>"
HOSTILE_DIR = "<img src=x onerror=window.pwned=2>"  # a directory name: it appears in the load error's text
WAIT_S = 20.0  # bound on waiting for the poller (it runs every 0.2 s here)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from rnnkit_serving.server.model_server import start_server

    base = str(tmp_path_factory.mktemp("browser"))
    tiny_repo.publish(tiny_repo.write_half, os.path.join(base, "half"), 1)
    tiny_repo.publish(tiny_repo.write_counter, os.path.join(base, HOSTILE_DIR), 1)
    config = os.path.join(base, "models.config")
    with open(config, "w") as handle:
        handle.write(
            f"""model_config_list {{
  config {{ name: "half" base_path: "{base}/half" }}
  config {{ name: "late" base_path: "{base}/late" }}
  config {{ name: "{HOSTILE_NAME}" base_path: "{base}/{HOSTILE_DIR}" }}
}}"""
        )
    server = start_server(model_config_file=config, poll_seconds=0.2)
    server.base = base
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not look for drivers on the network
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--disable-sync",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        # every host but the server's resolves to nothing: a page that fetched from a CDN would break
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--window-size=1280,1600",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(browser, url, predicate, what):
    """Reload `url` until `predicate(page text)` holds (bounded by WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        browser.get(url)
        text = browser.find_element("tag name", "body").text
        if predicate(text):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not appear on {url} within {WAIT_S} s; the page says:\n{text}")
        time.sleep(0.2)


def section(browser, name):
    for element in browser.find_elements("css selector", "section.model"):
        if element.find_element("tag name", "h3").text == name:
            return element.text
    raise AssertionError(f"no section for model {name!r}")


def console_errors(browser):
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_landing_page_renders_published_and_broken_versions(server, browser):
    url = server.rest_url + "/"
    browser.get(url)
    assert browser.title.startswith("rnnkit model server")
    assert browser.execute_script("return document.scripts.length") == 0  # nothing runs on the page
    names = [h.text for h in browser.find_elements("css selector", "section.model h3")]
    assert names == [HOSTILE_NAME, "half", "late"]  # sorted; the hostile name is shown as text
    assert "1 AVAILABLE onnx, fp32 cpu" in section(browser, "half")
    assert "Could not find any versions of model late" in section(browser, "late")
    links = {a.text: a.get_attribute("href") for a in browser.find_elements("css selector", "header nav a")}
    assert links["API (interactive)"] == server.rest_url + "/docs"
    assert links["OpenAPI document"] == server.rest_url + "/openapi.json"
    assert links["Prometheus metrics"] == server.rest_url + "/monitoring/prometheus/metrics"

    # a model's first version, published while the server runs, appears
    tiny_repo.publish(tiny_repo.write_half, os.path.join(server.base, "late"), 4, offset=1.0)
    wait_for(browser, url, lambda text: "4 AVAILABLE" in text, "late's version 4")
    assert "4 AVAILABLE onnx, fp32 cpu" in section(browser, "late")
    reply = httpx.post(server.rest_url + "/v1/models/late:predict", json={"instances": [[[2.0]]]})
    assert reply.json() == {"predictions": [[[2.0]]]}  # 0.5 x + 1

    # a corrupt version: END with its error, while version 1 keeps serving
    tiny_repo.publish(tiny_repo.write_half, os.path.join(server.base, "half"), 2, corrupt=True)
    wait_for(browser, url, lambda text: "2 END" in text, "half's broken version 2")
    half = section(browser, "half")
    assert "2 END\nFAILED_PRECONDITION: ONNX Runtime cannot load" in half and "1 AVAILABLE" in half

    # a hostile error text (the directory name is in the load error) is text too
    tiny_repo.publish(tiny_repo.write_counter, os.path.join(server.base, HOSTILE_DIR), 2, corrupt=True)
    wait_for(browser, url, lambda text: f"{HOSTILE_DIR}/2/model.onnx" in text, "the hostile error")
    assert browser.execute_script("return window.pwned === undefined && document.images.length === 0")
    assert browser.execute_script("return document.scripts.length") == 0
    assert not console_errors(browser), console_errors(browser)


def test_docs_renders_every_operation_with_no_request_leaving_the_machine(server, browser):
    from selenium.webdriver.support.ui import WebDriverWait

    document = httpx.get(server.rest_url + "/openapi.json").json()
    operations = [(method.upper(), path) for path, item in document["paths"].items() for method in item]
    browser.get(server.rest_url + "/docs")
    WebDriverWait(browser, WAIT_S).until(
        lambda driver: len(driver.find_elements("css selector", ".opblock")) >= len(operations)
    )
    blocks = browser.find_elements("css selector", ".opblock")
    shown = {(b.find_element("css selector", ".opblock-summary-method").text, b.get_attribute("id")) for b in blocks}
    assert len(blocks) == len(operations)
    assert {method for method, _ in shown} == {"GET", "HEAD", "POST"}
    summaries = [b.find_element("css selector", ".opblock-summary-path").text for b in blocks]
    for path in ("/v2/models/{model_name}/infer", "/v1/models/{model_name}:predict", "/v2/models/half/infer", "/"):
        assert any(s.replace("\u200b", "") == path for s in summaries), path
    assert "rnnkit model server" in browser.find_element("css selector", ".info .title").text
    origin = server.rest_url
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert f"{origin}/openapi.json" in resources and f"{origin}/docs/swagger-ui-bundle.js" in resources
    assert [r for r in resources if not r.startswith(origin + "/")] == []
    navigation = browser.execute_script("return performance.getEntriesByType('navigation').map(e => e.name)")
    assert navigation == [f"{origin}/docs"]
    assert not console_errors(browser), console_errors(browser)  # CSP violations are logged as errors
