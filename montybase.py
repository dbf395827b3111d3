"""`from montybase import *`, as the original Montybase README writes it: the Python client."""

from python_client import *  # noqa: F403
from python_client import __all__  # noqa: F401
