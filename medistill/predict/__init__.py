"""Using a trained student: predicting masks for new images and volumes, and portable exports.

* :mod:`.backends` opens a model for one runtime (Keras, ONNX Runtime, OpenVINO, LiteRT)
  as a :class:`medistill.export.Predictor`; only the Keras backend imports TensorFlow.
* :mod:`.engine` turns raw 2-D images into probabilities and label maps (optional flips,
  post-processing); ``medistill predict`` and ``medistill evaluate`` share it.
* :mod:`.volumes` splits NIfTI volumes into slices and writes label volumes back on the
  input's grid; :mod:`.folder` runs ``medistill predict`` over a folder (resumable);
  :mod:`.exporter` writes ONNX / OpenVINO / LiteRT files (``medistill export``).
"""
