"""Hermetic local build of greenserve's two images as OCI archives, with no container daemon.

    python3 tests/harness/images.py            # or `make images`, or tests/harness/images.sh

Prints shell assignments on stdout (``eval "$(bash tests/harness/images.sh)"``); progress goes to stderr:

    GREENSERVE_OPERATOR_IMAGE / _ARCHIVE  ghcr.io/greenserve/greenserve-operator:<version>
    GREENSERVE_SERVING_IMAGE / _ARCHIVE   ghcr.io/greenserve/greenserve-serving:<version>-cpu (CPU test build)
    GREENSERVE_PAUSE_IMAGE / _ARCHIVE     localhost/greenserve-pause:<base key>  (a sandbox image: sleeps)

Each archive is an OCI image layout in a tar (``ctr -n k8s.io images import ARCHIVE``, ``podman load -i``).
The images are made of layers, each cached in ``$GREENSERVE_CACHE/images/layers/<key>.tar`` (default cache
``~/.cache/greenserve``) under a key hashed from what goes into it:

* base: ``mmdebstrap --variant=minbase bookworm`` with python3 and the non-root user 65532 (about 1 min);
* deps: the pinned dependency closure (``operator/requirements.lock``, ``serving-image/requirements-*.lock``)
  installed from PyPI wheels into a venv at ``/opt/greenserve`` by this machine's Python 3.11 (the same
  minor version as bookworm's python3, so the wheels and bytecode are the image's);
* app: the greenserve wheel (operator and agent packages) built from this checkout, plus config files.

An image is then only its config and manifest over those layers, cached in
``$GREENSERVE_CACHE/images/<manifest digest>/``: a warm build hashes the inputs and finds everything. The
most recently used KEEP_ARCHIVES archives of each image, and layers of each kind, stay; older ones are
deleted after each build (`prune`, `prune_layers`).

The serving image built here is the **CPU test variant**: the same entrypoint (``greenserve-agent``), flags,
ports (8500, 8501, 9400), REST paths, metrics and SIGTERM drain as the release image from
serving-image/Dockerfile, but with no ``tensorflow_model_server`` (it cannot be fetched here): the agent runs
its local SavedModel backend (serving-image/greenserve_agent/local_backend.py, TensorFlow from PyPI).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GREENSERVE_CACHE", Path.home() / ".cache" / "greenserve")) / "images"
REGISTRY = "ghcr.io/greenserve"
OPERATOR_REPOSITORY = f"{REGISTRY}/greenserve-operator"
SERVING_REPOSITORY = f"{REGISTRY}/greenserve-serving"
# Bumped when this script changes what it puts into a layer for the same inputs.
BUILD_FORMAT = "1"
SUITE = "bookworm"
BASE_PACKAGES = ("python3", "ca-certificates")
UID = 65532
PREFIX = "opt/greenserve"
PYTHON_MINOR = "3.11"  # bookworm's python3
KEEP_ARCHIVES = 4
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
APP_SOURCES = ("pyproject.toml", "README.md", "operator/greenserve", "serving-image/greenserve_agent")


def log(msg: str) -> None:
    print(f"[images {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def version() -> str:
    text = (REPO / "operator/greenserve/__init__.py").read_text()
    match = re.search(r'__version__ = "([^"]+)"', text)
    if not match:
        raise SystemExit("images: no __version__ in operator/greenserve/__init__.py")
    return match.group(1)


def digest_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tree_hash(paths: Iterable[str]) -> str:
    """Content hash of repository files and folders (names and bytes; bytecode caches left out)."""
    h = hashlib.sha256()
    for rel in paths:
        root = REPO / rel
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in files:
            if "__pycache__" in p.parts:
                continue
            h.update(str(p.relative_to(REPO)).encode() + b"\0")
            h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def key_of(*parts: str) -> str:
    return hashlib.sha256("\0".join((BUILD_FORMAT, *parts)).encode()).hexdigest()[:20]


def run(cmd: Sequence[str]) -> None:
    log("$ " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr)


# --- layers ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    path: Path
    digest: str  # uncompressed: digest == diff_id
    size: int


def cached_layer(key: str, what: str, make: Callable[[Path], None]) -> Layer:
    """The layer tar for ``key``, made by ``make(tmp_path)`` on a miss and renamed into place atomically."""
    layers = CACHE / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    path = layers / f"{key}.tar"
    meta = layers / f"{key}.json"
    if path.exists() and meta.exists():
        info = json.loads(meta.read_text())
        os.utime(meta)  # recently used: kept by prune_layers()
        return Layer(path, info["digest"], info["size"])
    t0 = time.monotonic()
    log(f"building layer {what} ({key})")
    tmp = layers / f".{key}.{os.getpid()}.tar"
    try:
        make(tmp)
        layer = Layer(path, digest_of(tmp), tmp.stat().st_size)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    meta.write_text(json.dumps({"digest": layer.digest, "size": layer.size, "what": what}))
    log(f"layer {what}: {layer.size / 1e6:.0f} MB in {time.monotonic() - t0:.0f} s")
    return layer


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def tar_tree(staging: Path, out: Path) -> None:
    """A layer tar of ``staging`` (paths relative to the image root), parents first, owned by root."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(staging):
            dirnames.sort()
            for name in [*sorted(dirnames), *sorted(filenames)]:
                full = Path(dirpath, name)
                tar.add(full, arcname=str(full.relative_to(staging)), recursive=False, filter=_normalise)


def base_layer() -> Layer:
    # Device nodes are left out (the runtime provides /dev; root-only to create), /dev itself stays.
    args = [
        "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", "--skip=output/mknod", "--quiet",
        f'--customize-hook=chroot "$1" groupadd --gid {UID} greenserve',
        f'--customize-hook=chroot "$1" useradd --uid {UID} --gid {UID} --no-create-home '
        "--home-dir /tmp --shell /usr/sbin/nologin greenserve",
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*',
        SUITE,
    ]  # fmt: skip
    key = key_of("base", *args)

    def make(out: Path) -> None:
        if not shutil.which("mmdebstrap"):
            raise SystemExit("images: mmdebstrap is missing (tests/harness/images.sh installs it)")
        run(["mmdebstrap", *args, str(out)])

    return cached_layer(key, "base", make)


def _check_python() -> None:
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    if minor != PYTHON_MINOR:
        raise SystemExit(
            f"images: run with Python {PYTHON_MINOR} (bookworm's python3): wheels and bytecode are made "
            f"for the image's interpreter; this is {minor} (set PYTHON=python3.11 for images.sh)"
        )


def _venv_skeleton(staging: Path) -> None:
    """A venv at /opt/greenserve over the image's /usr/bin/python3 (what ``python3 -m venv`` writes)."""
    root = staging / PREFIX
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / f"lib/python{PYTHON_MINOR}/site-packages").mkdir(parents=True, exist_ok=True)
    (root / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {PYTHON_MINOR}\n"
    )
    for name in ("python", "python3", f"python{PYTHON_MINOR}"):
        link = root / "bin" / name
        if not link.is_symlink():
            link.symlink_to("/usr/bin/python3")


def _pip_install(staging: Path, args: Sequence[str]) -> None:
    run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--ignore-installed",
            "--only-binary=:all:", "--no-warn-script-location", "--disable-pip-version-check",
            f"--root={staging}", f"--prefix=/{PREFIX}", *args,
        ]
    )  # fmt: skip
    # Console scripts name this machine's interpreter; point them at the image's venv.
    for script in (staging / PREFIX / "bin").iterdir():
        if script.is_symlink() or not script.is_file():
            continue
        data = script.read_bytes()
        if data.startswith(b"#!"):
            rest = data.split(b"\n", 1)[1] if b"\n" in data else b""
            script.write_bytes(f"#!/{PREFIX}/bin/python\n".encode() + rest)


def deps_layer(lock: Path) -> Layer:
    locks = [lock, *(lock.parent / m for m in re.findall(r"^-r\s+(\S+)", lock.read_text(), re.M))]
    key = key_of("deps", PYTHON_MINOR, *(p.read_text() for p in locks))

    def make(out: Path) -> None:
        _check_python()
        with tempfile.TemporaryDirectory(prefix="gs-deps-") as tmp:
            staging = Path(tmp)
            _venv_skeleton(staging)
            _pip_install(staging, ["-r", str(lock)])
            tar_tree(staging, out)

    return cached_layer(key, f"deps {lock.relative_to(REPO)}", make)


def app_layer(extra_files: dict[str, Path]) -> Layer:
    """The greenserve wheel in the venv, and ``extra_files`` (image path -> repository file)."""
    key = key_of(
        "app",
        PYTHON_MINOR,
        tree_hash(APP_SOURCES),
        *(f"{dst}={tree_hash([str(src.relative_to(REPO))])}" for dst, src in sorted(extra_files.items())),
    )

    def make(out: Path) -> None:
        _check_python()
        with tempfile.TemporaryDirectory(prefix="gs-app-") as tmp:
            wheels = Path(tmp, "wheels")
            # A copy of the sources, so the build leaves nothing in the checkout.
            src = Path(tmp, "src")
            for rel in APP_SOURCES:
                target = src / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if (REPO / rel).is_dir():
                    shutil.copytree(REPO / rel, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(REPO / rel, target)
            run(
                [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--disable-pip-version-check",
                 "-w", str(wheels), str(src)]
            )  # fmt: skip
            staging = Path(tmp, "staging")
            _venv_skeleton(staging)
            _pip_install(staging, [str(w) for w in wheels.glob("*.whl")])
            for link in ("python", "python3", f"python{PYTHON_MINOR}"):  # the deps layer has them
                (staging / PREFIX / "bin" / link).unlink()
            (staging / PREFIX / "pyvenv.cfg").unlink()
            for dst, src_file in extra_files.items():
                target = staging / dst.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src_file, target)
            tar_tree(staging, out)

    return cached_layer(key, "app", make)


# --- images ----------------------------------------------------------------------------------------


@dataclass
class ImageSpec:
    ref: str
    layers: list[Layer]
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    user: str = f"{UID}:{UID}"
    labels: dict[str, str] = field(default_factory=dict)


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def write_image(spec: ImageSpec, name: str) -> Path:
    """The OCI archive of ``spec``; cached by its manifest digest, which covers every layer and the config."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": spec.user,
            "Env": [f"{k}={v}" for k, v in spec.env.items()],
            "Entrypoint": spec.entrypoint,
            **({"Cmd": spec.cmd} if spec.cmd else {}),
            "WorkingDir": "/tmp",
            "ExposedPorts": {f"{p}/tcp": {} for p in spec.ports},
            "StopSignal": "SIGTERM",
            "Labels": spec.labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer.digest}" for layer in spec.layers]},
        "history": [
            {"created_by": f"tests/harness/images.py layer {layer.path.name}"} for layer in spec.layers
        ],
    }
    config_digest, config_bytes = _blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": LAYER_MEDIA, "digest": f"sha256:{layer.digest}", "size": layer.size}
            for layer in spec.layers
        ],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    tag = spec.ref.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                # containerd names the image by the first; the OCI spec's ref.name is the tag alone.
                "annotations": {
                    "io.containerd.image.name": spec.ref,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    folder = CACHE / manifest_digest.split(":", 1)[1][:20]
    archive = folder / f"{name}.oci.tar"
    if archive.exists():
        os.utime(archive)  # recently used: kept by prune()
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{os.getpid()}.tar"
    t0 = time.monotonic()
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:

            def add_bytes(arcname: str, data: bytes) -> None:
                info = _normalise(tarfile.TarInfo(arcname))
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))

            add_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            add_bytes("index.json", json.dumps(index, sort_keys=True).encode())
            add_bytes(f"blobs/sha256/{config_digest.split(':')[1]}", config_bytes)
            add_bytes(f"blobs/sha256/{manifest_digest.split(':')[1]}", manifest_bytes)
            for layer in spec.layers:
                tar.add(layer.path, arcname=f"blobs/sha256/{layer.digest}", filter=_normalise)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"wrote {archive} ({archive.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t0:.0f} s")
    prune(name)
    return archive


def _beyond_newest(paths: Iterable[Path]) -> list[Path]:
    """The paths past the KEEP_ARCHIVES most recently used (modified: a cache hit touches its file)."""
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_ARCHIVES:]


def prune(name: str) -> None:
    """Each code change makes a new archive (the serving one is about 2 GB): keep the most recently used
    KEEP_ARCHIVES of each image, across the checkouts that share the cache."""
    for old in _beyond_newest(CACHE.glob(f"*/{name}.oci.tar")):
        log(f"pruning {old}")
        old.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            old.parent.rmdir()


def prune_layers() -> None:
    """Layers are keyed by their inputs, so each code change adds an app layer and each lock change a deps
    layer: keep the most recently used KEEP_ARCHIVES of each kind (the archives hold their own copies of
    the layers, so a pruned one is only rebuilt on a later miss)."""
    layers = CACHE / "layers"
    by_kind: dict[str, list[Path]] = {}
    for meta in layers.glob("*.json"):
        try:
            kind = str(json.loads(meta.read_text()).get("what", ""))
        except (OSError, ValueError):
            continue
        by_kind.setdefault(kind, []).append(meta)
    for metas in by_kind.values():
        for old in _beyond_newest(metas):
            log(f"pruning layer {old.with_suffix('.tar')}")
            old.with_suffix(".tar").unlink(missing_ok=True)
            old.unlink(missing_ok=True)


def main() -> int:
    t0 = time.monotonic()
    ver = version()
    labels = {
        "org.opencontainers.image.version": ver,
        "org.opencontainers.image.source": "https://github.com/greenserve/greenserve",
    }
    base = base_layer()
    path_env = f"/{PREFIX}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    common_env = {"PATH": path_env, "PYTHONUNBUFFERED": "1", "HOME": "/tmp", "TMPDIR": "/tmp"}

    operator = ImageSpec(
        ref=f"{OPERATOR_REPOSITORY}:{ver}",
        layers=[base, deps_layer(REPO / "operator/requirements.lock"), app_layer({})],
        entrypoint=["python", "-m", "greenserve", "run"],
        env={**common_env, "PYTHONDONTWRITEBYTECODE": "1"},
        ports=[8080, 9090],
        labels={**labels, "org.opencontainers.image.title": "greenserve-operator"},
    )
    serving = ImageSpec(
        ref=f"{SERVING_REPOSITORY}:{ver}-cpu",
        layers=[
            base,
            deps_layer(REPO / "serving-image/requirements-cpu.lock"),
            app_layer({"/etc/greenserve/monitoring.config": REPO / "serving-image/monitoring.config"}),
        ],
        entrypoint=["greenserve-agent"],
        env={**common_env, "MODEL_BASE_PATH": "/models", "GREENSERVE_BACKEND": "local"},
        ports=[8500, 8501, 9400],
        labels={
            **labels,
            "org.opencontainers.image.title": "greenserve-serving",
            "org.opencontainers.image.description": "CPU test variant: the agent's local SavedModel "
            "backend (TensorFlow from PyPI) in place of tensorflow_model_server",
        },
    )
    pause = ImageSpec(
        ref=f"localhost/greenserve-pause:{base.digest[:12]}",
        layers=[base],
        entrypoint=["sleep", "infinity"],
        env={"PATH": path_env},
        labels={**labels, "org.opencontainers.image.title": "greenserve-pause"},
    )
    out = {}
    for name, spec in (("operator", operator), ("serving", serving), ("pause", pause)):
        out[name] = (spec.ref, write_image(spec, name))
    for name, (ref, archive) in out.items():
        print(f"GREENSERVE_{name.upper()}_IMAGE={ref}")
        print(f"GREENSERVE_{name.upper()}_ARCHIVE={archive}")
    prune_layers()
    log(f"images ready in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
