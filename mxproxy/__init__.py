"""mxproxy: push notifications and a JSON API in front of Zultys MX phone systems."""

__version__ = "0.1.0"
