"""Turn root filesystem tarballs into an OCI image archive that ``ctr images import`` accepts.

Used by tests/harness/real_node.sh for the real node's local pause image: no registry is reachable from
these machines, so images are assembled from a Debian rootfs (``mmdebstrap``) without any image tool.
Standard library only, so it runs with the host's python3 before any virtual environment exists.

    python3 tests/harness/rootfs_oci.py --out pause.tar --name localhost/pause:local \
        --cmd sleep --cmd infinity rootfs.tar [layer2.tar ...]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any


def _blob(out: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    out.addfile(info, io.BytesIO(data))
    return digest


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def build(layers: list[Path], out: Path, name: str, config: dict[str, Any]) -> str:
    """Write the archive; returns the manifest digest. Layers are gzip-compressed, base first."""
    diff_ids: list[str] = []
    layer_descs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(out, "w") as arc:
        for layer in layers:
            raw = hashlib.sha256()
            gz_path = Path(tmp) / "layer.tar.gz"
            # mtime=0: the same rootfs gives the same digest, so a re-import is a no-op.
            with (
                layer.open("rb") as src,
                gz_path.open("wb") as dst_file,
                gzip.GzipFile(fileobj=dst_file, mode="wb", mtime=0, compresslevel=1) as dst,
            ):
                while chunk := src.read(1 << 20):
                    raw.update(chunk)
                    dst.write(chunk)
            gz_digest = hashlib.sha256()
            with gz_path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    gz_digest.update(chunk)
            size = gz_path.stat().st_size
            info = tarfile.TarInfo(f"blobs/sha256/{gz_digest.hexdigest()}")
            info.size = size
            with gz_path.open("rb") as f:
                arc.addfile(info, f)
            diff_ids.append(f"sha256:{raw.hexdigest()}")
            layer_descs.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": f"sha256:{gz_digest.hexdigest()}",
                    "size": size,
                }
            )
        image_config = {
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        cfg = _json(image_config)
        manifest = _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": f"sha256:{_blob(arc, cfg)}",
                    "size": len(cfg),
                },
                "layers": layer_descs,
            }
        )
        manifest_digest = _blob(arc, manifest)
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        index = _json(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": f"sha256:{manifest_digest}",
                        "size": len(manifest),
                        "platform": {"architecture": "amd64", "os": "linux"},
                        # containerd names the image from the first, other tools from the second.
                        "annotations": {
                            "io.containerd.image.name": name,
                            "org.opencontainers.image.ref.name": tag,
                        },
                    }
                ],
            }
        )
        for fname, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)):
            info = tarfile.TarInfo(fname)
            info.size = len(data)
            arc.addfile(info, io.BytesIO(data))
    return manifest_digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("layers", nargs="+", type=Path, help="uncompressed layer tarballs, base first")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name", required=True, help="image reference, e.g. localhost/pause:local")
    ap.add_argument("--cmd", action="append", default=[], help="one argument of the image's Cmd")
    ap.add_argument("--entrypoint", action="append", default=[])
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE")
    ap.add_argument("--user", default="")
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    config: dict[str, Any] = {
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *args.env]
    }
    for key, value in (("Cmd", args.cmd), ("Entrypoint", args.entrypoint)):
        if value:
            config[key] = value
    if args.user:
        config["User"] = args.user
    if args.workdir:
        config["WorkingDir"] = args.workdir
    tmp = args.out.with_suffix(".partial")
    digest = build(args.layers, tmp, args.name, config)
    shutil.move(tmp, args.out)
    print(f"sha256:{digest}")


if __name__ == "__main__":
    main()
