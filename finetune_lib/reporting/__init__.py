"""Reports about a run: the model card written by `FineTuner.save`."""
