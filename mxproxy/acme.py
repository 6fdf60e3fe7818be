"""Certificates from an ACME v2 CA (Let's Encrypt): obtain, keep on disk, renew, serve.

certbot's ``acme`` library speaks the protocol (RFC 8555). Its calls block (``requests``), so
they run in a worker thread of their own; the reactor thread keeps everything else: the
schedule, the challenge answers port 80 serves, the certificate files and the
:class:`ServingCertificate`.

Keys are ECDSA P-256, the account's and each certificate's (a new key per certificate).
A certificate is renewed when a third of its lifetime remains, or earlier when the CA suggests
it through ARI (RFC 9773); a failed attempt is retried after 5 minutes, doubling up to 4 hours.
"""

from __future__ import annotations

import datetime
import functools
import os
import tempfile
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from threading import Thread
from typing import Any, ParamSpec, Protocol, TypeVar

import attrs
import josepy as jose
from acme import client, errors, messages
from acme.challenges import HTTP01, ChallengeResponse
from acme.crypto_util import make_csr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from mxproxy import __version__
from mxproxy.logs import Logger
from mxproxy.tls import ServingCertificate, TLSConfigError

ACCOUNT_KEY_FILE = "account.key"
ACCOUNT_FILE = "account.json"
CHAIN_FILE = "fullchain.pem"
KEY_FILE = "privkey.pem"
CHECK_INTERVAL = 24 * 3600.0
RETRY_FIRST = 5 * 60.0
RETRY_MAX = 4 * 3600.0
_ORDER_DEADLINE = datetime.timedelta(seconds=90)
"""How long the CA may take to validate and issue (the acme library's own default)."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class RenewalFailed(Exception):
    """The CA did not deliver a certificate; the message is the reason, on one line."""


@attrs.frozen
class PendingOrder:
    """An order waiting for its HTTP-01 answers to be published on port 80."""

    key_authorizations: Mapping[str, bytes]
    """Token → key authorization, what ``/.well-known/acme-challenge/<token>`` must answer."""
    finish: Callable[[], bytes]
    """Blocking: tell the CA the answers are up, wait for issuance, return the PEM full chain."""


class Issuer(Protocol):
    """What the service asks of a CA; every call blocks (the service runs them in threads)."""

    def order(self, csr_pem: bytes) -> PendingOrder:
        """Open an order for the CSR's names (setting the account up on first use)."""

    def renewal_time(self, chain_pem: bytes) -> datetime.datetime | None:
        """When the CA suggests renewing (ARI), or None if it makes no suggestion."""


class StateDirectory:
    """The ACME files: readable by their owner only, each replaced whole or not at all."""

    def __init__(self, path: str) -> None:
        self.path = path

    def create(self) -> None:
        os.makedirs(self.path, mode=0o700, exist_ok=True)

    def read(self, name: str) -> bytes | None:
        try:
            with open(os.path.join(self.path, name), "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def write(self, name: str, data: bytes) -> None:
        """Write through a temporary file (mkstemp: mode 0600) renamed over the old one, so a
        crash leaves the old content or the new, never half a key."""
        descriptor, temporary = tempfile.mkstemp(dir=self.path, prefix=f".{name}.")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, os.path.join(self.path, name))
        except BaseException:
            os.unlink(temporary)
            raise


class ACMEIssuer:
    """An :class:`Issuer` over certbot's ``acme`` client, with the account kept in ``files``.

    The account is looked up (or created, terms of service agreed) on the first order, so a
    start that has a good certificate never contacts the CA.
    """

    def __init__(self, directory_url: str, files: StateDirectory, email: str | None = None,
                 ca_bundle: str | None = None) -> None:
        self._directory_url = directory_url
        self._files = files
        self._email = email
        self._ca_bundle = ca_bundle
        self._client: client.ClientV2 | None = None

    def order(self, csr_pem: bytes) -> PendingOrder:
        acme = self._connect()
        order = acme.new_order(csr_pem)
        key_authorizations: dict[str, bytes] = {}
        answers = []
        for authorization in order.authorizations:
            if authorization.body.status == messages.STATUS_VALID:
                continue  # validated recently: the CA reuses it
            challenge = _http01(authorization)
            response, validation = challenge.response_and_validation(acme.net.key)
            key_authorizations[challenge.chall.encode("token")] = validation.encode()
            answers.append((challenge, response))
        return PendingOrder(key_authorizations,
                            functools.partial(self._finish, acme, order, answers))

    def renewal_time(self, chain_pem: bytes) -> datetime.datetime | None:
        suggested, _ = self._connect().renewal_time(chain_pem)
        return suggested

    def _finish(self, acme: client.ClientV2, order: messages.OrderResource,
                answers: list[tuple[messages.ChallengeBody, ChallengeResponse]]) -> bytes:
        for challenge, response in answers:
            acme.answer_challenge(challenge, response)
        deadline = datetime.datetime.now() + _ORDER_DEADLINE  # the acme library's naive time
        return acme.poll_and_finalize(order, deadline).fullchain_pem.encode()

    def _connect(self) -> client.ClientV2:
        if self._client is None:
            network = client.ClientNetwork(
                self._account_key(), alg=jose.ES256, user_agent=f"mxproxy/{__version__}",
                # requests' "verify" also takes a CA bundle path (pebble's in tests)
                verify_ssl=self._ca_bundle or True)  # type: ignore[arg-type]
            acme = client.ClientV2(client.ClientV2.get_directory(self._directory_url, network),
                                   network)
            self._register(acme)
            self._client = acme
        return self._client

    def _account_key(self) -> jose.JWKEC:
        pem = self._files.read(ACCOUNT_KEY_FILE)
        if pem is None:
            pem = _new_key_pem()
            self._files.write(ACCOUNT_KEY_FILE, pem)
        return jose.JWKEC(key=serialization.load_pem_private_key(pem, password=None))

    def _register(self, acme: client.ClientV2) -> None:
        """Use the stored account if the CA still knows it, else register the key."""
        stored = self._files.read(ACCOUNT_FILE)
        if stored is not None:
            try:
                acme.query_registration(messages.RegistrationResource.json_loads(stored))
                return
            except messages.Error as error:
                if error.code != "accountDoesNotExist":
                    raise
        try:
            account = acme.new_account(messages.NewRegistration.from_data(
                email=self._email, terms_of_service_agreed=True))
        except errors.ConflictError as existing:  # the key was registered, the file not written
            account = acme.query_registration(messages.RegistrationResource(
                uri=existing.location, body=messages.Registration()))
        self._files.write(ACCOUNT_FILE, account.json_dumps().encode())


class _Workers(ThreadPool):
    """The thread of the ACME calls. Unlike the reactor's pool, which a stopping reactor waits
    for, its thread does not hold the process up: a stop does not wait for an exchange with the
    CA (a request may take 45 s, an order minutes of polling), which the next start redoes."""

    def threadFactory(self, *args: Any, **kwargs: Any) -> Thread:  # type: ignore[override]
        return Thread(*args, daemon=True, **kwargs)


class ACMEService(Service):
    """Keeps a certificate for ``name`` from the CA at ``directory_url`` installed in
    ``certificate``, answering HTTP-01 challenges through ``challenges`` (port 80's dict).

    ``reactor`` provides the clock; ``threads`` (anything with ThreadPool's
    ``callInThreadWithCallback``) and ``issuer`` replace the worker thread and the real CA in
    unit tests.
    """

    log = Logger()

    def __init__(self, name: str, directory_url: str, state_dir: str,
                 certificate: ServingCertificate, challenges: MutableMapping[str, bytes],
                 reactor: Any, email: str | None = None, ca_bundle: str | None = None,
                 issuer: Issuer | None = None, threads: Any = None) -> None:
        self._name = name
        self._own_threads = threads is None
        self._threads = _Workers(0, 1, "acme") if threads is None else threads
        self._directory_url = directory_url
        self._files = StateDirectory(state_dir)
        self._certificate = certificate
        self._challenges = challenges
        self._reactor = reactor
        self._issuer = issuer or ACMEIssuer(directory_url, self._files, email, ca_bundle)
        self._lock = DeferredLock()  # one check or renewal at a time
        self._timer: IDelayedCall | None = None
        self._retry_delay = RETRY_FIRST
        self._chain: bytes | None = None
        self._serving_waiters: list[Deferred[None]] = []

    @property
    def not_after(self) -> datetime.datetime | None:
        """Expiry of the certificate being served (for metrics), None before the first."""
        return self._certificate.not_after

    def startService(self) -> None:
        super().startService()
        if self._own_threads:
            self._threads.start()
        self._files.create()
        leaf = self._install_stored()
        if leaf is None:
            self.log.warn("acme: no certificate for {name} yet: https refuses TLS until "
                          "{directory} issues one; requesting it now", name=self._name,
                          directory=self._directory_url)
            self._schedule(self._renew, 0)
        elif self._now() >= _lifetime_due(leaf):
            self.log.info("acme: the stored certificate for {name} (valid until {not_after}) is "
                          "due for renewal", name=self._name, not_after=leaf.not_valid_after_utc)
            self._schedule(self._renew, 0)
        else:
            self.log.info("acme: serving the stored certificate for {name}, valid until "
                          "{not_after}", name=self._name, not_after=leaf.not_valid_after_utc)
            self._schedule(self._check, CHECK_INTERVAL)

    def stopService(self) -> None:
        super().stopService()
        self._cancel_timer()
        if not self._own_threads:
            return
        if self._lock.locked:
            self.log.info("acme: stopping in the middle of an exchange with {directory}; the "
                          "next start takes it up again", directory=self._directory_url)
        else:
            self._threads.stop()  # idle: joins at once

    def renew_now(self) -> Deferred[None]:
        """Obtain and serve a new certificate now, whatever the schedule (tests, operators).

        Fails with RenewalFailed (already logged, retry scheduled) if the CA does not deliver.
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(self._renew()))

    def when_serving(self) -> Deferred[None]:
        """Fires once a certificate is served: at once if one is, else when the first arrives."""
        if self._chain is not None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._serving_waiters.append(waiter)
        return waiter

    async def _check(self) -> None:
        """The periodic look: renew at a third of the lifetime left, or at the CA's suggestion."""
        assert self._chain is not None
        due = _lifetime_due(x509.load_pem_x509_certificate(self._chain))
        if self._now() < due:
            suggested = await self._suggested_renewal(self._chain)
            if suggested is not None:
                due = min(due, suggested)
        if self._now() < due:
            self._schedule(self._check, min(CHECK_INTERVAL, (due - self._now()).total_seconds()))
            return
        self.log.info("acme: the certificate for {name} is due for renewal", name=self._name)
        await self._renew()

    async def _suggested_renewal(self, chain_pem: bytes) -> datetime.datetime | None:
        try:
            return await self._in_thread(self._issuer.renewal_time, chain_pem)
        except Exception as error:
            self.log.warn("acme: no renewal information (ARI) for {name}: {reason}; going by "
                          "the certificate's lifetime", name=self._name, reason=_reason(error))
            return None

    async def _renew(self) -> None:
        """One attempt: order, answer HTTP-01, finalize, store, serve; on failure, retry later."""
        self._cancel_timer()
        key_pem = _new_key_pem()
        try:
            order = await self._in_thread(self._issuer.order, make_csr(key_pem, [self._name]))
            self._challenges.update(order.key_authorizations)
            try:
                chain_pem = await self._in_thread(order.finish)
            finally:
                for token in order.key_authorizations:
                    self._challenges.pop(token, None)
            self._files.write(KEY_FILE, key_pem)  # the key first: a crash in between leaves a
            self._files.write(CHAIN_FILE, chain_pem)  # mismatched pair, ignored at next start
            self._serve(chain_pem, key_pem)
        except Exception as error:
            reason, delay = _reason(error), self._retry_delay
            self._retry_delay = min(delay * 2, RETRY_MAX)
            self.log.warn("acme: could not obtain a certificate for {name}: {reason}; retrying "
                          "in {minutes:.0f} min", name=self._name, reason=reason,
                          minutes=delay / 60)
            self._schedule(self._renew, delay)
            raise RenewalFailed(reason) from error
        self._retry_delay = RETRY_FIRST
        self.log.info("acme: new certificate for {name}, valid until {not_after}; serving it to "
                      "new connections", name=self._name, not_after=self.not_after)
        self._schedule(self._check, CHECK_INTERVAL)

    def _install_stored(self) -> x509.Certificate | None:
        """Serve the stored certificate if it is one for our name; return its leaf."""
        chain_pem, key_pem = self._files.read(CHAIN_FILE), self._files.read(KEY_FILE)
        if chain_pem is None or key_pem is None:
            return None
        try:
            leaf = x509.load_pem_x509_certificate(chain_pem)
            if self._name not in _dns_names(leaf):
                raise TLSConfigError(f"it is for {', '.join(_dns_names(leaf))}, not {self._name}")
            self._serve(chain_pem, key_pem)
        except ValueError as error:  # TLSConfigError included
            self.log.warn("acme: ignoring the stored certificate for {name}: {reason}",
                          name=self._name, reason=_reason(error))
            return None
        return leaf

    def _serve(self, chain_pem: bytes, key_pem: bytes) -> None:
        self._certificate.install(chain_pem, key_pem)
        self._chain = chain_pem
        waiters, self._serving_waiters = self._serving_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _schedule(self, work: Callable[[], Coroutine[Any, Any, None]], delay: float) -> None:
        self._cancel_timer()
        if self.running:
            self._timer = self._reactor.callLater(delay, self._run_scheduled, work)

    def _run_scheduled(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._timer = None
        running = self._lock.run(lambda: Deferred.fromCoroutine(work()))
        running.addErrback(lambda failure: failure.trap(RenewalFailed))  # logged already

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None

    def _in_thread(self, function: Callable[_P, _T], *args: _P.args,
                   **kwargs: _P.kwargs) -> Deferred[_T]:
        return deferToThreadPool(self._reactor, self._threads, function, *args, **kwargs)

    def _now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self._reactor.seconds(), datetime.UTC)


def _http01(authorization: messages.AuthorizationResource) -> messages.ChallengeBody:
    for challenge in authorization.body.challenges:
        if isinstance(challenge.chall, HTTP01):
            return challenge
    raise errors.Error(f"the CA offers no HTTP-01 challenge for "
                       f"{authorization.body.identifier.value}")


def _dns_names(leaf: x509.Certificate) -> list[str]:
    try:
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return names.value.get_values_for_type(x509.DNSName)


def _lifetime_due(leaf: x509.Certificate) -> datetime.datetime:
    """When a third of the certificate's lifetime remains."""
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    return end - (end - start) / 3


def _new_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _reason(error: BaseException) -> str:
    """An error on one line (the acme library's validation errors span several)."""
    return " ".join(str(error).split()) or type(error).__name__

