"""The web page (tools/app.py) in a real headless browser: Debian's chromium driven by selenium
uploads a demo clip, waits for the answer and compares it with tools/predict.py on the same file
(the top-5 bars, the windows' timeline, the caption of the captioning head); a broken file is an
error on the page and the server goes on answering. A screenshot is saved in the test's temp dir."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from s5video.data.cpu import iter_shard
from s5video.data.sources import resolve_shards
from tests.helpers import REPO, export_new_model, free_port

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="needs Debian's chromium and chromium-driver "
                                "(scripts/install_system.sh installs them)")


@pytest.fixture(scope="module")
def models(demo_shards, tmp_path_factory) -> tuple[Path, Path]:
    """An S5 classifier (demo_finetune.yaml) and a GPT-2 captioner (demo_caption.yaml, small) of the
    demo's 6 classes, exported."""
    tmp = tmp_path_factory.mktemp("app")
    classes = json.loads((demo_shards / "manifest.json").read_text())["classes"]
    small = ["data.clip_seconds=1.0", "data.frames=2", "data.image_size=64", "model.width=32", "model.depth=1"]
    return (export_new_model("configs/demo_finetune.yaml", small + ["model.state_size=8"], classes, tmp / "cls.safetensors"),
            export_new_model("configs/demo_caption.yaml", small + ["model.caption_max_tokens=12"], classes,
                              tmp / "cap.safetensors"))


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("app_log") / "app.log"
    p = subprocess.Popen([sys.executable, "tools/app.py", "--model", str(models[0]), "--captioner", str(models[1]),
                          "--port", str(port)], cwd=REPO, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                         start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    end = time.monotonic() + 120
    while time.monotonic() < end:
        assert p.poll() is None, log.read_text()[-3000:]
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        p.kill()
        pytest.fail(f"the app did not answer on {url}: {log.read_text()[-2000:]}")
    yield url
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1400"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def _upload_and_predict(driver, url: str, video: Path, stride: float | None = None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(str(video))
    wait.until(lambda d: video.stem in d.find_element(By.ID, "upload").text)  # uploaded, listed
    if stride is not None:
        box = driver.find_element(By.CSS_SELECTOR, "#stride input")
        box.clear()
        box.send_keys(str(stride))
    driver.find_element(By.ID, "predict").click()
    return wait


def test_page_answers_like_predict_py_and_survives_a_broken_file(server, models, demo_shards, browser, tmp_path):
    from selenium.webdriver.common.by import By
    sample = next(s for url in resolve_shards(str(demo_shards), "test").urls for s in iter_shard(url)
                  if json.loads(s["json"])["duration"] >= 1.9)
    video = tmp_path / "clip.mp4"
    video.write_bytes(sample["mp4"])
    r = subprocess.run([sys.executable, "tools/predict.py", "--model", str(models[0]), "--captioner", str(models[1]),
                        str(video), "--stride", "0.5", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = json.loads(r.stdout)
    assert len(ref["answer"]) == 5 and ref["caption"] and len(ref["windows"]) > 1

    wait = _upload_and_predict(browser, server, video, stride=0.5)
    answer = browser.find_element(By.CSS_SELECTOR, "#answer_json textarea")
    wait.until(lambda d: answer.get_attribute("value"))
    shown = json.loads(answer.get_attribute("value"))
    browser.save_screenshot(str(tmp_path / "app.png"))
    assert (tmp_path / "app.png").stat().st_size > 10_000
    assert [a["class"] for a in shown["answer"]] == [a["class"] for a in ref["answer"]]
    assert [a["prob"] for a in shown["answer"]] == pytest.approx([a["prob"] for a in ref["answer"]], abs=1e-4)
    assert shown["caption"] == ref["caption"]
    assert browser.find_element(By.CSS_SELECTOR, "#caption textarea").get_attribute("value") == ref["caption"]
    bars = browser.find_element(By.ID, "top5").text
    assert all(a["class"] in bars for a in ref["answer"])  # the five bars carry the five classes
    timeline = browser.find_element(By.ID, "timeline").text
    assert all(f"{w['start_s']:g}" in timeline for w in ref["windows"])  # one row per window

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(sample["mp4"][:2000])  # a truncated download
    wait = _upload_and_predict(browser, server, bad)
    wait.until(lambda d: "broken.mp4:" in d.find_element(By.TAG_NAME, "body").text)  # the error, on the page
    browser.save_screenshot(str(tmp_path / "app_error.png"))
    wait = _upload_and_predict(browser, server, video, stride=0.5)  # and the server still answers
    answer = browser.find_element(By.CSS_SELECTOR, "#answer_json textarea")
    wait.until(lambda d: answer.get_attribute("value"))
    assert json.loads(answer.get_attribute("value"))["caption"] == ref["caption"]
