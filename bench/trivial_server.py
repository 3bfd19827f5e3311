"""The trivial single-user server both hubs spawn: answers 200 at once, to everything.

Started by fedhub's site agent (``--ServerApp.port=N`` among Jupyter's usual arguments)
and by JupyterHub (``JUPYTERHUB_SERVICE_URL``). Writes its pid to ``$BENCH_PID_DIR`` so
the suite can stop exactly the servers it caused.

It imports only the C modules ``_socket`` and ``select`` and runs with ``-I -S`` (see
``hubs.TRIVIAL``): ``http.server`` alone costs about 40 ms of CPU to import and ``socket``
7 ms, against 10 ms for the interpreter itself, and a burst of hundreds of spawns would
then measure imports rather than the hubs (the point of a trivial server). Keep-alive, any
number of connections, request bodies with ``Content-Length`` skipped.
"""

import _socket
import os
import select
import sys

BODY = b'{"version": "trivial"}'
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY))
MAX_HEAD = 65536


def address() -> tuple[str, int]:
    """Host and port from JupyterHub's environment or Jupyter's command-line options."""
    host, port = "127.0.0.1", 0
    url = os.environ.get("JUPYTERHUB_SERVICE_URL", "")
    if "://" in url:
        netloc = url.split("://", 1)[1].split("/", 1)[0]
        name, _, num = netloc.rpartition(":")
        if name and num.isdigit():
            host, port = name.strip("[]"), int(num)
    for arg in sys.argv[1:]:
        key, _, value = arg.partition("=")
        if key in ("--ServerApp.port", "--port"):
            port = int(value)
        elif key == "--ServerApp.ip":
            host = value
    return host, port


def answer(buf: bytearray) -> tuple[bytes, bool]:
    """Responses for every complete request in ``buf`` (consumed), and whether to keep
    the connection open after sending them. A request it cannot frame (a malformed
    length, a chunked body, an oversized head) is answered and the connection closed;
    HTTP/1.0 and ``Connection: close`` are honoured."""
    out = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return out, len(buf) <= MAX_HEAD
        head = bytes(buf[:end]).lower()
        lines = head.split(b"\r\n")
        length, keep, chunked = 0, not lines[0].endswith(b"http/1.0"), False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit():
                    return out + RESPONSE + BODY, False
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True  # its body is not read: answer, then close
            elif name == b"connection":
                keep = value == b"keep-alive" or (keep and value != b"close")
        if len(buf) < end + 4 + length:
            return out, True
        del buf[:end + 4 + length]
        out += RESPONSE if head.startswith(b"head ") else RESPONSE + BODY
        if chunked or not keep:
            return out, False


def serve(listener: _socket.socket) -> None:
    """Answer every connection on ``listener`` until killed."""
    poll = select.epoll()
    listener.setblocking(False)
    poll.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, tuple[_socket.socket, bytearray]] = {}
    while True:
        for fd, _ in poll.poll():
            if fd == listener.fileno():
                try:
                    new, _ = listener._accept()  # noqa: SLF001 (socket.py's accept)
                except OSError:  # gone before accepted, or out of descriptors for now
                    continue
                conn = _socket.socket(fileno=new)
                conn.setblocking(False)
                conns[new] = (conn, bytearray())
                poll.register(new, select.EPOLLIN)
                continue
            conn, buf = conns[fd]
            keep = False
            try:
                data = conn.recv(65536)
                if data:
                    buf += data
                    reply, keep = answer(buf)
                    if reply:  # small: sent whole, but a client that never reads is
                        conn.settimeout(1.0)  # dropped rather than stalling the others
                        conn.sendall(reply)
                        conn.setblocking(False)
            except OSError:
                keep = False
            if not keep:
                poll.unregister(fd)
                del conns[fd]
                conn.close()


def main() -> None:
    host, port = address()
    piddir = os.environ.get("BENCH_PID_DIR")
    if piddir:
        open(os.path.join(piddir, str(os.getpid())), "w").close()
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    listener = _socket.socket(family, _socket.SOCK_STREAM)
    listener.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(128)
    serve(listener)


if __name__ == "__main__":
    main()
