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

Several processes may fetch the same file at once (parallel notebooks, ``data fetch`` in two shells):
a good cache entry is read without locking (files are only ever replaced atomically), while repairing
a missing or corrupted entry (re-verify, remove, download, write) happens under an exclusive
``fcntl`` lock on ``<cache>/.locks/<name>.lock``, so one process repairs it and the others then find
it good. Where no lock file can be created (a read-only cache) it proceeds without one.
"""

from __future__ import annotations

import contextlib
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
JARVIS_LEADERBOARD_COMMIT = "57afc55f94c8a6f4562f73a3173968cd4b2f83b1"
ECIF_COMMIT = "03e6b7bad4849e1ac0de6933b049542d476752dd"
DSC3_COMMIT = "8d69ca9c94b83d387378549225d3b7c3af85ca42"
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
_CORE_MOF = _dist(
    "core_mof-2019.1-py3-none-any.whl",
    "https://files.pythonhosted.org/packages/87/be/81e964fdd55a2372cd4d5305a2885f28a945f45426523c81318c7c9e28b9/"
    "core_mof-2019.1-py3-none-any.whl",
    "852af4c604148585eca6cfd75832c4b4967a1bded76381d4b914dcd2317f6823",
)
_MIT_CLOUD = "MIT (github.com/ChangwenXu98/CLOUD)"
_JLB = f"{_GH}/usnistgov/jarvis_leaderboard/{JARVIS_LEADERBOARD_COMMIT}/jarvis_leaderboard/benchmarks/AI"
_JLB_LICENCE = "NIST (public data; github.com/usnistgov/jarvis_leaderboard)"
#: The 3DSC Materials Project CIFs: one registry entry for the manifest, one file per line of it.
DSC3_CIF_URL = f"{_GH}/aimat-lab/3DSC/{DSC3_COMMIT}/superconductors_3D/data/source/MP/raw/cifs"

#: The authors' released tokenizer (github.com/ChangwenXu98/CLOUD, ``tokenizer_cloud_optimade/``): file -> (sha256,
#: what it holds); one registry entry per file, named ``AUTHORS_TOKENIZER/file``.
AUTHORS_TOKENIZER = "cloud/tokenizer_cloud_optimade"
_AUTHORS_TOKENIZER_TABLE = {
    "vocab.txt": (
        "f0e8e3f89481a301829805471b0e05136b9a7010928b584c5093410b19cc6ca4",
        "its 463-line WordPiece vocabulary",
    ),
    "added_tokens.json": (
        "c5f9d5bb2f18c674bdadca264fab41a0195a9bc240552c09656686782da7c9ec",
        "the 101 added fraction tokens 0.0..1.0 (ids 463-563)",
    ),
    "tokenizer_config.json": (
        "379728e38cdaeba17323a37b44698ffc1f1dad14cb6d6694f7e66f7d61b6994a",
        "BertTokenizer settings and added-token table",
    ),
    "special_tokens_map.json": (
        "b6d346be366a7d1d48332dbc9fdf3bf8960b5d879522b7799ddba59e76237ee3",
        "its special tokens",
    ),
    "config_tokenizer.yaml": (
        "c818c7d583b6f1ee1919ba0ba61e2123ad7cd6d892cfabdc689cd03e320831f4",
        "the settings they trained it with",
    ),
}
AUTHORS_TOKENIZER_FILES = tuple(_AUTHORS_TOKENIZER_TABLE)

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
        *(
            Dataset(
                f"{AUTHORS_TOKENIZER}/{file}",
                sha,
                f"{_GH}/ChangwenXu98/CLOUD/{CLOUD_COMMIT}/tokenizer_cloud_optimade/{file}",
                _MIT_CLOUD,
                f"the authors' released tokenizer: {what}",
            )
            for file, (sha, what) in _AUTHORS_TOKENIZER_TABLE.items()
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
        Dataset(
            "pypi/matminer-0.3.9/piezoelectric_tensor.csv",
            "4be45c8df76a9600f789255ddcb05a92fc3807e0b96fd01e85713a58c34a2ae1",
            member="matminer-0.3.9/matminer/datasets/piezoelectric_tensor.csv",
            licence="matminer: modified BSD; data de Jong et al. 2015 (Materials Project)",
            description="941 piezoelectric tensors (structures as Python-repr dicts)",
            **_MATMINER,
        ),
        Dataset(
            "jarvis_leaderboard/atomgen_perov5_heat_ref.json.zip",
            "8528dc28a3cd282f2d6eff2ad027306e16b40a03c80b21b5f3eedd92b39d561e",
            f"{_JLB}/AtomGen/perov5_heat_ref.json.zip",
            _JLB_LICENCE,
            "all 18,928 Castelli perovskites as POSCAR (train/val/test 11,356 / 3,787 / 3,785)",
        ),
        Dataset(
            "jarvis_leaderboard/atomgen_carbon24_energy_per_atom.json.zip",
            "c49ca9fa944b39008a56fa49b03f0d7c1f26775c253999b268e82d1677d09a6c",
            f"{_JLB}/AtomGen/carbon24_energy_per_atom.json.zip",
            _JLB_LICENCE,
            "carbon_24: 10,153 carbon allotropes as POSCAR",
        ),
        Dataset(
            "jarvis_leaderboard/atomgen_dft_3d_Tc_supercon.json.zip",
            "dcbe3bfedf21a66dd8b4c02589659f1ba6e25bf0fd1e805e358f02a4c2c6b615",
            f"{_JLB}/AtomGen/dft_3d_Tc_supercon.json.zip",
            _JLB_LICENCE,
            "JARVIS electron-phonon superconductors: 1,056 structures as POSCAR",
        ),
        Dataset(
            "jarvis_leaderboard/spp_dft_3d_Tc_supercon.json.zip",
            "e34fe109057b9dd7b4ae50b18fdec70cc156b6a994a02ec6f57f5c365f8a06dc",
            f"{_JLB}/SinglePropertyPrediction/dft_3d_Tc_supercon.json.zip",
            _JLB_LICENCE,
            "JARVIS superconductors: Tc in K for 616 of them (train/val/test 556 / 30 / 30)",
        ),
        Dataset(
            "ecif/mb-jdft2d.ecif",
            "e324cc4be9e0fa233e6f0ff77a90dea6cb0554136b60a90e976b3a160c6bd4ce",
            f"{_GH}/emotionor/ecif/{ECIF_COMMIT}/example/mb-jdft2d.ecif",
            "MIT (github.com/emotionor/ecif); data MatBench (JARVIS), CC BY 4.0",
            "508 of 636 matbench_jdft2d entries (all but official fold 0's 128 test ids): id, CIF, exfoliation_en",
        ),
        Dataset(
            "3dsc/mp_cifs.SHA256SUMS",
            "d4cf4604cfd9dfce4f898d727e62754517adbfb5bd24473a4927dc3f854ab933",
            None,
            "CC BY 4.0 (github.com/aimat-lab/3DSC; data Materials Project)",
            "sha256 manifest of the 4,704 3DSC Materials Project CIFs (made for the mirror; no upstream URL)",
        ),
        Dataset(
            "pypi/core_mof-2019.1/2019-ASR.tar.xz",
            "2a8f2f722c1131c68d22e9d1029de05fe3fef77c2aac985ff81c41850b0d4992",
            member="CoRE_MOF/data/2019-ASR.tar.xz",
            licence="MIT (core-mof, Coudert lab); CoRE MOF 2019 (Chung et al. 2019)",
            description="CoRE MOF 2019, all-solvent-removed CIFs",
            **_CORE_MOF,
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


@contextlib.contextmanager
def _cache_lock(name: str):
    """Exclusive inter-process lock for cache entry ``name`` (blocking; released on exit).

    ``fcntl.flock`` on ``<cache>/.locks/<name>.lock``; the lock files stay (empty) so that the lock is
    always taken on the same inode. Without ``fcntl`` or when the file cannot be created, no lock.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    lock_path = paths.cache_dir() / ".locks" / f"{name}.lock"
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # read-only cache: nothing will be written there either
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _from_archive(ds: Dataset) -> bytes:
    """The member's bytes from the pinned PyPI distribution (cached under data/cache/pypi)."""
    archive = paths.cache_dir() / "pypi" / ds.archive
    if not (archive.is_file() and sha256_file(archive) == ds.archive_sha256):
        with _cache_lock(f"pypi/{ds.archive}"):  # one process repairs or downloads it, the others wait
            if archive.is_file() and sha256_file(archive) != ds.archive_sha256:
                archive.unlink(missing_ok=True)  # a stale or truncated download: fetch again
            if not archive.is_file():
                if _offline():
                    raise DataUnavailableError("offline ($CLOUD_OFFLINE) and not cached", ds.archive)
                blob = _check(download(ds.archive_url), ds.archive_sha256, ds.archive, ds.archive_url)
                write_bytes(archive, blob)
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
    cached = paths.cache_dir() / name
    with contextlib.suppress(DataError, FileNotFoundError):  # fast path, no lock: a good entry never changes
        if cached.is_file():
            accept(cached.read_bytes(), f"cache {cached}")
            return cached
    if not cached.exists() and (remote is None or _offline()):  # nothing to repair or write: the mirror only
        return _fetch_from_sources(name, cached, accept, remote, remote_label, hint)
    with _cache_lock(name):  # missing or corrupted: re-check, repair and fetch in one process at a time
        return _fetch_from_sources(name, cached, accept, remote, remote_label, hint)


def _fetch_from_sources(name: str, cached: Path, accept, remote, remote_label: str, hint: str) -> Path:
    """The body of :func:`fetch_with` after the fast path; called under the entry's lock whenever it may
    remove or write the cache entry."""
    tried: list[str] = []
    if cached.is_file():  # another process may have repaired it while this one waited for the lock
        try:
            accept(cached.read_bytes(), f"cache {cached}")
            return cached
        except DataError as exc:  # corrupted or stale cache entry: fetch it again below
            tried.append(f"cache {cached}: {exc}")
            cached.unlink(missing_ok=True)
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


def absolute_mirror() -> str | None:
    """Make a relative ``$CLOUD_DATA_MIRROR`` absolute, against the current directory, in ``os.environ`` (so
    child processes, e.g. notebook kernels that run in ``notebooks/``, see the same folder); returns it. The
    command line and the notebook runner call this once, at their start."""
    mirror = os.environ.get("CLOUD_DATA_MIRROR")
    if mirror and not Path(mirror).expanduser().is_absolute():
        mirror = str(Path(mirror).expanduser().resolve())
        os.environ["CLOUD_DATA_MIRROR"] = mirror
    return mirror


def fetch(name: str) -> Path:
    """Local path of registry file ``name``, verified against its sha256 (see module docstring)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(REGISTRY)}")
    ds = REGISTRY[name]

    def accept(blob: bytes, source: str) -> None:
        _check(blob, ds.sha256, name, source)

    if ds.archive:
        remote, label = (lambda: _from_archive(ds)), ds.archive_url
    elif ds.url:
        remote, label = (lambda: download(ds.url)), ds.url
    else:
        remote, label = None, "no public URL (mirror only)"
    return fetch_with(name, accept, remote=remote, remote_label=label)


def authors_tokenizer_dir() -> Path:
    """A folder holding the authors' released tokenizer files (:data:`AUTHORS_TOKENIZER_FILES`, each fetched and
    verified as a registry file): the folder they were found in when it is one (the cache or the mirror), else a
    folder of links to them under the cache."""
    found = {f: fetch(f"{AUTHORS_TOKENIZER}/{f}") for f in AUTHORS_TOKENIZER_FILES}
    parents = {p.parent for p in found.values()}
    if len(parents) == 1:
        return parents.pop()
    links = paths.cache_dir() / "links" / AUTHORS_TOKENIZER
    links.mkdir(parents=True, exist_ok=True)
    for f, p in found.items():
        link = links / f
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(p.resolve())
    return links


def fetch_manifest(manifest: str, folder: str, base_url: str) -> dict[str, Path]:
    """Every file named in a sha256 manifest (``sha256  name`` lines), each fetched and checked like a registry
    file: cache -> ``base_url/name`` -> ``$CLOUD_DATA_MIRROR/folder/name``. Returns name -> local path.

    After the first download that cannot connect, the rest go straight to the cache and mirror (an offline
    machine would otherwise try thousands of URLs).
    """
    entries = []
    for line in fetch(manifest).read_text().splitlines():
        if line.strip():
            sha, _, fname = line.strip().partition("  ")
            entries.append((sha, fname.strip()))
    online = not _offline()
    out: dict[str, Path] = {}
    for sha, fname in entries:

        def accept(blob: bytes, source: str, sha=sha, fname=fname) -> None:
            _check(blob, sha, f"{folder}/{fname}", source)

        def remote(fname=fname) -> bytes:
            nonlocal online
            try:
                return download(f"{base_url}/{fname}")
            except urllib.error.URLError as exc:
                if not isinstance(exc, urllib.error.HTTPError):
                    online = False
                raise

        out[fname] = fetch_with(
            f"{folder}/{fname}",
            accept,
            remote=remote if online else None,
            remote_label=f"{base_url}/{fname}" if online else "no connection (an earlier download failed)",
        )
    return out


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
