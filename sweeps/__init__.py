"""Optuna sweeps over the accuracy-versus-FLOPs frontier (``affbench sweep``, ``frontier``)."""

import warnings

import optuna

# the heartbeat, stale-trial retries, grouped TPE and metric names are marked experimental in
# Optuna; this package relies on them on purpose and pins the versions it is tested with
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
