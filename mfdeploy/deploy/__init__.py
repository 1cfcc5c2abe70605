"""Deployment targets made from a build directory: a Triton Inference Server model repository."""

from mfdeploy.deploy.plan import TritonConfig, validate
from mfdeploy.deploy.triton import write_triton_repo

__all__ = ["TritonConfig", "validate", "write_triton_repo"]
