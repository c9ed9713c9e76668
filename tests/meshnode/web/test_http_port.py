"""The HTTP port `meshnode init` suggests is one no neighbour uses, and the template and the code agree on it
(issue 15: the template suggested Orthanc's 8042)."""

from __future__ import annotations

import re
from pathlib import Path

from meshnode.config import NodeConfig, parse_config
from meshnode.patient.config import DEFAULT_PUBLIC_PORT
from meshnode.web.config import DEFAULT_HTTP_LISTEN, DEFAULT_HTTP_PORT

ROOT = Path(__file__).resolve().parents[3]
#: ports of the software a node sits beside: Orthanc HTTP/DICOMweb and DICOM, dcm4chee, DIMSE, Prometheus,
#: Grafana/OHIF, node exporter, Alertmanager, Pushgateway, Jupyter, RStudio
NEIGHBOURS = {8042, 4242, 8080, 8443, 9990, 11112, 104, 2762, 2575, 9090, 3000, 9100, 9093, 9091, 8888, 8787}


def test_the_suggested_port_collides_with_nothing_beside_the_node() -> None:
    assert DEFAULT_HTTP_PORT not in NEIGHBOURS and 1024 < DEFAULT_HTTP_PORT < 49152
    assert DEFAULT_PUBLIC_PORT not in NEIGHBOURS and 1024 < DEFAULT_PUBLIC_PORT < 49152
    assert DEFAULT_PUBLIC_PORT != DEFAULT_HTTP_PORT


def test_the_template_suggests_the_code_default() -> None:
    text = NodeConfig(org="RGT").render()
    assert parse_config(text).http.listen == ""  # commented out: off until set
    # the [http] section's line (the [patient_access] section suggests its own listener's port)
    (line,) = [ln for ln in text.splitlines() if re.match(r"# listen = ", ln) and DEFAULT_HTTP_LISTEN in ln]
    enabled = text.replace("# [http]\n", "[http]\n", 1).replace(line, line[2:], 1)
    assert parse_config(enabled).http.listen == DEFAULT_HTTP_LISTEN
    assert parse_config(enabled).http.host_port == ("127.0.0.1", DEFAULT_HTTP_PORT)


def test_the_docs_use_it_and_not_orthancs() -> None:
    operators = (ROOT / "docs" / "operators.md").read_text()
    listens = re.findall(r"http\.listen=[\d.]+:(\d+)|^listen = \"[\d.]+:(\d+)\"", operators, re.M)
    ports = {int(a or b) for a, b in listens}
    assert ports <= {DEFAULT_HTTP_PORT, DEFAULT_PUBLIC_PORT} and DEFAULT_HTTP_PORT in ports, ports
