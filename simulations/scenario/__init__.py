"""Scenario files: one TOML file per scenario, validated before anything runs."""

from __future__ import annotations

from simulations.scenario.errors import ScenarioError
from simulations.scenario.model import Scenario
from simulations.scenario.parse import load_scenario, parse_scenario

__all__ = ["Scenario", "ScenarioError", "load_scenario", "parse_scenario"]
