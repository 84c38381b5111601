"""How fast the console's review page lets a person label: 100 decisions by keyboard in a real browser.

``graft serve RUN --capture-rate 1`` serves the ants/bees model; ``--images`` distinct photos from
../shared are sent through the inference endpoint; headless Chromium (Debian's, through Selenium) signs in
with the samples token, opens the review page and presses the label's number key for each image in
turn (the true label, read from the file name the capture came from). Reported: the seconds per
decision the page adds (key press until the next image is selected), the total for 100, and every
decision checked against the admin API afterwards. A person's own time to look is not in the figure.

    .venv/bin/python bench/review_speed.py --json bench/results/review_speed.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)] if str(REPO) not in sys.path else []

import httpx  # noqa: E402

from bench._service import ADMIN, SAMPLER, SAMPLES_TOKEN, Service, serving  # noqa: E402
from bench.reliability import jpegs, prepare  # noqa: E402

log = logging.getLogger("bench.review_speed")
NAME = "antsbees"
SELECTED = "return !!document.querySelector('#grid li.selected')"


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        raise SystemExit("needs Debian's chromium and chromium-driver (make setup installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=DriverService(executable_path=driver), options=opts)


def ids(d: Any) -> list[str]:
    return list(d.execute_script("return [...document.querySelectorAll('#grid li')].map(li => li.dataset.id)"))


def label_by_keyboard(d: Any, svc: Service, truth: dict[str, str], n: int) -> list[float]:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    url = str(svc.admin.base_url)
    d.get(f"{url}/console/login")
    d.find_element(By.ID, "token").send_keys(SAMPLES_TOKEN)
    d.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    d.get(f"{url}/console/review")
    labels = json.loads(d.find_element(By.ID, "review").get_attribute("data-labels"))
    deadline = time.monotonic() + 60
    while not ids(d) and time.monotonic() < deadline:
        time.sleep(0.1)
    times = []
    for _ in range(n):
        current = d.execute_script("return document.querySelector('#grid li.selected')?.dataset.id")
        if current is None:
            break
        image = svc.admin.get(f"/v1/review/{current}/image", headers=SAMPLER).content
        key = str(labels.index(truth[hashlib.sha256(image).hexdigest()]) + 1)
        t0 = time.perf_counter()
        ActionChains(d).send_keys(key).perform()
        while current in ids(d) or (ids(d) and not d.execute_script(SELECTED)):
            time.sleep(0.005)
        times.append(time.perf_counter() - t0)
    return times


def label_by_api(svc: Service, truth: dict[str, str], n: int) -> list[float]:
    """The baseline: the same decision as one JSON call each (no page, no browser)."""
    times = []
    for item in svc.admin.get("/v1/review", params={"limit": n}, headers=SAMPLER).json()["items"]:
        label = truth[hashlib.sha256(svc.admin.get(item["image_url"], headers=SAMPLER).content).hexdigest()]
        t0 = time.perf_counter()
        svc.admin.post(f"/v1/review/{item['id']}/label", json={"label": label}, headers=SAMPLER).raise_for_status()
        times.append(time.perf_counter() - t0)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"n": len(times), "total_s": round(sum(times), 1), "median_ms": round(1000 * statistics.median(times), 1),
            "p95_ms": round(1000 * ordered[int(0.95 * (len(times) - 1))], 1), "max_ms": round(1000 * max(times), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decisions", type=int, default=100)
    p.add_argument("--baseline", type=int, default=40, help="decisions through the JSON API, for comparison")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="graft-review-") as tmp:
        work = Path(tmp)
        run = prepare(work)
        ants, bees = ([(f, label) for f in jpegs("val", label)[20:] + jpegs("train", label)[40:]]
                      for label in ("ants", "bees"))  # fmt: skip
        files = [x for pair in zip(ants, bees, strict=False) for x in pair][: args.decisions + args.baseline + 20]
        truth = {hashlib.sha256(f.read_bytes()).hexdigest(): label for f, label in files}
        with serving(work, run, NAME, args=["--capture-rate", "1"]) as svc:
            headers = {**svc.ts.headers(), "Content-Type": "image/jpeg"}
            with httpx.Client(timeout=120) as c:
                for f, _ in files:
                    c.post(svc.predict_url, content=f.read_bytes(), headers=headers).raise_for_status()
            while svc.admin.get("/v1/review/stats", headers=SAMPLER).json()["captured"] < len(files):
                time.sleep(1)
            queued = svc.admin.get("/v1/review/stats", headers=SAMPLER).json()["queued"]
            before = svc.admin.get("/v1/samples/stats", headers=ADMIN).json()["total"]
            api_times = label_by_api(svc, truth, args.baseline)
            d = browser()
            try:
                times = label_by_keyboard(d, svc, truth, min(args.decisions, queued - args.baseline))
            finally:
                d.quit()
            after = svc.admin.get("/v1/samples/stats", headers=ADMIN).json()["total"]
            rss = svc.peak_rss_mb()
    result = {"queued_before": queued, "stored": after - before, "page_by_keyboard": summary(times),
              "api_baseline": summary(api_times), "peak_rss_mb": rss}  # fmt: skip
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["stored"] == len(times) + len(api_times) else 1


if __name__ == "__main__":
    sys.exit(main())
