"""The data registry: every file the project reads, with its canonical source, licence and sha256.

Every file is fetched in this order and checked against its sha256 before use:

1. the cache (``data/cache``, or ``$CLOUD_CACHE``);
2. its canonical source: a URL at a pinned commit, or a member of a pinned PyPI distribution
   (skipped when ``$CLOUD_OFFLINE=1``);
3. the read-only mirror folder named by ``$CLOUD_DATA_MIRROR`` (same relative names as the
   registry keys; CI points it at ``../shared/data``).

A file whose bytes do not match raises :class:`~cloudlib.errors.ChecksumError` naming the file and
both hashes; when no source can deliver, :class:`~cloudlib.errors.DataUnavailableError` lists what
was tried.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import paths
from .errors import ChecksumError, DataError, DataUnavailableError
from .io import write_bytes

CLOUD_COMMIT = "043de9e2cb71efa454a2a9a167ed77df3d769bda"
CDVAE_COMMIT = "f857f598d6f6cca5dc1ea0582d228f12dcc2c2ea"
MATCALC_COMMIT = "aa76b41edb9ffb62f7efb2b5d3a3f7a8b2b4747d"
_GH = "https://raw.githubusercontent.com"


@dataclass(frozen=True)
class Dataset:
    """A file in the registry. ``name`` is its cache path and its path in the mirror."""

    name: str
    sha256: str
    url: str | None = None
    licence: str = ""
    description: str = ""
    # A file that lives inside a pinned PyPI distribution (wheel or sdist) instead of at a URL:
    archive: str | None = None  # the distribution's file name on PyPI
    archive_url: str | None = None
    archive_sha256: str | None = None
    member: str | None = None


def _dist(filename: str, url: str, sha: str) -> dict:
    return {"archive": filename, "archive_url": url, "archive_sha256": sha}


_CTK = _dist(
    "crystal_toolkit-2026.7.20-py3-none-any.whl",
    "https://files.pythonhosted.org/packages/08/55/ffe6c296924ea95e5b2ff75f9e75ff5a9eb843926573d9555d7de1ded7ea/"
    "crystal_toolkit-2026.7.20-py3-none-any.whl",
    "93759d9785b6733870dd6c110088738649f8c6b4fdb96975219e07ae12b01075",
)
_MATBENCH = _dist(
    "matbench-0.6-py3-none-any.whl",
    "https://files.pythonhosted.org/packages/14/3c/45bd8b7bc2614dd1cb0780b47050ed6ac8a6786b91e8efe841c8ad56e3f3/"
    "matbench-0.6-py3-none-any.whl",
    "90b131032c3c2afe37c57b8891efefca05efe2d14296ae1f22445f7ddfb14c01",
)
_MATMINER = _dist(
    "matminer-0.3.9.tar.gz",
    "https://files.pythonhosted.org/packages/21/c8/21c7ad2d6ef08d7de00098bc559bcc0cf0483345ae006cb2c0a6ab21fab2/"
    "matminer-0.3.9.tar.gz",
    "3faf9e83464f3d48f68a759bf476ad24da4c8c3e950c8f340cb917d3bb906400",
)
_MIT_CLOUD = "MIT (github.com/ChangwenXu98/CLOUD)"

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in [
        Dataset(
            "cloud/pretrain_cloud_10k.csv",
            "35e7afcf01b4c3f03ed87c456159bf55971ed61538db405d1bba92ac35133cc3",
            f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/example_data/pretrain_cloud_10k.csv",
            _MIT_CLOUD,
            "10,000 reduced SCOPE strings sampled from the paper's 6.3 M OPTIMADE corpus",
        ),
        Dataset(
            "cloud/finetune_dielectric_train_and_val.csv",
            "de9265f4d5bd75162dcecce1420b36f26359db4b4dc7944c6007418ddcf5a895",
            f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/example_data/finetune_dielectric_train_and_val.csv",
            _MIT_CLOUD,
            "matbench_dielectric fold 0 train+val: the authors' SCOPE strings and n",
        ),
        Dataset(
            "cloud/finetune_dielectric_test.csv",
            "727dae9182e0beba1badee3774535586e50dc0b99e54aa9ede0c996d133d5eee",
            f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/example_data/finetune_dielectric_test.csv",
            _MIT_CLOUD,
            "matbench_dielectric fold 0 test: the authors' SCOPE strings and n",
        ),
        Dataset(
            "cloud/cloud_cv_train_and_val.csv",
            "a86ce0aedb5ca621d55818e80c50e88c11cf59afab9b501c38b04dbb56fb802b",
            f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/example_data/cloud_cv_train_and_val.csv",
            _MIT_CLOUD,
            "CLOUD-DEBYE: SCOPE, Cv(300 K) in J/(K mol cells), atoms per cell (train+val)",
        ),
        Dataset(
            "cloud/cloud_cv_test.csv",
            "972e5dfc876232883b8d7129550fd44e612d3ba454dd3c1961ab3fe3049d8c54",
            f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/example_data/cloud_cv_test.csv",
            _MIT_CLOUD,
            "CLOUD-DEBYE test split",
        ),
        Dataset(
            "cloud/generator.json",
            "c4b463d5f9c168f2bac8df209707803519128773f0bc44989611eb0a4b6fdbf1",
            f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/data/generator.json",
            _MIT_CLOUD,
            "the paper's space-group -> generator-string table",
        ),
        Dataset(
            "cloud/wyckoff-position-multiplicities.json",
            "eacec03a06a2cbb0a300650920d8ac5a60611b80610d607bfc701d3807f8f061",
            f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/data/wyckoff-position-multiplicities.json",
            _MIT_CLOUD,
            "space group -> Wyckoff letter -> multiplicity",
        ),
        Dataset(
            "cdvae/perov_5_val.csv",
            "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2",
            f"{_GH}/txie-93/cdvae/{CDVAE_COMMIT}/data/perov_5/val.csv",
            "MIT (github.com/txie-93/cdvae)",
            "3,787 cubic perovskites (Castelli set) as CIF",
        ),
        Dataset(
            "cdvae/perov_5_test.csv",
            "a85878c685037f0a578257f6d4fcdde00e968dbab73c5f1e90ecef65218513f6",
            f"{_GH}/txie-93/cdvae/{CDVAE_COMMIT}/data/perov_5/test.csv",
            "MIT (github.com/txie-93/cdvae)",
            "3,785 cubic perovskites (Castelli set) as CIF",
        ),
        Dataset(
            "matcalc/mp-binary-pbe-elasticity-2025.1.json.gz",
            "5689599491322805bda913663eeef8d567f64ada80c90173d50fb7b6fb0b5896",
            f"{_GH}/materialsvirtuallab/matcalc/{MATCALC_COMMIT}/benchmark_data/mp-binary-pbe-elasticity-2025.1.json.gz",
            "BSD-3 (matcalc); data Materials Project, CC BY 4.0",
            "3,953 binary crystals with bulk and shear moduli",
        ),
        Dataset(
            "matcalc/wbm-random-pbe52-equilibrium-2025.1.json.gz",
            "8fc0aa85e6c9d56b03f8c742a377a143a8fc885b5930e11af596e43c1832d9d0",
            f"{_GH}/materialsvirtuallab/matcalc/{MATCALC_COMMIT}/benchmark_data/wbm-random-pbe52-equilibrium-2025.1.json.gz",
            "BSD-3 (matcalc); data WBM, CC BY 4.0",
            "972 relaxed WBM crystals",
        ),
        Dataset(
            "pypi/crystal_toolkit-2026.7.20/matbench_dielectric.json.gz",
            "a9ce0587b3f719f65c74d05c623edaf983a451770f2917443b9e82924cbceb25",
            member="crystal_toolkit/apps/examples/matbench_dielectric.json.gz",
            licence="crystal-toolkit: modified BSD; data MatBench (Materials Project), CC BY 4.0",
            description="full matbench_dielectric: 4,764 structures and refractive index n",
            **_CTK,
        ),
        Dataset(
            "pypi/matbench-0.6/matbench_v0.1_validation.json",
            "94c17bc3dac32c67d33d69289927a5fec174497e74bbc47293e23d3d147e9a6d",
            member="matbench/matbench_v0.1_validation.json",
            licence="matbench: MIT",
            description="official MatBench v0.1 5-fold splits of all 13 tasks",
            **_MATBENCH,
        ),
        Dataset(
            "pypi/matbench-0.6/matbench_v0.1_dataset_metadata.json",
            "bd8d2962406a1829bda984c38c36b4f3ce6acc20e46d34a42d3ba5294a1df787",
            member="matbench/matbench_v0.1_dataset_metadata.json",
            licence="matbench: MIT",
            description="MatBench v0.1 task metadata: sizes, targets, units, MAD",
            **_MATBENCH,
        ),
        Dataset(
            "pypi/matminer-0.3.9/flla_2015.csv",
            "35b8dbc0b92f4dc7e219fd6606c3a27bee18a9618f376cfee1ff731e306210bb",
            member="matminer-0.3.9/matminer/datasets/flla_2015.csv",
            licence="matminer: modified BSD; data Faber et al. 2015 (Materials Project)",
            description="3,938 formation energies (structures as Python-repr dicts)",
            **_MATMINER,
        ),
        Dataset(
            "pypi/matminer-0.3.9/elastic_tensor.csv",
            "f7a18c91fe5dcd51012e5b7e3a37f73aaee9087a036d61bdf9d6464b6fca51a6",
            member="matminer-0.3.9/matminer/datasets/elastic_tensor.csv",
            licence="matminer: modified BSD; data de Jong et al. 2015 (Materials Project)",
            description="1,181 elastic tensors, K_VRH / G_VRH (structures as CIF)",
            **_MATMINER,
        ),
        Dataset(
            "pypi/matminer-0.3.9/dielectric_constant.csv",
            "ecbd410d33c95d5b05822cff6c7c0ba809a024b4ede3855ec5efc48d5e29ea77",
            member="matminer-0.3.9/matminer/datasets/dielectric_constant.csv",
            licence="matminer: modified BSD; data Petousis et al. 2017 (Materials Project)",
            description="1,056 dielectric constants (structures as CIF)",
            **_MATMINER,
        ),
    ]
}


# --------------------------------------------------------------------------- fetching


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _offline() -> bool:
    return os.environ.get("CLOUD_OFFLINE", "").lower() in ("1", "true", "yes")


def _timeout() -> float:
    return float(os.environ.get("CLOUD_DOWNLOAD_TIMEOUT", "60"))


def download(url: str) -> bytes:
    """The bytes at ``url`` (timeout ``$CLOUD_DOWNLOAD_TIMEOUT`` s, default 60)."""
    req = urllib.request.Request(url, headers={"User-Agent": "cloud-companion"})
    with urllib.request.urlopen(req, timeout=_timeout()) as r:
        return r.read()


def _check(data: bytes, expected: str, what: str, source: str) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise ChecksumError(f"sha256 mismatch from {source}: expected {expected}, got {got}", what)
    return data


def _from_archive(ds: Dataset) -> bytes:
    """The member's bytes from the pinned PyPI distribution (cached under data/cache/pypi)."""
    archive = paths.cache_dir() / "pypi" / ds.archive
    if archive.exists() and sha256_file(archive) != ds.archive_sha256:
        archive.unlink()  # a stale or truncated download: fetch again
    if not archive.exists():
        if _offline():
            raise DataUnavailableError("offline ($CLOUD_OFFLINE) and not cached", ds.archive)
        write_bytes(archive, _check(download(ds.archive_url), ds.archive_sha256, ds.archive, ds.archive_url))
    if ds.archive.endswith(".whl"):
        with zipfile.ZipFile(archive) as z:
            return z.read(ds.member)
    with tarfile.open(archive) as t:
        f = t.extractfile(ds.member)
        if f is None:
            raise DataError(f"{ds.member} is not a file in the archive", ds.archive)
        return f.read()


def fetch_with(name: str, accept, remote=None, remote_label: str = "", hint: str = "") -> Path:
    """The one source order every fetcher shares: cache -> ``remote()`` -> ``$CLOUD_DATA_MIRROR``.

    ``accept(blob, source)`` verifies bytes (raises :class:`ChecksumError` for a wrong sha256, any other
    :class:`DataError` for bad content); ``remote`` returns the bytes from the canonical source (None: there
    is none, ``remote_label`` says why). A good download is cached under ``data/cache/<name>``; the mirror is
    read in place, never copied. A checksum mismatch is raised when no source gave good bytes.
    """
    tried: list[str] = []
    cached = paths.cache_dir() / name
    if cached.is_file():
        try:
            accept(cached.read_bytes(), f"cache {cached}")
            return cached
        except DataError as exc:  # corrupted or stale cache entry: fetch it again below
            tried.append(f"cache {cached}: {exc}")
            cached.unlink()
    mismatch: ChecksumError | None = None
    if remote is None:
        tried.append(remote_label or "no public URL")
    elif _offline():
        tried.append(f"{remote_label}: skipped ($CLOUD_OFFLINE=1)")
    else:
        try:
            blob = remote()
            accept(blob, remote_label)
            return write_bytes(cached, blob)
        except ChecksumError as exc:
            mismatch = exc
            tried.append(f"{remote_label}: {exc}")
        except (urllib.error.URLError, OSError, ValueError, KeyError, DataError) as exc:
            tried.append(f"{remote_label}: {type(exc).__name__}: {exc}")
    mirror = os.environ.get("CLOUD_DATA_MIRROR")
    if mirror:
        path = Path(mirror).expanduser().resolve() / name
        if path.is_file():
            try:
                accept(path.read_bytes(), f"mirror {path}")
                return path  # read in place: the mirror is read-only and never copied
            except ChecksumError as exc:
                mismatch = exc
                tried.append(str(exc))
            except DataError as exc:
                tried.append(f"mirror {path}: {exc}")
        else:
            tried.append(f"mirror {path}: not there")
    else:
        tried.append("mirror: $CLOUD_DATA_MIRROR is not set")
    if mismatch is not None:
        raise mismatch
    raise DataUnavailableError("no source could provide it; tried: " + " | ".join(tried) + hint, name)


def fetch(name: str) -> Path:
    """Local path of registry file ``name``, verified against its sha256 (see module docstring)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(REGISTRY)}")
    ds = REGISTRY[name]

    def accept(blob: bytes, source: str) -> None:
        _check(blob, ds.sha256, name, source)

    return fetch_with(
        name,
        accept,
        remote=(lambda: _from_archive(ds)) if ds.archive else (lambda: download(ds.url)),
        remote_label=ds.archive_url if ds.archive else ds.url,
    )


def registry_table() -> pd.DataFrame:
    """The registry as a table (name, source, sha256, licence, description)."""
    rows = [
        {
            "name": d.name,
            "source": d.url or f"PyPI {d.archive} :: {d.member}",
            "sha256": d.sha256,
            "licence": d.licence,
            "description": d.description,
        }
        for d in REGISTRY.values()
    ]
    return pd.DataFrame(rows).set_index("name")
