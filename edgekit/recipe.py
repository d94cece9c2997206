"""The recipe: one validated schema for a whole run.

Every field has a default, unknown keys are rejected with the list of valid ones, and presets are
YAML files shipped in `edgekit/presets/recipes/` (or the user's
`./benchmarks/recipes/`) loaded by name (`digits`) or by path. Command-line
overrides use dotted keys (`--set distill.alpha=0.5`) and are validated exactly like the file.
"""

import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from .errors import EdgekitError
from .presets import find_preset, preset_names


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


def _registered(default: str, names: Callable[[], Sequence[str]]) -> Any:
    """A field whose choices are a registry's names, read when a recipe is built (not copied here)."""
    return field(default=default, metadata={"choices": names})


def _latency_backends() -> Sequence[str]:
    from .device.runtime.registry import latency_backends

    return latency_backends()


@dataclass
class DataConfig:
    dataset: str = _choice("digits", "digits", "imagefolder")
    root: Optional[str] = None          # imagefolder: folder holding train/ and val/
    image_size: int = 32                # side of the square input the model sees
    val_fraction: float = 0.2           # digits: share of the 1,797 images held out for val
    batch_size: int = 64                # per process: under torchrun the global batch is x world size
    workers: int = 0                    # DataLoader worker processes (imagefolder)
    prefetch_factor: int = 4            # batches each worker keeps in flight
    # imagefolder train images: tensor = torchvision.io decode + uint8 tensor crop (fastest measured;
    # torchvision 0.29 deprecates its decoders for torchcodec); draft = PIL decoding JPEGs at the
    # smallest scale the crop needs; full = PIL at full size, as torchvision's ImageNet example
    decode: str = _choice("tensor", "tensor", "draft", "full")
    max_train_samples: Optional[int] = None   # cap for quick runs and tests
    max_val_samples: Optional[int] = None
    calibration_samples: int = 256      # real training images the INT8 calibration sees


@dataclass
class OptimizerConfig:
    name: str = _choice("sgd", "sgd", "adamw")
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    schedule: str = _choice("onecycle", "onecycle", "cosine", "constant")
    warmup_fraction: float = 0.2        # onecycle: share of steps spent warming up
    label_smoothing: float = 0.0


@dataclass
class ModelConfig:
    arch: str = "resnet50"              # an architecture plugin (edgekit.host.arch; checked by `run`)
    checkpoint: Optional[str] = None    # a torchvision-layout checkpoint of that architecture (the teacher)
    num_classes: Optional[int] = None   # None: the dataset's class count


@dataclass
class TeacherConfig:
    """The teacher: trained from scratch, a checkpoint fine-tuned, or a checkpoint used as it is.

    `train`: true trains (from scratch, or fine-tunes the checkpoint); false uses the checkpoint as it
    is; null (the default) trains when there is no checkpoint or when the checkpoint's head had to be
    replaced for the data's class count, and otherwise uses the checkpoint as it is.
    `epochs`: null means the default for what is trained, `SCRATCH_EPOCHS` from scratch or
    `FINETUNE_EPOCHS` to fine-tune a checkpoint (a new head on a trained body learns in a few epochs).
    """
    SCRATCH_EPOCHS = 10
    FINETUNE_EPOCHS = 5

    train: Optional[bool] = None
    epochs: Optional[int] = None
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)

    def trains(self, from_checkpoint: bool, head_replaced: bool) -> bool:
        return self.train if self.train is not None else (not from_checkpoint or head_replaced)

    def epochs_for(self, from_checkpoint: bool) -> int:
        if self.epochs is not None:
            return self.epochs
        return self.FINETUNE_EPOCHS if from_checkpoint else self.SCRATCH_EPOCHS


@dataclass
class PruneConfig:
    # a registered channel importance (edgekit.host.compress.prune), or unstructured; checked by `run`
    # before any stage, since the registry lives with torch
    method: str = "l1"
    target_macs_ratio: float = 0.5      # student MACs / teacher MACs to reach
    rounds: int = 3                     # spiral: prune→distill rounds to reach the target
    allocation: str = _choice("global", "global", "uniform")
    round_to: int = 8                   # channel counts become multiples of this
    max_layer_ratio: float = 0.9        # never remove more than this share of one layer
    sparsity: float = 0.5               # unstructured only: share of conv weights zeroed
    target: str = _choice("macs", "macs", "latency")   # what the spiral's budget counts
    target_latency_ratio: Optional[float] = None   # latency: of the dense model's measured latency
    target_latency_ms: Optional[float] = None      # latency: an absolute budget instead of the ratio
    latency_backend: str = _registered("onnxruntime-cpu", _latency_backends)  # its precisions: checked by `run`
    latency_image_size: int = 224       # the deployment input the latency is measured at
    latency_batch: int = 1
    latency_precision: str = _choice("fp32", "fp32", "fp16", "int8")
    latency_table: Optional[str] = None  # a table JSON measured elsewhere (tensorrt: fetched from the device)
    min_channels: int = 16              # floor per prunable layer (global L1 once cut the stem 64 -> 8)


@dataclass
class DistillConfig:
    alpha: float = 0.7                  # weight of the KD term; (1-alpha) weighs the CE term
    temperature: float = 4.0
    epochs_per_round: int = 3           # recovery after each spiral round
    final_epochs: int = 4               # extra epochs after the last round
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=0.02))


@dataclass
class QuantizeConfig:
    enabled: bool = True
    # calibration method (edgekit.host.compress.quantize.calibrate; percentile = percentile-99.999);
    # best: the highest top-1 on the val split, a tie going to entropy (what TensorRT's DLA path uses)
    method: str = _choice("best", "entropy", "percentile", "percentile-99.99", "percentile-99.999", "minmax",
                          "mse", "best")
    per_channel: bool = True            # weights: one scale per output channel; false: one per tensor
    compare_methods: bool = True        # score every method's Q/DQ model on the val split (the calibrator table)
    trt_version: str = "8.5.2"          # written into calib.cache's header (Xavier: JetPack 5.1.x)
    cpu_reduce_range: bool = True       # 7-bit weights in the CPU flavour: no u8s8 saturation on AVX2 CPUs
    report_samples: int = 32            # val images for the per-layer error report


@dataclass
class FallbackConfig:
    """Per-layer precision fallback: the fewest layers kept in FP16 that bring INT8 within a budget."""
    max_drop: Optional[float] = 0.5     # top-1 points below the FP32 model on the val split; null: keep none
    samples: int = 256                  # held-out calibration images for each layer's sensitivity (KL)


@dataclass
class QatConfig:
    """QAT with distillation (QAD): the fake-quantized student fine-tuned from the teacher by the KD loss,
    from the PTQ scales and the fallback's kept layers (needs `pip install 'edgekit[qat]'`)."""
    enabled: bool = False
    epochs: int = 2                     # a short fine-tune: the weights adapt to the quantization grid
    alpha: Optional[float] = None       # KD weight; null: distill.alpha
    temperature: Optional[float] = None  # null: distill.temperature
    # learn each activation's scale from its PTQ value (LSQ); false: hold the PTQ scales, train the weights
    learn_scales: bool = True
    # a small rate, no warm-up: the quantized student starts close to where it should end
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        name="adamw", lr=1e-4, weight_decay=0.0, schedule="cosine", warmup_fraction=0.0))


@dataclass
class BenchConfig:
    """Local SingleStream measurement of every exported model, beside its accuracy."""
    min_queries: int = 50
    min_seconds: float = 1.0
    threads: Optional[int] = None       # runtime threads; None: the recipe's threads


@dataclass
class CompareConfig:
    """The side-by-side comparison at a deployment resolution (benchmarks/compare.py)."""
    enabled: bool = True
    image_size: int = 224
    batches: List[int] = field(default_factory=lambda: [1, 4, 8])
    min_queries: int = 20
    min_seconds: float = 2.0
    calibration_samples: int = 32       # real samples, resized to image_size, for the dense INT8 model


@dataclass
class TrainConfig:
    """Where and how every host stage that runs a model runs (teacher, spiral, evaluation).

    Batch semantics under torchrun: `data.batch_size` is per process, so the global batch is
    batch_size x world_size. With `lr_scaling: linear` (Goyal et al., 2017) the optimizers' `lr`
    is the rate for one process's batch and is multiplied by world_size; `none` uses it as given.
    A single process is unaffected by either.
    """
    device: str = _choice("auto", "auto", "cpu", "cuda")     # auto: CUDA when one is visible
    precision: str = _choice("fp32", "bf16", "fp16", "fp32")  # autocast dtype; fp16 adds a GradScaler
    channels_last: Optional[bool] = None  # None: true on CUDA, false on the CPU
    compile: bool = False               # torch.compile the training step's models
    log_every: int = 50                 # steps between reads of the loss (the only host syncs)
    lr_scaling: str = _choice("linear", "linear", "none")


@dataclass
class Recipe:
    # Names the artifacts folder, the results and every message; unset: the dataset's name (digits), or
    # for an image folder the data root's own folder name, so a user's data is never called "imagenet".
    name: Optional[str] = None
    seed: int = 0
    threads: Optional[int] = None       # torch intra-op threads; None: all cores
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    fallback: FallbackConfig = field(default_factory=FallbackConfig)
    qat: QatConfig = field(default_factory=QatConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.name is None:
            self.name = default_name(self.data)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "Recipe":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise EdgekitError("recipe: " + msg)

        # The floor of data.image_size is the architecture's own, checked when `run` knows it.
        need(bool(NAME_PATTERN.match(self.name or "")), "name {!r} must be letters, digits, '.', '_' or '-' (it "
             "names the artifacts folder and the result files)".format(self.name))
        need(0.0 < self.data.val_fraction < 1.0, "data.val_fraction must be between 0 and 1")
        need(self.data.batch_size >= 2, "data.batch_size must be at least 2 (BatchNorm needs it)")
        need(0.0 < self.prune.target_macs_ratio <= 1.0, "prune.target_macs_ratio must be in (0, 1]")
        need(self.prune.rounds >= 1, "prune.rounds must be at least 1")
        need(self.prune.round_to >= 1, "prune.round_to must be at least 1")
        need(0.0 < self.prune.max_layer_ratio < 1.0, "prune.max_layer_ratio must be in (0, 1)")
        need(0.0 <= self.prune.sparsity < 1.0, "prune.sparsity must be in [0, 1)")
        need(self.prune.min_channels >= 1, "prune.min_channels must be at least 1")
        need(self.prune.latency_image_size >= 32, "prune.latency_image_size must be at least 32")
        need(self.prune.latency_batch >= 1, "prune.latency_batch must be at least 1")
        if self.prune.target == "latency":
            ratio, ms = self.prune.target_latency_ratio, self.prune.target_latency_ms
            need((ratio is None) != (ms is None),
                 "prune.target latency needs exactly one of prune.target_latency_ratio or prune.target_latency_ms")
            need(ratio is None or 0.0 < ratio <= 1.0, "prune.target_latency_ratio must be in (0, 1]")
            need(ms is None or ms > 0.0, "prune.target_latency_ms must be positive")
            need(self.prune.method != "unstructured",
                 "prune.target latency needs a structured method (unstructured sparsity keeps every channel)")
        need(0.0 <= self.distill.alpha <= 1.0, "distill.alpha must be in [0, 1]")
        need(self.distill.temperature > 0, "distill.temperature must be positive")
        need(self.teacher.train is False or self.teacher.epochs is None or self.teacher.epochs >= 1,
             "teacher.epochs must be at least 1 when the teacher trains ({}); leave it unset for the default, "
             "or set teacher.train: false to use the checkpoint as it is".format(self.teacher.epochs))
        need(self.train.log_every >= 1, "train.log_every must be at least 1")
        need(self.data.prefetch_factor >= 1, "data.prefetch_factor must be at least 1")
        need(self.data.calibration_samples >= 1, "data.calibration_samples must be at least 1")
        need(self.quantize.method != "best" or self.quantize.compare_methods,
             "quantize.method best needs quantize.compare_methods: true (it picks the highest top-1)")
        need(self.fallback.max_drop is None or self.fallback.max_drop >= 0,
             "fallback.max_drop must be at least 0 (top-1 points), or null for no fallback")
        need(self.fallback.samples >= 1, "fallback.samples must be at least 1")
        need(not self.qat.enabled or self.quantize.enabled,
             "qat.enabled needs quantize.enabled: QAT starts from the PTQ scales")
        need(self.qat.epochs >= 1, "qat.epochs must be at least 1")
        need(self.qat.alpha is None or 0.0 <= self.qat.alpha <= 1.0, "qat.alpha must be in [0, 1]")
        need(self.qat.temperature is None or self.qat.temperature > 0, "qat.temperature must be positive")
        need(self.compare.image_size >= 32, "compare.image_size must be at least 32")
        need(bool(self.compare.batches) and all(b >= 1 for b in self.compare.batches),
             "compare.batches must be a non-empty list of positive batch sizes")
        for name, opt in (("teacher", self.teacher.optimizer), ("distill", self.distill.optimizer),
                          ("qat", self.qat.optimizer)):
            need(opt.lr > 0, name + ".optimizer.lr must be positive")
        if self.data.dataset == "imagefolder":
            need(self.data.root is not None,
                 "data.root is required for dataset imagefolder (a folder with train/ and val/)")
            need(self.model.checkpoint is not None or self.teacher.train is not False,
                 "model.checkpoint is required when teacher.train is false")
        return self


NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def default_name(data: DataConfig) -> str:
    """digits, or the image folder's own name (/data/flowers -> flowers), made safe for file names."""
    if data.dataset != "imagefolder" or not data.root:
        return data.dataset
    folder = os.path.basename(os.path.normpath(data.root))
    return re.sub(r"[^A-Za-z0-9._-]", "-", folder).lstrip(".-_") or data.dataset


def default_out_dir(recipe: Recipe, out: Optional[str]) -> str:
    """--out, else artifacts/<recipe name> (torch-free, so the CLI checks arguments before any import)."""
    return out or os.path.join("artifacts", str(recipe.name))


def check_inputs(recipe: Recipe) -> None:
    """Files the recipe names that must already exist: refused before the data scan or any device work."""
    checkpoint = recipe.model.checkpoint
    if checkpoint and not os.path.exists(checkpoint):
        raise EdgekitError("model.checkpoint {} does not exist: give the path of a torchvision ResNet-50 "
                           "state_dict (--set model.checkpoint=PATH)".format(checkpoint))
    if checkpoint and not os.path.isfile(checkpoint):
        raise EdgekitError("model.checkpoint {} is not a file: give the path of a torchvision ResNet-50 "
                           "state_dict".format(checkpoint))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp) if hasattr(typing, "get_origin") else getattr(tp, "__origin__", None)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if origin in (list, List):
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise EdgekitError("recipe: {} must be a list, got {!r}".format(where, value))
        return [_convert(v, item, "{}[{}]".format(where, i)) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise EdgekitError("recipe: {} must be a mapping, got {!r}".format(where, value))
        return _build(tp, value, where + ".")
    if tp in (int, float) and isinstance(value, bool):
        raise EdgekitError("recipe: {} must be a number ({}), but its value was read as the boolean {} (YAML reads "
                           "yes/on/true as true and no/off/false as false): give a number".format(
                               where, _type_name(tp), str(value).lower()))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise EdgekitError("recipe: {} must be {}, got {!r}".format(where, _type_name(tp), value))


def _build(cls: Any, data: Dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise EdgekitError("recipe: unknown key {!r}; valid keys{}: {}".format(
            prefix + unknown[0], " under " + prefix.rstrip(".") if prefix else "",
            ", ".join(sorted(fields))))
    kwargs = {}
    for name, value in data.items():
        where = prefix + name
        converted = _convert(value, hints[name], where)
        choices = fields[name].metadata.get("choices")
        choices = choices() if callable(choices) else choices
        if choices and converted not in choices:
            raise EdgekitError("recipe: {} must be one of {}, got {!r}".format(
                where, ", ".join(map(str, choices)), converted))
        kwargs[name] = converted
    return cls(**kwargs)  # the dataclass fills in the defaults (and a derived one, such as Recipe.name)


def recipe_from_dict(data: Dict[str, Any]) -> Recipe:
    if not isinstance(data, dict):
        raise EdgekitError("recipe: the top level must be a mapping of keys to values")
    return _build(Recipe, data).validate()


def resolve_recipe_path(name_or_path: str) -> str:
    path = find_preset("recipe", name_or_path)
    if path is None:
        raise EdgekitError("recipe {!r} not found; give a YAML path or one of the presets: {}".format(
            name_or_path, ", ".join(preset_names("recipe")) or "(none)"))
    return path


def parse_override(text: str) -> List[Any]:
    """`a.b=value` -> (['a', 'b'], parsed YAML value)."""
    if "=" not in text:
        raise EdgekitError("--set expects key=value (for example distill.alpha=0.5), got {!r}".format(text))
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return [key.strip().split("."), value]


def read_yaml_mapping(path: str, kind: str) -> Dict[str, Any]:
    """A YAML file whose top level is a mapping (recipes, targets), or one clear EdgekitError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " at line {}".format(mark.line + 1) if mark is not None else ""
        raise EdgekitError("{} {} is not valid YAML{}: {}".format(
            kind, path, where, getattr(exc, "problem", exc))) from None
    except OSError as exc:
        raise EdgekitError("cannot read {} {}: {}".format(kind, path, exc.strerror)) from None
    if not isinstance(data, dict):
        raise EdgekitError("{} {}: the top level must be a mapping of keys to values".format(kind, path))
    return data


def load_recipe(name_or_path: str, overrides: Optional[List[str]] = None) -> Recipe:
    data = read_yaml_mapping(resolve_recipe_path(name_or_path), "recipe")
    for text in overrides or []:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return recipe_from_dict(data)
