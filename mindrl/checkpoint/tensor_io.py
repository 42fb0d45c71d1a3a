"""Streaming tensor files: safetensors and torch.save (zip) read and written one tensor at a time.

Both formats put a small header (safetensors: JSON; torch: `data.pkl`) before or beside raw tensor
bytes, so a reader can seek to one tensor and a writer can lay out the header first and then
append (or place) each tensor's bytes as it arrives. Plain `read`/`write` calls are used, not
mmap: mapped file pages count towards the process's resident memory, and a converter of a
1.3 TB model must stay within a few tensors.
"""
from __future__ import annotations

import json

import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch


ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
ST_NAMES = {v: k for k, v in ST_DTYPES.items()}


class CheckpointError(ValueError):
    """A bad input checkpoint or layout: the message names the file or tensor."""


def _from_bytes(buf: torch.Tensor, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    if buf.numel() == 0:
        return torch.empty(shape, dtype=dtype)
    return buf.view(dtype).reshape(shape)


def _read_exact(f: Any, start: int, nbytes: int, what: str) -> torch.Tensor:
    buf = torch.empty(nbytes, dtype=torch.uint8)  # not bytearray: that zero-fills (as slow as the read)
    f.seek(start)
    if nbytes and f.readinto(memoryview(buf.numpy())) != nbytes:
        raise CheckpointError(f"{what}: file ends before the tensor's data (truncated?)")
    return buf


# ---- safetensors ---------------------------------------------------------------------------------
@dataclass
class STEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    nbytes: int


def read_safetensors_header(path: Path) -> dict[str, STEntry]:
    """Tensor entries of one .safetensors file; checks that the file holds all the bytes it lists."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CheckpointError(f"{path}: safetensors header of {n} bytes is longer than the file (truncated or corrupt)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from err
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = ST_DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            shape = tuple(int(x) for x in info["shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors entry for tensor '{name}' ({err!r})") from err
        if end - begin != torch.Size(shape).numel() * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor '{name}' has {end - begin} bytes for shape {list(shape)} {info['dtype']}")
        if 8 + n + end > size:
            raise CheckpointError(f"{path}: truncated: tensor '{name}' needs bytes up to {8 + n + end}, "
                                  f"the file has {size}")
        out[name] = STEntry(path, dtype, shape, 8 + n + begin, end - begin)
    return out


class SafetensorsDir:
    """All tensors of an HF model directory (sharded with an index, or one model.safetensors)."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.exists():
            try:
                weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: not a valid safetensors index ({err!r})") from err
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
            weight_map = {}
        if not files:
            raise CheckpointError(f"{model_dir}: no *.safetensors files (HF checkpoints must be safetensors)")
        self.files = [model_dir / f for f in files]
        self.entries: dict[str, STEntry] = {}
        for path in self.files:
            if not path.exists():
                raise CheckpointError(f"{path}: listed in {index.name} but missing")
            for name, entry in read_safetensors_header(path).items():
                if name in self.entries:
                    raise CheckpointError(f"tensor '{name}' appears in both {self.entries[name].file} and {path}")
                self.entries[name] = entry
        for name, file in weight_map.items():
            if name not in self.entries or self.entries[name].file.name != file:
                raise CheckpointError(f"{index}: tensor '{name}' is listed in {file} but that file does not hold it")
        self._handle: tuple[Path, Any] | None = None

    def read(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        if self._handle is None or self._handle[0] != e.file:
            self.close()
            self._handle = (e.file, open(e.file, "rb"))
        return _from_bytes(_read_exact(self._handle[1], e.start, e.nbytes, f"{e.file}: '{name}'"), e.dtype, e.shape)

    def close(self) -> None:
        if self._handle is not None:
            self._handle[1].close()
            self._handle = None


class SafetensorsWriter:
    """Writes one .safetensors file whose tensor list is known up front, tensor by tensor, in order."""

    def __init__(self, path: Path, entries: list[tuple[str, torch.dtype, tuple[int, ...]]]) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, dtype, shape in entries:
            nbytes = torch.Size(shape).numel() * dtype.itemsize
            header[name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # keeps tensor data 8-byte aligned, as safetensors does
        self._pending = [(name, dtype, tuple(shape)) for name, dtype, shape in entries]
        self.path = path
        self._f = open(path, "wb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, name: str, t: torch.Tensor) -> None:
        want = self._pending.pop(0)
        if (name, t.dtype, tuple(t.shape)) != want:
            raise AssertionError(f"{self.path}: expected {want}, got {(name, t.dtype, tuple(t.shape))}")
        _write_tensor(self._f, t)
        if not self._pending:
            self._f.close()

    @property
    def done(self) -> bool:
        return not self._pending


def _write_tensor(f: Any, t: torch.Tensor) -> None:
    if t.numel():
        f.write(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))


# ---- torch.save zip files -------------------------------------------------------------------------
@dataclass
class LazyTensor:
    """A tensor inside a torch.save file, not yet read."""

    key: str
    dtype: torch.dtype
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


class _Storage:
    def __init__(self, key: str, dtype: torch.dtype) -> None:
        self.key, self.dtype = key, dtype


class _Opaque:
    """Stands in for any non-tensor class in a checkpoint (e.g. megatron's `args` Namespace)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _rebuild_lazy(storage: _Storage, offset: int, size: Any, stride: Any, *unused: Any) -> LazyTensor:
    return LazyTensor(storage.key, storage.dtype, int(offset), tuple(size), tuple(stride))


class _LazyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_lazy
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name.endswith("Storage"):
            return getattr(torch, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _Opaque

    def persistent_load(self, pid: Any) -> _Storage:
        _, storage_type, key, _location, _numel = pid
        dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
        return _Storage(str(key), dtype)


class TorchFile:
    """A torch.save file opened lazily: `obj` has LazyTensors; `read()` loads one tensor."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self._reader = torch._C.PyTorchFileReader(str(self.path))
            self.obj = _LazyUnpickler(__import__("io").BytesIO(self._reader.get_record("data.pkl"))).load()
        except (RuntimeError, pickle.UnpicklingError, EOFError) as err:
            raise CheckpointError(f"{self.path}: not a readable torch checkpoint ({err})") from err
        self._f = open(self.path, "rb")

    def offset(self, t: LazyTensor) -> int:
        return int(self._reader.get_record_offset(f"data/{t.key}")) + t.storage_offset * t.dtype.itemsize

    def read(self, t: LazyTensor) -> torch.Tensor:
        contiguous = torch.empty(0).new_empty_strided(t.shape, t.stride, device="meta").is_contiguous()
        if not contiguous:
            raise CheckpointError(f"{self.path}: non-contiguous tensor (key {t.key}) is not supported")
        nbytes = torch.Size(t.shape).numel() * t.dtype.itemsize
        return _from_bytes(_read_exact(self._f, self.offset(t), nbytes, f"{self.path}: data/{t.key}"), t.dtype, t.shape)

    def close(self) -> None:
        self._f.close()


def flatten(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted path, leaf) for nested dicts."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flatten(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], obj


class TorchFileWriter:
    """A torch.save file written as a skeleton first (`skip_data`: the records reserve space, no
    tensor is materialised), then filled one tensor at a time at each record's offset. The result
    is an ordinary torch.save file (`torch.load` reads it)."""

    def __init__(self, path: Path, obj: Any) -> None:
        """`obj`: nested dicts whose leaves are (dtype, shape) for tensors, or plain values."""
        def skeleton(o: Any) -> Any:
            if isinstance(o, dict):
                return {k: skeleton(v) for k, v in o.items()}
            if isinstance(o, tuple) and len(o) == 2 and isinstance(o[0], torch.dtype):
                return torch.empty(o[1], dtype=o[0])  # untouched pages: virtual memory only
            return o

        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.serialization.skip_data():
            torch.save(skeleton(obj), str(path))
        self.path = path
        lazy = TorchFile(path)
        self._where = {name: (lazy.offset(t), t) for name, t in flatten(lazy.obj) if isinstance(t, LazyTensor)}
        lazy.close()
        self._f = open(path, "r+b")
        self.remaining = set(self._where)

    def write(self, name: str, t: torch.Tensor) -> None:
        offset, lazy = self._where[name]
        if (t.dtype, tuple(t.shape)) != (lazy.dtype, lazy.shape):
            raise AssertionError(f"{self.path}: {name} expects {lazy.dtype} {lazy.shape}, got {t.dtype} {tuple(t.shape)}")
        self._f.seek(offset)
        _write_tensor(self._f, t)
        self.remaining.discard(name)

    def close(self) -> None:
        if self.remaining:
            raise AssertionError(f"{self.path}: tensors never written: {sorted(self.remaining)[:5]}")
        self._f.close()
