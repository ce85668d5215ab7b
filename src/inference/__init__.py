"""Use what was trained: find a run's model, evaluate it, predict with it, export it."""
