#!/usr/bin/env bash
# 3 presets x 2 fractions x 3 seeds = 18 runs (about 25 minutes on 2 CPU cores), then the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python -m src.train -m experiment=regularisation_small_data \
  regularisation=none,default,l2sp dataset.fraction=0.01,0.1 seed=0,1,2
.venv/bin/python experiments/regularisation_small_data/report.py
