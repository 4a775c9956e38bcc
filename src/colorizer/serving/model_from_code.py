"""The colorizer's MLflow model as code (MLflow's models-from-code): `serving.log_model` logs this file
in place of a pickled object, so loading the model imports our code instead of unpickling it (and
MLflow no longer warns about pickles on every training)."""

import mlflow.models

from colorizer.serving.pyfunc import ColorizerModel

mlflow.models.set_model(ColorizerModel())
