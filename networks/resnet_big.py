"""2D ResNet trunks (CIFAR or ImageNet stem, any width) and the SupContrast model wrappers.

Parameter names match torchvision's resnetXX exactly (minus `fc`), so torchvision weights load
into a trunk with `load_state_dict(..., strict=False)` and our trunks load into torchvision.
Every wrapper keeps its trunk under `encoder`, so checkpoints store it under the prefix 'encoder.'.
"""
import torch.nn as nn
import torch.nn.functional as F

from networks.heads import mlp_head
from networks.resnet3d import VIDEO_MODEL_NAMES, build_video_trunk


def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)  # BN follows: no bias


def conv1x1(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(c_in, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample  # projects the shortcut when shape changes

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(c_in, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # stride on the 3x3 (torchvision "v1.5")
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet without a classifier: forward returns globally pooled features [B, feat_dim]."""

    def __init__(self, block, layers, stem='cifar', width=64, in_channels=3, zero_init_residual=False):
        super().__init__()
        if stem == 'cifar':
            # 32-px images: a 3x3 stride-1 stem and no max-pool keep full resolution into layer1.
            self.conv1 = conv3x3(in_channels, width)
            self.maxpool = nn.Identity()
        elif stem == 'imagenet':
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            raise ValueError(f"unknown stem {stem!r}; expected 'cifar' or 'imagenet'")
        self.bn1 = nn.BatchNorm2d(width)
        self.c_in = width  # channels flowing into the next stage, updated by _make_layer
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feat_dim = 8 * width * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Each residual branch starts as zero, so every block starts as the identity
            # (Goyal et al. 2017); helps large-batch training.
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, n_blocks, stride):
        c_out = planes * block.expansion
        downsample = None
        if stride != 1 or self.c_in != c_out:
            downsample = nn.Sequential(conv1x1(self.c_in, c_out, stride), nn.BatchNorm2d(c_out))
        blocks = [block(self.c_in, planes, stride, downsample)]
        self.c_in = c_out
        blocks += [block(c_out, planes) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


_ARCHS = {
    'resnet18': (BasicBlock, [2, 2, 2, 2]),
    'resnet34': (BasicBlock, [3, 4, 6, 3]),
    'resnet50': (Bottleneck, [3, 4, 6, 3]),
    'resnet101': (Bottleneck, [3, 4, 23, 3]),
}
MODEL_NAMES = tuple(_ARCHS)


def build_trunk(name, stem='cifar', width=64, in_channels=3):
    """Any trunk by name; the video trunks (r3d18, r3d50) have one fixed stem and ignore `stem`."""
    if name in VIDEO_MODEL_NAMES:
        return build_video_trunk(name, width=width, in_channels=in_channels)
    if name not in _ARCHS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES + VIDEO_MODEL_NAMES)}")
    block, layers = _ARCHS[name]
    return ResNet(block, layers, stem=stem, width=width, in_channels=in_channels)


def default_stem(size):
    """The CIFAR stem suits small images (<= 64 px); larger ones need the ImageNet downsampling."""
    return 'cifar' if size <= 64 else 'imagenet'


class SupConResNet(nn.Module):
    """Trunk + projection head; outputs L2-normalised embeddings for the contrastive loss."""

    def __init__(self, name='resnet50', head='mlp', feat_dim=128, stem='cifar', width=64, mlp_layers=2):
        super().__init__()
        self.encoder = build_trunk(name, stem=stem, width=width)
        dim_in = self.encoder.feat_dim
        if head == 'linear':
            self.head = nn.Linear(dim_in, feat_dim)
        elif head == 'mlp':  # SupContrast's: Linear(dim, dim) -> ReLU -> Linear(dim, feat_dim)
            self.head = mlp_head(dim_in, dim_in, feat_dim, num_layers=mlp_layers)
        else:
            raise ValueError(f"unknown head {head!r}; expected 'linear' or 'mlp'")

    def forward(self, x):
        return F.normalize(self.head(self.encoder(x)), dim=1)


class SupCEResNet(nn.Module):
    """Trunk + linear classifier, trained end to end with cross-entropy."""

    def __init__(self, name='resnet50', num_classes=10, stem='cifar', width=64, dropout=0.0):
        super().__init__()
        self.encoder = build_trunk(name, stem=stem, width=width)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(self.encoder.feat_dim, num_classes)

    def forward(self, x):
        return self.fc(self.dropout(self.encoder(x)))


class LinearClassifier(nn.Module):
    """Linear probe on frozen trunk features."""

    def __init__(self, feat_dim, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(feat_dim, num_classes)

    def forward(self, features):
        return self.fc(features)
