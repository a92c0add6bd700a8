"""Click-to-result time of the web app against ``collagan-impute impute`` on the same case.

The target of docs/WEB.md: from the click on "Impute missing contrast" to the result on screen, at most 2 s more than
the command line takes for the same imputation (t1c of the bundled sample case from t1n + t2f, bundled model, CPU,
fp32). The two are run interleaved, ``--repeats`` times each, and the medians compared. The command line is timed
whole (start, model load, imputation, writing), as a user waits for it; the web page is timed from the click until
the status says "Done" and the result view has been redrawn.

Needs the web extra, Playwright and Chromium (``apt-get install chromium``).

Example:
    python benchmarks/bench_web.py --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LIMIT_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_cli(case: Path, threads: int) -> float:
    name = case.name
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "CollaGANImputeLib", "impute", "--input", f"t1n={case / f'{name}-t1n.nii.gz'}",
                   "--input", f"t2f={case / f'{name}-t2f.nii.gz'}", "--target", "t1c", "--out", out,
                   "--device", "cpu", "--precision", "fp32", "--threads", str(threads)]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start


def time_web_click(page) -> float:
    start = time.perf_counter()
    page.locator("#impute").click()
    page.locator("#status").filter(has_text="Imputing").wait_for()
    page.locator("#status").filter(has_text="Done").wait_for()
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return time.perf_counter() - start


def wait_until_serving(server: subprocess.Popen, port: int, log: Path, timeout: float = 300) -> None:
    """Until the server accepts connections: its ready line is printed just before the port is bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            break
        if "Uploads are kept in" in log.read_text(errors="replace"):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    return
            except OSError:
                pass
        time.sleep(0.5)
    raise SystemExit(f"The web server did not start: {log.read_text(errors='replace')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    from CollaGANImputeLib.models import sample_case_dir
    from playwright.sync_api import sync_playwright

    case = sample_case_dir()
    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="collagan-web-bench-", suffix=".log", delete=False)
    server = subprocess.Popen([sys.executable, "-m", "CollaGANImputeLib", "web", "--port", str(port), "--device",
                               "cpu", "--precision", "fp32", "--threads", str(args.threads)],
                              stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        wait_until_serving(server, port, Path(log.name))
        cli, web = [], []
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(600_000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.get_by_text("Load sample case").click()
            page.locator("#status").filter(has_text="Sample case").wait_for()
            for i in range(args.repeats):
                cli.append(time_cli(case, args.threads))
                web.append(time_web_click(page))
                print(f"run {i + 1}: command line {cli[-1]:.2f} s, web click to result {web[-1]:.2f} s", flush=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
        os.unlink(log.name)
    cli_s, web_s = statistics.median(cli), statistics.median(web)
    print(f"median: command line {cli_s:.2f} s, web {web_s:.2f} s, web - command line {web_s - cli_s:+.2f} s "
          f"(target: at most +{LIMIT_S:.0f} s): {'met' if web_s - cli_s <= LIMIT_S else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
