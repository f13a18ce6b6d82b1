"""Distilling Step-by-Step in JAX/Flax.

Importing the package is cheap on purpose: subpackages pull in jax, seqio or
TensorFlow only when they are imported themselves.
"""

__version__ = "0.1.0"
