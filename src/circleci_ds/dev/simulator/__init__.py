"""A fake CircleCI API v2 server with a deterministic, clock-driven synthetic history."""

from .config import SimConfig, SimProject
from .sim import Simulator, run_standalone

__all__ = ["SimConfig", "SimProject", "Simulator", "run_standalone"]
