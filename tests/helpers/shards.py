"""img2dataset-layout webdataset shards written by hand (a tar of <key>.jpg / .txt / .json per sample)."""
import io
import json
import tarfile

from PIL import Image


def jpeg(color) -> bytes:
    """A small JPEG of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), color).save(buf, format="JPEG")
    return buf.getvalue()


def _add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path, samples):
    """samples: (key, caption bytes | None, image bytes | None)."""
    with tarfile.open(path, "w") as tar:
        for key, caption, image in samples:
            if image is not None:
                _add(tar, f"{key}.jpg", image)
            if caption is not None:
                _add(tar, f"{key}.txt", caption)
            _add(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
