"""freezebench: a plugin-based benchmark harness for freeze strategies in transfer learning."""

__version__ = "0.1.0"
