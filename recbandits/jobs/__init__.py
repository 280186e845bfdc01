"""recbandits.jobs: what a user runs, on top of the algorithms.

| module | what |
|---|---|
| ``simulate`` | ``recbandits simulate`` / ``demo``: train a policy beside random and oracle references, checkpoint it |
| ``compare`` | ``recbandits compare``: recbandits against TF-Agents' own agents on the same seeds and budgets |
| ``tune`` | ``recbandits tune``: Ray Tune sweeps over hyperparameters and seeds |
| ``sweep`` / ``sweep_results`` | a sweep's options and search space; the tables, best config and plots it writes |
| ``recommend`` | a finished run's policy read back: ``recbandits.load_policy(RUN_DIR).recommend(user_id=42, k=5)`` |
"""
