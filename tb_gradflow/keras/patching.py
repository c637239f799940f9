"""Instance attribute wrappers that any number of hooks can stack and remove in any order.

    >>> from tb_gradflow.keras import patching
    >>> class Optimizer:
    ...     def apply(self, x):
    ...         return x + 1
    >>> opt = Optimizer()
    >>> first = patching.wrap(opt, "apply", lambda inner: lambda x: inner(x) * 10)
    >>> second = patching.wrap(opt, "apply", lambda inner: lambda x: inner(x) - 1)
    >>> opt.apply(1)
    19
    >>> first.remove()    # removed out of order: the second wrapper now calls the original
    >>> opt.apply(1)
    1
    >>> second.remove()
    >>> "apply" in vars(opt)
    False

Keras looks `optimizer.apply`, `layer.call` and `layer.activation` up on the
instance, so a hook replaces them there for the duration of a fit. Two hooks
that each saved "the attribute before me" and put it back on exit leave one
of them installed when they exit in the order they entered (the second puts
the first one's wrapper back). Here every wrapper calls the attribute beneath
it through its `Patch`, which is re-linked when a wrapper below it goes, and
the last one out restores the instance exactly as it was (an own attribute
put back, or none).
"""

import weakref

# obj -> {attribute: _Stack}; weak, so a patched model can still be freed.
_STACKS = weakref.WeakKeyDictionary()
_BY_ID = {}  # id(obj) -> {attribute: _Stack} for objects that cannot be weakly referenced


class _Stack:
    def __init__(self, obj, attribute):
        self.had_own = attribute in vars(obj)
        self.own = vars(obj).get(attribute)
        self.base = getattr(obj, attribute)  # what the bottom wrapper calls
        self.patches = []


def _stacks(obj):
    try:
        return _STACKS.setdefault(obj, {})
    except TypeError:
        return _BY_ID.setdefault(id(obj), {})


class Patch:
    """One installed wrapper; `remove()` takes it out (idempotent)."""

    def __init__(self, obj, attribute, stack):
        self._obj = obj
        self._attribute = attribute
        self._stack = stack
        self.inner = None  # the callable this wrapper calls
        self.wrapper = None

    def call_inner(self, *args, **kwargs):
        return self.inner(*args, **kwargs)

    @property
    def installed(self):
        return self in self._stack.patches

    def remove(self):
        stack, obj, attribute = self._stack, self._obj, self._attribute
        if self not in stack.patches:
            return
        i = stack.patches.index(self)
        del stack.patches[i]
        if i < len(stack.patches):
            stack.patches[i].inner = self.inner  # the one above now calls what this one called
        if stack.patches:
            top = stack.patches[-1].wrapper
            if vars(obj).get(attribute) is not top:
                setattr(obj, attribute, top)
            return
        # Last one out: the instance as it was.
        if stack.had_own:
            setattr(obj, attribute, stack.own)
        else:
            vars(obj).pop(attribute, None)
        _stacks(obj).pop(attribute, None)


def wrap(obj, attribute, make_wrapper):
    """Installs `make_wrapper(inner)` as `obj.<attribute>`; returns its `Patch`.

    `inner` is a callable that calls whatever lies beneath the wrapper now or
    later (the original, or another hook's wrapper). Raises whatever
    `setattr` raises (a read-only property, say), leaving `obj` unchanged.
    """
    stacks = _stacks(obj)
    stack = stacks.get(attribute)
    fresh = stack is None
    if fresh:
        stack = _Stack(obj, attribute)
    patch = Patch(obj, attribute, stack)
    patch.inner = stack.patches[-1].wrapper if stack.patches else stack.base
    patch.wrapper = make_wrapper(patch.call_inner)
    setattr(obj, attribute, patch.wrapper)  # may raise: nothing recorded yet
    if fresh:
        stacks[attribute] = stack
    stack.patches.append(patch)
    return patch
