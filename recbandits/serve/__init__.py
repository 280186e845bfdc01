"""recbandits.serve: see the README for what lands here."""
