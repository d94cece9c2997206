"""What a training step minimises: cross-entropy, logit distillation, feature distillation.

    kd = (1 - alpha) * CE(y, s) + alpha * T² * KL(softmax(t / T) || softmax(s / T))

The T² factor keeps the gradient scale of the soft term independent of T (Hinton et al., 2015).
A loss is called inside the step's autocast, so a teacher's forward runs in the same precision as the
student's, under inference_mode (no graph is kept for it).

The protocol (`Loss`), which the `Trainer` drives:
    attach(run)                     once, before the first step: place a teacher, register hooks
    __call__(logits, images, labels) -> the scalar to minimise
    detach()                        once, after the last step and on the way out of a failure
    modules()                       the loss's own trainable modules (feature adapters): optimised with
                                    the model, kept in the checkpoint, averaged over ranks under DDP
    config()                        JSON-able settings, part of the checkpoint's key
"""

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # pragma: no cover
    from .run import Run


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: Optional[torch.Tensor],
    labels: torch.Tensor,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """(1-alpha)·CE(y, s) + alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch."""
    ce = F.cross_entropy(student_logits, labels)
    if teacher_logits is None or alpha == 0.0:
        return ce
    t = float(temperature)
    kl = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1.0 - alpha) * ce + alpha * t * t * kl


class Loss:
    """The base of every loss: no teacher, no hooks, nothing of its own to train."""

    name = "loss"

    def attach(self, run: "Run") -> None:
        pass

    def detach(self) -> None:
        pass

    def modules(self) -> Optional[nn.Module]:
        return None

    def config(self) -> Dict[str, Any]:
        return {"name": self.name}

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CrossEntropy(Loss):
    name = "ce"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = float(label_smoothing)

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "label_smoothing": self.label_smoothing}

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)


class Teacher:
    """A frozen model on the run's device and layout for the run's length, then back where it was."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._forward: Optional[nn.Module] = None
        self._home: Optional[torch.device] = None

    def attach(self, run: "Run") -> None:
        self._home = next(self.model.parameters()).device
        self.model.eval()
        run.place(self.model)
        self._forward = torch.compile(self.model) if run.cfg.compile else self.model  # type: ignore[assignment]

    def detach(self) -> None:
        if self._home is not None:
            self.model.to(self._home)
            self.model.to(memory_format=torch.contiguous_format)
        self._forward, self._home = None, None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert self._forward is not None, "the teacher is used before the run attached it"
        with torch.inference_mode():
            return self._forward(images)


class LogitKD(Loss):
    """`kd_loss` against a teacher's logits; alpha 0 is plain cross-entropy (and skips the teacher)."""

    name = "logit_kd"

    def __init__(self, teacher: nn.Module, alpha: float, temperature: float) -> None:
        self.teacher = Teacher(teacher)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def attach(self, run: "Run") -> None:
        self.teacher.attach(run)

    def detach(self) -> None:
        self.teacher.detach()

    def config(self) -> Dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "temperature": self.temperature}

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0.0:
            return kd_loss(logits, None, labels, self.alpha, self.temperature)
        # An inference tensor cannot be saved for backward; its clone can.
        return kd_loss(logits, self.teacher(images).clone(), labels, self.alpha, self.temperature)


class _Outputs:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: List[str]) -> None:
        self.found: Dict[str, torch.Tensor] = {}
        self._handles = [model.get_submodule(name).register_forward_hook(self._keeper(name)) for name in names]

    def _keeper(self, name: str) -> Any:
        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self.found[name] = output

        return keep

    def take(self) -> Dict[str, torch.Tensor]:
        found, self.found = self.found, {}
        return found

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.found = [], {}


def _adapter(student: torch.Tensor, teacher: torch.Tensor) -> nn.Module:
    """Identity where the widths agree; else a learned 1x1 projection from the student's width to the teacher's."""
    if student.shape[1:] == teacher.shape[1:]:
        return nn.Identity()
    if student.dim() != teacher.dim() or student.shape[2:] != teacher.shape[2:]:
        raise ValueError(
            "feature KD pairs outputs of the same spatial size; got {} and {}".format(
                tuple(student.shape[1:]), tuple(teacher.shape[1:])
            )
        )
    if student.dim() == 4:
        return nn.Conv2d(student.shape[1], teacher.shape[1], kernel_size=1, bias=False)
    return nn.Linear(student.shape[1], teacher.shape[1], bias=False)


class FeatureKD(Loss):
    """`kd_loss` plus `weight` x the mean over `pairs` of MSE(adapter(student output), teacher output).

    `pairs` maps a student module's name to a teacher module's (`dict(model.named_modules())` names,
    e.g. {"layer3": "layer3"}); forward hooks catch their outputs on each step, and an adapter (a 1x1
    convolution, or a linear map on flat features) projects a student output whose width differs.
    The adapters are sized on `attach` by one forward of both models on a zero batch, in eval mode.
    """

    name = "feature_kd"

    def __init__(
        self,
        teacher: nn.Module,
        pairs: Mapping[str, str],
        *,
        weight: float = 1.0,
        alpha: float = 0.0,
        temperature: float = 1.0,
    ) -> None:
        if not pairs:
            raise ValueError("feature KD needs at least one (student module, teacher module) pair")
        self.teacher = Teacher(teacher)
        self.pairs = dict(pairs)
        self.weight, self.alpha, self.temperature = float(weight), float(alpha), float(temperature)
        self.adapters = nn.ModuleDict()
        self._student: Optional[_Outputs] = None
        self._taught: Optional[_Outputs] = None

    def config(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "pairs": self.pairs,
            "weight": self.weight,
            "alpha": self.alpha,
            "temperature": self.temperature,
        }

    def modules(self) -> nn.Module:
        return self.adapters

    def attach(self, run: "Run") -> None:
        self.teacher.attach(run)
        self._student = _Outputs(run.model, list(self.pairs))
        self._taught = _Outputs(self.teacher.model, list(self.pairs.values()))
        if not len(self.adapters):
            self._build_adapters(run)
        run.place(self.adapters)

    def _build_adapters(self, run: "Run") -> None:
        assert self._student is not None and self._taught is not None
        size = run.data.image_size
        probe = torch.zeros(2, 3, size, size, device=run.placement.device).to(memory_format=run.placement.memory_format)
        was_training = run.model.training
        run.model.eval()
        with torch.no_grad():
            run.model(probe)
            self.teacher(probe)
        run.model.train(was_training)
        student, teacher = self._student.take(), self._taught.take()
        for s_name, t_name in self.pairs.items():
            self.adapters[_key(s_name)] = _adapter(student[s_name], teacher[t_name])

    def detach(self) -> None:
        for outputs in (self._student, self._taught):
            if outputs is not None:
                outputs.remove()
        self._student = self._taught = None
        self.adapters.to("cpu")
        self.teacher.detach()

    def feature_loss(self) -> torch.Tensor:
        """The mean MSE over pairs of the last forward of both models (read once: it clears them)."""
        assert self._student is not None and self._taught is not None
        student, teacher = self._student.take(), self._taught.take()
        terms = [F.mse_loss(self.adapters[_key(s)](student[s]), teacher[t].clone()) for s, t in self.pairs.items()]
        return torch.stack(terms).mean()

    def __call__(self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        teacher_logits = self.teacher(images).clone()
        return kd_loss(logits, teacher_logits, labels, self.alpha, self.temperature) + self.weight * self.feature_loss()


def _key(module_name: str) -> str:
    return module_name.replace(".", "__")  # ModuleDict keys may not hold dots
