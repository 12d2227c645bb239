"""sam3edge: SAM3 concept segmentation, distilled and exported to the edge."""

__version__ = "0.1.0"
