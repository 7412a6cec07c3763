#!/usr/bin/env python3
"""A TCP relay on 127.0.0.1 that passes each connection's answers at a fixed rate.

    throttle.py LISTEN_PORT TARGET_PORT BYTES_PER_SECOND

Requests go to 127.0.0.1:TARGET_PORT as they come; the bytes coming back are paced, on each
connection on its own, to BYTES_PER_SECOND with no burst (time spent idle earns no credit). In
front of a local registry this makes a link whose speed is known, so a test can tell in advance
how far a fill will have got by when: the local registry alone sends a blob in milliseconds.
Standard library only; stops on SIGTERM.
"""

import socket
import sys
import threading
import time

PIECE = 16 * 1024


def pump(src, dst, rate):
    """Copy src to dst until src ends (rate None: as fast as they go), then pass the end on."""
    due = time.monotonic()
    try:
        while True:
            data = src.recv(PIECE)
            if not data:
                break
            if rate:
                now = time.monotonic()
                due = max(due, now)
                if due > now:
                    time.sleep(due - now)
                due += len(data) / rate
            dst.sendall(data)
    except OSError:
        pass
    for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
        try:
            sock.shutdown(how)
        except OSError:
            pass


def relay(client, target_port, rate):
    try:
        upstream = socket.create_connection(("127.0.0.1", target_port), timeout=10)
    except OSError:
        client.close()
        return
    upstream.settimeout(None)
    back = threading.Thread(target=pump, args=(upstream, client, rate), daemon=True)
    back.start()
    pump(client, upstream, None)
    back.join()
    client.close()
    upstream.close()


def main():
    listen_port, target_port, rate = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(64)
    while True:
        client, _ = server.accept()
        threading.Thread(target=relay, args=(client, target_port, rate), daemon=True).start()


if __name__ == "__main__":
    main()
