"""docs/inspector.png: the inspector page (``/ui``) of a small ml-100k service, for user 196
after an event added through the page.

    PYTHONPATH=src python bench/inspector_screenshot.py [--out docs/inspector.png]

Builds an artifact (popularity, ItemCF, EASE; about 10 s), starts ``llmrecall serve`` on
127.0.0.1 with a throw-away API key and state file, and drives Debian's ``chromium``
through Playwright (the system browser by its path, as tests/serve/test_inspector.py does).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx

CONFIG = """
seed = 0
[fusion]
k = 200
channel_k = 300
[[channels]]
kind = "popularity"
weight = 0.3
[[channels]]
kind = "itemcf"
weight = 1.0
[[channels]]
kind = "ease"
weight = 1.5
"""
KEY = "screenshot-key"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/inspector.png"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--user", default="196")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    from llmrecall.config import parse_config
    from llmrecall.data.builtin import load_builtin
    from llmrecall.serve import build

    with tempfile.TemporaryDirectory() as tmp:
        artifact = Path(tmp) / "artifact"
        build(load_builtin("ml-100k"), parse_config(tomllib.loads(CONFIG)), artifact)
        port = _port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "LLMRECALL_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
        server = subprocess.Popen([sys.executable, "-m", "llmrecall.serve", "serve", str(artifact),
                                   "--port", str(port), "--state", f"{tmp}/state.sqlite"], env=env)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1500, "height": 1050})
                page.goto(f"{url}/ui?user={args.user}&k=10")
                page.wait_for_selector("#fused tr.candidate")
                top = page.locator("#fused tr.candidate").first.get_attribute("data-item-id")
                page.fill("#event-item", top or "")
                page.fill("#event-key", KEY)
                page.click("#event-button")
                page.wait_for_selector("#event-status.ok")
                args.out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(args.out), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
