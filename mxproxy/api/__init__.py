"""The HTTP API under ``/mx/<mx-name>/``: routes in :mod:`.app`, statuses in :mod:`.errors`,
the bounded request in :mod:`.request`, voicemail streaming in :mod:`.voicemail`."""
