"""Fixtures shared by several adversary test files."""

from tests.adversary.patient_public import public  # noqa: F401 (the public patient pages' harness)
