"""One DNS query the way a resolver library sends it, printing what came back.

Usage: query.py udp|tcp SERVER_IP NAME. UDP uses an unconnected socket (sendto/recvfrom: the
sendmsg/recvmsg path), TCP a connected one with the two-byte length prefix. Prints
"from <ip:port>" (the reply's source for UDP, getpeername() for TCP), "rcode <n>" and one
"A <ip>" / "CNAME <name>" line per answer.
"""
import socket
import struct
import sys

proto, server, name = sys.argv[1], sys.argv[2], sys.argv[3]
q = struct.pack("!HHHHHH", 0x4D50, 0x0100, 1, 0, 0, 0)
for label in name.rstrip(".").split("."):
    q += bytes([len(label)]) + label.encode()
q += b"\x00" + struct.pack("!HH", 1, 1)

if proto == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(5)
    s.sendto(q, (server, 53))
    msg, src = s.recvfrom(4096)
else:
    s = socket.create_connection((server, 53), timeout=5)
    src = s.getpeername()
    s.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", s.recv(2, socket.MSG_WAITALL))[0]
    msg = s.recv(n, socket.MSG_WAITALL)
print(f"from {src[0]}:{src[1]}")
assert msg[:2] == q[:2], "reply id differs"
print(f"rcode {msg[3] & 0x0F}")


def read_name(off):
    labels = []
    while True:
        n = msg[off]
        if n & 0xC0 == 0xC0:
            ptr = struct.unpack("!H", msg[off : off + 2])[0] & 0x3FFF
            return labels + read_name(ptr)[0], off + 2
        if n == 0:
            return labels, off + 1
        labels.append(msg[off + 1 : off + 1 + n].decode())
        off += 1 + n


ancount = struct.unpack("!H", msg[6:8])[0]
_, off = read_name(12)
off += 4
for _ in range(ancount):
    _, off = read_name(off)
    rtype, _, _, rdlen = struct.unpack("!HHIH", msg[off : off + 10])
    off += 10
    if rtype == 1:
        print(f"A {socket.inet_ntoa(msg[off:off + 4])}")
    elif rtype == 5:
        print(f"CNAME {'.'.join(read_name(off)[0])}")
    off += rdlen
