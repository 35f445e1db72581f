"""The Azure traces ship inside the package, so a fresh clone (or an installed wheel) benchmarks alone."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pytest

import greenserve
from greenserve.simulator import traces
from greenserve.simulator.cli import main

# SHA-256 of the unmodified CSVs from the Azure Public Dataset (greenserve/simulator/data/README.md).
UPSTREAM_SHA256 = {
    "azure-code": "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6",
    "azure-conv": "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8",
}


def test_default_traces_are_inside_the_package() -> None:
    d = traces.default_traces_dir()
    assert d.is_relative_to(Path(greenserve.__file__).resolve().parent)
    readme = (d / "README.md").read_text()
    assert "CC BY 4.0" in readme and "Splitwise" in readme  # the attribution the license asks for


@pytest.mark.parametrize("name", sorted(traces.AZURE_FILES))
def test_shipped_trace_is_the_unmodified_upstream_csv(name: str) -> None:
    shipped = traces.resolve_trace_file(traces.default_traces_dir() / traces.AZURE_FILES[name])
    assert shipped.suffix == ".gz"
    with gzip.open(shipped, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == UPSTREAM_SHA256[name]


def test_plain_and_compressed_csvs_read_the_same(tmp_path: Path) -> None:
    src = traces.resolve_trace_file(traces.default_traces_dir() / traces.AZURE_FILES["azure-code"])
    plain = tmp_path / traces.AZURE_FILES["azure-code"]
    with gzip.open(src, "rb") as fin, plain.open("wb") as fout:
        shutil.copyfileobj(fin, fout)
    a = traces.read_azure_timestamps(plain)
    b = traces.read_azure_timestamps(traces.default_traces_dir() / traces.AZURE_FILES["azure-code"])
    assert a.size == 8_819 and (a == b).all()


def test_bench_on_an_azure_trace_needs_no_traces_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--quick", "--trace", "azure-code-1h"]) == 0
    assert "azure-code-1h" in capsys.readouterr().out


def test_missing_traces_dir_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--quick", "--trace", "azure-conv", "--traces", str(tmp_path)]) == 2
    assert "AzureLLMInferenceTrace_conv.csv" in capsys.readouterr().err
