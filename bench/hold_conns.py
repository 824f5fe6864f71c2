"""Opens N keep-alive connections to HOST:PORT, sends one `GET /` on each and
reads its answer, then holds them all open and idle for HOLD seconds (or
until killed). Prints `ready N` once every connection has had its answer.
For bench/run.sh's idle-connections memory figure.

    python3 bench/hold_conns.py HOST PORT N HOLD
"""

import selectors
import socket
import sys
import time


def main() -> int:
    host, port, count, hold = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    request = f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    socks = []
    sel = selectors.DefaultSelector()
    for _ in range(count):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(request)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
        socks.append(s)
    waiting = count
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            buf = key.data
            chunk = key.fileobj.recv(65536)
            if not chunk:
                print(f"connection closed early after {len(buf)} bytes", file=sys.stderr)
                return 1
            buf += chunk
            head, sep, body = bytes(buf).partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if len(body) >= length:
                sel.unregister(key.fileobj)
                waiting -= 1
    if waiting:
        print(f"{waiting} of {count} connections got no answer", file=sys.stderr)
        return 1
    print(f"ready {count}", flush=True)
    time.sleep(hold)
    return 0


if __name__ == "__main__":
    sys.exit(main())
