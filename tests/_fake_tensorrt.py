"""A stand-in `tensorrt` module that records builder calls, for testing build_engine's logic
(version branches, flags, profiles, timing cache, files written) where TensorRT is absent.

It mimics the parts of the TensorRT Python API that build_engine uses, as documented for 10.x
and 11.x: TensorRT 11 has no BuilderFlag.FP16/INT8, so touching them there fails as it would.
"""

from __future__ import annotations

import enum
import json
import types

import onnx

from gdws_export.runtimes.trt_support import TRT_SUPPORTED_OPS


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = Severity

    def __init__(self) -> None:
        pass


class Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        self.name, self.shape, self.dtype = name, shape, dtype


class Network:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[Tensor] = []
        self.outputs: list[Tensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]

    def get_output(self, i: int) -> Tensor:
        return self.outputs[i]


class ParserError:
    def __init__(self, index: int, node: onnx.NodeProto) -> None:
        self._index, self._node = index, node

    def node(self) -> int:
        return self._index

    def node_name(self) -> str:
        return self._node.name

    def node_operator(self) -> str:
        return self._node.op_type

    def desc(self) -> str:
        return f"No importer registered for op: {self._node.op_type}"


class OnnxParser:
    def __init__(self, network: Network, logger: ILogger, trt: FakeTensorRT) -> None:
        self.network, self.errors, self.trt = network, [], trt

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> ParserError:
        return self.errors[i]

    def parse_from_file(self, path: str) -> bool:
        self.trt.calls["parsed"] = path
        model = onnx.load(path)
        types_ = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF"}

        def tensor(value):
            dims = value.type.tensor_type.shape.dim
            shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in dims)
            return Tensor(value.name, shape, types_[value.type.tensor_type.elem_type])

        self.network.inputs = [tensor(v) for v in model.graph.input]
        self.network.outputs = [tensor(v) for v in model.graph.output]
        self.errors = [
            ParserError(i, n)
            for i, n in enumerate(model.graph.node)
            if n.op_type not in TRT_SUPPORTED_OPS
        ]
        return not self.errors


class TimingCache:
    def __init__(self, data: bytes) -> None:
        self.entries = set(json.loads(data)) if data else set()

    def combine(self, other: TimingCache, ignore_mismatch: bool) -> bool:
        self.entries |= other.entries
        return True

    def serialize(self) -> bytes:
        return json.dumps(sorted(self.entries)).encode()


class Profile:
    def __init__(self) -> None:
        self.shapes = {}

    def set_shape(self, name, min, opt, max) -> None:  # TensorRT's argument names
        self.shapes[name] = (tuple(min), tuple(opt), tuple(max))


class Config:
    def __init__(self, major: int) -> None:
        self.major = major
        self.flags = {"TF32"}  # TensorRT enables TF32 by default
        self.pools, self.profiles, self.cache = {}, [], None
        self.hardware_compatibility_level = None
        self.calibrator = None

    @property
    def int8_calibrator(self):
        return self.calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, calibrator) -> None:
        if self.major >= 11:  # implicit calibration is gone in TensorRT 11
            raise AttributeError("'IBuilderConfig' object has no attribute 'int8_calibrator'")
        self.calibrator = calibrator

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag: str) -> None:
        self.flags.discard(flag)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> TimingCache:
        return TimingCache(data)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self.cache


class Builder:
    def __init__(self, logger: ILogger, trt: FakeTensorRT) -> None:
        self.logger, self.trt = logger, trt

    def create_network(self, flags: int = 0) -> Network:
        self.trt.calls["network_flags"] = flags
        return Network(flags)

    def create_builder_config(self) -> Config:
        return Config(int(self.trt.__version__.split(".")[0]))

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: Config):
        self.trt.calls["config"] = config
        if self.trt.fail_build:
            self.logger.log(Severity.ERROR, "no implementation obeys reformatting-free rules")
            return None
        config.cache.entries.add(f"tactic-{len(config.cache.entries)}")
        return json.dumps({"flags": sorted(config.flags)}).encode()


class FakeTensorRT(types.ModuleType):
    """`tensorrt` of a given version; `calls` records what build_engine asked of it."""

    def __init__(self, version: str) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: dict = {}
        self.fail_build = False
        major = int(version.split(".")[0])
        flags = ["TF32"] + (["FP16", "INT8"] if major < 11 else [])  # gone in TensorRT 11
        self.BuilderFlag = types.SimpleNamespace(**{f: f for f in flags})
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        self.HardwareCompatibilityLevel = types.SimpleNamespace(
            AMPERE_PLUS="AMPERE_PLUS", SAME_COMPUTE_CAPABILITY="SAME_COMPUTE_CAPABILITY"
        )
        self.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF")
        self.ILogger = ILogger

    def Builder(self, logger):
        return Builder(logger, self)

    def OnnxParser(self, network, logger):
        return OnnxParser(network, logger, self)
