"""segpipe's Python API: use a trained model without the pipeline.

from segpipe.api import Predictor

predictor = Predictor("models/model.pt", device="cpu")
masks = predictor.predict_files(["photo.jpg"])   # one HxW uint8 label map per file
masks = predictor.predict([rgb_array])           # HxWx3 uint8 arrays in, same sizes out
"""

from segpipe.inference.predictor import Predictor

__all__ = ["Predictor"]
