#!/usr/bin/env python3
"""A minimal Docker registry token server for the end-to-end tests (standard library + openssl).

Usage: token_server.py --listen 127.0.0.1:PORT --key key.pem --cert cert.pem \
                       --issuer ISSUER --service SERVICE --user USER --password PASSWORD

GET /token?service=S&scope=repository:NAME:ACTIONS[&scope=...] with HTTP Basic credentials.
Wrong or missing credentials -> 401. Otherwise a JWT (RS256, signed with `openssl dgst`, the
signing certificate in the `x5c` header) granting every requested repository action, in the form
CNCF distribution 2.8 verifies with `auth: token: rootcertbundle: cert.pem`.

Every request is logged to stdout as one line:
  token-request user=<user or -> scopes=<scope,...> status=<code>
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main():
    p = argparse.ArgumentParser()
    for a in ("listen", "key", "cert", "issuer", "service", "user", "password"):
        p.add_argument("--" + a, required=True)
    args = p.parse_args()

    der = subprocess.run(["openssl", "x509", "-in", args.cert, "-outform", "DER"],
                         check=True, capture_output=True).stdout
    header = b64url(json.dumps({"typ": "JWT", "alg": "RS256",
                                "x5c": [base64.b64encode(der).decode()]}).encode())

    def sign(claims):
        signing_input = header + "." + b64url(json.dumps(claims).encode())
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", args.key],
                             input=signing_input.encode(), check=True, capture_output=True).stdout
        return signing_input + "." + b64url(sig)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def reply(self, code, body, user, scopes):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="e2e-token"')
            self.end_headers()
            self.wfile.write(data)
            print(f"token-request user={user or '-'} scopes={','.join(scopes) or '-'} status={code}",
                  flush=True)

        def do_GET(self):
            url = urlsplit(self.path)
            q = parse_qs(url.query)
            scopes = q.get("scope", [])
            user = None
            auth = self.headers.get("Authorization", "")
            if auth.lower().startswith("basic "):
                try:
                    user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                except Exception:
                    user, pw = None, None
            if url.path != "/token":
                return self.reply(404, {"error": "not found"}, user, scopes)
            if user != args.user or pw != args.password:
                return self.reply(401, {"error": "bad or missing credentials"}, user, scopes)
            access = []
            for s in scopes:
                parts = s.split(":")
                if len(parts) >= 3 and parts[0] == "repository":
                    access.append({"type": "repository", "name": ":".join(parts[1:-1]),
                                   "actions": parts[-1].split(",")})
            now = int(time.time())
            claims = {"iss": args.issuer, "sub": user, "aud": args.service, "iat": now,
                      "nbf": now - 10, "exp": now + 300, "jti": b64url(os.urandom(12)),
                      "access": access}
            token = sign(claims)
            self.reply(200, {"token": token, "access_token": token, "expires_in": 300,
                             "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))},
                       user, scopes)

    host, port = args.listen.rsplit(":", 1)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    print(f"token server on http://{args.listen}/token", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
