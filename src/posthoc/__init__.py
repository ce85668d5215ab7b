"""Post-hoc methods on trained runs (`python -m src.posthoc method=calibrate|wise_ft|soup`): each
turns one or more runs into a new model, saved as a new MLflow run (a child of its source) that
src.eval, src.predict, src.export and src.report use like any training run. src/posthoc/conf/method/*.yaml
<=> the classes here; test-time augmentation (src.posthoc.tta) is an option of eval and predict."""
