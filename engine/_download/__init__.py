"""The ``download`` kind (SPEC section 6) and everything under it.

Owns: the kind itself (`_kind`), one attempt's transfer (`_transfer`), a
transfer over several connections (`_multi`, with its segment table
`_segments`, per-host connection counts `_hosts` and rate limits
`_ratelimit`), range headers (`_ranges`), the durable ``.part`` file written
data before metadata (`_part`), the fast read path (`_wire`), and safe names,
destinations and URLs (`_names`).

May import: the core of ``engine`` (errors, kinds interface, settings, specs,
units) and `supervisors`. Never `engine._projects`, the command line, the
control channel or `engine.testing`.
"""
