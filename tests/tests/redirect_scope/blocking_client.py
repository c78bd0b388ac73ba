# A plain blocking client, as many applications are written: connect, send a request, close the
# write side, then recv() until EOF. Prints one JSON line: connections, successes, errors by kind.
# A redirected socket's blocking recv() can fail with BlockingIOError (EAGAIN) here.
import json
import socket
import sys

host, port, conns, reply = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ok, errors = 0, {}
for _ in range(conns):
    try:
        s = socket.create_connection((host, port))  # no timeout: a blocking socket
        s.sendall(b"q" * 1000)
        s.shutdown(socket.SHUT_WR)
        got = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += len(chunk)
        s.close()
        if got == reply:
            ok += 1
        else:
            errors["short_reply"] = errors.get("short_reply", 0) + 1
    except Exception as e:  # every failure is counted by its kind
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
print(json.dumps({"conns": conns, "ok": ok, "errors": errors}))
