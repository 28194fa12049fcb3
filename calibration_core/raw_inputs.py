"""Real public inputs, obtained offline from pinned registry packages or from a user's folder.

Two packages on PyPI ship cached copies of the public statistics and microdata we need:

* ``policyengine-us-data==1.115.4`` (a wheel; Census ACS API responses, USDA FNS SNAP workbooks,
  the CMS Medicaid file, IRS SOI tables, the county->district table);
* ``taxcalc==6.8.0`` (an sdist; Tax-Calculator's CPS file of real CPS ASEC tax units, its weights
  and growth factors).

``fetch_from_pypi`` downloads each archive with pip (no install), checks its sha256, keeps it in a
cache folder (a second run needs no network) and extracts only the data files into ``dest``.
``collect_from_directory`` takes the same files, as downloaded from the agencies, from a folder,
plus optional files the packages lack (``22incd.csv``, PUF, donors, ASEC CSVs).
Both write ``manifest.json`` listing every file with size and sha256.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .io_utils import atomic_path, atomic_write_json, sha256_file, temporary_prefix

MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class PinnedPackage:
    name: str
    version: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"


PACKAGES: dict[str, PinnedPackage] = {
    "policyengine-us-data": PinnedPackage(
        "policyengine-us-data", "1.115.4", "policyengine_us_data-1.115.4-py3-none-any.whl",
        "293546a4b462192332b1d2a12c358de1fbef65c3d0c9f48ab9cb4f384364ad76",
        # the wheel requires Python >= 3.12; we only read its files, so ask for the 3.12 wheel
        ("--no-deps", "--only-binary=:all:", "--python-version", "3.12"),
    ),
    "taxcalc": PinnedPackage(
        "taxcalc", "6.8.0", "taxcalc-6.8.0.tar.gz",
        "3813377ba9c5a4cdc1854093dff84f3d942ae6cd16593e142daf37bf385db024",
        ("--no-deps", "--no-binary=:all:"),
    ),
}

_PED = "policyengine_us_data/storage/"


@dataclass(frozen=True)
class RawFile:
    name: str  # file name in the raw folder (and in a user's directory)
    package: str | None  # pinned package that ships it; None = only from a user's directory
    member: str | None  # path inside the package archive
    agency: str
    description: str
    required: bool = True


RAW_FILES: tuple[RawFile, ...] = (
    RawFile("acs_S0101_national_2024.json", "policyengine-us-data",
            _PED + "calibration/raw_inputs/acs_S0101_national_2024.json",
            "Census ACS", "S0101 age and sex, 1-year 2024, nation"),
    RawFile("acs_S0101_state_2024.json", "policyengine-us-data",
            _PED + "calibration/raw_inputs/acs_S0101_state_2024.json",
            "Census ACS", "S0101 age and sex, 1-year 2024, states + DC + PR"),
    RawFile("acs_S0101_district_2024.json", "policyengine-us-data",
            _PED + "calibration/raw_inputs/acs_S0101_district_2024.json",
            "Census ACS", "S0101 age and sex, 1-year 2024, 119th-Congress districts"),
    RawFile("acs_S2201_district_2024.json", "policyengine-us-data",
            _PED + "calibration/raw_inputs/acs_S2201_district_2024.json",
            "Census ACS", "S2201 food stamps/SNAP, 1-year 2024, districts"),
    RawFile("acs5_congressional_districts_2024.json", "policyengine-us-data",
            _PED + "calibration/raw_inputs/acs5_congressional_districts_2024.json",
            "Census ACS", "119th-Congress district list, ACS 5-year 2024"),
    RawFile("snap_fy69tocurrent.zip", "policyengine-us-data",
            _PED + "calibration/raw_inputs/snap_fy69tocurrent.zip",
            "USDA FNS", "SNAP National Data Bank workbooks FY1969-FY2025"),
    RawFile("medicaid_enrollment_2024.csv", "policyengine-us-data",
            _PED + "calibration/raw_inputs/medicaid_enrollment_2024.csv",
            "CMS", "Medicaid & CHIP performance indicators, state x month"),
    RawFile("agi_state.csv", "policyengine-us-data", _PED + "calibration_targets/agi_state.csv",
            "IRS SOI", "returns and AGI by 10 AGI bands, states, TY2022 (in55cmcsv)"),
    RawFile("soi_targets.csv", "policyengine-us-data", _PED + "calibration_targets/soi_targets.csv",
            "IRS SOI", "Publication 1304 national tables, TY2015-2023"),
    RawFile("eitc_state.csv", "policyengine-us-data", _PED + "calibration_targets/eitc_state.csv",
            "IRS SOI", "EITC returns and amount by state, TY2022"),
    RawFile("county_cd_distributions.csv", "policyengine-us-data",
            _PED + "county_cd_distributions.csv",
            "Census", "P(county | district), 119th Congress, 2020 block populations"),
    RawFile("district_mapping.csv", "policyengine-us-data", _PED + "district_mapping.csv",
            "Census", "116th -> 119th Congress district population crosswalk"),
    RawFile("national_and_district_rents_2023.csv", "policyengine-us-data",
            _PED + "national_and_district_rents_2023.csv",
            "Census ACS", "median 2-bedroom rent by 118th-Congress district, ACS5 2023"),
    RawFile("acs_housing_costs_2024.csv", "policyengine-us-data",
            _PED + "calibration_targets/acs_housing_costs_2024.csv",
            "Census ACS", "aggregate contract rent (B25060 x 12) and real-estate taxes, states, "
            "1-year 2024 (rent imputation; without it rent is left out)", required=False),
    RawFile("aca_ptc_state.csv", "policyengine-us-data",
            _PED + "calibration_targets/aca_ptc_state.csv",
            "IRS SOI", "premium tax credit returns and amount by state, TY2022 (in55cmcsv; "
            "national aggregates check)", required=False),
    RawFile("aca_ptc_multipliers_2022_2024.csv", "policyengine-us-data",
            _PED + "aca_ptc_multipliers_2022_2024.csv",
            "CMS", "Marketplace enrolment with APTC by state, 2022 and 2024 (ACA take-up: SOI "
            "TY2022 returns uprated to 2024)", required=False),
    RawFile("cps.csv.gz", "taxcalc", "taxcalc-6.8.0/taxcalc/cps.csv.gz",
            "Census CPS ASEC via PSLmodels/taxdata", "280,005 CPS ASEC tax units, 2012-2014"),
    RawFile("cps_weights.csv.gz", "taxcalc", "taxcalc-6.8.0/taxcalc/cps_weights.csv.gz",
            "PSLmodels/taxdata", "CPS tax-unit weights WT2014..WT2036 (x100)"),
    RawFile("growfactors.csv", "taxcalc", "taxcalc-6.8.0/taxcalc/growfactors.csv",
            "PSLmodels/taxdata (CBO)", "growth factors 2011-2036 for uprating"),
    RawFile("records_variables.json", "taxcalc", "taxcalc-6.8.0/taxcalc/records_variables.json",
            "PSLmodels/Tax-Calculator", "descriptions of every CPS file column"),
    # Optional files: only from a user's directory.
    RawFile("22incd.csv", None, None, "IRS SOI",
            "individual income by congressional district and AGI stub, TY2022", required=False),
)

RAW_BY_NAME: dict[str, RawFile] = {raw.name: raw for raw in RAW_FILES}

OPTIONAL_FILE_PATTERNS: tuple[str, ...] = (
    # Census ASEC public-use CSVs, IRS PUF, ACS PUMS / SIPP / SCF donor files.
    "hhpub*.csv", "ffpub*.csv", "pppub*.csv",
    "puf_*.csv", "demographics_*.csv",
    "psam_p*.csv", "psam_h*.csv", "pu20*.csv", "scfp20*.csv", "rscfp20*.csv",
)


class RawInputError(ValueError):
    """A raw input is missing, corrupt or of the wrong kind."""


def shown(value) -> str:
    """A cell as an error message shows it: ``empty or NaN`` for a missing number, a numpy
    scalar as the plain number it holds, anything else as its repr."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        if value != value:
            return "empty or NaN"
        if value.is_integer():
            return repr(int(value))
    return repr(value)


def _read_failure(exc: BaseException) -> str:
    """What went wrong while reading, in words a person can act on."""
    import pandas as pd

    if isinstance(exc, pd.errors.EmptyDataError):
        return "the file is empty (no header, no rows)"
    if isinstance(exc, EOFError):
        return "the file is truncated (the compressed stream ends early)"
    if isinstance(exc, (zlib.error, gzip.BadGzipFile)):
        return f"the compressed stream is corrupt ({exc})"
    if isinstance(exc, UnicodeDecodeError):
        return f"the file is not text ({exc})"
    return f"{type(exc).__name__}: {exc}"


# what reading a damaged file raises: a truncated gzip (EOFError), a corrupt one (BadGzipFile is
# an OSError, zlib.error), an empty file (EmptyDataError is a ValueError), a bad row (ParserError)
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, ValueError, zlib.error)


def read_csv_file(path: str | os.PathLike, expected: str, error: type[Exception] = RawInputError,
                  *, allow_empty: bool = False, **kwargs):
    """``pandas.read_csv(path, **kwargs)``, every failure re-raised as ``error`` naming the file.

    ``expected`` says what the file should hold (``"growth factors: YEAR plus one column per
    series"``); it ends every message, so a truncated ``cps.csv.gz`` or an empty county table
    is reported as that file and what it should have been, never as a bare ``EOFError`` or
    ``EmptyDataError``. A file with a header but no data rows is refused too unless
    ``allow_empty``.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file is missing; expected {expected}")
    try:
        frame = pd.read_csv(path, **kwargs)
    except READ_ERRORS as exc:
        raise error(f"{path}: cannot be read: {_read_failure(exc)}; expected {expected}") from exc
    if not allow_empty and len(frame.index) == 0:
        raise error(f"{path}: has no data rows; expected {expected}")
    return frame


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    env = os.environ.get("AREACAL_CACHE")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "areacal" / "pypi"


def _download(package: PinnedPackage, cache: Path) -> Path:
    """Return the verified archive, downloading it with pip only when the cache lacks it."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / package.filename
    if target.exists() and sha256_file(target) == package.sha256:
        return target
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
               *package.pip_args, "-d", tmp, package.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = Path(tmp) / package.filename
        if proc.returncode != 0 or not downloaded.exists():
            raise RawInputError(
                f"could not download {package.requirement} with pip (exit {proc.returncode}); "
                f"expected {package.filename}. pip said: {proc.stderr.strip()[-800:]}"
            )
        digest = sha256_file(downloaded)
        if digest != package.sha256:
            raise RawInputError(
                f"{package.filename}: sha256 {digest} does not match the pinned {package.sha256}"
            )
        os.replace(downloaded, target)
    return target


def _extract(archive: Path, member: str, dest: Path) -> None:
    with atomic_path(dest) as tmp:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out)
        else:
            with tarfile.open(archive, "r:gz") as tf:
                src = tf.extractfile(member)
                if src is None:
                    raise RawInputError(f"{archive.name}: {member} is not a regular file")
                with src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)


def _file_entry(path: Path, origin: str) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path), "origin": origin}


@contextlib.contextmanager
def _staging(dest: Path) -> Iterator[Path]:
    """A fresh folder beside ``dest`` (same filesystem, so moving a file in is atomic), removed
    afterwards whatever happens."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    # named like io_utils' temporaries, so the sweep of stale ones removes it after a kill
    stage = Path(tempfile.mkdtemp(prefix=temporary_prefix(f"{dest.name}.staging"),
                                  dir=dest.parent))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _validate_then_install(stage: Path, dest: Path, changed: list[str], files: dict[str, dict],
                           manifest: dict) -> None:
    """Validate every file of ``stage`` with the readers the stages use; only then move the
    ``changed`` files into ``dest`` and write the manifest. A bad file leaves ``dest`` and its
    manifest exactly as they were."""
    try:
        validate_raw_folder(stage)
    except ValueError as exc:
        text = str(exc).replace(f"{stage}{os.sep}", "")
        named = [n for n in files if n in text]  # the file the message names first
        bad = min(named, key=text.index) if named else None
        origin = files[bad]["origin"] if bad else "a provided file"
        raise RawInputError(
            f"raw input {bad or '?'} ({origin}) failed validation, so {dest} and its "
            f"{MANIFEST_NAME} were left unchanged: {text}") from exc
    dest.mkdir(parents=True, exist_ok=True)
    for name in changed:
        os.replace(stage / name, dest / name)
    atomic_write_json(dest / MANIFEST_NAME, manifest)


def fetch_from_pypi(dest: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                    extra_directory: str | os.PathLike | None = None) -> dict:
    """Fetch the pinned packages (or reuse the cache), extract their data files into ``dest``.

    ``extra_directory`` may add optional files (e.g. ``22incd.csv``) that the packages lack.
    Files are extracted into a staging folder beside ``dest`` and validated there
    (:func:`validate_raw_folder`) before any file of ``dest`` is replaced: a bad file leaves
    ``dest`` and its manifest unchanged. Returns the manifest, also written to
    ``dest/manifest.json``.
    """
    dest = Path(dest)
    cache = _cache_dir(cache_dir)
    archives: dict[str, Path] = {}
    packages: dict[str, dict] = {}
    for name, package in PACKAGES.items():
        archives[name] = _download(package, cache)
        packages[name] = {"version": package.version, "file": package.filename,
                          "sha256": package.sha256}
    previous_files = _read_manifest(dest).get("files", {})
    files: dict[str, dict] = {}
    changed: list[str] = []
    with _staging(dest) as stage:
        for raw in RAW_FILES:
            if raw.package is None:
                continue
            out, staged = dest / raw.name, stage / raw.name
            origin = f"pypi:{PACKAGES[raw.package].requirement}:{raw.member}"
            # reuse a file an earlier run already extracted from this very archive
            previous = previous_files.get(raw.name)
            if (out.is_file() and previous and previous.get("origin") == origin
                    and previous.get("sha256") == sha256_file(out)):
                _link_or_copy(out, staged)
            else:
                _extract(archives[raw.package], raw.member, staged)
                changed.append(raw.name)
            files[raw.name] = _file_entry(staged, origin)
        if extra_directory:
            extra = _copy_optional(Path(extra_directory), stage)
            files.update(extra)
            changed.extend(extra)
        manifest = {"provider": "pypi_cache", "packages": packages, "files": files}
        _validate_then_install(stage, dest, changed, files, manifest)
    return manifest


def _copy_optional(src: Path, dest: Path) -> dict[str, dict]:
    if not src.is_dir():
        raise RawInputError(f"raw-input directory {src} does not exist or is not a folder")
    names = {raw.name for raw in RAW_FILES if not raw.required}
    found: dict[str, dict] = {}
    for path in sorted(src.iterdir()):
        if path.is_file() and (path.name in names
                               or any(path.match(p) for p in OPTIONAL_FILE_PATTERNS)):
            out = dest / path.name
            with atomic_path(out) as tmp:
                shutil.copyfile(path, tmp)
            found[path.name] = _file_entry(out, f"directory:{path}")
    return found


def collect_from_directory(src: str | os.PathLike, dest: str | os.PathLike) -> dict:
    """Copy the raw files from a user's folder (same names as agencies' downloads) into ``dest``.

    The files are copied into a staging folder and validated there (format, required columns,
    ranges and codes, by the readers the stages use) before anything in ``dest`` is replaced:
    a bad file raises :class:`RawInputError` naming it and leaves ``dest`` and its manifest
    byte-identical.
    """
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise RawInputError(f"raw-input directory {src} does not exist or is not a folder")
    missing = [raw.name for raw in RAW_FILES if raw.required and not (src / raw.name).is_file()]
    if missing:
        raise RawInputError(
            f"raw-input directory {src} lacks required file(s): {', '.join(missing)} "
            "(names as in docs/data.md)"
        )
    files: dict[str, dict] = {}
    with _staging(dest) as stage:
        for raw in RAW_FILES:
            if raw.required:
                staged = stage / raw.name
                shutil.copyfile(src / raw.name, staged)
                files[raw.name] = _file_entry(staged, f"directory:{src / raw.name}")
        files.update(_copy_optional(src, stage))
        manifest = {"provider": "directory", "packages": {}, "files": files}
        _validate_then_install(stage, dest, sorted(files), files, manifest)
    return manifest


def validate_raw_folder(folder: str | os.PathLike) -> None:
    """Read every raw file present in ``folder`` with the reader the stages use, so that a bad
    file is refused at the boundary, before it replaces a good one.

    Covers: growth factors and CPS weights (:mod:`uprating`: finite, > 0 / >= 0), the CPS file
    (columns, numbers, state codes, ages, counts; :func:`taxcalc_cps.read_taxcalc_cps`), Census
    ASEC CSVs when a complete set is present, the county table (known counties, districts,
    probabilities), ACS S0101 populations, every targets ETL (Census ACS, IRS SOI, USDA FNS,
    CMS; the SOI district file and its crosswalk when ``22incd.csv`` is present), and that the
    remaining CSV / JSON files parse. Raises the reader's own error (a ``ValueError`` naming the
    file and the row or key).
    """
    import json

    from . import etl, geography, microdata, uprating
    from .microdata_parts import asec, taxcalc_cps
    from .microdata_parts import geography as mgeo

    folder = Path(folder)

    def has(*names: str) -> bool:
        return all((folder / n).is_file() for n in names)

    if has("growfactors.csv"):
        uprating.read_growfactors(folder / "growfactors.csv", RawInputError)
    if has("cps_weights.csv.gz"):
        uprating.read_weight_totals(folder / "cps_weights.csv.gz", RawInputError)
    if has("cps.csv.gz", "cps_weights.csv.gz"):
        taxcalc_cps.read_taxcalc_cps(folder / "cps.csv.gz", folder / "cps_weights.csv.gz")
    sets = microdata.find_asec_files(folder)
    if sets is not None:
        asec.read_asec(sets["hh"], sets["ff"], sets["pp"])
    if has("county_cd_distributions.csv"):
        geography.load_county_table(folder / "county_cd_distributions.csv")
        mgeo.county_shares(folder / "county_cd_distributions.csv")
    if has("acs_S0101_state_2024.json"):
        mgeo.acs_state_population(folder / "acs_S0101_state_2024.json")
    if has("acs_S0101_national_2024.json"):
        mgeo.acs_national_population(folder / "acs_S0101_national_2024.json")
    for _, extract in etl._registry():
        extract(folder)
    if has("acs_housing_costs_2024.csv"):
        from .microdata_parts.rules_inputs import read_state_rent

        read_state_rent(folder / "acs_housing_costs_2024.csv")
    if has("aca_ptc_state.csv"):
        from .national_check import read_soi_ptc

        read_soi_ptc(folder / "aca_ptc_state.csv")
    if has("aca_ptc_multipliers_2022_2024.csv"):
        from .aca_takeup import read_enrolment_growth

        read_enrolment_growth(folder / "aca_ptc_multipliers_2022_2024.csv")
    for name in ("district_mapping.csv", "national_and_district_rents_2023.csv"):
        if has(name):
            read_csv_file(folder / name, f"the {name} table of {RAW_BY_NAME[name].agency}")
    for name in ("acs5_congressional_districts_2024.json", "records_variables.json"):
        if has(name):
            try:
                json.loads((folder / name).read_text(encoding="utf-8"))
            except ValueError as exc:
                raise RawInputError(f"{folder / name}: not valid JSON ({exc}); expected "
                                    f"{RAW_BY_NAME[name].description}") from exc


def _read_manifest(dest: Path) -> dict:
    import json

    path = dest / MANIFEST_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except ValueError:
        return {}


def load_manifest(raw_dir: str | os.PathLike) -> dict:
    """The manifest of a built raw folder; raises if the folder was never built."""
    manifest = _read_manifest(Path(raw_dir))
    if not manifest:
        raise RawInputError(
            f"{Path(raw_dir) / MANIFEST_NAME} is missing or unreadable: materialize "
            "raw_public_inputs first"
        )
    return manifest


def manifest_fingerprint(manifest: dict) -> str:
    """A hash of every file's sha256: changes exactly when some raw input changes."""
    from .io_utils import sha256_bytes

    text = "\n".join(f"{n}:{e['sha256']}" for n, e in sorted(manifest["files"].items()))
    return sha256_bytes(text.encode())


def raw_path(raw_dir: str | os.PathLike, name: str) -> Path:
    """Path of raw file ``name``; a clear error when it is absent."""
    path = Path(raw_dir) / name
    if not path.is_file():
        known = {raw.name for raw in RAW_FILES}
        hint = "" if name in known else f" (not a known raw input; known: {sorted(known)})"
        raise RawInputError(f"raw input {path} is missing{hint}")
    return path
