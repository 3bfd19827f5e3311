"""The trivial single-user server both hubs spawn: answers 200 at once, to everything.

Started by fedhub's site agent (``--ServerApp.port=N`` among Jupyter's usual arguments)
and by JupyterHub (``JUPYTERHUB_SERVICE_URL``). Writes its pid to ``$BENCH_PID_DIR`` so
the suite can stop exactly the servers it caused.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        body = b'{"version": "trivial"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    host, port = "127.0.0.1", 0
    url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    if url:
        parts = urlsplit(url)
        host, port = parts.hostname or host, parts.port or 0
    for arg in sys.argv[1:]:
        if arg.startswith("--ServerApp.port="):
            port = int(arg.split("=", 1)[1])
        elif arg.startswith("--ServerApp.ip="):
            host = arg.split("=", 1)[1]
        elif arg.startswith("--port="):
            port = int(arg.split("=", 1)[1])
    piddir = os.environ.get("BENCH_PID_DIR")
    if piddir:
        open(os.path.join(piddir, str(os.getpid())), "w").close()
    ThreadingHTTPServer((host, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
