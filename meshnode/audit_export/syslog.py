"""RFC 5424 syslog messages in RFC 5425 (syslog over TLS) octet-counting frames. Pure: no I/O.

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - BOM XML

PRI is facility 10 (security/authorization, as IHE ITI-20 and dcm4che use)
times 8 plus a severity from the event outcome; MSGID "IHE+RFC-3881" is the
value IHE ATNA repositories dispatch on; the MSG is the audit message in
UTF-8 with a BOM (RFC 5424 6.4). A frame is "LENGTH SP MESSAGE".
"""

from __future__ import annotations

import datetime

FACILITY_AUTHPRIV = 10
APP_NAME = "meshnode"
MSGID = "IHE+RFC-3881"
BOM = b"\xef\xbb\xbf"

# EventOutcomeIndicator -> syslog severity
SEVERITY = {0: 5, 4: 4, 8: 3, 12: 2}  # notice, warning, error, critical


def _header_field(value: str, limit: int) -> str:
    """PRINTUSASCII (33..126), at most `limit` characters, "-" when empty (RFC 5424 6.2)."""
    clean = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return clean or "-"


def timestamp(at_ms: int) -> str:
    when = datetime.datetime.fromtimestamp(at_ms / 1000, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at_ms % 1000:03d}Z"


def syslog_message(xml: bytes, *, at_ms: int, outcome: int, hostname: str, procid: str) -> bytes:
    pri = FACILITY_AUTHPRIV * 8 + SEVERITY.get(outcome, 3)
    header = (f"<{pri}>1 {timestamp(at_ms)} {_header_field(hostname, 255)} {APP_NAME} "
              f"{_header_field(procid, 128)} {MSGID} - ")
    return header.encode("ascii") + BOM + xml


def frame(message: bytes) -> bytes:
    """RFC 5425 4.3: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode("ascii") + b" " + message
