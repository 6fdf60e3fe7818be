"""Fake APNs and FCM for ``mxproxy --demo``: real TLS, HTTP/2 and OAuth, all in this process.

The credentials are made up at start: an APNs token key (EC P-256) that the fake APNs trusts,
and an FCM service account that the fake Google accepts. Both fakes log every push they get.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mxproxy.config import PushConfig
from mxproxy.logs import Logger
from mxproxy.push.credentials import APNsTokenKey, Credential
from mxproxy.push.fcm import ServiceAccount
from mxproxy.testing import fakeapns, fakefcm

log = Logger(__name__)

BUNDLE = "com.example.softphone"
VOIP_BUNDLE = BUNDLE + ".voip"
KEY_ID, TEAM_ID = "DEMOKEY001", "DEMOTEAM01"


def start(reactor: Any) -> tuple[list[Credential], dict[str, ServiceAccount], PushConfig, bytes]:
    """Listen with both fakes on loopback; what mxproxy needs to push to them."""
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
    return [credential], {BUNDLE: ServiceAccount.from_file(path)}, push, authority.cert_pem
