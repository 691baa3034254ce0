"""medistill: distil medical foundation models into small, prompt-free segmentation networks."""

__version__ = "0.1.0"
