"""The advisor: `python -m src.advise dataset=<name> budget=<minutes|trials>` ranks backbones,
searches strategies and hyperparameters, measures how accuracy grows with data, and writes a
report whose every number names its MLflow run (see __main__.py and conf/advise.yaml)."""
