"""`lmtune ui`: a local web app over run folders, registries and monitor databases."""
