"""LiteMedSAM (TinyViT image encoder + SAM prompt encoder and mask decoder) in Keras 3.

Modules: ``layers`` (registered Keras layers), ``model`` (the network), ``preprocessing``
(the original's image and box preprocessing, NumPy only), ``convert`` (PyTorch
checkpoint → cached ``.weights.h5``), ``teacher`` (the :class:`Teacher`), ``reference``
(runs the PyTorch reference in its own process, for parity tests and benchmarks).
Nothing here imports TensorFlow at package import time.
"""
