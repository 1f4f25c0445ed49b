#!/usr/bin/env python3
"""Builds the end-to-end fixture images offline (python3 standard library only).

Usage: make_fixtures.py OUTDIR [FIXTURE...]

Writes one image layout per fixture (all, or only the FIXTUREs named; multiarch is always built,
artifact brings referrers_fallback) under OUTDIR and OUTDIR/fixtures.json describing them
(repository, tag, layout transport, digests). Content is deterministic: the same script writes the
same bytes, so digests are stable from run to run.

Fixtures:
  multiarch   OCI image index: linux/amd64, linux/arm64 and a buildkit-style attestation manifest
              (platform unknown/unknown, vnd.docker.reference.type=attestation-manifest)
  dockerlist  Docker manifest list with two schema2 children (a `dir:` layout: skopeo's `oci:`
              transport would not keep Docker media types)
  manylayers  OCI image with 24 layers (the first one shared with multiarch/amd64)
  big         OCI image with one ~210 MiB layer of incompressible data (gzip level 1)
  artifact    OCI artifact (artifactType + subject = multiarch's amd64 manifest), plus the
              referrers tag-schema index `sha256-<hex of subject>` listing it
"""
import gzip
import hashlib
import io
import json
import os
import random
import sys
import tarfile
import zlib

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
IN_TOTO = "application/vnd.in-toto+json"
ARTIFACT_TYPE = "application/vnd.pullthrough.e2e.signature.v1+json"

BIG_LAYER_MIB = 210
CONFIGS = {}  # manifest digest -> config digest


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def jdump(obj):
    # Compact but not canonical on purpose: the proxy must keep bytes as they are.
    return json.dumps(obj, indent=2).encode()


class Layout:
    """An OCI image layout (`oci:` transport) or a `dir:` layout (version 1.1)."""

    def __init__(self, path, kind):
        self.path, self.kind = path, kind
        os.makedirs(path, exist_ok=True)
        if kind == "oci":
            os.makedirs(os.path.join(path, "blobs", "sha256"), exist_ok=True)
        self.refs = []

    def blob_path(self, digest):
        hexd = digest.split(":", 1)[1]
        if self.kind == "oci":
            return os.path.join(self.path, "blobs", "sha256", hexd)
        return os.path.join(self.path, hexd)

    def add(self, data):
        d = sha(data)
        with open(self.blob_path(d), "wb") as f:
            f.write(data)
        return d

    def add_manifest(self, data, top=False):
        d = sha(data)
        if self.kind == "oci":
            self.add(data)
        elif top:
            with open(os.path.join(self.path, "manifest.json"), "wb") as f:
                f.write(data)
        else:
            with open(os.path.join(self.path, d.split(":")[1] + ".manifest.json"), "wb") as f:
                f.write(data)
        return d

    def tag(self, name, media_type, data):
        self.refs.append({
            "mediaType": media_type,
            "digest": sha(data),
            "size": len(data),
            "annotations": {"org.opencontainers.image.ref.name": name},
        })

    def finish(self):
        if self.kind == "oci":
            with open(os.path.join(self.path, "oci-layout"), "w") as f:
                f.write('{"imageLayoutVersion":"1.0.0"}')
            with open(os.path.join(self.path, "index.json"), "wb") as f:
                f.write(jdump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}))
        else:
            with open(os.path.join(self.path, "version"), "w") as f:
                f.write("Directory Transport Version: 1.1\n")


def tar_layer(files):
    """files: [(name, bytes)] -> (gzip bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, content in files:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 1700000000
            info.mode = 0o644
            t.addfile(info, io.BytesIO(content))
    raw = raw.getvalue()
    gz = gzip.compress(raw, compresslevel=6, mtime=0)
    return gz, sha(raw)


def small_layer(label):
    return tar_layer([
        (f"e2e/{label}.txt", f"pullthrough e2e layer {label}\n".encode() * 50),
        (f"e2e/{label}.bin", random.Random(label).randbytes(4096)),
    ])


def config(arch, diff_ids, os_="linux", variant=None):
    c = {
        "architecture": arch,
        "os": os_,
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "make_fixtures.py"}],
        "created": "2024-01-01T00:00:00Z",
    }
    if variant:
        c["variant"] = variant
    return jdump(c)


def image(layout, arch, layer_specs, docker=False, variant=None):
    """layer_specs: [(gzip bytes, diff_id)] -> (manifest bytes, digest)."""
    layers = []
    for gz, _ in layer_specs:
        layers.append({
            "mediaType": DOCKER_LAYER if docker else OCI_LAYER_GZIP,
            "digest": layout.add(gz),
            "size": len(gz),
        })
    cfg = config(arch, [d for _, d in layer_specs], variant=variant)
    m = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
         "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                    "digest": layout.add(cfg), "size": len(cfg)},
         "layers": layers}
    data = jdump(m)
    d = layout.add_manifest(data)
    CONFIGS[d] = m["config"]["digest"]
    return data, d


def desc(media_type, data, **extra):
    d = {"mediaType": media_type, "digest": sha(data), "size": len(data)}
    d.update(extra)
    return d


def build_multiarch(out, base):
    lay = Layout(os.path.join(out, "multiarch"), "oci")
    amd, amd_d = image(lay, "amd64", [base, small_layer("multiarch-amd64")])
    arm, arm_d = image(lay, "arm64", [small_layer("multiarch-arm64-a"), small_layer("multiarch-arm64-b")],
                       variant="v8")
    # A buildkit provenance attestation: in-toto layer, platform unknown/unknown.
    stmt = jdump({"_type": "https://in-toto.io/Statement/v0.1",
                  "predicateType": "https://slsa.dev/provenance/v0.2",
                  "subject": [{"name": "pkg:docker/library/multiarch@v1", "digest": {"sha256": amd_d[7:]}}],
                  "predicate": {"builder": {"id": "make_fixtures.py"}}})
    att_cfg = config("unknown", [sha(stmt)], os_="unknown")
    att = jdump({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                 "config": {"mediaType": OCI_CONFIG, "digest": lay.add(att_cfg), "size": len(att_cfg)},
                 "layers": [{"mediaType": IN_TOTO, "digest": lay.add(stmt), "size": len(stmt),
                             "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}]})
    att_d = lay.add_manifest(att)
    index = jdump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        desc(OCI_MANIFEST, amd, platform={"architecture": "amd64", "os": "linux"}),
        desc(OCI_MANIFEST, arm, platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
        desc(OCI_MANIFEST, att, platform={"architecture": "unknown", "os": "unknown"},
             annotations={"vnd.docker.reference.digest": amd_d,
                          "vnd.docker.reference.type": "attestation-manifest"}),
    ]})
    idx_d = lay.add_manifest(index)
    lay.tag("v1", OCI_INDEX, index)
    lay.finish()
    return {"repo": "library/multiarch", "short": "multiarch", "tag": "v1", "transport": "oci",
            "path": lay.path, "ref": "v1", "digest": idx_d, "list": True,
            "children": {"amd64": amd_d, "arm64": arm_d, "attestation": att_d}}, amd


def build_dockerlist(out):
    lay = Layout(os.path.join(out, "dockerlist"), "dir")
    amd, amd_d = image(lay, "amd64", [small_layer("dockerlist-amd64")], docker=True)
    arm, arm_d = image(lay, "arm64", [small_layer("dockerlist-arm64")], docker=True, variant="v8")
    lst = jdump({"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": [
        desc(DOCKER_MANIFEST, amd, platform={"architecture": "amd64", "os": "linux"}),
        desc(DOCKER_MANIFEST, arm, platform={"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ]})
    lst_d = lay.add_manifest(lst, top=True)
    lay.finish()
    return {"repo": "e2e/dockerlist", "tag": "v1", "transport": "dir", "path": lay.path,
            "digest": lst_d, "list": True, "children": {"amd64": amd_d, "arm64": arm_d}}


def build_manylayers(out, base):
    lay = Layout(os.path.join(out, "manylayers"), "oci")
    specs = [base] + [small_layer(f"manylayers-{i:02d}") for i in range(23)]
    m, d = image(lay, "amd64", specs)
    lay.tag("v1", OCI_MANIFEST, m)
    lay.finish()
    return {"repo": "e2e/manylayers", "tag": "v1", "transport": "oci", "path": lay.path, "ref": "v1",
            "digest": d, "list": False, "layers": len(specs)}


def build_big(out):
    lay = Layout(os.path.join(out, "big"), "oci")
    tmp = os.path.join(lay.path, "layer.tmp")
    rnd = random.Random(20240101)
    size = BIG_LAYER_MIB << 20
    raw_hash, gz_hash = hashlib.sha256(), hashlib.sha256()
    comp = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    with open(tmp, "wb") as f:
        def emit(chunk):
            raw_hash.update(chunk)
            out_ = comp.compress(chunk)
            gz_hash.update(out_)
            f.write(out_)
        # A tar with a single regular file of `size` random bytes, written as a stream.
        info = tarfile.TarInfo("e2e/big.bin")
        info.size, info.mtime, info.mode = size, 1700000000, 0o644
        emit(info.tobuf(format=tarfile.PAX_FORMAT))
        left = size
        while left:
            n = min(left, 1 << 20)
            emit(rnd.randbytes(n))
            left -= n
        # size is a multiple of 512; the end of archive is two zero blocks, padded to 10240.
        emit(b"\0" * 10240)
        tail = comp.flush()
        gz_hash.update(tail)
        f.write(tail)
        gz_size = f.tell()
    gz_d = "sha256:" + gz_hash.hexdigest()
    os.rename(tmp, lay.blob_path(gz_d))
    cfg = config("amd64", ["sha256:" + raw_hash.hexdigest()])
    m = jdump({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {"mediaType": OCI_CONFIG, "digest": lay.add(cfg), "size": len(cfg)},
               "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": gz_d, "size": gz_size}]})
    d = lay.add_manifest(m)
    CONFIGS[d] = sha(cfg)
    lay.tag("v1", OCI_MANIFEST, m)
    lay.finish()
    return {"repo": "e2e/big", "tag": "v1", "transport": "oci", "path": lay.path, "ref": "v1",
            "digest": d, "list": False, "layer_size": gz_size}


def build_artifact(out, subject):
    lay = Layout(os.path.join(out, "artifact"), "oci")
    empty = b"{}"
    sig = jdump({"e2e": "a detached signature, or an SBOM", "subject": sha(subject)})
    art = jdump({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
                 "config": {"mediaType": OCI_EMPTY, "digest": lay.add(empty), "size": 2, "data": "e30="},
                 "layers": [{"mediaType": ARTIFACT_TYPE, "digest": lay.add(sig), "size": len(sig)}],
                 "subject": desc(OCI_MANIFEST, subject),
                 "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"}})
    art_d = lay.add_manifest(art)
    lay.tag("sig", OCI_MANIFEST, art)
    # What a client without the referrers API pushes: the tag schema `sha256-<subject hex>`.
    fallback = jdump({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        desc(OCI_MANIFEST, art, artifactType=ARTIFACT_TYPE,
             annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"})]})
    fb_d = lay.add_manifest(fallback)
    fb_tag = "sha256-" + sha(subject)[7:]
    lay.tag(fb_tag, OCI_INDEX, fallback)
    lay.finish()
    return ({"repo": "library/multiarch", "tag": "sig", "transport": "oci", "path": lay.path,
             "ref": "sig", "digest": art_d, "list": False, "subject": sha(subject)},
            # skopeo 1.9 cannot copy this index with --preserve-digests ("Manifest list must be
            # converted"; it does not know `artifactType`): it is pushed with a plain manifest PUT
            # of the file at `path`, and checked with inspect --raw only.
            {"repo": "library/multiarch", "tag": fb_tag, "transport": "put",
             "path": lay.blob_path(fb_d), "media_type": OCI_INDEX, "digest": fb_d, "list": True,
             "children": {"artifact": art_d}})


def main():
    out, only = sys.argv[1], set(sys.argv[2:])
    os.makedirs(out, exist_ok=True)
    base = small_layer("shared-base")
    multi, amd = build_multiarch(out, base)
    builders = {
        "dockerlist": lambda: {"dockerlist": build_dockerlist(out)},
        "manylayers": lambda: {"manylayers": build_manylayers(out, base)},
        "big": lambda: {"big": build_big(out)},
        "artifact": lambda: dict(zip(("artifact", "referrers_fallback"), build_artifact(out, amd))),
    }
    unknown = only - set(builders) - {"multiarch"}
    if unknown:
        sys.exit("unknown fixtures: %s" % " ".join(sorted(unknown)))
    fixtures = {"multiarch": multi}
    for name, build in builders.items():
        if not only or name in only:
            fixtures.update(build())
    for fx in fixtures.values():
        if fx["digest"] in CONFIGS:
            fx["config"] = CONFIGS[fx["digest"]]
        for name, child in fx.get("children", {}).items():
            if child in CONFIGS:
                fx.setdefault("child_configs", {})[name] = CONFIGS[child]
    with open(os.path.join(out, "fixtures.json"), "w") as f:
        json.dump(fixtures, f, indent=2)
    # The same, as shell assignments: MULTIARCH_DIGEST=..., MULTIARCH_CHILD_AMD64=..., ...
    with open(os.path.join(out, "fixtures.env"), "w") as f:
        f.write("FIXTURES=\"%s\"\n" % " ".join(fixtures))
        for key, fx in fixtures.items():
            for field, value in fx.items():
                if isinstance(value, dict):
                    prefix = "CHILD" if field == "children" else "CHILD_CONFIG"
                    for name, v in value.items():
                        f.write(f"{key.upper()}_{prefix}_{name.upper()}={v}\n")
                    if field == "children":
                        f.write(f"{key.upper()}_CHILDREN=\"{' '.join(value)}\"\n")
                else:
                    v = str(value).lower() if isinstance(value, bool) else value
                    f.write(f"{key.upper()}_{field.upper()}={v}\n")


if __name__ == "__main__":
    main()
