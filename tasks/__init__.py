"""air-deploy's deploy library, in four layers (see docs/layout.md).

``model`` (the domain, pure), ``commands`` (what hosts receive and the parsers of what they
answer, pure), ``net`` (the only code that opens sockets or channels) and ``runbooks`` (read
facts, plan, print or apply; the `fab` tasks). A layer imports only those before it; a unit test
(tests/unit/test_layout.py) holds the pure ones to it.
"""
