"""CLI plumbing shared by `meshnode`, `meshadmin` and `meshsim`."""
