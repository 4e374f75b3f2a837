"""From a resolved config to the objects every stage needs: model identity, base model, channel space.

``load_problem(config)`` is the first step of the data flow (DESIGN.md): it builds the model named by the
config, loads its weights (``weights_only=True``), and analyses its channel groups. Data are loaded
separately (``problem.data()``), only by the stages that need images.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from acp.arch import ModelIdentity
from acp.config import config_from_model, load_config
from acp.errors import UserError
from acp.space import ChannelSpace

log = logging.getLogger(__name__)


@dataclass
class Problem:
    """A model to prune: what it is, its (trained) weights, and its channel space."""

    config: dict
    identity: ModelIdentity
    model: nn.Module
    space: ChannelSpace
    weights: str | None  # the weights file actually loaded (None: random init)
    _data: tuple | None = field(default=None, repr=False)

    def data(self):
        """(ImageData, Splits) of the config's data spec; the image shape must fit the model."""
        from acp.data import load_data, make_splits

        if self._data is None:
            spec = self.config["data"]["spec"]
            if spec is None:
                raise UserError(
                    f"{self.config.get('_source', 'config')}: [data].spec is required for this command"
                )
            data = load_data(spec)
            if data.image_shape != tuple(self.identity.input_size):
                raise UserError(
                    f"images of data {spec} are {'x'.join(map(str, data.image_shape))}, but the model's "
                    f"input size is {'x'.join(map(str, self.identity.input_size))} ([model].input_size)"
                )
            if self.identity.num_classes is not None and data.num_classes != self.identity.num_classes:
                raise UserError(
                    f"data {spec} has {data.num_classes} classes, but [model].num_classes is "
                    f"{self.identity.num_classes}"
                )
            self._data = (
                data,
                make_splits(data, self.config["data"]["split"], seed=self.config["data"]["seed"]),
            )
        return self._data


def resolve_config(config_or_model: str) -> dict:
    """A config from a TOML path, or a default config for a bare model name."""
    looks_like_file = config_or_model.endswith(".toml") or Path(config_or_model).is_file()
    return load_config(config_or_model) if looks_like_file else config_from_model(config_or_model)


def model_identity(config: dict) -> ModelIdentity:
    from acp.models import check_model_name, default_input_size

    section = config["model"]
    try:
        check_model_name(section["name"])
    except UserError as error:
        raise UserError(f"{config.get('_source', 'config')}: [model].name: {error}") from None
    input_size = section["input_size"] or default_input_size(section["name"])
    if input_size is None:
        raise UserError(
            f"{config.get('_source', 'config')}: [model].input_size is required for {section['name']!r}"
        )
    return ModelIdentity(section["name"], section["num_classes"], tuple(input_size), dict(section["kwargs"]))


def load_problem(config: dict, *, require_weights: bool = False) -> Problem:
    """Build the model, load its weights and analyse its channel space.

    Missing weights are an error when ``require_weights`` (search, finetune); otherwise the model keeps
    its random initialization and a warning says so (``acp info`` on a config without trained weights).
    """
    from acp.fileio import load_weights_into
    from acp.models import create_model
    from acp.prune import space_for

    identity = model_identity(config)
    model = create_model(identity.name, identity.num_classes, **identity.kwargs)
    weights = config["model"]["weights"]
    if weights is not None and Path(weights).is_file():
        load_weights_into(model, weights)
    elif require_weights:
        where = f" ({weights} not found)" if weights else ""
        raise UserError(
            f"{config.get('_source', 'config')}: [model].weights: a trained weights file is required{where}"
        )
    else:
        if weights is not None:
            log.warning("weights %s not found: using a randomly initialized %s", weights, identity.name)
        weights = None
    space = space_for(model, identity, config["space"])
    return Problem(config, identity, model, space, weights)
