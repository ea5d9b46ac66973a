"""The CNN-CTC network ("None-ResNet-None-CTC", Baek et al. 2019) as an ``nn.Cell``.

Parameter names and shapes follow MindSpore's model zoo r1.3 (``official/cv/cnnctc``) so the
hub checkpoint loads as it is. Nothing here touches files or the network.
"""
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore.common.initializer import TruncatedNormal

__all__ = ["CNNCTC", "BasicBlock", "ResNet"]

# The official values; MindSpore's own default momentum (0.9) would change the moving statistics.
_BN_MOMENTUM = 0.1
_BN_EPS = 1e-5


def _conv(in_channels, out_channels, kernel_size, stride=1, padding=0):
    pad_mode = "pad" if padding else "valid"
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode=pad_mode,
                     padding=padding, has_bias=False, weight_init=TruncatedNormal(0.02))


def _bn(channels):
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class BasicBlock(nn.Cell):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when widths differ)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv1 = _conv(in_channels, out_channels, 3, padding=1)
        self.bn1 = _bn(out_channels)
        self.conv2 = _conv(out_channels, out_channels, 3, padding=1)
        self.bn2 = _bn(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.SequentialCell([_conv(in_channels, out_channels, 1), _bn(out_channels)])

    def construct(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class ResNet(nn.Cell):
    """The feature extractor: (B, 3, 32, 100) -> (B, output_channel, 1, 26)."""

    def __init__(self, input_channel=3, output_channel=512, layers=(1, 2, 5, 3)):
        super().__init__()
        if output_channel % 16:
            raise ValueError(f"output_channel must be a multiple of 16, got {output_channel}")
        widths = [output_channel // 4, output_channel // 2, output_channel, output_channel]
        stem = output_channel // 16, output_channel // 8
        self.relu = nn.ReLU()
        self.conv0_1 = _conv(input_channel, stem[0], 3, padding=1)
        self.bn0_1 = _bn(stem[0])
        self.conv0_2 = _conv(stem[0], stem[1], 3, padding=1)
        self.bn0_2 = _bn(stem[1])
        self.maxpool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer1 = self._make_layer(stem[1], widths[0], layers[0])
        self.conv1 = _conv(widths[0], widths[0], 3, padding=1)
        self.bn1 = _bn(widths[0])
        self.maxpool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layer2 = self._make_layer(widths[0], widths[1], layers[1])
        self.conv2 = _conv(widths[1], widths[1], 3, padding=1)
        self.bn2 = _bn(widths[1])
        self.maxpool3 = nn.MaxPool2d(kernel_size=2, stride=(2, 1))
        self.layer3 = self._make_layer(widths[1], widths[2], layers[2])
        self.conv3 = _conv(widths[2], widths[2], 3, padding=1)
        self.bn3 = _bn(widths[2])
        self.layer4 = self._make_layer(widths[2], widths[3], layers[3])
        self.pad = ops.Pad(((0, 0), (0, 0), (0, 0), (2, 2)))
        self.conv4_1 = _conv(widths[3], widths[3], 2, stride=(2, 1))
        self.bn4_1 = _bn(widths[3])
        self.conv4_2 = _conv(widths[3], widths[3], 2)
        self.bn4_2 = _bn(widths[3])

    @staticmethod
    def _make_layer(in_channels, out_channels, blocks):
        cells = [BasicBlock(in_channels, out_channels)]
        cells += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
        return nn.SequentialCell(cells)

    def construct(self, x):
        x = self.relu(self.bn0_1(self.conv0_1(x)))
        x = self.relu(self.bn0_2(self.conv0_2(x)))
        x = self.maxpool1(x)
        x = self.layer1(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool2(x)
        x = self.layer2(x)
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.maxpool3(x)
        x = self.layer3(x)
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.layer4(x)
        x = self.pad(x)
        x = self.relu(self.bn4_1(self.conv4_1(x)))
        return self.relu(self.bn4_2(self.conv4_2(x)))


class _FeatureExtraction(nn.Cell):
    # A wrapper only so that parameter names carry the official "FeatureExtraction.ConvNet." prefix.
    def __init__(self, output_channel):
        super().__init__()
        self.ConvNet = ResNet(3, output_channel)

    def construct(self, x):
        return self.ConvNet(x)


class CNNCTC(nn.Cell):
    """CNN-CTC: (B, 3, 32, 100) float32 images -> (B, final_feature_width, num_class) logits.

    The positional arguments are those of the official ``CNNCTC_Model``. ``hidden_size`` is
    the width of the features fed to the head and defaults to ``output_channel``; a narrower
    ``output_channel`` builds a smaller variant of the same architecture (for tests and small
    devices). The last class is the CTC blank.
    """

    def __init__(self, num_class=37, hidden_size=None, final_feature_width=26, *, output_channel=None):
        super().__init__()
        if output_channel is None:
            output_channel = hidden_size or 512
        if hidden_size is None:
            hidden_size = output_channel
        if hidden_size != output_channel:
            raise ValueError(f"hidden_size ({hidden_size}) must equal output_channel ({output_channel}): "
                             "the head reads the feature extractor's channels")
        if num_class < 2:
            raise ValueError(f"num_class must be at least 2 (one symbol and the blank), got {num_class}")
        self.num_class = num_class
        self.hidden_size = hidden_size
        self.final_feature_width = final_feature_width
        self.FeatureExtraction = _FeatureExtraction(output_channel)
        self.Prediction = nn.Dense(hidden_size, num_class)

    def construct(self, x):
        x = self.FeatureExtraction(x)                 # (B, C, 1, W)
        x = ops.transpose(x, (0, 3, 1, 2))            # (B, W, C, 1)
        x = ops.reshape(x, (-1, self.hidden_size))
        x = self.Prediction(x)
        return ops.reshape(x, (-1, self.final_feature_width, self.num_class))
