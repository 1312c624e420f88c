"""The engine outside trio (SPEC 12.1); the public face is `engine.embed`.

Owns: the trio side both bridges share (`_host`), the asyncio guest-mode
bridge (`_asyncio`) and the background-thread bridge (`_thread`).

May import: the core of ``engine``. Nothing in the core imports it.
"""
