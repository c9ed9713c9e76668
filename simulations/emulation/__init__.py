"""Emulation: the scenario's workload through real meshnode processes on this machine."""
