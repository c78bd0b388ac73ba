"""The test's own DNS resolver, standing in for the cluster's upstream (never the internet).

Usage: responder.py IP PORT LOG ANSWER_IP. Serves UDP and TCP on IP:PORT. Names under
example.test get an A record (ANSWER_IP) for A queries and an empty NOERROR otherwise; every other
name is NXDOMAIN, as a real upstream says for `x.ns.default.svc.cluster.local`-style search
expansions. Logs one line per query: "<udp|tcp> <client ip> <name> <qtype>", and "ready" once
both sockets listen.
"""
import socket
import struct
import sys
import threading

ip, port, log_path, answer_ip = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
log = open(log_path, "a", buffering=1)
lock = threading.Lock()
ANSWER = socket.inet_aton(answer_ip)
ZONE = b"example.test"


def question(msg):
    labels, off = [], 12
    while msg[off] != 0:
        n = msg[off]
        labels.append(msg[off + 1 : off + 1 + n])
        off += 1 + n
    qtype = struct.unpack("!H", msg[off + 1 : off + 3])[0]
    return b".".join(labels), qtype, msg[12 : off + 5]


def reply(msg, proto, client):
    qid, flags = struct.unpack("!HH", msg[:4])
    name, qtype, q = question(msg)
    with lock:
        log.write(f"{proto} {client} {name.decode()} {qtype}\n")
    lname = name.lower()
    answers = b""
    if lname == ZONE or lname.endswith(b"." + ZONE):
        rcode = 0
        if qtype == 1:
            answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 30, 4) + ANSWER
    else:
        rcode = 3
    count = 1 if answers else 0
    hdr = struct.pack("!HHHHHH", qid, 0x8080 | (flags & 0x0100) | rcode, 1, count, 0, 0)
    return hdr + q + answers


def serve_udp(sock):
    while True:
        msg, peer = sock.recvfrom(4096)
        try:
            sock.sendto(reply(msg, "udp", peer[0]), peer)
        except (IndexError, struct.error):
            pass


def serve_tcp_conn(conn, peer):
    with conn:
        while True:
            head = conn.recv(2, socket.MSG_WAITALL)
            if len(head) < 2:
                return
            msg = conn.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL)
            out = reply(msg, "tcp", peer[0])
            conn.sendall(struct.pack("!H", len(out)) + out)


udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((ip, port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((ip, port))
tcp.listen(16)
threading.Thread(target=serve_udp, args=(udp,), daemon=True).start()
log.write("ready\n")
while True:
    conn, peer = tcp.accept()
    threading.Thread(target=serve_tcp_conn, args=(conn, peer), daemon=True).start()
