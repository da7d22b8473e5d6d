"""The sandbox: air-deploy's local test bed (the `local` and `local2` clusters as containers).

Its tasks (``fab sandbox.*``) live in ``testbed``. It is one command away from
the project's checkout, and not part of what `pip install` ships: the deploy
library is ``tasks`` and ``cloudconfig`` only.
"""
