"""Load the logged model (argv 1) in a fresh environment and colorize a photo (argv 2) and a
bad input through it; prints the rows as JSON (run by tests/test_serving_fresh_env.py)."""

import base64
import json
import sys

import mlflow.pyfunc
import pandas as pd

model = mlflow.pyfunc.load_model(sys.argv[1])
rows = model.predict(pd.DataFrame({"image": [b"not an image", open(sys.argv[2], "rb").read()]}))
found = [
    {"error": e, "colorized": c and base64.b64encode(c).decode()}
    for c, e in zip(rows.colorized, rows.error, strict=True)
]
print(json.dumps(found))
