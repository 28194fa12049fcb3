"""Parts of the microdata stage; :mod:`calibration_core.microdata` is the public interface."""
