#!/usr/bin/env python3
"""Writes the benchmark's big-blob fixture: an OCI image layout with one uncompressed tar layer.

Usage: make_huge.py OUTDIR SIZE_MIB

The layer is a tar holding one file of SIZE_MIB MiB of random bytes (os.urandom: not
deterministic, digests change from run to run, which the benchmark does not mind). Uncompressed
(`application/vnd.oci.image.layer.v1.tar`) so that nothing spends time compressing: about 5 s per
GiB. Prints shell assignments: HUGE_PATH, HUGE_DIGEST (the manifest), HUGE_LAYER, HUGE_LAYER_SIZE.
"""
import hashlib
import json
import os
import sys
import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def main():
    out, mib = sys.argv[1], int(sys.argv[2])
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def add(data):
        d = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, d), "wb") as f:
            f.write(data)
        return "sha256:" + d, len(data)

    size = mib << 20
    h = hashlib.sha256()
    tmp = os.path.join(out, "layer.tmp")
    with open(tmp, "wb") as f:
        def emit(chunk):
            h.update(chunk)
            f.write(chunk)
        info = tarfile.TarInfo("bench/huge.bin")
        info.size, info.mtime, info.mode = size, 1700000000, 0o644
        emit(info.tobuf(format=tarfile.PAX_FORMAT))
        left = size
        while left:
            n = min(left, 8 << 20)
            emit(os.urandom(n))
            left -= n
        emit(b"\0" * 10240)  # end of archive
        layer_size = f.tell()
    layer = "sha256:" + h.hexdigest()
    os.rename(tmp, os.path.join(blobs, layer[7:]))
    cfg = json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer]},
        "config": {"Cmd": ["/bin/true"]},
    }).encode()
    cfg_d, cfg_n = add(cfg)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cfg_d, "size": cfg_n},
        "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer, "size": layer_size}],
    }, indent=2).encode()
    m_d, m_n = add(manifest)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": m_d, "size": m_n,
             "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    print(f"HUGE_PATH={out}")
    print(f"HUGE_DIGEST={m_d}")
    print(f"HUGE_LAYER={layer}")
    print(f"HUGE_LAYER_SIZE={layer_size}")


if __name__ == "__main__":
    main()
