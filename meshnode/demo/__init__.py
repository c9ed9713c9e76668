"""The README demo (`make demo`) and the process runner its end-to-end test shares."""
