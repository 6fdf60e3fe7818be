"""Each configured MX's role on this instance, owner or standby, and the state of the database
that decides it (:mod:`mxproxy.ownership`): what the push code and ``/healthz`` read, without
the machinery that sets it."""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred, succeed

ChangeObserver = Callable[[bool], None]
TokenObserver = Callable[[str], None]
AnsweringObserver = Callable[[str, int, str], None]
"""``(user key, call id, token digest)``: a device of that user is answering that call."""

@attrs.define
class DatabaseState:
    """The lock connection, as ``/healthz`` shows it: whether its last query succeeded."""

    up: bool = False
    since: float | None = None
    last_error: str | None = None


@attrs.define(eq=False)
class MXRole:
    """One configured MX on this instance: owner (monitors for pushes, pushes) or standby.
    ``sn`` is known once the server link has logged in."""

    name: str
    owner: bool = False
    sn: str | None = None
    since: float | None = None
    linked: bool = False
    """This instance's link to the MX is up: only then may it own the MX."""
    teller: Callable[[str, int, str], Deferred[None]] | None = None
    """How a standby reaches the owner (:meth:`tell_owner`); None with one instance."""
    _change_observers: list[ChangeObserver] = attrs.Factory(list)
    _token_observers: list[TokenObserver] = attrs.Factory(list)
    _answering_observers: list[AnsweringObserver] = attrs.Factory(list)

    @property
    def role(self) -> str:
        return "owner" if self.owner else "standby"

    def on_change(self, observer: ChangeObserver) -> None:
        """Call ``observer(owner)`` each time this instance becomes or stops being the owner."""
        self._change_observers.append(observer)

    def on_tokens(self, observer: TokenObserver) -> None:
        """Call ``observer(user key)`` when any instance changed that user's devices, while
        this one is the owner."""
        self._token_observers.append(observer)

    def on_answering(self, observer: AnsweringObserver) -> None:
        """Call ``observer(user key, call id, token digest)`` when a device answers a call
        through another instance, while this one is the owner."""
        self._answering_observers.append(observer)

    def tell_owner(self, user: str, call_id: int, digest: str) -> Deferred[None]:
        """On a standby: tell the owner that the device whose token has ``digest`` answers
        ``user``'s call ``call_id``. Fires, never failing, once the owner can have heard it
        (before the MX's word of the answer, sent after), or when waiting gave up."""
        return succeed(None) if self.teller is None else self.teller(user, call_id, digest)

    def become(self, owner: bool, now: float) -> None:
        """Ownership's to call: the role changed at ``now``."""
        if owner == self.owner:
            return
        self.owner, self.since = owner, now
        for observer in tuple(self._change_observers):
            observer(owner)

    def tokens_changed(self, user: str) -> None:
        """Ownership's to call: ``user``'s devices changed somewhere."""
        for observer in tuple(self._token_observers):
            observer(user)

    def answered_elsewhere(self, user: str, call_id: int, digest: str) -> None:
        """Ownership's to call: a device answers ``user``'s call through another instance."""
        for observer in tuple(self._answering_observers):
            observer(user, call_id, digest)
