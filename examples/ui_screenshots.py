"""Take the README's Web UI screenshots (docs/ui-runs.png, docs/ui-run.png) over real runs.

Run from the repository root. Trains three small runs under runs/ unless they finished
before: the demo (LoRA on the built-in MiniLM), the same data with only the head trained,
and an instruction SFT run on a small random Llama (examples/make_tiny_llama.py); then
serves `lmtune ui runs/` and photographs the Runs page and the demo run's page with headless
chromium through selenium (Debian: apt install chromium chromium-driver; pip install selenium).

    python examples/ui_screenshots.py            # about 10 minutes on 2 free CPU cores
    python examples/ui_screenshots.py --out docs --width 1280 --height 860
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LMTUNE = [sys.executable, "-m", "lmtune"]
#: (run folder under runs/, `lmtune train` arguments): relative paths only, so no machine
#: path appears in the pictures.
#: Two epochs instead of the configs' 4-5, so that the three runs take minutes on 2 CPU cores.
RUNS: tuple[tuple[str, list[str]], ...] = (
    ("demo", ["configs/demo.yaml", "train.epochs=2", "train.eval_every=10"]),
    ("reviews-head", ["configs/reviews_head.yaml", "train.epochs=2"]),
    (
        "alpaca-lora",
        [
            "configs/sft_alpaca_lora.yaml",
            "model.name_or_path=runs/tiny-llama",
            "train.lr=2e-3",
            "train.epochs=3",
        ],
    ),
)


def train_runs(root: Path) -> None:
    """Each run of RUNS that has no summary.json yet, trained through the CLI."""
    if not (root / "tiny-llama" / "config.json").is_file():
        subprocess.run([sys.executable, "examples/make_tiny_llama.py", str(root / "tiny-llama")])
    for name, args in RUNS:
        if (root / name / "summary.json").is_file():
            print(f"{root / name}: finished before, kept")
            continue
        cmd = [*LMTUNE, "train", *args, f"run.output_dir={root / name}", "--quiet"]
        print("$", " ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True)


@contextlib.contextmanager
def serve_ui(root: Path) -> Iterator[str]:
    """`lmtune ui ROOT` on a free local port until the block ends; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*LMTUNE, "ui", str(root), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: urllib.request.urlopen(url + "/", timeout=1).status == 200, 60, "the UI")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """check()'s first true value, polled until `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := check():
                return value
        time.sleep(0.25)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def browser(width: int, height: int) -> Any:
    """Headless chromium at a fixed window size."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or ""
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or ""), options=opts)


def shoot(driver: Any, path: Path) -> None:
    """Save the window as a PNG with a 256-colour palette (a UI has few colours; small file)."""
    from PIL import Image

    driver.save_screenshot(str(path))
    Image.open(path).convert("RGB").quantize(colors=256).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KiB")


def main() -> None:
    """Train what is missing, serve the UI and write the two screenshots."""
    from selenium.webdriver.common.by import By

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs"), help="where the runs go")
    ap.add_argument("--out", type=Path, default=Path("docs"), help="where the PNGs go")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=860)
    args = ap.parse_args()
    train_runs(args.root)
    args.out.mkdir(parents=True, exist_ok=True)
    driver = browser(args.width, args.height)
    try:
        with serve_ui(args.root) as url:
            driver.get(url + "/")
            wait_for(
                lambda: len(driver.find_elements(By.CSS_SELECTOR, "table.runs tr")) > 3, 30, "runs"
            )
            shoot(driver, args.out / "ui-runs.png")
            driver.get(url + "/run?name=demo")
            wait_for(
                lambda: driver.find_elements(
                    By.CSS_SELECTOR, '#curves canvas[data-name="accuracy"]'
                ),
                30,
                "the demo run's curves",
            )
            time.sleep(1.0)  # the curves are drawn as the event stream arrives
            shoot(driver, args.out / "ui-run.png")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
