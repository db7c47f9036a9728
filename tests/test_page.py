"""The status page in a real headless Chromium: it follows a load and an eviction live."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serve_process import ServeProcess, model_folder, start_serve
from tests.servers import runtime_env

pytestmark = pytest.mark.slow
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
EMBED = {"input": "hello"}


@pytest.fixture(scope="module")
def serve(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    root = tmp_path_factory.mktemp("page")
    models = model_folder(tiny_models, root / "models", ["tiny-bert-embed", "tiny-qwen3-embed"], memory="1GiB")
    env = runtime_env(LLM_MODEL_CACHE_SIZE="4", LLM_AUTO_UNLOAD_MODELS="false")
    server = start_serve(models, root, "--cpu-memory-gb", "1.5", env=env)
    yield server
    server.stop()


def test_the_page_reads_without_javascript_and_loads_nothing_from_outside(serve: ServeProcess) -> None:
    page = httpx.get(f"{serve.url}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert re.findall(r'<tr data-model="([^"]+)"', page.text) == ["tiny-bert-embed", "tiny-qwen3-embed"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # no CDN, no external font
    assert "@import" not in page.text
    assert len(page.content) < 16 * 1024


def test_first_run_says_where_it_looked_and_how_to_add_a_model(tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    server = start_serve(empty, tmp_path, env=runtime_env())
    try:
        page = httpx.get(f"{server.url}/", timeout=30).text
        assert "No models found in" in page
        assert str(empty.resolve()) in page
        assert "llmi pull" in page
        assert "No models found in" in server.output()
    finally:
        server.stop()


@pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="no chromium/chromedriver here (apt-get install chromium chromium-driver)",
)
def test_the_page_follows_a_load_and_an_eviction_live(serve: ServeProcess) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1100,700"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    wait = WebDriverWait(driver, 120)

    def embed(client: httpx.Client, model: str) -> None:
        assert client.post(f"{serve.url}/v1/embeddings", json={"model": model, **EMBED}).status_code == 200

    def state(model: str) -> str:
        try:
            return str(driver.find_element(By.CSS_SELECTOR, f'tr[data-model="{model}"] td.state').text)
        except StaleElementReferenceException:  # the table was redrawn while we read it: read again
            return ""

    try:
        driver.get(f"{serve.url}/")
        wait.until(lambda _: state("tiny-bert-embed") == "available")  # drawn from the first event
        assert driver.find_element(By.ID, "planned").value_of_css_property("width") in ("0px", "0")
        with httpx.Client(timeout=120) as client:
            assert (
                client.post(f"{serve.url}/v1/embeddings", json={"model": "tiny-bert-embed", **EMBED}).status_code == 200
            )
            wait.until(lambda _: state("tiny-bert-embed") == "ready")  # no reload: the event stream redraws
            assert driver.find_element(By.ID, "planned").value_of_css_property("width") not in ("0px", "0")
            assert (
                client.post(f"{serve.url}/v1/embeddings", json={"model": "tiny-qwen3-embed", **EMBED}).status_code
                == 200
            )
        wait.until(lambda _: state("tiny-qwen3-embed") == "ready" and state("tiny-bert-embed") == "available")
        events = driver.find_element(By.ID, "events").text
        assert "tiny-bert-embed: evicting" in events
        assert "tiny-qwen3-embed: ready" in events
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "status-page.png"))
    finally:
        driver.quit()
