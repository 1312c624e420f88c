"""The ``download`` kind (SPEC section 6) and everything under it.

Owns: the kind itself (`_kind`), the durable ``.part`` file written data
before metadata (`_part`), the fast read path (`_wire`), and safe names,
destinations and URLs (`_names`).

May import: the core of ``engine`` (errors, kinds interface, settings, specs,
units) and `supervisors`. Never `engine._projects`, the command line, the
control channel or `engine.testing`.
"""
