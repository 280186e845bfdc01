"""recbandits.algos: see the README for what lands here."""
