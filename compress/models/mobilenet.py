"""mobilenet_s: MobileNetV2-style inverted residual blocks (expand 1x1, depthwise 3x3, linear 1x1 projection)."""
from torch import nn

from . import MODELS
from .cnn import conv_bn_relu

# (expansion, output channels, repeats, first stride) per stage, sized for 28x28-32x32 inputs
DEFAULT_BLOCKS = [[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2], [4, 64, 2, 1]]


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn_relu(cin, hidden, kernel=1)] if expansion != 1 else []
        layers += [conv_bn_relu(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


@MODELS.register("mobilenet_s")
def mobilenet_s(in_channels: int = 1, num_classes: int = 10, stem: int = 16, blocks: list[list[int]] = DEFAULT_BLOCKS,
                head: int = 128) -> nn.Module:
    """A 3x3 stem, inverted residual stages from `blocks`, a 1x1 head conv, global pooling and a classifier."""
    layers, cin = [conv_bn_relu(in_channels, stem)], stem
    for expansion, cout, repeats, stride in blocks:
        for i in range(repeats):
            layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
            cin = cout
    layers += [conv_bn_relu(cin, head, kernel=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, num_classes)]
    return nn.Sequential(*layers)
