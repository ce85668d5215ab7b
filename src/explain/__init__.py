"""Why a model decides as it does: error analysis, Grad-CAM-family heatmaps (pytorch-grad-cam)
and t-SNE feature maps of a trained run, logged as its child run (kind=explain)."""
