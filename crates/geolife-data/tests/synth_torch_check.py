"""One-off check (run by hand, not by CI): PyTorch reads `geolife synth` cubes correctly.

Usage: python3 synth_torch_check.py <SYNTH_DATASET_DIR> [MAX_FILES]
For every .pt cube (up to MAX_FILES per folder) it checks that torch.load(weights_only=True)
returns a float32 tensor with the real GLC24 size and stride, and that its values equal an
independent strided decode of the raw `<stem>/data/0` storage read with zipfile + struct.
It also checks the zip layout against the real cube of survey 1322301.
"""
import math
import pathlib
import struct
import sys
import zipfile

import torch

REAL = pathlib.Path(__file__).resolve().parents[3] / "tests/data/glc24-real/mini/TimeSeries-Cubes/TimeSeries-Cubes"
EXPECT = {
    "landsat": ((6, 4, 21), (84, 1, 4)),
    "bioclimatic": ((4, 19, 12), (1, 48, 4)),
}


def layout(path):
    """Entry names (stem replaced), compression, and the 64-byte alignment of each payload."""
    data = path.read_bytes()
    out = []
    with zipfile.ZipFile(path) as z:
        for i in z.infolist():
            h = i.header_offset
            name_len, extra_len = struct.unpack("<HH", data[h + 26 : h + 30])
            extra = data[h + 30 + name_len : h + 30 + name_len + extra_len]
            payload = h + 30 + name_len + extra_len
            out.append((i.filename.replace(path.stem, "<stem>"), i.compress_type, payload % 64, extra[:2], i.flag_bits))
    return out


def check(path):
    kind = "landsat" if "landsat" in path.name else "bioclimatic"
    size, stride = EXPECT[kind]
    t = torch.load(path, weights_only=True)
    assert t.dtype == torch.float32, (path, t.dtype)
    assert tuple(t.shape) == size, (path, t.shape)
    assert t.stride() == stride, (path, t.stride())
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            assert info.compress_type == zipfile.ZIP_STORED, (path, info.filename)
        names = z.namelist()
        assert names[0] == f"{path.stem}/data.pkl", names
        raw = z.read(f"{path.stem}/data/0")
    storage = struct.unpack(f"<{len(raw) // 4}f", raw)
    values = t.tolist()
    for i in range(size[0]):
        for j in range(size[1]):
            for k in range(size[2]):
                a = values[i][j][k]
                b = storage[i * stride[0] + j * stride[1] + k * stride[2]]
                assert (math.isnan(a) and math.isnan(b)) or a == b, (path, i, j, k, a, b)
    return kind


def main():
    root = pathlib.Path(sys.argv[1])
    limit = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    real = {
        "landsat": layout(next(REAL.glob("*landsat*/*.pt"))),
        "bioclimatic": layout(next(REAL.glob("*bioclimatic*/*.pt"))),
    }
    n = 0
    for folder in sorted((root / "TimeSeries-Cubes/TimeSeries-Cubes").iterdir()):
        for path in sorted(folder.glob("*.pt"))[:limit]:
            kind = check(path)
            assert layout(path) == real[kind], (path, layout(path), real[kind])
            n += 1
    print(f"ok: {n} cubes read by torch {torch.__version__} with the real size, stride and values")


if __name__ == "__main__":
    main()
