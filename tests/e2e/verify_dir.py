#!/usr/bin/env python3
"""Checks an image that skopeo wrote as a `dir:` layout (python3 standard library only).

Usage: verify_dir.py DIR DIGEST

- DIR/manifest.json must hash to DIGEST (the bytes the registry served, unchanged);
- for an index / manifest list, every child must be in DIR/<hex>.manifest.json and hash to its
  descriptor's digest and size;
- for every image manifest, the config and every layer must be in DIR/<hex>, with the descriptor's
  size and digest.
Prints a short summary; exits 1 with the reason on the first mismatch.
"""
import hashlib
import json
import os
import sys

LISTS = {"application/vnd.oci.image.index.v1+json",
         "application/vnd.docker.distribution.manifest.list.v2+json"}


def file_sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def die(msg):
    print("verify_dir: " + msg)
    sys.exit(1)


def check_blob(d, desc, what):
    path = os.path.join(d, desc["digest"].split(":", 1)[1])
    if not os.path.exists(path):
        die(f"{what} {desc['digest']} missing")
    if os.path.getsize(path) != desc["size"]:
        die(f"{what} {desc['digest']}: size {os.path.getsize(path)} != {desc['size']}")
    got = file_sha(path)
    if got != desc["digest"]:
        die(f"{what}: content hashes to {got}, not {desc['digest']}")


def check_image(d, manifest, label):
    check_blob(d, manifest["config"], f"{label} config")
    for i, layer in enumerate(manifest.get("layers", [])):
        check_blob(d, layer, f"{label} layer {i}")
    return len(manifest.get("layers", []))


def main():
    d, digest = sys.argv[1], sys.argv[2]
    top_path = os.path.join(d, "manifest.json")
    got = file_sha(top_path)
    if got != digest:
        die(f"manifest.json hashes to {got}, expected {digest}")
    with open(top_path, "rb") as f:
        top = json.loads(f.read())
    if top.get("mediaType") in LISTS or "manifests" in top:
        n_layers = 0
        for child in top["manifests"]:
            path = os.path.join(d, child["digest"].split(":", 1)[1] + ".manifest.json")
            if not os.path.exists(path):
                die(f"child {child['digest']} was not copied")
            if file_sha(path) != child["digest"] or os.path.getsize(path) != child["size"]:
                die(f"child {child['digest']}: bytes differ from its descriptor")
            with open(path, "rb") as f:
                n_layers += check_image(d, json.loads(f.read()), f"child {child['digest'][:19]}")
        print(f"ok: list {digest[:19]} with {len(top['manifests'])} children, {n_layers} layers verified")
    else:
        n = check_image(d, top, "image")
        print(f"ok: image {digest[:19]} with {n} layers verified")


if __name__ == "__main__":
    main()
