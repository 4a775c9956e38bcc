"""The model as MLflow serves it: logged with the training run, loaded from code."""
