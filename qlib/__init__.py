"""qlib: quantization of BERT, from first principles to int8 on a CPU (the library behind the qbook book).

The distribution is called ``qbook`` (``pip install -e .``); the import name is ``qlib``. Microsoft's
``pyqlib`` also installs a module named ``qlib``: do not install both in one environment.
"""

from qlib.bert.config import BertQuantConfig, LayerQuant, dynamic_config, q8bert_config, qbert_config
from qlib.bert.convert import calibrate, convert_bert, find_bert, layer_names, quantized_modules
from qlib.bert.modules import QuantEmbedding, QuantLinear
from qlib.common.checks import check_bits
from qlib.core.observers import DynamicObserver, EMAObserver, MinMaxObserver, make_observer
from qlib.core.quant_noise import quant_noise
from qlib.core.quantizers import QuantGrid, QuantSpec, fake_quantize, group_view, tensor_ranges
from qlib.core.ternary import TernarySpec

__version__ = "0.1.0"

__all__ = [
    "BertQuantConfig", "DynamicObserver", "EMAObserver", "LayerQuant", "MinMaxObserver", "QuantEmbedding",
    "QuantGrid", "QuantLinear", "QuantSpec", "TernarySpec", "calibrate", "check_bits", "convert_bert", "dynamic_config",
    "fake_quantize", "find_bert", "group_view", "layer_names", "make_observer", "q8bert_config", "qbert_config",
    "quant_noise", "quantized_modules", "tensor_ranges",
]
