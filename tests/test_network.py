import json

import numpy as np
import pytest
import mindspore as ms

from conftest import NARROW, ROOT
from cnnctc.network import CNNCTC

# The parameter table of the official network (model zoo r1.3), copied from ../shared/cnnctc/.
OFFICIAL = json.loads((ROOT / "tests" / "data" / "official_params.json").read_text())


def table(net):
    return [{"name": p.name, "shape": list(p.shape), "dtype": str(p.dtype).lower(), "trainable": p.requires_grad}
            for p in net.get_parameters()]


def test_parameter_table_equals_the_official_one():
    assert table(CNNCTC()) == OFFICIAL
    assert sum(int(np.prod(p["shape"])) for p in OFFICIAL) == 44308229


def test_positional_arguments_like_the_official_class():
    net = CNNCTC(37, 512, 26)
    assert (net.num_class, net.hidden_size, net.final_feature_width) == (37, 512, 26)
    assert net.Prediction.weight.shape == (37, 512)


def test_narrow_variant_keeps_names_and_output_shape():
    narrow, full = CNNCTC(output_channel=NARROW), CNNCTC()
    assert [p.name for p in narrow.get_parameters()] == [p.name for p in full.get_parameters()]
    assert narrow.FeatureExtraction.ConvNet.conv4_2.weight.shape == (NARROW, NARROW, 2, 2)
    ms.set_context(mode=ms.GRAPH_MODE)
    narrow.set_train(False)
    out = narrow(ms.Tensor(np.zeros((3, 3, 32, 100), np.float32)))
    assert out.shape == (3, 26, 37)


def test_batchnorm_keeps_the_official_momentum():
    bn = CNNCTC(output_channel=NARROW).FeatureExtraction.ConvNet.bn0_1
    # MindSpore keeps 1 - momentum internally: 0.9 here is the official momentum=0.1, while
    # MindSpore's own default (0.9) would show 0.1.
    assert bn.momentum == pytest.approx(0.9)
    assert bn.eps == pytest.approx(1e-5)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=256, output_channel=512), "must equal output_channel"),
    (dict(output_channel=100), "multiple of 16"),
    (dict(num_class=1), "at least 2"),
])
def test_bad_configurations_say_why(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CNNCTC(**kwargs)
