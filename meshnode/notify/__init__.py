"""Email to staff when a study arrives (node.toml [notify]): who gets it, what it says, how it is sent."""
