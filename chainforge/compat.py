"""The trl and transformers releases ChainForge is tested with, and the check that enforces them.

ChainForge subclasses TRL's and transformers' trainers and overrides or reads parts of them that
are private (listed in PRIVATE_PARTS). Those change between minor releases without a deprecation
period, and a changed signature does not fail at import: it fails minutes into a run, or worse,
trains on silently. So an untested major/minor release of either is refused up front with the pip
line that installs a tested one; CHAINFORGE_ALLOW_UNTESTED=1 turns the refusal into a warning for
someone trying a new release on purpose.

TESTED is the one place the ranges live: pyproject.toml repeats them as dependency pins (a test
checks that the two agree). To move to a new release, run the default test suite against it
(`missing_private_parts()` names what moved), then widen both.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from typing import Iterable, Optional

from chainforge.errors import UsageError

# Tested ranges, as pip specifiers. Widen only after the default suite passes on the new release.
TESTED = {
    "trl": ">=1.16.0,<1.17",
    "transformers": ">=5.23.0,<5.25",
}

ALLOW_UNTESTED = "CHAINFORGE_ALLOW_UNTESTED"

# What ChainForge relies on that is not the libraries' public API: (package, module, attribute
# path, parameters the override passes on, where ChainForge uses it).
PRIVATE_PARTS = [
    ("trl", "trl", "GRPOTrainer._generate", ("prompts",),
     "stages/grpo.py: timed override"),
    ("trl", "trl", "GRPOTrainer._calculate_rewards",
     ("inputs", "prompts", "completions", "completion_ids_list"),
     "stages/grpo.py: format/expansion rates logged beside the rewards"),
    ("trl", "trl", "GRPOTrainer._metrics", (), "stages/grpo.py: extra logged metrics"),
    ("trl", "trl", "SFTTrainer._get_train_sampler", ("train_dataset",),
     "stages/sft.py: seeded length-grouped sampler"),
    ("trl", "trl.experimental.gkd", "GKDTrainer.training_step", ("model", "inputs", "num_items_in_batch"),
     "stages/distill.py: logit distillation"),
    ("trl", "trl.chat_template_utils", "get_training_chat_template", (),
     "stages/sft.py: assistant-only loss masks"),
    ("trl", "trl.chat_template_utils", "has_generation_markers", (),
     "stages/sft.py: assistant-only loss masks"),
    ("transformers", "transformers.trainer_pt_utils", "LengthGroupedSampler.__init__",
     ("batch_size", "lengths"), "stages/sft.py: seeded length-grouped sampler"),
    ("transformers", "transformers.trainer_pt_utils", "LengthGroupedSampler.generator", (),
     "stages/sft.py: the sampler's generator, reseeded per epoch"),
    ("transformers", "transformers", "Trainer.training_step", ("model", "inputs", "num_items_in_batch"),
     "stages/distill.py: GKD loss counted per micro-batch"),
    ("transformers", "transformers", "Trainer.model_accepts_loss_kwargs", (),
     "stages/distill.py: GKD loss counted per micro-batch"),
    ("transformers", "transformers", "Trainer.loss_is_scaled_for_ga", (),
     "stages/distill.py: GKD loss counted per micro-batch"),
    ("transformers", "transformers", "DynamicCache.batch_select_indices", ("indices",),
     "sampling.py: finished rows leave the KV cache"),
]


def installed_version(package: str) -> Optional[str]:
    """The installed distribution's version from its metadata (the package is not imported)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def untested(packages: Iterable[str] = tuple(TESTED)) -> list[tuple[str, bool]]:
    """(message, allowable) for each package that is missing or outside its TESTED range;
    `allowable` is False for a missing package (no environment variable makes it work)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    problems = []
    for package in packages:
        spec = TESTED[package]
        pip_line = f"pip install '{package}{spec}'"
        found = installed_version(package)
        if found is None:
            problems.append((f"{package} is not installed; ChainForge needs {package}{spec}: {pip_line}", False))
            continue
        try:
            ok = SpecifierSet(spec).contains(Version(found), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            uses = ", ".join(dict.fromkeys(attr for pkg, _, attr, _, _ in PRIVATE_PARTS if pkg == package))
            problems.append((
                f"{package} {found} is installed, but ChainForge is tested with {package}{spec} and "
                f"relies on private parts of it that change between releases ({uses}); install a "
                f"tested version: {pip_line} (or set {ALLOW_UNTESTED}=1 to run on {found} anyway)", True))
    return problems


def check_tested_versions(packages: Iterable[str] = tuple(TESTED)) -> None:
    """Exit 2 when trl/transformers is missing or an untested release; with CHAINFORGE_ALLOW_UNTESTED=1
    an untested release is a warning instead.

    Call it where a stage validates its options: before `--output` is created and before the first
    import of the library's private parts."""
    allow = os.environ.get(ALLOW_UNTESTED, "").strip().lower() in ("1", "true", "yes")
    problems = untested(packages)
    fatal = [message for message, allowable in problems if not (allow and allowable)]
    if fatal:
        raise UsageError(" | ".join(fatal))
    if problems:
        from chainforge.log import info

        for message, _ in problems:
            info(f"Warning: {message.split('; install')[0]}; {ALLOW_UNTESTED} is set, so running anyway")


def missing_private_parts() -> list[str]:
    """The PRIVATE_PARTS the installed libraries lack, or whose parameters changed (imports trl and
    transformers: for tests and for trying a new release, not for the CLI's start-up)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    missing = []
    for _, module_name, path, params, where in PRIVATE_PARTS:
        try:
            obj = importlib.import_module(module_name)
            for name in path.split("."):
                obj = _attribute(obj, name)
        except (ImportError, AttributeError) as exc:
            missing.append(f"{module_name}.{path} ({where}): {type(exc).__name__}: {exc}")
            continue
        if params:
            have = list(inspect.signature(obj).parameters)
            lost = [p for p in params if p not in have]
            if lost:
                missing.append(f"{module_name}.{path} ({where}): no parameter {', '.join(lost)} "
                               f"(has {', '.join(have)})")
    return missing


def _attribute(obj, name: str):
    """getattr, except that an instance attribute set in __init__ (GRPOTrainer._metrics) counts when
    __init__ assigns it."""
    if hasattr(obj, name):
        return getattr(obj, name)
    if inspect.isclass(obj) and f"self.{name} =" in inspect.getsource(obj.__init__):
        return None
    raise AttributeError(f"{getattr(obj, '__name__', obj)!s} has no attribute {name!r}")


def cache_kwarg(model) -> str:
    """The keyword a model's forward takes its KV cache by: `cache` from transformers 5.24 on
    (`past_key_values` still works there, with a FutureWarning on every run), `past_key_values` in
    5.23 and in models that bring their own code. Read from the model class's own signature (a PEFT
    wrapper's base model; TRL's patched `forward` closure hides it), so a model that does not take
    `cache` is never handed one it would silently ignore."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_kwarg(type(base))


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls) -> str:
    try:
        params = inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        params = {}
    return "cache" if "cache" in params else "past_key_values"
