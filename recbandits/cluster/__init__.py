"""recbandits.cluster: see the README for what lands here."""
