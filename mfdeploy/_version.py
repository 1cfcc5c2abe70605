"""The package's version, in a module of its own: every module that records it imports it from here.

`mfdeploy/__init__.py` resolves the Python API lazily from `mfdeploy.api`, so a module inside the package that
imported the version from the root package would depend on the API above it (an import cycle).
"""

__version__ = "0.1.0"
