"""resnet_s: a small CIFAR-style ResNet of basic blocks."""
from torch import nn

from . import MODELS
from .cnn import conv_bn_relu


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, stride=stride)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNetS(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths, depths):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, widths[0])
        blocks, cin = [], widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for i in range(depth):
                blocks.append(BasicBlock(cin, width, stride=2 if stage > 0 and i == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.stem(x))))


@MODELS.register("resnet_s")
def resnet_s(in_channels: int = 1, num_classes: int = 10, widths: list[int] = (16, 32, 64), depths: list[int] = (2, 2, 2)) -> nn.Module:
    """ResNet with a 3x3 stem and one stage per width; each later stage halves the resolution."""
    if len(widths) != len(depths):
        raise TypeError(f"widths {list(widths)} and depths {list(depths)} must have the same length")
    return ResNetS(in_channels, num_classes, widths, depths)
