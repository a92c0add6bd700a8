"""``collagan-impute web``'s server process: start the page's app, stop on Ctrl-C or SIGTERM (exit status 143) and
delete the uploads either way.

Example:
    >>> serve(host="127.0.0.1", port=8080)   # blocks until stopped                       # doctest: +SKIP
    0
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from typing import Optional

from . import web, web_uploads


def serve(host: str = "127.0.0.1", port: int = 8080, model: Optional[str] = None, device: str = "auto",
          precision: str = "auto", allowed_origins=(), idle_timeout: int = 0, runtime: str = "auto") -> int:
    """Start the server; block until it is stopped. Returns 0, or 143 when SIGTERM stopped it.

    ``allowed_origins``: origins besides the served page that may drive it (a reverse proxy's public address);
    ``idle_timeout``: stop after that many seconds without a connected page (0: never).
    """
    from .web_guard import normalize_origin

    allowed_origins = [normalize_origin(o) for o in allowed_origins]  # a bad one refused before the model loads
    os.environ.setdefault("WSLINK_MAX_MSG_SIZE", str(web_uploads.MAX_UPLOAD_BYTES + 2 ** 20))
    app = web.WebApp(model=model, device=device, precision=precision, runtime=runtime)
    terminated = threading.Event()

    def on_ready(**_) -> None:
        # aiohttp stops gracefully on SIGTERM (service managers, containers) as on Ctrl-C, so the uploads go;
        # its handler is wrapped to remember which signal it was, for the exit status.
        from aiohttp.web_runner import GracefulExit

        def stop() -> None:
            terminated.set()
            raise GracefulExit()

        asyncio.get_event_loop().add_signal_handler(signal.SIGTERM, stop)

    app.ctrl.on_server_ready.add(on_ready)
    print(f"CollaGAN Impute web: http://{host}:{port}/  (one imputation at a time; Ctrl-C stops)", flush=True)
    if idle_timeout > 0:
        print(f"The server stops {idle_timeout} s after the last page is closed (--idle-timeout); results not "
              "downloaded by then are lost.", flush=True)
    print(f"Uploads are kept in {app.upload_dir} (private; deleted when the server stops).", flush=True)
    try:
        app.start(host=host, port=port, allowed_origins=allowed_origins, idle_timeout=idle_timeout)
    finally:
        app.cleanup()
    return 128 + signal.SIGTERM if terminated.is_set() else 0
