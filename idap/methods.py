"""Compression methods: which criterion ranks channels and which stages run.

Kept free of torch imports so the Snakemake DAG can ask which stages a method runs
without paying for ``import torch`` at every invocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Method:
    """A compression method under the shared protocol (METHOD §2 and §6).

    Attributes:
        name: registry key, as written in the config.
        criterion: key in ``idap.criteria.CRITERIA``.
        criterion_kwargs: fixed keyword arguments of the criterion.
        truncate: whether stage 2 (layer truncation) runs; methods without it put the whole
            MAC target on filter pruning.
        uses_prune_settings: criterion kwargs read from the ``prune`` config section.
        label: name shown in tables.
    """

    name: str
    criterion: str
    label: str
    truncate: bool = False
    criterion_kwargs: dict = field(default_factory=dict)
    uses_prune_settings: tuple[str, ...] = ()


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "idap",
            "divergence",
            label="IDAP++",
            truncate=True,
            uses_prune_settings=("normalize", "group_reduction"),
        ),
        Method("l1", "l1", label="L1 (torch-pruning)"),
        # The earlier IFAP score: no 1/(C·H·W) factor, no cross-layer normalisation;
        # filter stage only (METHOD §1, variant `ifap`).
        Method(
            "ifap",
            "divergence",
            label="IFAP",
            criterion_kwargs={"size_factor": False, "normalize": "none"},
            uses_prune_settings=("group_reduction",),
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; valid: {', '.join(sorted(METHODS))}") from None


def list_methods() -> list[str]:
    return sorted(METHODS)
