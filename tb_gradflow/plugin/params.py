"""Query parameters of the plugin's routes: parsed, range-checked, or a 400.

    >>> from werkzeug.datastructures import MultiDict
    >>> columns(MultiDict({"columns": "500"}))
    500
    >>> statistic(MultiDict({}))
    'grad_norm'

Every parser raises `tensorboard.errors.InvalidArgumentError` (HTTP 400)
with a message naming the parameter; none of them touches data.
"""

from tensorboard import errors

from tb_gradflow import metadata
from tb_gradflow.reader import RULE_STATISTICS

DEFAULT_STATISTIC = metadata.GRAD_NORM
DEFAULT_COLUMNS = 1000
MAX_COLUMNS = 8192
# Steps are int64 in TensorBoard's events; larger requests are not steps.
MAX_STEP = 2**63 - 1


def required(args, name):
    value = args.get(name)
    if value is None or value == "":
        raise errors.InvalidArgumentError(f"missing required parameter {name!r}")
    return value


def integer(args, name, default=None, minimum=None, maximum=None):
    raw = args.get(name)
    if raw is None or raw == "":
        if default is None:
            raise errors.InvalidArgumentError(f"missing required parameter {name!r}")
        return default
    # int() accepts "١٢" (other scripts' digits) and "1_000"; a URL parameter is ASCII digits.
    text = raw.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 30:
        raise errors.InvalidArgumentError(f"parameter {name!r} must be an integer, got {raw[:40]!r}")
    value = int(text, 10)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise errors.InvalidArgumentError(f"parameter {name!r} must be in [{minimum}, {maximum}], got {value}")
    return value


def boolean(args, name, default):
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise errors.InvalidArgumentError(f"parameter {name!r} must be true or false, got {raw[:40]!r}")


def columns(args):
    """The heatmap width a request asks for (1 ... MAX_COLUMNS)."""
    return integer(args, "columns", DEFAULT_COLUMNS, 1, MAX_COLUMNS)


def step(args):
    """A training step (0 ... MAX_STEP), required."""
    return integer(args, "step", minimum=0, maximum=MAX_STEP)


def statistic(args):
    """A gradient statistic's name (written, or a rule's quantity), DEFAULT_STATISTIC when absent."""
    name = args.get("statistic") or DEFAULT_STATISTIC
    known = metadata.STATISTICS + tuple(RULE_STATISTICS)
    if name not in known:
        raise errors.InvalidArgumentError(f"unknown statistic {name[:100]!r}; known: {', '.join(known)}")
    return name
