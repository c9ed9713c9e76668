"""One module per meshsim subcommand."""
