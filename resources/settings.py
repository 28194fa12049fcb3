"""Build settings: the preset (``AREACAL_PRESET``) with optional per-run overrides."""
from __future__ import annotations

from typing import Optional

import dagster as dg

from calibration_core.presets import Preset, get_preset


class BuildSettings(dg.ConfigurableResource):
    """Which preset a build uses; any field set here overrides the preset's value."""

    preset: Optional[str] = None  # None: AREACAL_PRESET, else "demo"
    base_households: Optional[int] = None
    clones: Optional[int] = None
    regional_epochs: Optional[int] = None
    national_epochs: Optional[int] = None
    validation_areas: Optional[str] = None
    seed: Optional[int] = None

    def resolve(self) -> Preset:
        return get_preset(self.preset).with_overrides(
            base_households=self.base_households, clones=self.clones,
            regional_epochs=self.regional_epochs, national_epochs=self.national_epochs,
            validation_areas=self.validation_areas, seed=self.seed,
        )
