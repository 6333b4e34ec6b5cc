"""3D ResNet video trunks of SCE's video experiments: R3D-18 and R3D-50 ("slow-only").

Both take clips [B, C, T, H, W] of any length T: no layer strides or pools over time, so the
temporal size is kept to the global average pool. Layout and parameter names follow our 2D trunks
(networks/resnet_big.py: conv1/bn1, layer1-4, downsample), and `feat_dim` is the pooled width.

- R3D-18: stem conv (1,7,7) stride (1,2,2) + max-pool (1,3,3) stride (1,2,2); basic blocks
  [2,2,2,2] whose first convolution is (1,3,3) in stages 1-2 and (3,3,3) in stages 3-4, the second
  always (1,3,3); spatial stride 2 on the first convolution of stages 2-4. 8 * width features.
- R3D-50: the same stem; bottlenecks [3,4,6,3] whose first (1x1) convolution has temporal kernel
  3 in stages 3-4 only, spatial stride on the (1,3,3) convolution. 32 * width features.

As in the released models (PyTorchVideo's builders), convolutions are Kaiming-normal (fan_out) and
the last BatchNorm of every residual branch starts at zero, so each block starts as the identity.
"""
import torch.nn as nn
import torch.nn.functional as F


def conv3d(c_in, c_out, kernel, stride=(1, 1, 1)):
    """Convolution padded to keep T (stride 1 in time) and H, W / stride; BN follows: no bias."""
    return nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False)


class BasicBlock3d(nn.Module):
    expansion = 1

    def __init__(self, c_in, planes, temporal_kernel, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3d(c_in, planes, (temporal_kernel, 3, 3), (1, stride, stride))
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3d(planes, planes, (1, 3, 3))
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck3d(nn.Module):
    expansion = 4

    def __init__(self, c_in, planes, temporal_kernel, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3d(c_in, planes, (temporal_kernel, 1, 1))
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3d(planes, planes, (1, 3, 3), (1, stride, stride))
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = conv3d(planes, planes * self.expansion, (1, 1, 1))
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.downsample = downsample

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet3d(nn.Module):
    """Video ResNet without a classifier: forward returns pooled features [B, feat_dim]."""

    def __init__(self, block, layers, temporal_kernels, width=64, in_channels=3):
        super().__init__()
        self.conv1 = conv3d(in_channels, width, (1, 7, 7), (1, 2, 2))
        self.bn1 = nn.BatchNorm3d(width)
        self.maxpool = nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.c_in = width  # channels flowing into the next stage, updated by _make_layer
        self.layer1 = self._make_layer(block, width, layers[0], temporal_kernels[0], stride=1)
        self.layer2 = self._make_layer(block, 2 * width, layers[1], temporal_kernels[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], temporal_kernels[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], temporal_kernels[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.feat_dim = 8 * width * block.expansion

        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, Bottleneck3d):
                nn.init.zeros_(m.bn3.weight)
            elif isinstance(m, BasicBlock3d):
                nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block, planes, n_blocks, temporal_kernel, stride):
        c_out = planes * block.expansion
        downsample = None
        if stride != 1 or self.c_in != c_out:
            downsample = nn.Sequential(conv3d(self.c_in, c_out, (1, 1, 1), (1, stride, stride)),
                                       nn.BatchNorm3d(c_out))
        blocks = [block(self.c_in, planes, temporal_kernel, stride, downsample)]
        self.c_in = c_out
        blocks += [block(c_out, planes, temporal_kernel) for _ in range(1, n_blocks)]
        return nn.Sequential(*blocks)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


# name -> (block, blocks per stage, temporal kernel of each stage's first/1x1 convolution)
_ARCHS = {
    'r3d18': (BasicBlock3d, [2, 2, 2, 2], [1, 1, 3, 3]),
    'r3d50': (Bottleneck3d, [3, 4, 6, 3], [1, 1, 3, 3]),
}
VIDEO_MODEL_NAMES = tuple(_ARCHS)


def build_video_trunk(name, width=64, in_channels=3):
    if name not in _ARCHS:
        raise ValueError(f"unknown video model {name!r}; expected one of {', '.join(VIDEO_MODEL_NAMES)}")
    block, layers, temporal_kernels = _ARCHS[name]
    return ResNet3d(block, layers, temporal_kernels, width=width, in_channels=in_channels)
