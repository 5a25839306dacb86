"""Screenshots of the run browser for docs/ (docs/ui-*.png) on a generated farm-like history.

    .venv/bin/python -m bench.ui_screenshots   # 300 experiments: docs/ui-*.png (and ui-runs.png: 3 runs)

The history is bench/ui.py's (a real ledger and research repo, no training), big enough to show what a run
looks like after a few hours; the browser is Debian's headless Chromium through its chromedriver, as in
tests/test_ui.py (which can also shoot its real 6-experiment run: FARM_UI_SCREENSHOTS=1).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.ui import generate

DOCS = Path(__file__).resolve().parent.parent / "docs"
ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,1000")  # fmt: skip


def shoot(run_dir: Path | list[Path], pages: dict[str, str], out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from cluster.ui.server import serve_ui

    handle = serve_ui(run_dir, "127.0.0.1", 0, grafana_url="http://127.0.0.1:3000/d/autoresearch-farm-v1")
    profile = tempfile.mkdtemp(prefix="farm-ui-shots-")
    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (*ARGS, f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        for name, path in pages.items():
            driver.get(handle.url.rstrip("/") + path)
            deadline = time.monotonic() + 60
            while not driver.execute_script("return document.body.dataset.version || ''"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{path} did not draw")
                time.sleep(0.2)
            time.sleep(1.5)  # charts finish their transitions
            driver.save_screenshot(str(out / f"ui-{name}.png"))
            print(out / f"ui-{name}.png", flush=True)
    finally:
        driver.quit()
        handle.close()
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=300)
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ui-shots-") as tmp:
        run = Path(tmp) / "run"
        ids = generate(run, args.experiments, "compacted")
        pages = {"overview": "/", "lineage": "/lineage", "experiment": f"/experiment/{ids['experiment']}",
                 "compare": "/compare?ids=" + ",".join(ids["compare"]), "constants": "/constants",
                 "curves": "/compare?ids=" + ",".join(ids["compare"]) + "#curves"}
        shoot(run, pages, args.out)
        # several runs of one project: two more histories (other seeds, fewer experiments) beside the first
        others = [Path(tmp) / f"run-{k}" for k in (2, 3)]
        for k, other in enumerate(others, 2):
            generate(other, args.experiments // k, "compacted", seed=k)
        shoot([run, *others], {"runs": "/"}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
