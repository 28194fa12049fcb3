"""Build the calibration package: targets x clone-households sparse matrix, targets table,
initial weights (format: :mod:`calibration_core.package_io`).

Entry (i, j) of the matrix is the contribution of clone-household ``j = clone * n_records +
record`` to target ``i``: the target variable's value in that household (restricted to the
entities that meet the target's non-geographic constraints), when the clone lies in the target's
geography (nation, state or district), else 0. Count targets count persons / entities:

* ``person_count``: persons of the household meeting every constraint;
* ``tax_unit_count`` / ``spm_unit_count`` / ...: entities with at least one member meeting them;
* ``household_count``: 1 when any member meets them;
* a dollar (or other) variable at entity E: the sum over the household's E entities with at
  least one member meeting the constraints of their value.

Constraints are evaluated per person on person-mapped values (an entity's value is copied to its
members). Targets sharing a variable and a constraint set form a *family*; each family's values
are computed once for all clones as an ``(n_clones, n_records)`` array and its rows at each
geographic level become one COO block via a lookup from the clone's state / district to the row
- there is no Python loop over clones or targets, only over families.
"""
from __future__ import annotations

import operator
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import aca_takeup, fit_rows
from .geography import GeographyAssignment
from .package_io import CalibrationPackage
from .simulation import (COUNT_VARIABLES, GEO_CONSTRAINT_VARIABLES, StateSimulations,
                         TAKEUP, takeup_decisions)

DEFAULT_TARGET_CONFIG = Path(__file__).with_name("target_config.yaml")
RULE_FIELDS = ("variable", "geo_level", "domain", "geo_id", "source")
GEO_LEVELS = ("national", "state", "district")
OPS: dict[str, Callable] = {"==": operator.eq, "!=": operator.ne, ">": operator.gt,
                            ">=": operator.ge, "<": operator.lt, "<=": operator.le}


class PackageBuildError(ValueError):
    """Targets, constraints or simulations cannot make a package."""


# --------------------------------------------------------------------------------------------
# target config


def load_target_config(path: str | os.PathLike | None = None) -> dict:
    """Read a target config YAML: ``{include: [rule], exclude: [rule], holdout: [rule]}``.

    A rule is a mapping with any of ``variable, geo_level, domain, geo_id, source`` (a value or a
    list of values); it matches a target when every given field equals (one of) the target's.
    ``domain`` is the comma-joined sorted non-geographic constraint variables (``""`` = none).
    """
    import yaml

    path = Path(path) if path is not None else DEFAULT_TARGET_CONFIG
    if not path.is_file():
        raise PackageBuildError(f"target config {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    validate_target_config(config, str(path))
    return config


def validate_target_config(config: dict, source: str = "target config") -> None:
    if not isinstance(config, dict):
        raise PackageBuildError(f"{source}: expected a mapping with include/exclude/holdout")
    unknown = set(config) - {"include", "exclude", "holdout", "description", "loss",
                             "feasibility"}
    if unknown:
        raise PackageBuildError(f"{source}: unknown key(s) {sorted(unknown)}; "
                                "expected include, exclude, holdout, loss, feasibility")
    try:
        fit_rows.validate_loss_config(config.get("loss"), source)
        fit_rows.validate_feasibility_config(config.get("feasibility"), source)
    except fit_rows.FitRowsError as exc:
        raise PackageBuildError(str(exc)) from None
    for key in ("include", "exclude", "holdout"):
        rules = config.get(key) or []
        if not isinstance(rules, list):
            raise PackageBuildError(f"{source}: {key} must be a list of rules")
        for i, rule in enumerate(rules):
            if not isinstance(rule, dict) or not rule:
                raise PackageBuildError(f"{source}: {key}[{i}] must be a non-empty mapping")
            bad = set(rule) - set(RULE_FIELDS)
            if bad:
                raise PackageBuildError(f"{source}: {key}[{i}] has unknown field(s) {sorted(bad)};"
                                        f" allowed: {list(RULE_FIELDS)}")
            level = rule.get("geo_level")
            for lv in (level if isinstance(level, list) else [level]):
                if lv is not None and lv not in GEO_LEVELS:
                    raise PackageBuildError(f"{source}: {key}[{i}] geo_level {lv!r} not in "
                                            f"{GEO_LEVELS}")


def _rule_mask(targets: pd.DataFrame, rule: dict) -> np.ndarray:
    mask = np.ones(len(targets), dtype=bool)
    for f, want in rule.items():
        values = want if isinstance(want, list) else [want]
        col = targets[f].astype(str) if f == "geo_id" else targets[f]
        mask &= col.isin([str(v) if f == "geo_id" else ("" if v is None else v)
                          for v in values]).to_numpy()
    return mask


def select_targets(targets: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Keep = (any include rule matches, or every row when there is none) and no exclude rule
    matches; ``holdout`` = any holdout rule matches. Returns the kept rows plus ``holdout``."""
    validate_target_config(config)
    include = config.get("include") or []
    keep = np.zeros(len(targets), dtype=bool) if include else np.ones(len(targets), dtype=bool)
    for rule in include:
        keep |= _rule_mask(targets, rule)
    for rule in config.get("exclude") or []:
        keep &= ~_rule_mask(targets, rule)
    hold = np.zeros(len(targets), dtype=bool)
    for rule in config.get("holdout") or []:
        hold |= _rule_mask(targets, rule)
    out = targets.loc[keep].copy()
    out["holdout"] = hold[keep]
    return out.reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# constraints


def parse_constraint_value(text: str):
    """String-encoded constraint value -> bool (True/False), float (numbers, +-inf) or str."""
    s = str(text).strip()
    if s in ("True", "true"):
        return True
    if s in ("False", "false"):
        return False
    try:
        return float(s)
    except ValueError:
        return s


def _format_value(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def target_constraints(targets: pd.DataFrame, constraints: pd.DataFrame
                       ) -> dict[int, tuple[tuple[str, str, object], ...]]:
    """stratum_id -> sorted non-geographic constraints ``(variable, op, parsed value)``."""
    need = {"stratum_id", "constraint_variable", "operation", "value"}
    if not need <= set(constraints.columns):
        raise PackageBuildError(f"constraints table lacks {sorted(need - set(constraints))}")
    bad = ~constraints["operation"].isin(list(OPS))
    if bad.any():
        row = constraints.loc[bad].iloc[0]
        raise PackageBuildError(f"stratum {row['stratum_id']}: unknown operation "
                                f"{row['operation']!r}; expected one of {list(OPS)}")
    used = constraints[constraints["stratum_id"].isin(targets["stratum_id"].unique())
                       & ~constraints["constraint_variable"].isin(GEO_CONSTRAINT_VARIABLES)]
    out: dict[int, tuple] = {int(s): () for s in targets["stratum_id"].unique()}
    for sid, group in used.groupby("stratum_id"):
        items = sorted((str(v), str(o), parse_constraint_value(x))
                       for v, o, x in zip(group["constraint_variable"], group["operation"],
                                          group["value"]))
        out[int(sid)] = tuple(items)
    return out


def row_name(geo_level: str, geo_id: str, variable: str, cons: tuple) -> str:
    """``national/var``, ``state_6/var/[age<40,age>=35]``, ``cd_612/var/[...]``."""
    geo = {"national": "national", "state": f"state_{geo_id}",
           "district": f"cd_{geo_id}"}[geo_level]
    name = f"{geo}/{variable}"
    if cons:
        name += "/[" + ",".join(f"{v}{o}{_format_value(x)}" for v, o, x in cons) + "]"
    return name


# --------------------------------------------------------------------------------------------
# values per family


@dataclass
class _Context:
    sims: StateSimulations
    geo: GeographyAssignment
    clone: np.ndarray  # (n_clones, 1)
    entity_state: dict  # entity -> (n_clones, n_entity) state FIPS
    cache: dict
    incidence: dict  # entity -> sparse (n_person, n_entity) / (n_entity, n_household)
    # (n_clones, n_records) row of sims.by_state of each cell: its state's copy for the clone's
    # county (its county class); None: computed from geo on first use
    copy_rows: np.ndarray | None = None
    county_aware: bool = True


def _cell_copy_rows(ctx: _Context) -> np.ndarray:
    """(n_clones, n_records) state-copy row of each cell: the clone's county's class
    (``county_aware``), else the state's default copy (the representative county)."""
    if ctx.copy_rows is None:
        counties = ctx.geo.county_fips if ctx.county_aware else None
        try:
            ctx.copy_rows = ctx.sims.copy_index(ctx.geo.state_fips, counties)
        except ValueError as exc:
            raise PackageBuildError(f"geography and state simulations disagree: {exc}") from exc
    return ctx.copy_rows


def _entity_state(geo: GeographyAssignment, sims: StateSimulations, entity: str) -> np.ndarray:
    return geo.state_fips[:, sims.structure.household_index[entity]]


def _variable_values(ctx: _Context, variable: str) -> np.ndarray:
    """(n_clones, n_entity) values of ``variable`` for each clone's state and county class,
    take-up applied."""
    key = ("value", variable)
    if key in ctx.cache:
        return ctx.cache[key]
    sims = ctx.sims
    entity = sims.entity[variable]
    if entity not in ctx.entity_state:
        ctx.entity_state[entity] = _entity_state(ctx.geo, sims, entity)
    states = ctx.entity_state[entity]
    if variable in sims.invariant:
        values = np.asarray(sims.values_at(variable, states))
    else:
        rows = _cell_copy_rows(ctx)[:, sims.structure.household_index[entity]]
        values = np.asarray(sims.values_at(variable, rows))
    if variable in sims.takeup_eligible:
        spec = aca_takeup.rated_spec(next(s for s in TAKEUP if variable in s.variables),
                                     aca_takeup.from_metadata(sims.metadata))
        s = sims.structure
        hh_id = s.ids["household"][s.household_index[entity]]
        takes_up = takeup_decisions(spec, hh_id[None, :], ctx.clone, s.rank[entity][None, :],
                                    states)
        values = (values & takes_up) if values.dtype == bool else values * takes_up
    ctx.cache[key] = values
    return values


def _person_mask(ctx: _Context, cons: tuple) -> np.ndarray | None:
    """(n_clones, n_person) bool: persons meeting every constraint; None when no constraints."""
    if not cons:
        return None
    key = ("mask", cons)
    if key in ctx.cache:
        return ctx.cache[key]
    s = ctx.sims.structure
    mask = None
    for var, op, val in cons:
        ckey = ("cons", var, op, val)
        if ckey not in ctx.cache:
            if var not in ctx.sims.entity:
                raise PackageBuildError(f"constraint variable {var!r} was not simulated")
            entity = ctx.sims.entity[var]
            values = _variable_values(ctx, var)[:, s.person_index[entity]]
            if isinstance(val, str) and values.dtype.kind not in "US":
                raise PackageBuildError(f"constraint {var}{op}{val}: string value for a "
                                        f"{values.dtype} variable")
            ctx.cache[ckey] = OPS[op](values, val)
        m = ctx.cache[ckey]
        mask = m if mask is None else (mask & m)
    ctx.cache[key] = mask
    return mask


def _incidence(ctx: _Context, entity: str, kind: str) -> sp.csr_matrix:
    key = (entity, kind)
    if key not in ctx.incidence:
        s = ctx.sims.structure
        if kind == "person":  # persons -> their entity
            n_e = len(s.ids[entity])
            idx = s.person_index[entity]
            m = sp.csr_matrix((np.ones(len(idx), np.float64), (np.arange(len(idx)), idx)),
                              shape=(len(idx), n_e))
        else:  # entity -> household
            idx = s.household_index[entity]
            m = sp.csr_matrix((np.ones(len(idx), np.float64), (np.arange(len(idx)), idx)),
                              shape=(len(idx), s.n_households))
        ctx.incidence[key] = m
    return ctx.incidence[key]


def family_values(ctx: _Context, variable: str, cons: tuple) -> np.ndarray:
    """(n_clones, n_records) float64: the household value of ``variable`` under ``cons``."""
    s = ctx.sims.structure
    mask = _person_mask(ctx, cons)
    n_clones = ctx.geo.n_clones
    if variable == "person_count":
        if mask is None:
            counts = np.bincount(s.household_index["person"], minlength=s.n_households)
            return np.broadcast_to(counts.astype(float), (n_clones, s.n_households)).copy()
        return np.asarray(mask.astype(np.float64) @ _incidence(ctx, "household", "person"))
    if variable in COUNT_VARIABLES:
        entity = COUNT_VARIABLES[variable]
        if mask is None:
            qual = np.ones((n_clones, len(s.ids[entity])))
        else:
            qual = (mask.astype(np.float64) @ _incidence(ctx, entity, "person")) > 0
        return np.asarray(qual.astype(np.float64) @ _incidence(ctx, entity, "household"))
    if variable not in ctx.sims.entity:
        raise PackageBuildError(f"target variable {variable!r} was not simulated")
    entity = ctx.sims.entity[variable]
    values = _variable_values(ctx, variable).astype(np.float64)
    if mask is not None:
        qual = (mask.astype(np.float64) @ _incidence(ctx, entity, "person")) > 0
        values = values * qual
    if entity == "household":
        return values
    return np.asarray(values @ _incidence(ctx, entity, "household"))


# --------------------------------------------------------------------------------------------
# assembly


def order_targets(targets: pd.DataFrame, cons_of: dict) -> pd.DataFrame:
    """Add ``name`` and ``constraints`` and sort rows by (level, variable, geo id, name)."""
    t = targets.copy()
    t["constraints"] = [cons_of[int(s)] for s in t["stratum_id"]]
    t["name"] = [row_name(lv, str(g), v, c) for lv, g, v, c in
                 zip(t["geo_level"], t["geo_id"], t["variable"], t["constraints"])]
    dup = t["name"].duplicated(keep=False)
    if dup.any():  # same variable, geography and constraints twice: keep them apart by source
        t.loc[dup, "name"] = t.loc[dup, "name"] + "#" + t.loc[dup, "target_id"].astype(str)
    t["_level"] = t["geo_level"].map({lv: i for i, lv in enumerate(GEO_LEVELS)})
    if t["_level"].isna().any():
        bad = t.loc[t["_level"].isna(), "geo_level"].iloc[0]
        raise PackageBuildError(f"unknown geo_level {bad!r}; expected {GEO_LEVELS}")
    t["_geo"] = pd.to_numeric(t["geo_id"].astype(str).where(t["geo_level"] != "national", "0"),
                              errors="coerce")
    if t["_geo"].isna().any():
        bad = t.loc[t["_geo"].isna(), "geo_id"].iloc[0]
        raise PackageBuildError(f"geo_id {bad!r} is not a state FIPS or district GEOID")
    t = t.sort_values(["_level", "variable", "_geo", "name"], kind="stable")
    return t.drop(columns=["_level", "_geo"]).reset_index(drop=True)


def assemble_matrix(targets: pd.DataFrame, sims: StateSimulations, geo: GeographyAssignment,
                    log: Callable[[str], None] = lambda m: None, county_aware: bool = True
                    ) -> tuple[sp.csr_matrix, dict]:
    """CSR float32 (n_targets, n_clones * n_records) for ordered ``targets`` (with
    ``constraints``); returns (matrix, per-family timing figures).

    Each cell's values are those of its clone's state *and county* (the state copy of the
    county's class in ``sims``); ``county_aware=False`` takes every cell at its state's
    default copy (the representative county: files reproduce ``X . w`` only if they put every
    household there). Raises :class:`PackageBuildError` when a clone's county is not in the
    simulations' county classes."""
    n_rec, n_clones = geo.n_records, geo.n_clones
    if sims.structure.n_households != n_rec:
        raise PackageBuildError(f"geography has {n_rec} records, simulations "
                                f"{sims.structure.n_households} households")
    if not np.array_equal(sims.structure.ids["household"], geo.household_id):
        raise PackageBuildError("geography and simulations list different household ids")
    ctx = _Context(sims, geo, np.arange(n_clones)[:, None], {}, {}, {},
                   county_aware=county_aware)
    state_col = geo.state_fips.reshape(-1)
    district_col = geo.district_geoid.reshape(-1)
    rows_all, cols_all, vals_all = [], [], []
    t = targets.assign(_row=np.arange(len(targets)))
    families = t.groupby(["variable", "constraints"], sort=True)
    for (variable, cons), block in families:
        values = family_values(ctx, variable, cons).reshape(-1)
        nz = np.flatnonzero(values)
        if len(nz) == 0:
            continue
        vals = values[nz]
        for level, rows in block.groupby("geo_level"):
            if level == "national":
                for r in rows["_row"]:
                    rows_all.append(np.full(len(nz), r, dtype=np.int64))
                    cols_all.append(nz)
                    vals_all.append(vals)
                continue
            keys = rows["geo_id"].astype(int).to_numpy()
            lookup = np.full(max(int(keys.max()), 5700) + 1, -1, dtype=np.int64)
            lookup[keys] = rows["_row"].to_numpy()
            where = state_col[nz] if level == "state" else district_col[nz]
            r = lookup[where]
            keep = r >= 0
            rows_all.append(r[keep])
            cols_all.append(nz[keep])
            vals_all.append(vals[keep])
    if rows_all:
        rows = np.concatenate(rows_all)
        cols = np.concatenate(cols_all)
        vals = np.concatenate(vals_all).astype(np.float32)
    else:
        rows = cols = np.zeros(0, np.int64)
        vals = np.zeros(0, np.float32)
    matrix = sp.csr_matrix((vals, (rows, cols)), shape=(len(targets), n_rec * n_clones),
                           dtype=np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    copies = _cell_copy_rows(ctx) if sims.by_state else None
    return matrix, {"families": int(families.ngroups),
                    "state_copies_used": 0 if copies is None else int(len(np.unique(copies)))}


def fit_rows_metadata(ordered: pd.DataFrame, matrix: sp.csr_matrix, weights: np.ndarray,
                      config: dict) -> dict:
    """Add ``feasible``, ``exclusion_reason`` and ``loss_weight`` to ``ordered`` (in place;
    :mod:`calibration_core.fit_rows`) and return the package metadata that reports them."""
    bound = fit_rows.validate_feasibility_config(config.get("feasibility"))["max_weight_ratio"]
    feasible, reason, _, high = fit_rows.feasibility(matrix, ordered["value"].to_numpy(float),
                                                     weights, bound)
    ordered["feasible"] = feasible
    ordered["exclusion_reason"] = reason.astype(str)
    fit = ordered["achievable"].to_numpy(bool) & feasible & ~ordered["holdout"].to_numpy(bool)
    ordered["loss_weight"], groups = fit_rows.loss_weights(ordered, fit, config.get("loss"))
    flagged = ~feasible & ordered["achievable"].to_numpy(bool)
    excluded = ordered.loc[flagged]
    return {
        "max_weight_ratio": bound,
        "infeasible_count": int(flagged.sum()),
        "infeasible_by_reason": {k: int(v) for k, v in
                                 excluded.groupby("exclusion_reason").size().items()},
        "infeasible": [{"name": n, "reason": r, "value": float(v), "reach_high": float(h)}
                       for n, r, v, h in zip(excluded["name"], excluded["exclusion_reason"],
                                             excluded["value"], high[flagged])],
        "loss_groups": [{k: (v if isinstance(v, str) else float(v)) for k, v in row.items()}
                        for row in groups.to_dict("records")],
    }


def national_population_check(package: CalibrationPackage) -> dict:
    """Initial-weight estimate of the national population vs its target (person_count, national,
    no constraints; else the sum of the national age-bin rows). Keys: target, estimate,
    relative_error, rows (names used); empty dict when the package has no such rows."""
    t = package.targets
    base = (t["geo_level"] == "national") & (t["variable"] == "person_count")
    rows = np.flatnonzero(base & (t["domain"] == ""))
    if len(rows) == 0:
        rows = np.flatnonzero(base & (t["domain"] == "age"))
    if len(rows) == 0:
        return {}
    est = float(np.asarray(package.matrix[rows] @ package.initial_weights).sum())
    target = float(t["value"].to_numpy()[rows].sum())
    return {"target": target, "estimate": est, "relative_error": est / target - 1.0,
            "rows": [str(n) for n in t["name"].to_numpy()[rows]]}


def build_package(
    targets: pd.DataFrame,
    constraints: pd.DataFrame,
    sims: StateSimulations,
    geo: GeographyAssignment,
    household_weight: np.ndarray,
    config: dict,
    input_sha256: dict | None = None,
    year: int = 2024,
    log: Callable[[str], None] = lambda m: None,
    county_aware: bool = True,
) -> CalibrationPackage:
    """Select targets by ``config``, build the matrix, initial weights and metadata.

    Parameters
    ----------
    targets, constraints : ``targets_db.read_targets`` / ``read_constraints`` frames.
    sims : state simulations of the base households (same households as ``geo``).
    geo : clone geography, ``(n_clones, n_records)``.
    household_weight : (n_records,) base weights; initial weight of every clone of a record is
        ``household_weight / n_clones``.
    config : target config (:func:`load_target_config`).
    input_sha256 : {input name: sha256} recorded in the metadata.
    county_aware : each cell valued at its clone's county class (default); False: at its
        state's representative county (:func:`assemble_matrix`).

    Rows with no non-zero entry are flagged ``achievable=False``; rows no bounded non-negative
    weights can meet get ``feasible=False`` and an ``exclusion_reason``; ``loss_weight`` is each
    row's weight in the balanced loss (0 outside the fit). See :mod:`calibration_core.fit_rows`;
    the fit leaves out every row that is not achievable, feasible and in-sample.
    """
    t0 = time.time()
    need = {"target_id", "stratum_id", "variable", "value", "geo_level", "geo_id", "domain"}
    missing = need - set(targets.columns)
    if missing:
        raise PackageBuildError(f"targets table lacks column(s) {sorted(missing)}")
    household_weight = np.asarray(household_weight, dtype=np.float64)
    if household_weight.shape != (geo.n_records,):
        raise PackageBuildError(f"household weights have shape {household_weight.shape}, "
                                f"expected ({geo.n_records},)")
    if not np.isfinite(household_weight).all() or (household_weight < 0).any():
        raise PackageBuildError("household weights must be finite and >= 0")
    selected = select_targets(targets, config)
    if selected.empty:
        raise PackageBuildError("the target config selects no targets")
    bad_value = ~np.isfinite(selected["value"].astype(float))
    if bad_value.any():
        raise PackageBuildError(f"target {selected.loc[bad_value, 'target_id'].iloc[0]} has a "
                                "non-finite value")
    cons_of = target_constraints(selected, constraints)
    ordered = order_targets(selected, cons_of)
    t_sel = time.time() - t0
    t1 = time.time()
    matrix, figures = assemble_matrix(ordered, sims, geo, log, county_aware)
    t_asm = time.time() - t1
    nnz_row = np.diff(matrix.indptr)
    ordered["achievable"] = nnz_row > 0
    ordered["nnz"] = nnz_row
    ordered["constraints"] = [",".join(f"{v}{o}{_format_value(x)}" for v, o, x in c)
                              for c in ordered["constraints"]]
    ordered["family"] = ordered["variable"] + np.where(ordered["domain"] != "",
                                                       "/" + ordered["domain"], "")
    ordered["geo_id"] = ordered["geo_id"].astype(str)
    weights = np.tile(household_weight / geo.n_clones, geo.n_clones)
    selection = fit_rows_metadata(ordered, matrix, weights, config)
    unachievable = ordered.loc[~ordered["achievable"], "name"].tolist()
    by_level = ordered.groupby("geo_level").size().to_dict()
    by_family = ordered.groupby(["family", "geo_level"]).size().unstack(fill_value=0)
    metadata = {
        "year": int(year), "n_records": geo.n_records, "n_clones": geo.n_clones,
        "n_targets": len(ordered), "n_columns": matrix.shape[1], "nnz": int(matrix.nnz),
        "density": float(matrix.nnz / max(1, matrix.shape[0] * matrix.shape[1])),
        "targets_by_level": {k: int(v) for k, v in by_level.items()},
        "targets_by_family": {f: {lv: int(n) for lv, n in row.items() if n}
                              for f, row in by_family.iterrows()},
        "holdout_targets": int(ordered["holdout"].sum()),
        "unachievable_count": len(unachievable), "unachievable": unachievable,
        "families": figures["families"], "input_sha256": dict(input_sha256 or {}),
        "target_config": config, "select_seconds": round(t_sel, 3),
        "assembly_seconds": round(t_asm, 3), "build_seconds": round(time.time() - t0, 3),
        "geography": geo.metadata, "state_invariant": sims.metadata.get("state_invariant", []),
        "takeup_rerandomised": list(sims.takeup_eligible),
        # per-state take-up rates (aca_takeup): the area files apply the same
        "takeup_state_rates": sims.metadata.get("takeup_state_rates", {}),
        "takeup_state_entities": sims.metadata.get("takeup_state_entities", {}),
        **selection,
        "county": "clone" if county_aware else "representative",
        "state_copies_used": figures["state_copies_used"],
    }
    package = CalibrationPackage(matrix, ordered, weights, metadata)
    check = national_population_check(package)
    if check:
        package.metadata["initial_population_check"] = check
    log(f"package {matrix.shape[0]} x {matrix.shape[1]}, nnz {matrix.nnz}, "
        f"{len(unachievable)} unachievable, assembly {t_asm:.2f} s")
    return package
