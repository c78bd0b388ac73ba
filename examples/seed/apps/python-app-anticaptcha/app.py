"""python-app-anticaptcha: the captcha service of the seed's demo.

POST /anticaptcha/{id} with a multipart/form-data part `img` answers
`{"data":N,"message":"Success!","state":"000"}` like the seed's service. The seed's machine-learning
model is not published, so N is computed by the first stage of any captcha reader: the upload is
decoded, binarised, and N is the number of separate glyphs (8-connected dark regions) it shows. An
image of five marks answers 5, the seed's figure.

A request without the `img` part, or whose `img` is not a decodable image, gets a 400 with a JSON
body of the same shape. Standard library only besides Pillow: http.server for HTTP, the email
package for multipart (both keep binary parts byte for byte).
"""

import email.parser
import email.policy
import io
import json
import os
import sys
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image, UnidentifiedImageError

APP = "python-app-anticaptcha"
TRACE_HEADERS = (
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "x-ot-span-context",
    "b3",
)
MAX_BODY = 10 * 1024 * 1024
# Larger images are scaled down first: glyphs survive, the pixel walk stays fast.
MAX_SIDE = 200
# Specks smaller than this are noise, not glyphs.
MIN_GLYPH_PIXELS = 4


class BadRequest(Exception):
    """The request cannot be answered: status and message for the JSON error."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def image_part(content_type, body):
    """The bytes of the multipart part named `img`."""
    if not content_type or not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest(400, "expected multipart/form-data with an 'img' part")
    head = b"Content-Type: " + content_type.encode("latin-1") + b"\r\nMIME-Version: 1.0\r\n\r\n"
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not msg.is_multipart():
        raise BadRequest(400, "malformed multipart body")
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "img":
            return part.get_payload(decode=True) or b""
    raise BadRequest(400, "missing multipart part 'img'")


def count_glyphs(data):
    """Number of 8-connected foreground regions of the decoded image `data`."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure and checksums, without decoding pixels
        img = Image.open(io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise BadRequest(400, "'img' is not an image of a known format") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(400, f"'img' is not a decodable image: {e}") from None
    img = img.convert("L")
    if max(img.size) > MAX_SIDE:
        img.thumbnail((MAX_SIDE, MAX_SIDE))
    w, h = img.size
    px = img.tobytes()
    dark = [p < 128 for p in px]
    # Glyphs are the minority colour: light text on a dark ground works too.
    if sum(dark) * 2 > len(dark):
        dark = [not d for d in dark]
    seen = bytearray(len(dark))
    glyphs = 0
    for start in range(len(dark)):
        if not dark[start] or seen[start]:
            continue
        seen[start] = 1
        size = 0
        todo = deque([start])
        while todo:
            i = todo.popleft()
            size += 1
            y, x = divmod(i, w)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w:
                        j = ny * w + nx
                        if dark[j] and not seen[j]:
                            seen[j] = 1
                            todo.append(j)
        if size >= MIN_GLYPH_PIXELS:
            glyphs += 1
    return glyphs


def answer(data, message, state):
    # Compact and key-sorted, as the seed's service printed it.
    return json.dumps({"data": data, "message": message, "state": state},
                      separators=(",", ":"), sort_keys=True).encode()


class Handler(BaseHTTPRequestHandler):
    server_version = APP
    protocol_version = "HTTP/1.1"

    def log_request_line(self):
        trace = {k: self.headers[k] for k in TRACE_HEADERS if self.headers.get(k) is not None}
        line = {"app": APP, "method": self.command, "path": self.path.split("?")[0], "trace": trace}
        sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    def send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.log_request_line()
        parts = self.path.split("?")[0].split("/")
        if len(parts) != 3 or parts[1] != "anticaptcha" or not parts[2]:
            self.send(404, answer(None, "not found", "404"))
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
            if length > MAX_BODY:
                raise BadRequest(413, f"upload larger than {MAX_BODY} bytes")
            body = self.rfile.read(length)
            glyphs = count_glyphs(image_part(self.headers.get("Content-Type"), body))
        except BadRequest as e:
            self.send(e.status, answer(None, e.message, str(e.status)))
            return
        except ValueError:
            self.send(400, answer(None, "bad Content-Length", "400"))
            return
        self.send(200, answer(glyphs, "Success!", "000"))

    def do_GET(self):
        self.log_request_line()
        self.send(404, answer(None, "POST /anticaptcha/{id} with a multipart 'img'", "404"))

    def log_message(self, fmt, *args):
        # Access lines go to stderr; stdout carries only the per-request trace lines.
        sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))


def main():
    addr = os.environ.get("LISTEN_ADDR", ":8080")
    host, _, port = addr.rpartition(":")
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
    sys.stderr.write(f"{APP} listening on {addr}\n")
    server.serve_forever()


if __name__ == "__main__":
    main()
