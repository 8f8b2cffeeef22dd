"""Compression methods: which criterion ranks channels and which stages run.

Kept free of torch imports so the Snakemake DAG can ask which stages a method runs
without paying for ``import torch`` at every invocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from idap.core.registry import Registry

METHODS = Registry("method")
_VARIANTS = "variants"  # the scoped layer a config's variants live in


@dataclass(frozen=True)
class Method:
    """A compression method under the shared protocol (docs/method.md §2 and §6).

    Attributes:
        name: registry key, as written in the config.
        criterion: key in ``idap.engine.criteria.CRITERIA``.
        criterion_kwargs: fixed keyword arguments of the criterion.
        stages: the compression stages in order; without ``truncate_layers`` the whole MAC
            target goes to filter pruning.
        finetune: whether the final fine-tune trains (False: it only evaluates).
        close_gap: in target mode, a filter step after stage 2 closes any gap to the target.
        uses_prune_settings: criterion kwargs read from the ``prune`` config section.
        label: name shown in tables.
        ablation: the row label of this variant in the ablation table (None: not a variant).
        one_shot: prune to the target in one step (VBP); its recovery gets the iterations
            the step-wise protocol spends over all its steps, so the budget is the same.
        sparse: unstructured: its target is a parameter sparsity (the fraction of the
            prunable weights set to zero), not a MAC reduction; ``criterion`` then names its
            mask rule in ``idap.engine.sparse.RULES``.
        variant_of: the registered method a config's ``variants`` entry varies (its settings
            are merged per job by :func:`idap.core.config.for_model`); None for a built-in.
    """

    name: str
    criterion: str
    label: str
    stages: tuple[str, ...] = ("prune_filters",)
    finetune: bool = True
    close_gap: bool = True
    criterion_kwargs: dict = field(default_factory=dict)
    uses_prune_settings: tuple[str, ...] = ()
    ablation: str | None = None
    one_shot: bool = False
    sparse: bool = False
    variant_of: str | None = None


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (a plugin's way to bring its own method; its
    ``criterion`` names an entry of ``idap.engine.criterion.CRITERIA``, or of
    ``idap.engine.sparse.RULES`` for a sparse method, checked when the grid is).

    Raises:
        ValueError: the name is taken, or it names a stage that does not exist.
    """
    from idap.stages.registry import COMPRESSION_STAGES, FINAL_STAGE

    unknown = [s for s in method.stages if s not in COMPRESSION_STAGES or s == FINAL_STAGE]
    if unknown or not method.stages:
        valid = ", ".join(s for s in COMPRESSION_STAGES if s != FINAL_STAGE)
        raise ValueError(f"method {method.name!r}: stages must be some of {valid}")
    return METHODS.add(method.name, method)


_DIV = ("normalize", "group_reduction")
_BOTH = ("prune_filters", "truncate_layers")


for _m in (
    Method(
        "idap",
        "divergence",
        "IDAP++",
        _BOTH,
        uses_prune_settings=_DIV,
        ablation="full pipeline",
    ),
    # Ablations of IDAP++ (the seed's ablation table).
    Method(
        "idap_reversed",
        "divergence",
        "IDAP++ (reversed)",
        _BOTH[::-1],
        uses_prune_settings=_DIV,
        ablation="reversed order (truncation first)",
    ),
    Method(
        "idap_noft",
        "divergence",
        "IDAP++ (no fine-tune)",
        _BOTH,
        finetune=False,
        uses_prune_settings=_DIV,
        ablation="no final fine-tune",
    ),
    Method(
        "idap_stage1",
        "divergence",
        "IDAP++ (stage 1 only)",
        ("prune_filters",),
        uses_prune_settings=_DIV,
        ablation="stage 1 only (filter pruning)",
    ),
    Method(
        "idap_stage2",
        "divergence",
        "IDAP++ (stage 2 only)",
        ("truncate_layers",),
        close_gap=False,
        uses_prune_settings=_DIV,
        ablation="stage 2 only (layer truncation)",
    ),
    Method("l1", "l1", "L1 (torch-pruning)"),
    # torch-pruning criteria under exactly the IDAP++ stage-1 protocol (docs/method.md §6)
    Method("l2", "l2", "L2 (torch-pruning)"),
    Method("taylor", "taylor", "Taylor (torch-pruning)"),
    Method("lamp", "lamp", "LAMP (torch-pruning)"),
    Method("fpgm", "fpgm", "FPGM (torch-pruning)"),
    Method("bn_scale", "bn_scale", "BN-scale (torch-pruning)"),
    Method("random", "random", "Random"),
    # The earlier IFAP score: no 1/(C·H·W) factor, no cross-layer normalisation;
    # filter stage only (docs/method.md §1, variant `ifap`).
    Method(
        "ifap",
        "divergence",
        "IFAP",
        criterion_kwargs={"size_factor": False, "normalize": "none"},
        uses_prune_settings=("group_reduction",),
    ),
    # Variance-based pruning (docs/method.md §6): one-shot, mean fold, then the KD fine-tune.
    Method(
        "vbp",
        "vbp",
        "VBP (MLP units)",
        criterion_kwargs={"kind": "mlp"},
        one_shot=True,
    ),
    Method(
        "vbp_cnn",
        "vbp",
        "VBP-CNN (our adaptation)",
        criterion_kwargs={"kind": "cnn"},
        one_shot=True,
    ),
    # Unstructured and dynamic-sparse methods (docs/method.md §6): masks on the weights of
    # every conv and linear layer, the target is a parameter sparsity; same steps,
    # recoveries and final fine-tune as the structured protocol.
    *(
        Method(name, name, label, ("sparsify",), close_gap=False, sparse=True)
        for name, label in (
            ("magnitude", "Global magnitude (unstructured)"),
            ("lth", "LTH (rewinding)"),
            ("rigl", "RigL"),
            ("granet", "GraNet"),
            ("pdp", "PDP"),
            ("movement", "Movement pruning"),
        )
    ),
):
    register_method(_m)


def one_shot(prune) -> dict:
    """The ``prune`` settings a one-shot method changes: one step whose recovery gets the
    iterations the step-wise protocol spends over all its steps (the same budget)."""
    return {"steps": 1, "recovery_iters": prune.steps * prune.recovery_iters}


def variant_methods(variants: dict) -> dict[str, Method]:
    """A config's ``variants`` as methods: the base method's stages and criterion under a new
    name (the settings they change reach the jobs through the config).

    Raises:
        UnknownNameError: a base that is not registered.
        ValueError: a variant named like a registered method, or one of another variant.
    """
    out = {}
    # a base is a registered method, or a plugin's that the planner and the report jobs know
    # from the name index (a scoped layer of its own), never a variant of a config before
    with METHODS.scoped(_VARIANTS, {}):
        for name, spec in variants.items():
            if name in METHODS.names():
                raise ValueError(
                    f"variants.{name}: the name of a registered method; choose another"
                )
            if spec["method"] in variants:
                raise ValueError(
                    f"variants.{name}: {spec['method']!r} is itself a variant (of "
                    f"{variants[spec['method']]['method']!r}); vary the registered method"
                )
            base = get_method(spec["method"])  # raises, naming the valid methods
            label = spec.get("label") or f"{base.label} [{name}]"
            out[name] = replace(base, name=name, label=label, ablation=None, variant_of=base.name)
    return out


def register_variants(variants: dict) -> None:
    """Make a config's ``variants`` the methods of its scope: they replace the variants of
    any config before (they never enter the registered table)."""
    METHODS.set_layer(_VARIANTS, variant_methods(variants))


def use_variants(variants: dict):
    """:func:`register_variants` for a ``with`` block (the API: one call, one config)."""
    return METHODS.scoped(_VARIANTS, variant_methods(variants))


def candidates(variants: dict, methods: list[str]) -> dict[str, list[str]]:
    """Base method -> [the base, its variants in grid order], for every base that has a
    variant in ``methods`` (the base itself must have run too: it is the default to beat)."""
    out: dict[str, list[str]] = {}
    for name in methods:
        spec = variants.get(name)
        if spec is not None:
            out.setdefault(spec["method"], [spec["method"]]).append(name)
    for base in out:
        if base not in methods:
            raise ValueError(
                f"{base!r} has variants in grid.methods but is not there itself; add "
                "it (its default settings are the candidate to beat)"
            )
    return out


def get_method(name: str) -> Method:
    """The registered method or scoped variant ``name``.

    Raises:
        UnknownNameError: naming the valid methods.
    """
    return METHODS.get(name)


def list_methods() -> list[str]:
    """The registered methods (built-in and plugins'), without a config's variants."""
    return METHODS.names()
