"""Hospital integration: the DIMSE gateway (C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE), the
study intake shared with DICOMweb STOW-RS, the quiet-period announcer, and auto-forwarding
of received studies to the local PACS."""
