"""The old name `server`, installed: the same modules as montybase.server (montybase/__init__.py)."""

import montybase

montybase.old_name(__name__)
