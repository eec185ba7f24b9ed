"""irpo_data: the build stage of Iterative RPO (sample -> grade -> pair -> publish), runs/NAME/iter_T/."""

from irpo import __version__  # noqa: F401  (the build's records carry it; kept here for callers of 0.1)
