# A thread-per-connection blocking server: reads the request until EOF, answers `reply` bytes,
# closes. Writes `ready` once it listens.
import socket
import sys
import threading

ip, port, reply, ready = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind((ip, port))
ls.listen(1024)
open(ready, "w").close()


def serve(c):
    try:
        while c.recv(65536):
            pass
        c.sendall(b"r" * reply)
    except OSError as e:
        print("server:", type(e).__name__, e, file=sys.stderr, flush=True)
    finally:
        c.close()


while True:
    c, _ = ls.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
