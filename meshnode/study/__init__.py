"""A study on this node, outside the exchange: DICOM files ingested into blocks and metadata
(ingest.py), the signed manifest built from what was ingested (manifest_builder.py), and the
instances written back out byte-exact (export.py)."""
