"""Where the RLModule is inside what ``simulate`` / ``tune`` / ``Algorithm.save`` wrote, and loading it."""

from __future__ import annotations

from pathlib import Path

MODULE_SUFFIXES = ("", "learner_group/learner/rl_module/default_policy", "rl_module/default_policy", "default_policy")


def find_module_checkpoint(path: str | Path) -> Path:
    """The RLModule checkpoint directory inside what ``recbandits simulate`` wrote (or the path itself)."""
    root = Path(path).expanduser().resolve()  # relative to the working directory (RLlib needs it absolute)
    if not root.exists():
        raise ValueError(f"checkpoint {root} does not exist")
    for base in (root, root / "checkpoint"):
        for suffix in MODULE_SUFFIXES:
            candidate = base / suffix if suffix else base
            if (candidate / "module_state.pkl").is_file() and (candidate / "class_and_ctor_args.pkl").is_file():
                if (candidate / "default_policy").is_dir():
                    continue  # a MultiRLModule: its default_policy is the module
                return candidate
    raise ValueError(
        f"no RLModule checkpoint under {root}: expected `recbandits simulate --out DIR` output (DIR or "
        "DIR/checkpoint) or a module checkpoint (module_state.pkl, class_and_ctor_args.pkl)"
    )


def load_module(path: str | Path):
    """The RLModule (recbandits' linear module or a TF-Agents-backed one) of a checkpoint."""
    from ray.rllib.core.rl_module.rl_module import RLModule

    import recbandits.algos  # noqa: F401  (the environment TF-Agents modules need, before RLlib builds one)

    return RLModule.from_checkpoint(str(find_module_checkpoint(path)))


def load_linear_module(path: str | Path, use: str):
    """The ``LinearBanditModule`` of a checkpoint; a one-line ValueError naming ``use`` when it holds another."""
    from recbandits.algos.module import LinearBanditModule

    module = load_module(path)
    if not isinstance(module, LinearBanditModule):
        raise ValueError(f"checkpoint {path} holds a {type(module).__name__}, not a LinearBanditModule: {use} takes "
                         "recbandits' linear policies")
    return module
