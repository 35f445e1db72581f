"""kopf handlers; importing this package registers them (`kopf run -m greenserve.handlers`)."""

from greenserve.handlers import modelservice, startup

__all__ = ["modelservice", "startup"]
