"""Install mxproxy; metadata lives in setup.cfg.

``twisted.plugins`` is listed explicitly so that the twistd plugin file is installed into Twisted's
plugin namespace; it must stay a directory without ``__init__.py``.
"""
from setuptools import find_packages, setup

setup(packages=find_packages(include=["mxproxy", "mxproxy.*"]) + ["twisted.plugins"])
