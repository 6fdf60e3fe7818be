"""A seeded demo company, so the demo and app developers see realistic, repeatable data.

``DEMO1`` has the server login ``server``/``server`` and three users whose password is their
login: ``alice`` (3001), ``bob`` (3002), ``carol`` (3003), each with the SIP device
``<login>-softphone`` (its password is the login reply's ``softPhonePwd``). Around them: 120
colleagues (extensions 3100-3219), about 30 call-log entries per user over the last week, and
two or three voicemails per user with real WAV audio (8 kHz, 16-bit mono tones, several 32 KiB
chunks).
Everything derives from fixed seeds and the clock, so two runs at the same time are identical.
"""

from __future__ import annotations

import random

from twisted.internet.interfaces import IReactorTime

from mxproxy.testing.mxsim.audio import wav_tones
from mxproxy.testing.mxsim.model import Contact
from mxproxy.testing.mxsim.pbx import PBX

HOME_SYSTEM = "43884850000099999"
DEMO_USERS = (  # login, extension, first name, last name
    ("alice", "3001", "Alice", "Johnson"),
    ("bob", "3002", "Bob", "Williams"),
    ("carol", "3003", "Carol", "Nguyen"),
)
_FIRST_NAMES = (
    "Olivia", "Liam", "Emma", "Noah", "Ava", "Ethan", "Sophia", "Mason", "Isabella", "Lucas",
    "Mia", "Oliver", "Amelia", "Elijah", "Harper", "James", "Evelyn", "Benjamin", "Abigail",
    "Henry", "Emily", "Alexander", "Ella", "Daniel",
)
_LAST_NAMES = (
    "Garcia", "Miller", "Davis", "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez",
    "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez",
    "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson",
)
_AREA_CODES = ("212", "312", "415", "617", "206", "303", "512", "702")
COLLEAGUES = 120
FIRST_COLLEAGUE_EXTENSION = 3100
CALLS_PER_USER = 30
_WEEK = 7 * 24 * 3600


def phone(seed: int) -> str:
    """A fictional North American number (555-01xx is reserved for fiction), E.164 style."""
    return f"+1{_AREA_CODES[seed % len(_AREA_CODES)]}55501{seed * 37 % 100:02d}"


def demo_pbx(clock: IReactorTime | None = None, page_size: int = 50,
             chunk_size: int = 32768) -> PBX:
    """The demo company; call-log and voicemail times are relative to ``clock.seconds()``."""
    pbx = PBX("DEMO1", clock=clock, page_size=page_size, chunk_size=chunk_size)
    pbx.add_server_login("server", "server")
    for n, (login, extension, first, last) in enumerate(DEMO_USERS):
        pbx.add_user(login, login, extension, first_name=first, last_name=last,
                     cell_phone=phone(90 + n), home_system=HOME_SYSTEM)
    for i in range(COLLEAGUES):
        _add_colleague(pbx, i)
    now = int(pbx.clock.seconds())
    for login, *_ in DEMO_USERS:
        _add_call_log(pbx, login, now)
        _add_voicemails(pbx, login, now)
    return pbx


def _add_colleague(pbx: PBX, i: int) -> None:
    first = _FIRST_NAMES[i % len(_FIRST_NAMES)]
    # the stride keeps every (first, last) pair unique across the 120 colleagues
    last = _LAST_NAMES[(i // len(_FIRST_NAMES) * 5 + i) % len(_LAST_NAMES)]
    pbx.add_contact(Contact(
        "", first, last, str(FIRST_COLLEAGUE_EXTENSION + i),
        home_phone=phone(i + 7) if i % 3 == 0 else "", cell_phone=phone(i),
        email=f"{first.lower()}.{last.lower()}@example.invalid",
        did=phone(i + 3) if i % 4 == 0 else "", home_system=HOME_SYSTEM))


def _add_call_log(pbx: PBX, login: str, now: int) -> None:
    rng = random.Random(f"calllog-{login}")
    user = pbx.user(login)
    colleagues = [c for c in pbx.contacts.values() if c.business_phone != user.extension]
    moments = sorted(now - rng.randrange(600, _WEEK) for _ in range(CALLS_PER_USER))
    for disconnect in moments:
        colleague = rng.choice(colleagues) if rng.random() < 0.6 else None
        other = colleague.business_phone if colleague else phone(rng.randrange(1000))
        incoming = rng.random() < 0.55
        missed = incoming and rng.random() < 0.3
        pbx.add_call_record(
            login, direction="incoming" if incoming else "outgoing", disconnect=disconnect,
            connect=None if missed else disconnect - rng.randrange(15, 900),
            calling_party=other if incoming else user.extension,
            original_called_party=user.extension if incoming else other, missed=missed,
            first_name=colleague.first_name if colleague else "",
            last_name=colleague.last_name if colleague else "",
            extension=other if colleague else "", self_leg_type=9 if missed else 1)


def _add_voicemails(pbx: PBX, login: str, now: int) -> None:
    rng = random.Random(f"voicemail-{login}")
    user = pbx.user(login)
    for n in range(2 if login != "alice" else 3):
        tones = tuple((rng.choice((0.0, 350.0, 440.0, 523.25, 659.25, 784.0)),
                       rng.choice((0.4, 0.5, 0.75))) for _ in range(rng.randrange(8, 14)))
        audio = wav_tones(tones)
        colleague = rng.choice([c for c in pbx.contacts.values()
                                if c.business_phone != user.extension])
        outside = n == 1
        pbx.add_voicemail(
            login, audio, from_number=phone(rng.randrange(1000)) if outside
            else colleague.business_phone,
            from_name="" if outside else colleague.display_name,
            caller_name="WIRELESS CALLER" if outside else colleague.display_name,
            received=now - rng.randrange(3600, 3 * 24 * 3600),
            duration=round(sum(seconds for _, seconds in tones)), read=n == 0,
            note="call back" if n == 2 else "")
