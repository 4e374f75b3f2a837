"""``timm:NAME``: any model of timm's registry (``timm.list_models()``), built without downloading anything.

timm is an optional dependency (``pip install 'acp[timm]'``) and is imported only when a ``timm:`` name is
used, so ``acp --help`` and the other models do not pay for it. A name is ``timm:ARCH`` or
``timm:ARCH.TAG`` (a pretrained tag selects that checkpoint's configuration, e.g. its input size, but no
weights are loaded). The model is always built with ``pretrained=False``; trained weights are loaded as
for every model, from a ``state_dict`` file with ``weights_only=True`` (``[model].weights``). Names that
make timm fetch a configuration (``hf-hub:...``, ``local-dir:...``) and the keyword arguments that load
or locate pretrained weights are refused.

The default input size is the ``input_size`` of timm's pretrained configuration (registered in the
package, so reading it needs no network), with ``in_chans``/``img_size`` keyword arguments applied.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from functools import partial

from torch import nn

from acp.errors import UserError

PREFIX = "timm:"
INSTALL_HINT = "pip install 'acp[timm]'"
# create_model keyword arguments that load or locate pretrained weights: acp never downloads anything and
# reads weights only with torch.load(weights_only=True) ([model].weights)
REFUSED_KWARGS = {
    "pretrained": "would download pretrained weights",
    "pretrained_cfg": "selects a pretrained checkpoint (a file, url or hub id)",
    "pretrained_cfg_overlay": "may point timm at a pretrained file, url or hub id",
    "checkpoint_path": "would load a checkpoint outside acp's weights_only loading",
    "cache_dir": "is where timm keeps downloads",
}
WEIGHTS_HINT = "acp builds timm models untrained; load trained weights with [model].weights"


def is_timm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def check_timm_name(name: str) -> None:
    """UserError unless timm is installed and knows ``name`` (``timm:ARCH`` or ``timm:ARCH.TAG``)."""
    _resolve(name)


def timm_input_size(name: str, kwargs: dict | None = None) -> tuple[int, int, int] | None:
    """(channels, height, width) from the pretrained configuration, with ``in_chans``/``img_size`` applied."""
    timm, model_name = _resolve(name)
    kwargs = kwargs or {}
    config = timm.models.get_pretrained_cfg(model_name)
    size = getattr(config, "input_size", None)
    if size is None:
        return None
    channels, height, width = (int(dim) for dim in size)
    channels = int(kwargs.get("in_chans") or channels)
    image = kwargs.get("img_size")
    if isinstance(image, int) and not isinstance(image, bool):
        height = width = image
    elif isinstance(image, list | tuple) and len(image) == 2:
        height, width = (int(dim) for dim in image)
    return channels, height, width


def timm_factory(name: str, kwargs: dict) -> tuple[Callable[..., nn.Module], dict]:
    """(factory, kwargs) that build ``name`` as ``timm.create_model(ARCH[.TAG], pretrained=False, ...)``;
    UserError for the keyword arguments that load or locate pretrained weights."""
    timm, model_name = _resolve(name)
    kwargs = dict(kwargs)
    for key, why in REFUSED_KWARGS.items():
        value = kwargs.pop(key, None)
        if value is not None and value is not False:
            raise UserError(f"model {name!r}: keyword argument {key!r} {why}; {WEIGHTS_HINT}")
    return partial(timm.create_model, model_name, pretrained=False), kwargs


def _resolve(name: str):
    """(the timm module, the name to give timm.create_model); UserError naming what is wrong."""
    model_name = name[len(PREFIX) :]
    if not model_name:
        raise UserError(f"model {name!r}: expected timm:MODEL_NAME, e.g. timm:resnet18")
    try:
        import timm
    except ImportError:
        raise UserError(f"model {name!r} needs timm, which is not installed: {INSTALL_HINT}") from None
    if any(char in model_name for char in ":/\\"):
        raise UserError(
            f"model {name!r}: acp builds models of timm's registry only (no hf-hub:, local-dir: or paths, "
            "which make timm fetch a configuration); see timm.list_models()"
        )
    if not timm.is_model(model_name):
        raise _unknown(name, model_name, timm)
    try:
        timm.models.get_pretrained_cfg(model_name)
    except RuntimeError:
        architecture, _, tag = model_name.partition(".")
        tags = sorted(timm.models.get_arch_pretrained_cfgs(architecture))
        known = f"; its tags: {', '.join(tags)}" if tags else ""
        message = f"model {name!r}: timm has no pretrained tag {tag!r} for {architecture}{known}"
        raise UserError(message) from None
    return timm, model_name


def _unknown(name: str, model_name: str, timm) -> UserError:
    close = _close_matches(model_name, timm.list_models())
    hint = f"; close matches: {', '.join(PREFIX + match for match in close)}" if close else ""
    return UserError(f"unknown timm model {name!r}{hint} (any name of timm.list_models(), as timm:NAME)")


def _close_matches(word: str, names: list[str], count: int = 5, cutoff: float = 0.6) -> list[str]:
    """As ``difflib.get_close_matches``, but equally close names in name order (efficientnet_b0 before b8:
    difflib breaks ties by the larger string)."""
    matcher = difflib.SequenceMatcher()
    matcher.set_seq2(word)
    scored = []
    for name in names:
        matcher.set_seq1(name)
        if matcher.real_quick_ratio() >= cutoff and matcher.quick_ratio() >= cutoff:
            score = matcher.ratio()
            if score >= cutoff:
                scored.append((-score, name))
    return [name for _, name in sorted(scored)[:count]]


def timm_hint(name: str) -> str:
    """``"; timm has it: timm:NAME"`` when the unknown plain ``name`` is a timm model, else ``""``."""
    if not isinstance(name, str) or ":" in name or "/" in name:
        return ""
    try:
        import timm
    except ImportError:
        return ""
    return f"; timm has it: {PREFIX}{name}" if timm.is_model(name) else ""
