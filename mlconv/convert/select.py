"""Which entries a conversion keeps (--select/--exclude) and the dtype casts it applies."""

from __future__ import annotations

import fnmatch

from .. import dtypes as D
from ..errors import MlconvError, OptionError, UnsupportedError

_GLOB = frozenset("*?[")


def parse_casts(casts) -> dict[D.DType | str, D.DType]:
    """``{"bfloat16": "float32"}`` or ``["bfloat16=float32"]`` -> {DType: DType}; a block
    codec a format declares (``q8_0=float32``) is keyed by its lowercase name."""
    if not casts:
        return {}
    pairs = casts.items() if isinstance(casts, dict) else (_split_cast(c) for c in casts)
    out = {}
    for a, b in pairs:
        if a == D.FLOAT128:  # extended precision held as raw bytes: decoded, then cast
            out[D.FLOAT128] = _float_target(D.FLOAT128, b, "casts to a float")
            continue
        try:
            src, dst = D.parse(a), D.parse(b)
        except UnsupportedError as e:
            if a.lower() in _codecs():  # packed blocks (quantized weights): decoded, then cast
                out[a.lower()] = _float_target(a.lower(), b)
                continue
            raise OptionError(f"--cast: {e.message}") from None
        if src.bits is None or dst.bits is None:
            raise OptionError(f"--cast {src.value}={dst.value}: only numeric dtypes cast")
        out[src] = dst
    return out


def _codecs() -> set[str]:
    """Cast sources beyond dtypes that formats declare: block codecs they can decode."""
    from ..formats import all_formats

    return {c for fmt in all_formats() for c in fmt.codecs}


def _float_target(codec: str, name: str, why: str = "blocks decode to a float") -> D.DType:
    """The float dtype raw values (float128 bytes, quantized blocks) decode to."""
    try:
        to = D.parse(name)
    except UnsupportedError as e:
        raise OptionError(f"--cast: {e.message}") from None
    if to.kind != "float" or to.bits is None:
        raise OptionError(f"--cast {codec}={to.value}: {codec} {why}")
    return to


def _split_cast(text: str):
    a, sep, b = str(text).partition("=")
    if not sep or not a or not b:
        raise OptionError(f"--cast expects SRC=DST (e.g. bfloat16=float32), got {text!r}")
    return a.strip(), b.strip()


def hit(name: str, pattern: str) -> bool:
    """Does ``pattern`` pick ``name``? A glob matches the name or everything under a group;
    a plain name picks itself and everything under it, whether the hierarchy separator is
    ``/`` (HDF5, mlconv) or ``.`` (Hugging Face: ``model.layers.0`` picks
    ``model.layers.0.mlp.weight`` but not ``model.layers.01``)."""
    if _GLOB & set(pattern):
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
            name, pattern.rstrip("/") + "/*")
    base = pattern.rstrip("/.")
    return name == base or name.startswith(base + "/") or name.startswith(base + ".")


def kept(name: str, select=(), exclude=()) -> bool:
    return (not select or any(hit(name, p) for p in select)) and \
        not any(hit(name, p) for p in exclude)


def select_entries(bundle, select=(), exclude=()) -> list[str]:
    """Names kept by --select/--exclude; a selection that matches nothing is an error that
    lists the closest names."""
    names = [n for n in bundle if kept(n, select, exclude)]
    if select and not names and len(bundle):
        import difflib  # only for a selection that matched nothing

        close: list[str] = []
        for p in select:
            close += difflib.get_close_matches(p, list(bundle), n=5, cutoff=0.4)
        hint = f"; closest: {', '.join(dict.fromkeys(close))}" if close else \
            f"; entries: {', '.join(list(bundle)[:5])}{', ...' if len(bundle) > 5 else ''}"
        raise MlconvError(f"no entry matches --select {' '.join(select)}{hint}", bundle.path)
    return names
