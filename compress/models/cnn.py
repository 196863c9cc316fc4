"""cnn_s: a plain VGG-style CNN (conv-BN-ReLU stages with max pooling)."""
from torch import nn

from . import MODELS


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


@MODELS.register("cnn_s")
def cnn_s(in_channels: int = 1, num_classes: int = 10, channels: list[int] = (32, 64, 128)) -> nn.Module:
    """One conv-BN-ReLU per stage, 2x2 max pooling between stages, global average pooling, linear classifier."""
    layers, cin = [], in_channels
    for i, cout in enumerate(channels):
        layers.append(conv_bn_relu(cin, cout))
        if i < len(channels) - 1:
            layers.append(nn.MaxPool2d(2))
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes))
