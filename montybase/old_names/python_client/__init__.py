"""The old name `python_client`, installed: the same modules as montybase.client (montybase/__init__.py)."""

import montybase

montybase.old_name(__name__)
