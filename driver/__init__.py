"""The sweep driver: what runs a sweep from the command line to the answer.

    cli (flags, YAML, smoke) -> plan (one SweepPlan) -> run (steps) -> fit / tuner (Tune) ->
    group_asha, seed_groups (scheduler, searcher) -> tracking, progress, pruning (callbacks)
    -> summary, confirm (the answer) -> reporting/ (sweeps/report.py)

Imports go one way: sweeps/ -> driver/ -> trainables/ -> kdsweep/, with no cycle (function-level
imports included). Ray and MLflow are imported only where that is the file's job
(tests/test_layers.py holds every other file of driver/, trainables/ and kdsweep/ to this):

    ray: driver/tuner.py (Ray start, Tuner, searchers), driver/space.py and driver/dists.py
         (the param space),
         driver/confirm.py (the confirm grid's param space), driver/group_asha.py (scheduler),
         driver/seed_groups.py (searcher), driver/progress.py, driver/pruning.py,
         driver/tracking.py (Tune callbacks), driver/ray_auth.py (token auth),
         trainables/tune_io.py (the trainables' only door to Tune)
    mlflow: driver/tracking.py (the sweep's runs), driver/reporting/build.py (the report),
         driver/decode_log.py (decode runs)

The environment for a home PC is set here, before Ray loads.
"""

import os

os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic reporter honours verbose=0
