"""What edgekit needs of a model family: the class an architecture plugin subclasses, in one file.

A plugin says how the dense model is built and which module is the classifier; everything else has a
default that fits any torchvision-style classifier that Torch-Pruning can trace:

- checkpoints in torchvision's layout load through `load_checkpoint` (the head is replaced for
  another class count);
- the prunable channel groups come from Torch-Pruning's DependencyGraph, traced on the model itself;
  `ignored_layers` names what must keep its channels (the classifier);
- the pruned shape is saved as a width spec keyed by module name (`edgekit.widthspec`) and rebuilt by
  the one generic rebuild (`edgekit.host.arch.widths`);
- `check` may prove invariants of the family beyond what the rebuild's forward pass proves;
- its latency table's layer kinds come from the model itself (`latency_layers`, traced by
  `edgekit.host.arch.latency`): set `latency_target = True` once that description covers its ops.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn


class Architecture(object):
    """One model family. Subclass it, set the attributes, implement `build`; register the instance
    as an entry point in the group `edgekit.architectures` (or as a built-in)."""

    name = ""             # model.arch in a recipe; "arch" in student files and width specs
    title = ""            # how messages name it ("ResNet-50")
    head = ""             # module name of the classifier (an nn.Linear whose outputs are the classes)
    downsampling = 32     # input side / side of the last feature map
    min_image_size = 32   # the smallest data.image_size it accepts
    latency_target = False  # prune.target: latency: True once `latency_layers` describes every op it runs

    def build(self, num_classes: int) -> nn.Module:
        """The dense model, randomly initialised as a teacher trained from scratch starts (weights are
        never downloaded)."""
        raise NotImplementedError

    def ignored_layers(self, model: nn.Module) -> List[nn.Module]:
        """Modules whose output channels pruning must keep: the classifier's outputs are the classes."""
        return [self.classifier(model)]

    def adapt_state_dict(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """A torchvision-layout state_dict as `build`'s model names its keys (the identity here)."""
        return state

    def check(self, model: nn.Module) -> None:
        """Raise ValueError if a (pruned) model breaks an invariant of the family; the default has none."""

    # ---- what every plugin inherits

    def classifier(self, model: nn.Module) -> nn.Linear:
        head = model.get_submodule(self.head)
        if not isinstance(head, nn.Linear):
            raise TypeError("{}: {} is a {}, not the nn.Linear classifier".format(self.name, self.head,
                                                                                   type(head).__name__))
        return head

    def num_classes(self, model: nn.Module) -> int:
        return self.classifier(model).out_features

    def width_spec(self, model: nn.Module) -> Dict[str, Any]:
        from .widths import width_spec_of

        self.check(model)
        return width_spec_of(model, self.name)

    def from_width_spec(self, spec: Dict[str, Any], num_classes: int) -> nn.Module:
        from .widths import from_width_spec

        return from_width_spec(self, spec, num_classes)

    def latency_layers(self, model: nn.Module, image_size: int) -> Any:
        """The torch-free description (edgekit.device.latency.net.Net) its latency table is measured from."""
        from .latency import describe_layers

        return describe_layers(self, model, image_size)

    def load_checkpoint(self, path: str, num_classes: Optional[int] = None,
                        log: Callable[[str], None] = print) -> Tuple[nn.Module, Dict[str, Any]]:
        from .checkpoint import load_checkpoint

        return load_checkpoint(self, path, num_classes, log)

    def __repr__(self) -> str:
        return "<architecture {} ({})>".format(self.name, type(self).__module__)
