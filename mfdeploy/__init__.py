"""mfdeploy: prune CLIP-style vision-language models once, export, build, serve."""

__version__ = "0.1.0"

__all__ = ["__version__"]
