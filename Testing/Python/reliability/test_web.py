"""Attacks on ``collagan-impute web``, one parametrized test: the web block of docs/RELIABILITY.md's table.

Each row drives one server (the tests' tiny TorchScript model, on a free 127.0.0.1 port) through a real Chromium
(Playwright) and a plain WebSocket client speaking the page's protocol from 127.0.0.1, every wait bounded in
messages and seconds, and checks what the server answers, what the page shows and what is left behind. The rows
are rendered by ``test_table.render_table`` after the command line's rows (regenerate with ``PYTHONPATH=
Testing/Python python3 Testing/Python/reliability/test_table.py --write``). Marked ``browser``: locally the rows
skip with a message when Chromium, Playwright or the web extra are missing; in CI (``CI`` set) that is an error.
"""

from __future__ import annotations

import gzip
import http.server
import json
import shutil
import socketserver
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk
from core_fixtures import head_phantom, make_image
from web_fixtures import Server, WsClient, chromium_path, free_port, require_browser

pytestmark = pytest.mark.browser

HEADING = ("**`collagan-impute web`**, driven through a real Chromium and a plain WebSocket client on 127.0.0.1 "
           "(`Testing/Python/reliability/test_web.py`)")
WAIT_MS = 120_000


@dataclass
class Web:
    """What a row works with: the server, the served page in Chromium (sample case loaded), a scratch folder."""

    server: Server
    browser: object
    page: object
    root: Path

    def ws(self, origin: str = "") -> WsClient:
        return WsClient(f"ws://127.0.0.1:{self.server.port}/ws", origin or self.server.origin)

    def client(self) -> WsClient:
        """A plain WebSocket client with the served page's origin and the server's secret."""
        client = self.ws().connect()
        assert "result" in client.hello(self.server.secret())
        return client

    def upload(self, *paths: Path) -> None:
        self.page.locator("input[type=file]").first.set_input_files([str(p) for p in paths])

    def error_for(self, name: str) -> str:
        error = self.page.locator("#error").filter(has_text=name)
        error.wait_for(timeout=WAIT_MS)
        return error.inner_text()

    def uploads_kept(self) -> list[str]:
        return sorted(p.name for p in self.server.upload_dir().iterdir() if p.is_file())


@dataclass
class WebFault:
    id: str
    what: str
    check: Callable[[Web], None]
    result: str  # what the server does, as the table shows it
    message: str  # a fragment of what the server answers or the page shows ("" when it answers nothing)
    left: str = "nothing"


# ------------------------------------------------------------------------------------------------ the rows

class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _foreign_page(web: Web) -> None:
    """A page served from another 127.0.0.1 port, opened in the same Chromium, tries the server's session secret
    and its WebSocket (once with the framework's public default secret)."""
    target = f"127.0.0.1:{web.server.port}"
    site = web.root / "site"
    site.mkdir()
    (site / "index.html").write_text(f"""<!doctype html><script>
(async () => {{
  const out = {{}};
  try {{ const r = await fetch("http://{target}/paraview/", {{method: "POST", body: "{{}}"}});
         out.secret = "read: " + await r.text(); }} catch (e) {{ out.secret = "blocked"; }}
  out.ws = await new Promise(done => {{
    const ws = new WebSocket("ws://{target}/ws");
    ws.onopen = () => {{ ws.send("x"); done("open"); }};
    ws.onerror = () => done("refused");
    setTimeout(() => done("timeout"), 15000);
  }});
  document.title = JSON.stringify(out);
}})();
</script>""")
    port = free_port()
    handler = lambda *a, **k: _Quiet(*a, directory=str(site), **k)  # noqa: E731
    with socketserver.TCPServer(("127.0.0.1", port), handler) as httpd:
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        try:
            attacker = web.browser.new_page()
            attacker.goto(f"http://127.0.0.1:{port}/index.html")
            attacker.wait_for_function("() => document.title.startsWith('{')", timeout=30_000)
            seen = json.loads(attacker.title())
            attacker.close()
        finally:
            httpd.shutdown()
    assert seen == {"secret": "blocked", "ws": "refused"}, seen
    assert f"Refused a request to /ws: Origin 'http://127.0.0.1:{port}' may not use" in web.server.output()
    request = urllib.request.Request(f"{web.server.url}paraview/", data=b"{}", method="POST",
                                     headers={"Origin": f"http://127.0.0.1:{port}"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403 and "may not use this server" in refused.value.read().decode()
    # The served page still drives the server.
    web.page.locator("#load-sample").click()
    web.page.locator("#status").filter(has_text="Sample case").wait_for(timeout=WAIT_MS)


def _rebinding(web: Web) -> None:
    """A DNS-rebinding page: the attacker's name resolves to 127.0.0.1, so its requests carry that name as Host."""
    host = f"collagan.attacker.test:{web.server.port}"
    request = urllib.request.Request(f"{web.server.url}index.html", headers={"Host": host})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403 and "is not this server's" in refused.value.read().decode()


def _default_secret(web: Web) -> None:
    client = web.ws().connect()
    try:
        answer = client.hello("wslink-secret")
        assert answer["error"]["message"] == "Authentication failed", answer
        answer = client.call("trame.trigger", "download_sidecar", [], {})
        assert "Unauthorized" in answer["error"]["message"], answer
    finally:
        client.close()


def _broadcast(web: Web) -> None:
    """Chromium uploads a volume while a second client listens: nothing of the file (its bytes, its name as
    uploaded, its size and date) may reach that client; the shared status naming the new volume does."""
    from CollaGANImputeLib.resources import sample_case_dir

    upload = web.root / "broadcast-t1n.nii.gz"
    shutil.copy(sample_case_dir() / "TCGA-HT-7882-t1n.nii.gz", upload)
    data = upload.read_bytes()
    samples = [data[i:i + 48] for i in range(1000, len(data) - 48, len(data) // 8)]
    listener = web.client()
    try:
        web.upload(upload)
        deadline = time.monotonic() + WAIT_MS / 1000
        while time.monotonic() < deadline and not any(
                "Loaded broadcast-t1n" in str(m.get("status", "")) for m in listener.published()):
            listener.listen(2, max_messages=len(listener.received) + 500)
        assert any("Loaded broadcast-t1n" in str(m.get("status", "")) for m in listener.published()), \
            "the listener did not see the upload finish"
        assert not any(sample in listener.raw for sample in samples), "uploaded bytes reached another client"
        assert upload.name.encode() not in listener.raw, "the upload's description reached another client"
        assert not any("uploads" in m for m in listener.published() if isinstance(m, dict))
    finally:
        listener.close()


def _mhd(web: Web, name: str, data_file: str) -> Path:
    header = web.root / name
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 40 48 12\nElementType = MET_FLOAT\n"
                      f"ElementDataFile = {data_file}\n")
    return header


def _server_file(web: Web) -> Path:
    """A file on the server outside the upload folder (a stand-in for another user's scan)."""
    private = web.root / "private.raw"
    private.write_bytes(head_phantom().astype(np.float32).tobytes())
    return private


def _absolute_data_file(web: Web) -> None:
    before = web.uploads_kept()
    web.upload(_mhd(web, "absolute-t2f.mhd", str(_server_file(web))))
    assert "by a path" in web.error_for("absolute-t2f.mhd")
    assert web.uploads_kept() == before


def _nhdr_outside(web: Web) -> None:
    _server_file(web)
    header = web.root / "outside-t2f.nhdr"
    header.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 40 48 12\nencoding: raw\nendian: little\n"
                      "data file: ../../" + "private.raw\n")
    before = web.uploads_kept()
    web.upload(header)
    assert "by a path" in web.error_for("outside-t2f.nhdr")
    assert web.uploads_kept() == before


def _not_uploaded(web: Web) -> None:
    before = web.uploads_kept()
    web.upload(_mhd(web, "alone-t2f.mhd", "alone-t2f.raw"))
    assert "was not uploaded with it" in web.error_for("alone-t2f.mhd")
    assert web.uploads_kept() == before


def _with_data_file(web: Web) -> None:
    header = web.root / "pair" / "paired-t2f.mhd"
    header.parent.mkdir()
    sitk.WriteImage(make_image(head_phantom(seed=3)), str(header))  # ITK writes paired-t2f.raw beside it
    web.upload(header, header.with_suffix(".raw"))
    web.page.locator("#status").filter(has_text="Loaded paired-t2f").wait_for(timeout=WAIT_MS)
    assert not any(n.endswith(".raw") for n in web.uploads_kept())


def _nifti_declaring(web: Web, name: str, dims: tuple[int, int, int], extra: bytes = b"") -> Path:
    """A real NIfTI file whose header is edited to declare ``dims``; gzipped with ``extra`` bytes after its data."""
    plain = web.root / (name[:-3])
    sitk.WriteImage(make_image(head_phantom().astype(np.float32)), str(plain))
    data = bytearray(plain.read_bytes())
    data[40:48] = np.array([3, *dims], dtype="<i2").tobytes()
    path = web.root / name
    path.write_bytes(gzip.compress(bytes(data) + extra, compresslevel=1))
    return path


def _refused_in_little_memory(web: Web, bomb: Path, max_bytes: int, message: str) -> None:
    """``bomb`` (smaller than ``max_bytes`` on disk) is refused with ``message`` and the server grows < 150 MB."""
    assert bomb.stat().st_size < max_bytes
    before = web.server.rss_mb()
    web.upload(bomb)
    assert message in web.error_for(bomb.name)
    assert web.server.rss_mb() - before < 150


def _bomb_declared(web: Web) -> None:
    bomb = _nifti_declaring(web, "declared-t2f.nii.gz", (2048, 2048, 256))  # 4 GiB of float32 declared
    _refused_in_little_memory(web, bomb, 200_000, "declares 4096 MB of voxel data, more than the")


def _bomb_hidden(web: Web) -> None:
    bomb = _nifti_declaring(web, "hidden-t2f.nii.gz", (40, 48, 12), extra=bytes(256 * 2 ** 20))
    _refused_in_little_memory(web, bomb, 2_000_000, "holds more than its header declares")


def _huge_message(web: Web) -> None:
    """A client announces a 3 GiB message (wslink would allocate it before receiving any of it)."""
    import aiohttp
    from wslink.chunking import _encode_header

    client = web.client()
    before = web.server.rss_mb()
    try:
        async def go():
            await client._ws.send_bytes(_encode_header(7, 0, 3 * 2 ** 30) + b"x" * 1024)
            return await client._ws.receive(timeout=30)

        frame = client.run(go())
        assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), frame
    finally:
        client.close()
    assert web.server.process.poll() is None and web.server.rss_mb() - before < 150


def _owned_state(web: Web) -> None:
    page = web.page
    page.locator("#impute").click()
    banner = page.locator("#synthetic-banner")
    banner.wait_for(timeout=WAIT_MS)
    status = page.locator("#status").inner_text()
    client = web.client()
    try:
        client.call("trame.state.update", [{"key": "banner", "value": ""}, {"key": "result_name", "value": ""},
                                           {"key": "status", "value": "Acquired t1c"}])
        client.listen(2, max_messages=len(client.received) + 200)
        assert any(m.get("status") == status for m in client.published())  # the server's value, sent back
    finally:
        client.close()
    page.wait_for_timeout(1000)
    assert "SYNTHETIC" in banner.inner_text() and "(synthetic, CollaGAN)" in banner.inner_text()
    assert page.locator("#status").inner_text() == status


def _idle(web: Web) -> None:
    """A second server with ``--idle-timeout 3``: it stops 3 s after its last page closes, its uploads deleted."""
    idle = Server(web.root / "idle.log", "--model", str(web.root / "tiny.pt"), "--idle-timeout", "3")
    try:
        idle.wait_ready()
        page = web.browser.new_page()
        page.goto(idle.url)
        page.locator("#load-sample").wait_for(timeout=WAIT_MS)
        page.wait_for_timeout(5000)
        assert idle.process.poll() is None  # a page is open: it stays
        folder = idle.upload_dir()
        page.close()
        assert idle.process.wait(timeout=60) == 0
        assert not folder.exists()
        assert "stops 3 s after the last page is closed" in idle.output()
    finally:
        idle.stop()


WEB_FAULTS = [
    WebFault("foreign-origin", "a page on another origin (another 127.0.0.1 port) in the same Chromium asks for the "
             "session secret and opens the WebSocket", _foreign_page, "refused (HTTP 403)",
             "Origin 'http://127.0.0.1:<port>' may not use this server", "nothing; the served page works on"),
    WebFault("dns-rebinding", "a request whose `Host` is another name for 127.0.0.1 (DNS rebinding)", _rebinding,
             "refused (HTTP 403)", "Host 'collagan.attacker.test:<port>' is not this server's"),
    WebFault("default-secret", "a client with the served origin but the framework's public secret `wslink-secret`",
             _default_secret, "refused", "Authentication failed"),
    WebFault("upload-broadcast", "an upload while a second client is connected", _broadcast,
             "sent to the server only: nothing of the file (bytes, name, size) reaches the other client", "",
             "the upload in the private folder only"),
    WebFault("mhd-absolute", "an `.mhd` whose `ElementDataFile` is an absolute path on the server",
             _absolute_data_file, "refused", "its header names the data file '...' by a path"),
    WebFault("nhdr-outside", "an `.nhdr` whose `data file:` is `../../...`", _nhdr_outside, "refused",
             "its header names the data file '...' by a path"),
    WebFault("mhd-alone", "an `.mhd` without its data file", _not_uploaded, "refused",
             "its data file '...' was not uploaded with it"),
    WebFault("mhd-with-data", "an `.mhd` and its `.raw`, selected together", _with_data_file, "loaded",
             "Loaded paired-t2f", "the volume; the data file is deleted once read"),
    WebFault("bomb-declared", "a 0.1 MB `.nii.gz` whose header declares 4 GiB", _bomb_declared,
             "refused before decompressing", "declares 4096 MB of voxel data, more than the 1024 MB limit",
             "nothing; server memory +<150 MB"),
    WebFault("bomb-hidden", "a 1 MB `.nii.gz` holding 256 MB more than its header declares", _bomb_hidden,
             "refused after inflating at most 64 MB past the declared size",
             "holds more than its header declares", "nothing; server memory +<150 MB"),
    WebFault("huge-message", "a client announcing a 3 GiB WebSocket message", _huge_message,
             "connection closed before the message is allocated", "", "nothing; server memory +<150 MB"),
    WebFault("owned-state", "a client sets the banner and labels empty and the status to `Acquired t1c`",
             _owned_state, "dropped, the server's values sent back: the SYNTHETIC banner and the status are unchanged "
             "in every page", ""),
    WebFault("idle", "no page open for a while", _idle, "runs on (default); `--idle-timeout 3`: stops after 3 s, "
             "exit 0", "stops 3 s after the last page is closed", "nothing (uploads deleted on stop)"),
]


def render_rows() -> list[str]:
    """The web block of docs/RELIABILITY.md's table."""
    rows = [f"| {HEADING} | | | |"]
    for fault in WEB_FAULTS:
        message = f"`{fault.message}`" if fault.message else "-"
        rows.append(f"| {fault.what} | {fault.result} | {message} | {fault.left} |")
    return rows


# ---------------------------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def web(tmp_path_factory, tiny_model_path):
    require_browser()
    from playwright.sync_api import sync_playwright
    root = tmp_path_factory.mktemp("web")
    shutil.copy(tiny_model_path, root / "tiny.pt")
    server = Server(root / "server.log", "--model", str(root / "tiny.pt"))
    try:
        server.wait_ready()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.goto(server.url)
            page.locator("#load-sample").click()
            page.locator("#status").filter(has_text="Sample case").wait_for()
            yield Web(server=server, browser=browser, page=page, root=root)
            browser.close()
    finally:
        server.stop()


@pytest.mark.parametrize("fault", WEB_FAULTS, ids=[f.id for f in WEB_FAULTS])
def test_web_fault(fault: WebFault, web: Web):
    fault.check(web)
    assert web.server.process.poll() is None, web.server.output()  # the server runs on
    assert web.page.locator("#load-sample").count() == 1  # the served page is still there
