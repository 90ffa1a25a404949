"""The programs supervisord starts (reader, rotator, model server, guard), the launcher
that runs supervisord, the stdout relay, the queue channel between the programs and
the rotator's debounce.

May import every wing; no wing imports it.
Only worker.__main__ starts a program, each imported when it is started.
"""
