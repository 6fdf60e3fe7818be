"""Who runs an MX's call monitors for pushes and sends its pushes, when several instances share
one PostgreSQL database: the holder of a session advisory lock keyed by the MX's serial number.

Every instance keeps its server link, address book and HTTP API; only the pushes (and the
``devices`` monitors that feed them) are the owner's. The lock lives on one dedicated
connection (:class:`LockSession`), so it is held exactly as long as that connection: a killed
owner's lock goes with its socket, a vanished machine's when PostgreSQL's keepalives give up on
it (see :mod:`mxproxy.lockconnection`).

The rule that keeps two instances from pushing one call: an owner is an owner only until
:data:`LEASE` seconds after it *sent* the last query that succeeded on the lock connection
(a heartbeat every :data:`HEARTBEAT` seconds). PostgreSQL cannot end that session sooner than
:data:`mxproxy.lockconnection.SERVER_DEAD_AFTER` seconds after that query, so the owner has
stepped down before its lock can move. A standby tries for the lock every :data:`POLL` seconds.
On any doubt (a failed query, an expired lease, a lost connection) every lock of the process is
let go at once by dropping the connection: a stale lock held by a step-down owner would keep
the others waiting, and advisory locks nest, so a fresh try on the same session would count
twice.

The same connection carries what a standby must tell the owner: that a device answers a
pushed call through it (the load balancer's choice), so that the owner's "answered elsewhere"
push leaves that device out (:meth:`MXRole.tell_owner`).

All timing runs on the reactor with an injected clock; only the queries run elsewhere.
With SQLite (one instance) there is no session and every MX is always this process's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from mxproxy.logs import Logger
from mxproxy.mx import MXServer
from mxproxy.roles import DatabaseState, MXRole, TokenObserver

HEARTBEAT = 2.0
"""Seconds between two ``SELECT 1`` on the lock connection."""
LEASE = 4.0
"""Seconds after the last successful query was sent that an owner stops owning: two heartbeats,
so one late beat is no step-down, and below the server's 5 s to drop a silent session."""
POLL = 3.0
"""Seconds between a standby's tries for the locks of the MX it serves."""
ANSWER_WAIT = 0.5
"""Seconds an answer on a standby waits for the database to take its word to the owner: the
answer matters more than the follow-up it spares the answering device."""

_ANSWERING = re.compile(r"(?P<user>.+) (?P<call>[0-9]{1,18}) (?P<digest>[0-9a-f]{64})")
"""The payload of ``mxproxy_answering``: a user key (``<sn>:<jid>``), a call id, a digest."""


class LockSession(Protocol):
    """The lock connection as the reactor sees it: each query's Deferred fires on the reactor,
    failing when the connection is lost (all its locks with it)."""

    def try_lock(self, key: int) -> Deferred[bool]:
        """``pg_try_advisory_lock(key)``: whether this session holds it now."""

    def unlock(self, key: int) -> Deferred[None]:
        """``pg_advisory_unlock(key)``."""

    def beat(self) -> Deferred[None]:
        """``SELECT 1``: the connection still answers."""

    def reset(self) -> None:
        """Drop the connection, and every lock with it; the next query connects again."""

    def listen(self, on_tokens: TokenObserver, on_answering: Callable[[str], None],
               on_lost: Callable[[str], None]) -> None:
        """Receive the payloads of ``mxproxy_tokens`` and ``mxproxy_answering``, and why the
        connection was lost."""

    def tell_answering(self, payload: str) -> Deferred[None]:
        """``NOTIFY mxproxy_answering``: fires once committed (every listener hears it)."""

    def close(self) -> Deferred[None]:
        """Close for good."""


def lock_key(sn: str) -> int:
    """The advisory lock of the MX with serial number ``sn``: 64 bits of a hash, namespaced so
    that other users of the database's advisory locks are unlikely to collide with ours."""
    digest = hashlib.sha256(f"mxproxy.mx:{sn}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Ownership(Service):
    """The roles of every MX of this process; with a :class:`LockSession`, decided by its
    locks, else (SQLite) always the owner."""

    log = Logger()

    def __init__(self, session: LockSession | None, clock: IReactorTime,
                 heartbeat: float = HEARTBEAT, lease: float = LEASE, poll: float = POLL) -> None:
        self._session = session
        self._clock = clock
        self._lease = lease
        self._roles: list[MXRole] = []
        self._held: dict[str, MXRole] = {}
        """The owned roles by serial number."""
        self._trying: set[str] = set()
        self._epoch = 0
        """Bumped by every reset: answers to queries sent before it are ignored."""
        self._expiry: IDelayedCall | None = None
        self._telling_failed = False
        """The last word to an owner went unsaid: the next failure is not logged again."""
        self.database = None if session is None else DatabaseState()
        self._beats = LoopingCall(self._beat)
        self._beats.clock = clock
        self._polls = LoopingCall(self._poll)
        self._polls.clock = clock
        self._intervals = (heartbeat, poll)

    def role(self, server: MXServer) -> MXRole:
        """The role of ``server``'s MX, contended for once its link reports its ``sn``."""
        role = MXRole(server.config.name)
        self._roles.append(role)
        if self._session is None:
            role.become(True, self._clock.seconds())
            return role
        role.teller = self._tell_owner
        server.on_link_up(lambda _: self._serial_known(role, server.sn))
        server.on_link_down(lambda _: self._link_lost(role))
        return role

    def startService(self) -> None:
        super().startService()
        if self._session is None:
            return
        self._session.listen(self._notified, self._answering_notified, self._lost)
        heartbeat, poll = self._intervals
        self._beats.start(heartbeat, now=True)
        self._polls.start(poll, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop pushing first, then let the locks go with the connection."""
        super().stopService()
        if self._session is None:
            return succeed(None)
        for loop in (self._beats, self._polls):
            if loop.running:
                loop.stop()
        self._step_down()
        return self._session.close()

    # -- contending ---------------------------------------------------------------------------

    def _serial_known(self, role: MXRole, sn: str | None) -> None:
        role.linked = True
        if sn != role.sn:
            if role.sn is not None and self._held.get(role.sn) is role:
                self._let_go(role)  # another MX answers at this address now
            role.sn = sn
        if self.running:
            self._poll()  # a fresh start needs no 3 s wait

    def _link_lost(self, role: MXRole) -> None:
        """An owner without its MX link hears of no call: another instance, whose link may
        work (the MX unreachable from this host alone), takes over at its next poll."""
        role.linked = False
        if role.sn is not None and self._held.get(role.sn) is role:
            self.log.warn("mx.{name}: the MX link is down: this instance lets go of MX {sn}, "
                          "for an instance that reaches it", name=role.name, sn=role.sn)
            self._let_go(role)

    def _let_go(self, role: MXRole) -> None:
        """Stop owning ``role``'s MX and unlock it (on failure, the connection goes, and every
        lock with it)."""
        assert self._session is not None and role.sn is not None
        del self._held[role.sn]
        if not self._held and self._expiry is not None and self._expiry.active():
            self._expiry.cancel()  # the lease guards owned locks only
        role.become(False, self._clock.seconds())
        epoch = self._epoch
        self._session.unlock(lock_key(role.sn)).addErrback(
            lambda failure: self._failed(epoch, failure))

    def _poll(self) -> None:
        for role in self._roles:
            sn = role.sn
            if role.linked and sn is not None and sn not in self._held and \
                    sn not in self._trying:
                self._try(role, sn)

    def _try(self, role: MXRole, sn: str) -> None:
        assert self._session is not None
        sent, epoch = self._clock.seconds(), self._epoch
        self._trying.add(sn)

        def answered(got: bool) -> None:
            self._trying.discard(sn)
            if epoch != self._epoch:
                return
            self._answered(sent)
            if not got:
                return
            assert self._session is not None
            if role.sn != sn or not role.linked:  # another MX answers, or none, now
                self._session.unlock(lock_key(sn)).addErrback(
                    lambda failure: self._failed(epoch, failure))
                return
            if self._expired(sent):  # granted too late to vouch for the session
                self._reset(f"the lock of MX {sn} came too late to be trusted")
                return
            self._held[sn] = role
            self._extend(sent)
            self.log.info("mx.{name}: this instance now owns MX {sn}: call monitors for "
                          "pushes and pushes run here", name=role.name, sn=sn)
            role.become(True, self._clock.seconds())

        def failed(failure: Failure) -> None:
            self._trying.discard(sn)
            self._failed(epoch, failure)

        self._session.try_lock(lock_key(sn)).addCallbacks(answered, failed)

    # -- keeping ------------------------------------------------------------------------------

    def _beat(self) -> None:
        assert self._session is not None
        sent, epoch = self._clock.seconds(), self._epoch

        def answered(_: None) -> None:
            if epoch == self._epoch:
                self._answered(sent)
                if self._held:
                    self._extend(sent)

        self._session.beat().addCallbacks(answered, lambda failure: self._failed(epoch, failure))

    def _answered(self, sent: float) -> None:
        assert self.database is not None
        if not self.database.up:
            self.log.info("ownership: the database answers again")
            self.database.up, self.database.since = True, self._clock.seconds()
            self.database.last_error = None

    def _expired(self, sent: float) -> bool:
        return self._clock.seconds() >= sent + self._lease

    def _extend(self, sent: float) -> None:
        """Owner until ``sent`` + lease (or later, if an earlier-sent answer came last)."""
        until = sent + self._lease
        if self._expiry is not None and self._expiry.active():
            if self._expiry.getTime() < until:
                self._expiry.reset(until - self._clock.seconds())
            return
        self._expiry = self._clock.callLater(until - self._clock.seconds(), self._reset,
                                             f"no answer from the database for {self._lease:g} s")

    def _failed(self, epoch: int, failure: Failure) -> None:
        if epoch == self._epoch:
            self._reset(failure.getErrorMessage())

    def _lost(self, reason: str) -> None:
        """The connection ended by itself (PostgreSQL stopped, the session was terminated)."""
        self._reset(reason)

    def _reset(self, reason: str) -> None:
        """Stop owning anything, note the database down, and drop the connection."""
        assert self._session is not None and self.database is not None
        if self._held:
            self.log.warn("ownership: {reason}; this instance stops pushing for {names} and "
                          "lets go of their locks", reason=reason,
                          names=", ".join(role.name for role in self._held.values()))
        elif self.database.up or self.database.since is None:
            self.log.warn("ownership: the database does not answer: {reason}", reason=reason)
        self._step_down()
        if self.database.up or self.database.since is None:
            self.database.up, self.database.since = False, self._clock.seconds()
        self.database.last_error = reason
        self._epoch += 1
        self._session.reset()

    def _step_down(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None
        held, self._held = self._held, {}
        now = self._clock.seconds()
        for role in held.values():
            role.become(False, now)

    def _notified(self, user: str) -> None:
        sn, _, _ = user.partition(":")  # the store's user key, <sn>:<jid>
        role = self._held.get(sn)
        if role is not None:
            role.tokens_changed(user)

    # -- answers through a standby ------------------------------------------------------------

    def _tell_owner(self, user: str, call_id: int, digest: str) -> Deferred[None]:
        """:meth:`MXRole.tell_owner`, on the lock connection (which PostgreSQL serves at once
        to the owner's, listening); never longer than :data:`ANSWER_WAIT`."""
        assert self._session is not None
        told: Deferred[None] = Deferred()
        epoch = self._epoch

        def done(problem: str | None) -> None:
            if told.called:
                return
            if timer.active():
                timer.cancel()
            if problem is not None and not self._telling_failed:
                self.log.warn("ownership: could not tell the owner of an answer on this "
                              "instance ({problem}); the answering device may be told the "
                              "call was answered elsewhere", problem=problem)
            self._telling_failed = problem is not None
            told.callback(None)

        def failed(failure: Failure) -> None:
            self._failed(epoch, failure)  # the connection went, and every lock with it
            done(failure.getErrorMessage())

        timer = self._clock.callLater(ANSWER_WAIT, done,
                                      f"no answer from the database in {ANSWER_WAIT:g} s")
        self._session.tell_answering(f"{user} {call_id} {digest}").addCallbacks(
            lambda _: done(None), failed)
        return told

    def _answering_notified(self, payload: str) -> None:
        """An answer through another instance, for the MX's owner only; a payload mxproxy
        does not send (another program's on the channel) is none of ours."""
        match = _ANSWERING.fullmatch(payload)
        if match is None:
            return
        user = match["user"]
        role = self._held.get(user.partition(":")[0])
        if role is not None:
            role.answered_elsewhere(user, int(match["call"]), match["digest"])
