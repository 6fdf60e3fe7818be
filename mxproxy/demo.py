"""``--demo``: the daemon against test doubles in its own process, without a config file.

The simulator with the demo company (users alice, bob, carol) on a free loopback port, its
control API on port 7780, and fake APNs and FCM (real TLS, HTTP/2 and OAuth) with credentials
made up at start: an APNs token key (EC P-256) that the fake APNs trusts, and an FCM service
account that the fake Google accepts. Both fakes log every push they get. This is the one
module of the daemon that starts :mod:`mxproxy.testing`; the service imports it for ``--demo``
only.
"""

from __future__ import annotations

import shutil
import tempfile
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.address import IPv4Address

from mxproxy.config import Config, MXConfig, PushConfig
from mxproxy.logs import Logger
from mxproxy.metrics import Metrics
from mxproxy.push.credentials import APNsTokenKey
from mxproxy.push.fcm import ServiceAccount
from mxproxy.push.system import PushSystem, build
from mxproxy.testing import fakeapns, fakefcm
from mxproxy.testing.mxsim import demo_pbx, listen, listen_control

log = Logger(__name__)

CONTROL_PORT = 7780
BUNDLE = "com.example.softphone"
VOIP_BUNDLE = BUNDLE + ".voip"
KEY_ID, TEAM_ID = "DEMOKEY001", "DEMOTEAM01"


def start(reactor: Any, db: str, metrics: Metrics) -> tuple[Config, PushSystem]:
    """Start the simulator and the fake push providers; the configuration that names the
    simulator, and push delivery to the fakes (its tokens in ``db``)."""
    return start_mx(reactor), start_push(reactor, db, metrics)


def demo_config(host: str, port: int) -> Config:
    """The configuration of ``--demo``: one MX named ``demo``, the in-process simulator."""
    demo = MXConfig(name="demo", host=host, port=port, login="server", password="server", tls=False)
    return Config(mx=MappingProxyType({demo.name: demo}))


def start_mx(reactor: Any) -> Config:
    """The simulator with the demo company, on a free loopback port."""
    pbx = demo_pbx(clock=reactor)
    port = listen(pbx, port=0, interface="127.0.0.1", reactor=reactor)
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    listen_control(pbx, port=CONTROL_PORT, reactor=reactor)
    log.info("demo: MX simulator {sn} on {host}:{port} (users alice, bob, carol), control API "
             "on http://127.0.0.1:{control}/", sn=pbx.sn, host=address.host, port=address.port,
             control=CONTROL_PORT)
    return demo_config(address.host, address.port)


def start_push(reactor: Any, db: str, metrics: Metrics) -> PushSystem:
    """Fake APNs and FCM on loopback, and push delivery to them with made-up credentials."""
    authority = fakeapns.server_authority()
    key = ec.generate_private_key(ec.SECP256R1())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    apns = fakeapns.FakeAPNs()
    apns.add_token_key(KEY_ID, TEAM_ID, public_pem)
    apns_port: int = fakeapns.listen(apns, reactor=reactor).getHost().port  # type: ignore[attr-defined]
    google = fakefcm.FakeFCM()
    fakefcm.listen(google, reactor=reactor, certificate=authority.issue())
    scratch = tempfile.mkdtemp(prefix="mxproxy-demo-")  # the made-up service account's key
    reactor.addSystemEventTrigger("after", "shutdown", shutil.rmtree, scratch, True)
    info, path = fakefcm.make_service_account(google.base_url, directory=scratch)
    google.add_account(info)
    log.info("demo: fake APNs on 127.0.0.1:{port} (topics {bundle}, {voip}), fake FCM at "
             "{url} (app {bundle})", port=apns_port, bundle=BUNDLE, voip=VOIP_BUNDLE,
             url=google.base_url)
    credential = APNsTokenKey(key_pem, KEY_ID, TEAM_ID, (BUNDLE, VOIP_BUNDLE))
    push = PushConfig(apns_host=f"127.0.0.1:{apns_port}",
                      apns_sandbox_host=f"127.0.0.1:{apns_port}", fcm_url=google.base_url)
    return build(reactor, db, [credential], {BUNDLE: ServiceAccount.from_file(path)}, push,
                 trust_root=authority.cert_pem, metrics=metrics)
