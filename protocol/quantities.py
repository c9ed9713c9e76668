"""Quantities in configuration files: sizes, bandwidths, durations and times of day, with their units.

Written the way an operator or a network researcher writes them: ``"0.5MB"``,
``"1Gbit/s"``, ``"30ms"``, ``"365d"``, ``"02:00"``. Everything is converted to
SI base units (bytes, bytes per second, seconds). A value without a unit, a
negative value or an unknown unit is a ``ConfigError`` naming the key.
The one config reader (protocol.config_reader.Table) reads them with
``size``, ``rate``, ``duration``, ``clock`` and ``weekday``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from protocol.errors import ConfigError

_NUMBER = r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"
_SIZE_RE = re.compile(rf"^\s*{_NUMBER}\s*([KMGTP]?i?B|B)\s*$")
_RATE_RE = re.compile(rf"^\s*{_NUMBER}\s*([kKMGT]?)(bit/s|bps|B/s)\s*$")
_DURATION_PART = re.compile(rf"{_NUMBER}\s*(ms|s|min|m|h|d|w|y)")
_CLOCK_RE = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")

_SIZE_FACTORS = {
    "B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "PB": 1e15,
    "KiB": 1024.0, "MiB": 1024.0**2, "GiB": 1024.0**3, "TiB": 1024.0**4, "PiB": 1024.0**5,
}
_RATE_PREFIX = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_DURATION_FACTORS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
                     "w": 7 * 86400.0, "y": 365 * 86400.0}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _finite(value: float, key: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number (got {value!r})")
    return value


def _quantity(value: object, key: str, what: str, example: str, parse: Callable[[str], float | None]) -> float:
    """A plain number, or text `parse` reads (None: not this quantity); finite and not negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        kind = "a boolean" if isinstance(value, bool) else type(value).__name__
        raise ConfigError(f"{key}: expected a {what} such as \"{example}\", got {kind}")
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-"):
            raise ConfigError(f"{key}: a {what} cannot be negative (got {value!r})")
        parsed = parse(text)
        if parsed is None:
            raise ConfigError(f"{key}: not a {what}: {value[:40]!r} (write e.g. \"{example}\")")
        out = parsed
    else:
        out = float(value)
    _finite(out, key)
    if out < 0:
        raise ConfigError(f"{key}: a {what} cannot be negative (got {value!r})")
    return out


def _size_text(text: str) -> float | None:
    m = _SIZE_RE.match(text)
    if m is None or m.group(2) not in _SIZE_FACTORS:
        return None
    return float(m.group(1)) * _SIZE_FACTORS[m.group(2)]


def size(value: object, key: str) -> float:
    """Bytes, from "0.5MB", "512KiB", "1.2GB" (SI and binary prefixes) or a plain number of bytes."""
    return _quantity(value, key, "size", "64MiB", _size_text)


def rate(value: object, key: str) -> float:
    """Bytes per second, from "1Gbit/s", "100Mbit/s", "20MB/s". A bare number is refused (bits or bytes?)."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{key}: negative bandwidth {value!r}")
        raise ConfigError(f"{key}: a bandwidth needs a unit, e.g. \"1Gbit/s\" or \"20MB/s\" (got {value!r})")
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a bandwidth such as \"1Gbit/s\", got {type(value).__name__}")
    text = value.strip()
    if text.startswith("-"):
        raise ConfigError(f"{key}: negative bandwidth {value!r}")
    m = _RATE_RE.match(text)
    if m is None:
        raise ConfigError(f"{key}: not a bandwidth: {value!r} (write e.g. \"1Gbit/s\", \"100Mbit/s\", \"20MB/s\")")
    number = float(m.group(1)) * _RATE_PREFIX[m.group(2)]
    out = number if m.group(3) == "B/s" else number / 8.0
    return _finite(out, key)


def _duration_text(text: str) -> float | None:
    text = text.replace(" ", "")
    pos, out = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            break
        out += float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
        pos = m.end()
    return out if text and pos == len(text) else None


def duration(value: object, key: str) -> float:
    """Seconds, from "30ms", "2h", "7d", "1y" (365 days), "1h30m", or a plain number of seconds."""
    return _quantity(value, key, "duration", "30s", _duration_text)


def clock(value: object, key: str) -> float:
    """Seconds after midnight from "HH:MM"."""
    if not isinstance(value, str) or (m := _CLOCK_RE.match(value.strip())) is None:
        raise ConfigError(f"{key}: expected a time of day \"HH:MM\" (got {value!r})")
    return int(m.group(1)) * 3600.0 + int(m.group(2)) * 60.0


def weekday(value: object, key: str) -> int | None:
    """0 (Monday) .. 6 (Sunday), or None for "daily"."""
    if not isinstance(value, str):
        raise ConfigError(f"{key}: expected a day name (mon..sun or daily), got {value!r}")
    text = value.strip().lower()[:3]
    if text == "dai":
        return None
    if text not in DAYS:
        raise ConfigError(f"{key}: expected a day name (mon..sun or daily), got {value!r}")
    return DAYS.index(text)


def format_rate(bytes_per_s: float) -> str:
    bits = bytes_per_s * 8
    for unit, factor in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bits >= factor:
            return f"{bits / factor:g}{unit}"
    return f"{bits:g}bit/s"


def format_duration(seconds: float) -> str:
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds / 86400:g}d"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1000:g}ms"
