"""The model registry: which models exist, how to load them, what they accept.

Read from a TOML file (``models/models.toml`` by default; ``--models`` or
``DARKROOM_MODELS_FILE`` to choose another). Torch-free: the API process reads it too.

    default = "darkroom-mini"

    [models.darkroom-mini]
    engine = "diffusers"            # the diffusers engine ("flux", its old name, still works)
    pipeline = "flux-kontext"       # a family of darkroom.engines.families (flux, flux2, qwen-image, ...)
    path = "darkroom-mini"          # a folder (relative to this file) or a hub id
    license = "apache-2.0"          # the weights' licence, shown in model info
    brief_description = "..."
    aliases = []                    # other names it answers to (none by default; see docs/dialects.md)
    [models.darkroom-mini.parameters]
    steps = { default = 8, minimum = 1, maximum = 50 }
    [models.darkroom-mini.options]  # engine-specific, passed to the engine as is
    max_sequence_length = 64
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from darkroom.engines.families import FAMILIES, Family, get_family
from darkroom.engines.params import ParamSpec, apply_overrides, input_fields_of, standard_params
from darkroom.errors import ModelNotFound

#: Each valid ``pipeline =`` value and the model type it makes.
PIPELINES = {name: family.model_type for name, family in FAMILIES.items()}
#: Each valid ``engine =`` value and the engine it names ("flux" is the old name of "diffusers").
ENGINE_NAMES = {"diffusers": "diffusers", "flux": "diffusers"}


@dataclass(frozen=True)
class ModelSpec:
    """One registered model."""

    id: str
    engine: str
    pipeline: str
    path: str  # a resolved local folder, or a hub id
    parameters: tuple[ParamSpec, ...]
    brief_description: str = ""
    detailed_description: str = ""
    tags: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0
    license: str = ""  # the weights' licence as the registry states it ("" : not stated)

    @property
    def family(self) -> Family:
        return FAMILIES[self.pipeline]

    @property
    def editing(self) -> bool:
        """The model takes input images (its parameters list at least one)."""
        return bool(self.input_image_fields)

    @property
    def input_image_fields(self) -> tuple[str, ...]:
        return input_fields_of(list(self.parameters))

    @property
    def model_type(self) -> str:
        return PIPELINES[self.pipeline]

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_absolute()

    def available(self) -> bool:
        """Weights are present locally (a hub id counts as available only if cached is unknowable: False)."""
        p = Path(self.path)
        return p.is_absolute() and (p / "model_index.json").is_file()

    def record(self, *, qworkers: int = 0) -> dict[str, Any]:
        """The model record of the contract (model info)."""
        modalities = {"input": ["text", "image"] if self.editing else ["text"], "output": ["image"]}
        return {
            "model": self.id,
            "brief_description": self.brief_description,
            "detailed_description": self.detailed_description,
            "model_type": self.model_type,
            "modalities": modalities,
            "parameters": [p.to_record() for p in self.parameters],
            "tags": list(self.tags),
            "aliases": list(self.aliases),
            "license": self.license or "unknown",
            "pipeline": self.pipeline,
            "max_input_images": len(self.input_image_fields),
            "created_at": self.created_at,
            "updated_at": self.created_at,
            "qworkers": qworkers,
            "org_id": "",
            "host_type": "internal",
        }


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    default: str | None = None
    source: Path | None = None

    def get(self, model_id: str) -> ModelSpec:
        """The model by id or alias; raises ModelNotFound."""
        spec = self.models.get(model_id)
        if spec is None:
            spec = next((m for m in self.models.values() if model_id in m.aliases), None)
        if spec is None:
            raise ModelNotFound(f"unknown model {model_id!r}; known: {', '.join(self.models) or 'none'}",
                                field="model")
        return spec

    def ids(self) -> list[str]:
        return list(self.models)

    def with_aliases(self, aliases: Iterable[str]) -> Registry:
        """This registry with more aliases, each ``"NAME=MODEL"`` (the deployment's own names,
        e.g. ``flux-kontext-pro=darkroom-mini``). Raises ValueError on a malformed entry, an
        unknown target model, or a name that is already a model id or another model's alias."""
        models = dict(self.models)
        for entry in aliases:
            name, target = parse_alias(entry)
            if target not in models:
                raise ValueError(f"alias {entry!r}: unknown model {target!r}; known: {', '.join(models) or 'none'}")
            if name in models[target].aliases:
                continue  # given twice (the environment and a flag): harmless
            models[target] = replace(models[target], aliases=(*models[target].aliases, name))
        _check_names(models)
        return replace(self, models=models)


def parse_alias(entry: str) -> tuple[str, str]:
    """``"NAME=MODEL"`` -> (NAME, MODEL); raises ValueError."""
    name, sep, target = (entry or "").partition("=")
    name, target = name.strip(), target.strip()
    if not sep or not name or not target:
        raise ValueError(f"alias {entry!r} must look like NAME=MODEL")
    if "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"alias {entry!r}: the name may not contain '/' or spaces")
    return name, target


def _check_names(models: dict[str, ModelSpec]) -> None:
    """Every id and alias names one model: an alias may not shadow an id or be shared."""
    owner: dict[str, str] = {}
    for spec in models.values():
        for alias in spec.aliases:
            if alias in models:
                raise ValueError(f"alias {alias!r} of model {spec.id!r} is already a model id")
            if alias in owner and owner[alias] != spec.id:
                raise ValueError(f"alias {alias!r} is claimed by both {owner[alias]!r} and {spec.id!r}")
            owner[alias] = spec.id


def load_registry(path: Path, *, aliases: Iterable[str] = ()) -> Registry:
    """Parse a registry file, adding the deployment's ``aliases`` (``"NAME=MODEL"``, see
    ``Registry.with_aliases``). Relative weight paths resolve against the file's folder.
    Raises ValueError on an inconsistent file or alias."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    base = path.resolve().parent
    created = int(path.stat().st_mtime)
    models: dict[str, ModelSpec] = {}
    for model_id, entry in data.get("models", {}).items():
        models[model_id] = parse_model(model_id, entry, base=base, created_at=created)
    default = data.get("default")
    if default is not None and default not in models:
        raise ValueError(f"{path}: default model {default!r} is not defined")
    try:
        _check_names(models)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return Registry(models=models, default=default, source=path).with_aliases(aliases)


def parse_model(model_id: str, entry: dict[str, Any], *, base: Path, created_at: int = 0) -> ModelSpec:
    pipeline = entry.get("pipeline", "flux")
    try:
        family = get_family(pipeline)
    except ValueError as exc:
        raise ValueError(f"model {model_id!r}: {exc}") from None
    engine = entry.get("engine", "diffusers")
    raw_path = entry.get("path", model_id)
    candidate = Path(raw_path).expanduser()
    if not candidate.is_absolute():
        local = base / candidate
        # "org/name" that is not a local folder is a hub id.
        candidate = local if (local.exists() or raw_path.startswith((".", "/")) or "/" not in raw_path) else None
    path = str(candidate.resolve()) if candidate is not None else raw_path
    params = apply_overrides(standard_params(family), entry.get("parameters", {}))
    return ModelSpec(
        id=model_id,
        engine=ENGINE_NAMES.get(engine, engine),  # an unknown one: the worker's create_engine refuses it
        pipeline=pipeline,
        path=path,
        parameters=tuple(params),
        brief_description=entry.get("brief_description", ""),
        detailed_description=entry.get("detailed_description", ""),
        tags=tuple(entry.get("tags", ())),
        aliases=tuple(entry.get("aliases", ())),
        options=dict(entry.get("options", {})),
        created_at=created_at,
        license=str(entry.get("license", "")),
    )
