"""The value of every target and constraint variable for every base household in every state.

The calibration matrix needs, for each clone-household, the values its household would have in
the state its clone was placed in. Instead of the reference pipeline's loop of 51 full
simulations (one per state, every variable recomputed in each), :func:`simulate_states`

1. splits the states into chunks (:func:`plan_chunks`) and simulates each chunk *stacked*: the
   households replicated once per state of the chunk (ids offset per copy, ``state_fips`` and a
   county of that state set per copy), computing only the variables the targets need
   (:func:`needed_variables`); chunks bound memory and run in parallel worker processes;
2. runs the first chunk traced and decides from the policyengine-us dependency graph it
   records which of those variables cannot depend on the state
   (:func:`classify_state_dependence`): a variable is state-invariant when nothing it is
   computed from reads the household's geography (``state_fips``, ``county_fips`` and what
   derives from them); a formula the chunk did not run (another state's rules) counts as
   state-dependent. Invariant variables are stored once, after a check that every chunk
   computed the same values for them;
3. runs each state's own rules (formulas ``defined_for`` one state) on that state's rows only
   (:class:`StateRouter`): policyengine-core would run them on every row of the stack and mask
   afterwards, which made stacking k states cost k times each state's rules.

Take-up (spec §4.7): for the variables a take-up input gates (``snap``, ``medicaid_enrolled``,
``aca_ptc``, ``tanf``, ``ssi`` ...) the simulations compute the *eligible* value (take-up forced
to True); the package builder applies per-clone take-up decisions with :func:`takeup_decisions`,
whose draws are ``keyed_uniform("takeup.<input>", household_id, clone, entity_rank)`` - the area
builder calls the same function to write matching take-up inputs.

policyengine-us is imported only inside the functions that simulate (~45 s per process).

Modules: :mod:`.settings` (constants, the error type), :mod:`.takeup` (rates and draws),
:mod:`.tracing` (which variables, state dependence), :mod:`.stacking` (stacked datasets),
:mod:`.routing` (state routing, one chunk simulated), :mod:`.county_classes` (the probe and the
classes), :mod:`.results` (the result and its file), :mod:`.pool` (the driver and its worker
pool). Everything public is importable from ``calibration_core.simulation``.
"""
from __future__ import annotations

from .settings import (ALL_STATES, COUNT_VARIABLES, COUNTY_ROOTS, DEFAULT_CHUNK_HOUSEHOLDS,
                       DEFAULT_PROBE_HOUSEHOLDS, ENTITIES, FROZEN_AT_CLASS,
                       GEO_CONSTRAINT_VARIABLES, GEO_ROOTS, SimulationError, STATE_ORDER, YEAR)
from .takeup import TAKEUP, TakeUp, takeup_decisions, takeup_draws, takeup_specs_for
from .tracing import (_as_plain, classify_state_dependence, county_dependent_variables,
                      needed_variables, variable_entities)
from .stacking import representative_counties, stack_tables, state_takeup_values, Structure
from .routing import (_microsimulation, _SIM_CACHE, _simulation_classes, simulate_chunk,
                      start_policyengine, state_layout, StateRouter)
from .results import (load_state_simulations, save_state_simulations, StateSimulations,
                      TIMING_METADATA_KEYS)
from .county_classes import (check_county_invariance, classes_from_signatures, county_weights,
                             CountyClasses, merge_probe_traces, probe_county_classes,
                             probe_parts, probe_rows, probe_signatures, single_county_classes)
from .pool import _collect, plan_chunks, simulate_states
from ..areas import STATE_ABBR

__all__ = ['ALL_STATES', 'COUNTY_ROOTS', 'COUNT_VARIABLES', 'CountyClasses',
           'DEFAULT_CHUNK_HOUSEHOLDS', 'DEFAULT_PROBE_HOUSEHOLDS', 'ENTITIES', 'FROZEN_AT_CLASS',
           'GEO_CONSTRAINT_VARIABLES', 'GEO_ROOTS', 'STATE_ORDER', 'SimulationError',
           'StateRouter', 'StateSimulations', 'Structure', 'TAKEUP', 'TIMING_METADATA_KEYS',
           'TakeUp', 'YEAR', 'check_county_invariance', 'classes_from_signatures',
           'classify_state_dependence', 'county_dependent_variables', 'county_weights',
           'load_state_simulations', 'merge_probe_traces', 'needed_variables', 'plan_chunks',
           'probe_county_classes', 'probe_parts', 'probe_rows', 'probe_signatures',
           'representative_counties', 'save_state_simulations', 'simulate_chunk',
           'simulate_states', 'single_county_classes', 'start_policyengine', 'stack_tables', 'state_layout',
           'state_takeup_values', 'takeup_decisions', 'takeup_draws', 'takeup_specs_for',
           'variable_entities']
