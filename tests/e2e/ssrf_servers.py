#!/usr/bin/env python3
"""Servers of the SSRF section of the end-to-end tests (tests/e2e/ssrf.sh); standard library only.

  ssrf_servers.py make DIR NAME...
      Writes, for each NAME, a blob (deterministic bytes) and an OCI image manifest that lists it
      into DIR/<hex of its sha256>, and prints one line per NAME: `NAME BLOB_DIGEST MANIFEST_DIGEST`.

  ssrf_servers.py registry --listen HOST:PORT --content DIR --scenarios FILE --log FILE
      A registry that behaves (`/v2/` 200) but answers every blob and manifest request of a
      repository `ssrf/<scenario>` as FILE (JSON) says for that scenario:
        {"location": "URL"}  307 with that Location ({digest} and {kind} = blobs|manifests are
                             replaced), the hostile redirect
        {"realm": "URL"}     401 `WWW-Authenticate: Bearer realm="URL",service="ssrf-e2e"` unless
                             the request carries the token that URL hands out (see /token); then
                             the content itself
        {"direct": true}     the content itself (from DIR, by digest)
      Every request is appended to the log as `METHOD PATH`.

  ssrf_servers.py target --listen HOST:PORT --name NAME --content DIR --hits FILE
      What a hostile redirect points at: an internal service or a second public host. EVERY
      accepted connection is appended to the hits file (`NAME connection from ADDR`), and every
      request as `NAME METHOD PATH host=HOST auth=yes|no`, before anything is answered, so a
      connection that sends nothing useful is still counted. Routes:
        .../blobs/<digest>, .../manifests/<digest>   the content from DIR (what the upstream would
                                                     serve: a followed redirect gives valid bytes)
        /token                                       {"token": "ssrf-e2e.<16 hex>"}, a token
                                                     that names the host and path asked, so the
                                                     registry accepts only its realm's token
        /hop?to=URL                                  307 to URL (a second hop)
        anything else                                200 text/plain "SSRF-E2E-SECRET from NAME"
"""
import hashlib
import json
import os
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DIGEST_RE = re.compile(r"/(blobs|manifests)/(sha256:[0-9a-f]{64})$")
LOCK = threading.Lock()


def append(path, line):
    with LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def make(directory, names):
    os.makedirs(directory, exist_ok=True)

    def put(data):
        d = sha256(data)
        with open(os.path.join(directory, d[7:]), "wb") as f:
            f.write(data)
        return d

    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = put(config)
    for name in names:
        line = f"pullthrough ssrf e2e blob {name}\n".encode()
        blob = (line * (70_000 // len(line) + 1))[:70_000]
        blob_digest = put(blob)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": blob_digest, "size": len(blob)}],
            "annotations": {"ssrf-e2e": name},
        }, separators=(",", ":")).encode()
        print(name, blob_digest, put(manifest))


def token_for(host, path):
    """The token the realm http://HOST/PATH hands out (HOST as in the Host header)."""
    return "ssrf-e2e." + hashlib.sha256(f"{host}{path}".encode()).hexdigest()[:16]


def content(directory, digest):
    try:
        with open(os.path.join(directory, digest[7:]), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


class Base(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ssrf-e2e"
    opts = {}

    def log_message(self, *a):
        pass

    def reply(self, code, body=b"", ctype="text/plain", headers=None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def serve_content(self, kind, digest):
        data = content(self.opts["content"], digest)
        if data is None:
            body = json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": digest}]}).encode()
            return self.reply(404, body, "application/json")
        ctype = OCI_MANIFEST if kind == "manifests" else "application/octet-stream"
        self.reply(200, data, ctype, {"Docker-Content-Digest": digest})

    def do_GET(self):
        self.route()

    def do_HEAD(self):
        self.route()


class Registry(Base):
    def route(self):
        append(self.opts["log"], f"{self.command} {self.path}")
        path = urlsplit(self.path).path
        if path in ("/v2", "/v2/"):
            return self.reply(200, b"{}", "application/json",
                              {"Docker-Distribution-API-Version": "registry/2.0"})
        m = re.match(r"^/v2/ssrf/([a-z0-9-]+)(/.*)$", path)
        d = DIGEST_RE.search(path)
        if not m or not d:
            return self.reply(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}',
                              "application/json")
        kind, digest = d.group(1), d.group(2)
        with open(self.opts["scenarios"], encoding="utf-8") as f:
            scenario = json.load(f).get(m.group(1))
        if scenario is None:
            return self.reply(404, b'{"errors":[{"code":"NAME_UNKNOWN","message":"scenario"}]}',
                              "application/json")
        if "location" in scenario:
            loc = scenario["location"].replace("{digest}", digest).replace("{kind}", kind)
            return self.reply(307, b"", headers={"Location": loc})
        realm = urlsplit(scenario.get("realm", ""))
        token = token_for(realm.netloc, realm.path)
        if "realm" in scenario and self.headers.get("Authorization") != f"Bearer {token}":
            challenge = f'Bearer realm="{scenario["realm"]}",service="ssrf-e2e"'
            return self.reply(401, b'{"errors":[{"code":"UNAUTHORIZED","message":"token"}]}',
                              "application/json", {"WWW-Authenticate": challenge})
        self.serve_content(kind, digest)


class Target(Base):
    def handle(self):
        append(self.opts["hits"], f"{self.opts['name']} connection from {self.client_address[0]}")
        super().handle()

    def parse_request(self):
        ok = super().parse_request()
        line = self.raw_requestline.decode("latin-1").strip()
        if ok:
            auth = "yes" if self.headers.get("Authorization") else "no"
            line = f"{self.command} {self.path} host={self.headers.get('Host')} auth={auth}"
        append(self.opts["hits"], f"{self.opts['name']} {line}")
        return ok

    def route(self):
        u = urlsplit(self.path)
        d = DIGEST_RE.search(u.path)
        if d:
            return self.serve_content(d.group(1), d.group(2))
        if u.path == "/token":
            token = token_for(self.headers.get("Host", ""), u.path)
            return self.reply(200, json.dumps({"token": token}).encode(), "application/json")
        if u.path == "/hop":
            to = parse_qs(u.query).get("to", [""])[0]
            return self.reply(307, b"", headers={"Location": to})
        self.reply(200, f"SSRF-E2E-SECRET from {self.opts['name']}\n".encode())


def serve(handler, argv):
    opts = dict(zip(argv[0::2], argv[1::2]))
    opts = {k.lstrip("-"): v for k, v in opts.items()}
    host, port = opts["listen"].rsplit(":", 1)
    handler.opts = opts
    server = ThreadingHTTPServer((host, int(port)), handler)
    server.daemon_threads = True
    print(f"listening on {opts['listen']}", flush=True)
    server.serve_forever()


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    role, rest = sys.argv[1], sys.argv[2:]
    if role == "make":
        make(rest[0], rest[1:])
    elif role == "registry":
        serve(Registry, rest)
    elif role == "target":
        serve(Target, rest)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
