"""Clean and adversarial accuracy: white-box on PyTorch, replayed and attacked on the engine.

For each model (e.g. "original" and "gdws"):

1. clean accuracy of the PyTorch model (in eval mode, batched);
2. each white-box attack (PGD / FGSM, `AttackConfig`) on the PyTorch model: robust accuracy;
3. with an engine for the model: clean accuracy on the engine, and the same adversarial
   inputs replayed through it (a transfer check: the engine should keep what PyTorch
   measured; `transfer_gap_points` says by how much it does not);
4. with `square`: the query-only Square Attack (L-inf) run through the engine itself (on the
   PyTorch model when there is no engine);
5. the headline, `worst_case_accuracy`: per image, right clean and under every attack on
   every target above, so an image counts as robust only if every attack fails.

For an INT8 engine, pass its fake-quantized twin (`runtimes.fake_quant.twin_of_engine`) as the
PyTorch model: the white-box attacks then run on what the engine computes, and their replay
measures the engine, not transfer from the float model (`quantized.quantized_robustness`).

As in RobustBench, a sample counts as robust when it is classified correctly both clean and
under attack, so robust accuracy never exceeds clean accuracy; an attack with eps = 0 gives
the clean accuracy. Attack runs are seeded (`AttackConfig.seed`, `SquareConfig.seed`) and
reproduce exactly for the same data, batch size and seeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from gdws_export._progress import tick
from gdws_export.attacks import AttackConfig, run_attack, square_attack
from gdws_export.errors import InvalidInputError
from gdws_export.harness.accuracy_report import (
    TRANSFER_TOLERANCE_POINTS,
    AccuracyReport,
    AttackResult,
    ModelAccuracy,
    SquareConfig,
)
from gdws_export.harness.speed import describe_runner
from gdws_export.runtimes.base import Runner, image_input

DEFAULT_BATCH_SIZE = 64  # fits TensorRT's default optimization profile (max batch 64)


def evaluate_accuracy(
    models: Mapping[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attacks: Sequence[AttackConfig] = (AttackConfig(),),
    engines: Mapping[str, Runner] | None = None,
    square: SquareConfig | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    data: str = "",
) -> AccuracyReport:
    """Clean and adversarial accuracy of PyTorch models and of their engines.

    Args:
        models: name -> PyTorch model taking [0, 1] images; evaluated in eval mode (each
            model's train/eval flags are restored afterwards). A `torch.export` program
            (`ExportedProgram`, e.g. a loaded `gdws.pt2`) is run as its `.module()`, in the
            mode it was exported in.
        x: images, float (N, C, H, W) in [0, 1] (from `load_dataset`).
        y: int64 labels (N,).
        attacks: white-box attacks run on each PyTorch model (AttackConfig("none") for clean
            only, or an empty sequence).
        engines: name -> Runner of the same model exported (names as in `models`); they are
            activated here. Each gets a clean pass and a replay of every white-box attack.
        square: run the Square Attack through each engine (or model without one).
        batch_size: samples per attack / inference batch (engines with a fixed batch size use
            theirs).
        data: a description of the data for the report (e.g. the dataset file).

    Returns:
        An AccuracyReport.

    Example:
        >>> report = evaluate_accuracy({"gdws": gdws_model}, x, y,
        ...     attacks=[AttackConfig("pgd", eps=0.1, steps=20)],
        ...     engines={"gdws": OrtRunner("gdws.onnx")})  # doctest: +SKIP
    """
    engines = dict(engines or {})
    if isinstance(models, Mapping):
        models = {name: as_module(model) for name, model in models.items()}
    _check_arguments(models, x, y, attacks, engines, batch_size)
    report = AccuracyReport(data=data, samples=int(x.shape[0]), batch_size=batch_size)
    with contextlib.ExitStack() as stack:
        for name, engine in engines.items():
            stack.enter_context(engine)
            check_engine_input(engine, tuple(x.shape[1:]), name)
        for name, model in models.items():
            stack.enter_context(_eval_mode(model))
            report.models.append(
                _evaluate_model(name, model, engines.get(name), x, y, attacks, square, batch_size)
            )
    return report


def predict_batched(runner: Runner, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of an active runner for all of x, in batches; a fixed batch size is padded."""
    (spec,) = runner.inputs()
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) and spec.shape[0] > 0 else None
    step = fixed or batch_size
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start : start + step]
        count = len(chunk)
        if fixed is not None and count < fixed:  # pad with copies of the last image
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - count, axis=0)])
        outputs.append(np.asarray(runner.predict(chunk), dtype=np.float32)[:count])
    return np.concatenate(outputs)


def attack_batched(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: AttackConfig, batch_size: int
) -> torch.Tensor:
    """Adversarial images for all of x, as `evaluate_accuracy` makes them.

    Images the model already gets wrong stay as they are: robust means right both clean and
    under attack, so attacking them changes no count, and an attack's time goes with the
    images it attacks (a robust Fashion-MNIST model gets about one in six wrong). The others
    are attacked `batch_size` at a time, each batch drawing its own random start from the
    attack's seed: the same model, images and batch size give the same adversarial images."""
    right = (predict_torch(model, x, batch_size).argmax(1) == y).nonzero().squeeze(1)
    x_adv = x.clone()
    for start in range(0, len(right), batch_size):
        index = right[start : start + batch_size]
        x_adv[index] = run_attack(model, x[index], y[index], config)
        tick(len(index))
    return x_adv


def check_engine_input(runner: Runner, image_shape: tuple[int, ...], name: str) -> None:
    """Raise InvalidInputError unless an active runner takes images of `image_shape`."""
    dims = image_input(runner, f"engine {name!r}").shape
    if len(dims) != len(image_shape) + 1 or any(
        isinstance(d, int) and d > 0 and d != s for d, s in zip(dims[1:], image_shape, strict=True)
    ):
        raise InvalidInputError(
            f"engine {name!r} takes inputs {tuple(dims)} but the data are images "
            f"{tuple(image_shape)}; export the model for this data's shape"
        )


def _evaluate_model(
    name: str,
    model: nn.Module,
    engine: Runner | None,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[AttackConfig],
    square: SquareConfig | None,
    batch_size: int,
) -> ModelAccuracy:
    clean_pred = predict_torch(model, x, batch_size)
    _check_classes(clean_pred, y, f"model {name!r}")
    clean = clean_pred.argmax(1) == y
    result = ModelAccuracy(name=name, samples=len(y), clean_accuracy=_mean(clean))
    engine_clean = None
    robust = []  # per image and attack target: right clean and under attack
    if engine is not None:
        engine_logits = torch.from_numpy(predict_batched(engine, x.numpy(), batch_size))
        _check_classes(engine_logits, y, f"engine {name!r}")
        engine_clean = engine_logits.argmax(1) == y
        result.engine_clean_accuracy = _mean(engine_clean)
        result.engine = describe_runner(engine)
    for config in attacks:
        x_adv = attack_batched(model, x, y, config, batch_size)
        adv_pred = predict_torch(model, x_adv, batch_size).argmax(1)
        robust.append(clean & (adv_pred == y))
        attack = AttackResult(
            attack=config.name,
            description=config.describe(),
            norm=config.norm,
            eps=config.eps,
            steps=config.steps if config.name == "pgd" else (1 if config.name == "fgsm" else 0),
            samples=len(y),
            target="pytorch",
            robust_accuracy=_mean(robust[-1]),
            max_perturbation=_max_distance(x_adv, x, config.norm),
            config=config.to_dict(),
        )
        if engine is not None:
            engine_pred = torch.from_numpy(predict_batched(engine, x_adv.numpy(), batch_size))
            engine_pred = engine_pred.argmax(1)
            robust.append(engine_clean & (engine_pred == y))
            attack.engine_accuracy = _mean(robust[-1])
            attack.transfer_gap_points = 100 * (attack.engine_accuracy - attack.robust_accuracy)
            attack.agreement = _mean(engine_pred == adv_pred)
        result.attacks.append(attack)
    if square is not None:
        attack, held = _square(model, engine, x, y, clean, engine_clean, square, batch_size)
        result.attacks.append(attack)
        robust.append(held)
    if robust:
        result.worst_case_accuracy = _mean(torch.stack(robust).all(dim=0))
    return result


def _square(
    model: nn.Module,
    engine: Runner | None,
    x: torch.Tensor,
    y: torch.Tensor,
    clean: torch.Tensor,
    engine_clean: torch.Tensor | None,
    config: SquareConfig,
    batch_size: int,
) -> tuple[AttackResult, torch.Tensor]:
    """The Square result and, per image, whether the image held (right clean and attacked)."""
    generator = torch.Generator().manual_seed(config.seed)
    settings = dict(eps=config.eps, queries=config.queries, p_init=config.p_init,
                    generator=generator, rescale_schedule=config.rescale_schedule)  # fmt: skip
    if engine is not None:

        def predict(batch: np.ndarray) -> np.ndarray:
            return predict_batched(engine, batch, batch_size)

        x_adv, used = square_attack(predict, x.numpy(), y.numpy(), **settings)
        x_adv, used = torch.from_numpy(x_adv), torch.from_numpy(used)
        adv_pred = torch.from_numpy(predict(x_adv.numpy())).argmax(1)
        correct_clean, target = engine_clean, "engine"
    else:

        def predict(batch: torch.Tensor) -> torch.Tensor:
            return predict_torch(model, batch, batch_size)

        x_adv, used = square_attack(predict, x, y, **settings)
        adv_pred = predict(x_adv).argmax(1)
        correct_clean, target = clean, "pytorch"
    robust = correct_clean & (adv_pred == y)
    result = AttackResult(
        attack="square",
        description=config.describe(),
        norm="linf",
        eps=config.eps,
        steps=config.queries,
        samples=len(y),
        target=target,
        robust_accuracy=_mean(robust),
        max_perturbation=_max_distance(x_adv, x, "linf"),
        config=config.to_dict(),
        mean_queries=float(used.double().mean()),
    )
    return result, robust


def predict_torch(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of a PyTorch model for all of x, `batch_size` images at a time, no autograd."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _check_classes(logits: torch.Tensor, y: torch.Tensor, where: str) -> None:
    if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
        raise InvalidInputError(
            f"{where} returned shape {tuple(logits.shape)}; expected logits ({len(y)}, classes)"
        )
    classes = logits.shape[1]
    if int(y.max()) >= classes:
        raise InvalidInputError(
            f"labels must lie in [0, {classes - 1}] for {where} with {classes} outputs, got "
            f"labels up to {int(y.max())}; check the dataset matches the model"
        )


def _max_distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> float:
    delta = (x_adv - x).flatten(1)
    sizes = delta.abs().amax(dim=1) if norm == "linf" else delta.norm(dim=1)
    return float(sizes.max())


def _mean(flags: torch.Tensor) -> float:
    return float(flags.float().mean())


def as_module(model: object) -> object:
    """A `torch.export` program's runnable module (`.module()`); anything else as it is."""
    if isinstance(model, torch.export.ExportedProgram):
        return model.module()
    return model


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the evaluation; each submodule's own flag is restored afterwards.

    The module of a torch.export program refuses `.eval()`: its graph is fixed in the mode
    it was exported in (eval, for the programs gdws-export writes), so it runs as it is, its
    flags set to say so (the attacks warn about a model in training mode).
    """
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
    except NotImplementedError:  # torch.export's module: "Calling eval() is not supported"
        for module, _ in modes:
            module.training = False
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _check_arguments(models, x, y, attacks, engines, batch_size) -> None:
    where = "evaluate_accuracy"
    if not isinstance(models, Mapping) or not models:
        raise InvalidInputError(f"{where}: models must be a non-empty dict of name -> nn.Module")
    for name, model in models.items():
        if not isinstance(model, nn.Module):
            raise InvalidInputError(
                f"{where}: model {name!r} is a {type(model).__name__}, not an nn.Module"
            )
    unknown = sorted(set(engines) - set(models))
    if unknown:
        raise InvalidInputError(
            f"{where}: engines {unknown} have no PyTorch model of the same name in {list(models)}"
        )
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise InvalidInputError(f"{where}: x and y must be torch tensors (see load_dataset)")
    if x.dim() != 4 or x.shape[0] == 0:
        raise InvalidInputError(
            f"{where}: the dataset is empty or not (N, C, H, W) images: shape {tuple(x.shape)}"
        )
    if y.shape != (x.shape[0],) or y.is_floating_point():
        raise InvalidInputError(
            f"{where}: y must hold {x.shape[0]} integer labels, got {y.dtype} {tuple(y.shape)}"
        )
    if int(y.min()) < 0:
        raise InvalidInputError(f"{where}: labels must be >= 0, got {int(y.min())}")
    if not x.is_floating_point() or float(x.min()) < 0 or float(x.max()) > 1:
        raise InvalidInputError(f"{where}: images must be float in [0, 1] (see load_dataset)")
    for config in attacks:
        if not isinstance(config, AttackConfig):
            raise InvalidInputError(
                f"{where}: attacks must be AttackConfig objects, got {type(config).__name__}"
            )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"{where}: batch_size must be an integer >= 1, got {batch_size!r}")


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "TRANSFER_TOLERANCE_POINTS",
    "AccuracyReport",
    "AttackResult",
    "ModelAccuracy",
    "SquareConfig",
    "attack_batched",
    "check_engine_input",
    "evaluate_accuracy",
    "predict_batched",
    "predict_torch",
]
