"""Decode plain pickled data (lists, tuples, dicts of str/bytes/int/float/bool/None) without
``pickle.loads``: a small stack machine over ``pickletools.genops`` that never imports or
calls anything. PyTables/pandas keep such lists as attributes.

An object of a class inside them (pandas keeps a DatetimeIndex's ``freq`` as a pickled
``Day(1)`` in the ``info`` dict) becomes an inert ``Opaque`` naming the class: the class is
neither imported nor called, its arguments and state are dropped. Callers accept an Opaque
only where the value does not matter (``freq``) and refuse it elsewhere.
"""

from __future__ import annotations

import pickletools

from ...errors import UnsafeInputError

_MAX_OPS = 100_000
_MAX_VALUES = 1_000_000  # values once shared references (memo GETs) are expanded


class _Mark:
    pass


class Opaque:
    """A pickled object of class ``name`` ("module qualname"), never built."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"<pickled {self.name}>"


def _opaque(value) -> Opaque:
    if not isinstance(value, Opaque):
        raise ValueError("a call of something that is not a class")
    return Opaque(value.name)


_SCALAR_ARG = {"UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "STRING",
               "BINSTRING", "SHORT_BINSTRING", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
               "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT",
               "BINFLOAT"}
_NOOP = {"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"}


def loads(data: bytes, what: str = "pickled attribute"):
    # long: the pickle opcode interpreter is one loop over one opcode table
    """The plain value pickled in ``data``; UnsafeInputError for anything else."""
    stack: list = []
    memo: dict = {}
    try:
        ops = pickletools.genops(data)
        for count, (op, arg, _pos) in enumerate(ops):
            if count > _MAX_OPS:
                raise UnsafeInputError(f"{what}: pickle too long")
            name = op.name
            if name in _SCALAR_ARG:
                if name == "STRING" and isinstance(arg, str):
                    arg = arg.encode("latin1")
                stack.append(arg)
            elif name == "NONE":
                stack.append(None)
            elif name in ("NEWTRUE", "NEWFALSE"):
                stack.append(name == "NEWTRUE")
            elif name in ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_TUPLE"):
                stack.append({"EMPTY_LIST": [], "EMPTY_DICT": {}, "EMPTY_TUPLE": ()}[name])
            elif name == "MARK":
                stack.append(_Mark)
            elif name in ("LIST", "TUPLE", "DICT"):
                items = _pop_mark(stack)
                if name == "LIST":
                    stack.append(items)
                elif name == "TUPLE":
                    stack.append(tuple(items))
                else:
                    stack.append(dict(zip(items[0::2], items[1::2], strict=True)))
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                n = int(name[-1])
                items = stack[-n:]
                del stack[-n:]
                stack.append(tuple(items))
            elif name == "APPEND":
                value = stack.pop()
                stack[-1].append(value)
            elif name == "APPENDS":
                items = _pop_mark(stack)
                stack[-1].extend(items)
            elif name == "SETITEM":
                value, key = stack.pop(), stack.pop()
                stack[-1][key] = value
            elif name == "SETITEMS":
                items = _pop_mark(stack)
                stack[-1].update(zip(items[0::2], items[1::2], strict=True))
            elif name in _NOOP:
                if name != "PROTO" and name != "FRAME":
                    memo[arg if name != "MEMOIZE" else len(memo)] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "GLOBAL":  # named, never imported
                stack.append(Opaque(str(arg)))
            elif name == "STACK_GLOBAL":
                qual, module = stack.pop(), stack.pop()
                if not isinstance(qual, str) or not isinstance(module, str):
                    raise ValueError("STACK_GLOBAL of non-strings")
                stack.append(Opaque(f"{module} {qual}"))
            elif name in ("REDUCE", "NEWOBJ"):  # an instance, never constructed
                stack.pop()
                stack.append(_opaque(stack.pop()))
            elif name == "NEWOBJ_EX":
                del stack[-2:]
                stack.append(_opaque(stack.pop()))
            elif name == "BUILD":  # its state is dropped with it
                stack.pop()
                _opaque(stack[-1])
            elif name == "STOP":
                if len(stack) != 1:
                    raise UnsafeInputError(f"{what}: malformed pickle")
                _check_expansion(stack[0], what)  # first: it names shared parts and cycles
                if _depth(stack[0]) > MAX_DEPTH:
                    raise UnsafeInputError(f"{what}: pickle nested deeper than {MAX_DEPTH} "
                                           "levels (or a cycle, or too many shared parts)")
                return stack[0]
            else:
                raise UnsafeInputError(
                    f"{what}: pickle opcode {name} is not read; mlconv never unpickles "
                    "anything but plain lists, dicts, strings and named classes")
    except UnsafeInputError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise UnsafeInputError(f"{what}: malformed pickle ({e})") from None
    raise UnsafeInputError(f"{what}: pickle has no STOP")


MAX_DEPTH = 64  # nesting of lists/dicts/tuples: deeper would make repr, ==, json recurse


def _depth(value) -> int:
    """Nesting depth of ``value`` without recursion, stopping past MAX_DEPTH (a cycle)."""
    deepest, todo, seen = 0, [(value, 1)], 0
    while todo:
        v, d = todo.pop()
        seen += 1
        if seen > 2 * _MAX_OPS:  # shared parts (memo) can multiply what a walk visits
            return MAX_DEPTH + 1
        if not isinstance(v, (list, tuple, dict)):
            continue
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            return d
        items = list(v.keys()) + list(v.values()) if isinstance(v, dict) else v
        todo.extend((x, d + 1) for x in items)
    return deepest


def _pop_mark(stack: list) -> list:
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is _Mark:
            items = stack[i + 1:]
            del stack[i:]
            return items
    raise ValueError("MARK missing")


def _check_expansion(value, what: str) -> None:
    """Refuse a value that is small as a pickle but huge once its shared parts are counted
    as copies (a tuple holding the previous one twice, 40 levels deep, is 2^40 strings
    to anything that prints, hashes or converts it). Counted over the DAG, O(ops)."""
    sizes: dict[int, int] = {}
    todo = [(value, False)]
    while todo:
        node, done = todo.pop()
        if not isinstance(node, (list, tuple, dict)) or (id(node) in sizes and not done):
            continue
        items = list(node.items()) if isinstance(node, dict) else node
        children = [c for pair in items for c in pair] if isinstance(node, dict) else items
        if not done:
            sizes[id(node)] = -1  # on the path: a container holding itself is refused
            todo.append((node, True))
            for child in children:
                if sizes.get(id(child)) == -1:
                    raise UnsafeInputError(f"{what}: pickle holds a container inside itself")
                todo.append((child, False))
            continue
        total = 1 + sum(sizes.get(id(c), 1) if isinstance(c, (list, tuple, dict)) else 1
                        for c in children)
        if total > _MAX_VALUES:
            raise UnsafeInputError(f"{what}: pickle expands to more than {_MAX_VALUES} values "
                                   "(shared references repeated)")
        sizes[id(node)] = total
