"""The DIMSE gateway: a pynetdicom AE inside the node process, bridged to trio."""
