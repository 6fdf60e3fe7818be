"""twistd plugins ``mxproxy`` (the daemon) and ``mxsim`` (the MX simulator).

twistd imports every plugin module whenever it starts, so this one imports only the light
options module; each service module is imported when its plugin is actually run.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from twisted.application.service import IService, IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer

from mxproxy.options import MXProxyOptions, MXSimOptions


@implementer(IServiceMaker, IPlugin)
class _LazyServiceMaker:
    """A service maker whose ``makeService`` lives in a module imported only when needed."""

    def __init__(
        self, tapname: str, description: str, options: type[usage.Options], service_module: str
    ) -> None:
        self.tapname = tapname
        self.description = description
        self.options = options
        self._service_module = service_module

    def makeService(self, options: Any) -> IService:
        service: IService = import_module(self._service_module).makeService(options)
        return service


mxproxy = _LazyServiceMaker(
    "mxproxy",
    "Push notifications and a JSON API in front of Zultys MX phone systems.",
    MXProxyOptions,
    "mxproxy.service",
)
mxsim = _LazyServiceMaker(
    "mxsim",
    "A simulated Zultys MX speaking the CSTA wire protocol, for demos and tests.",
    MXSimOptions,
    "mxproxy.testing.mxsim.service",
)
