"""NuwaDynamics: causal spatio-temporal data augmentation as a pipeline of file-producing stages."""

__version__ = "0.1.0"
